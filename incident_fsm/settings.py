"""Typed settings: the configuration shape of DESIGN.md as frozen dataclasses.

Every component takes the part of these it needs as a constructor argument;
nothing reads files or the environment on its own. `incident_fsm.config`
builds a `Settings` from TOML, environment variables and CLI flags and
validates it (naming the offending key); the defaults here are the PRD's.
Secrets are never values here: settings name the environment variable that
holds them (`*_env`), read only at the moment of use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: Problem kinds (the `kind` of an incident, and the keys of `[policy]`).
MEMORY_HIGH = "memory_high"
DISK_HIGH = "disk_high"
CPU_HIGH = "cpu_high"
HEALTH_ENDPOINT_DOWN = "health_endpoint_down"
#: the target answers its health endpoint, but not with a reading (401/403/404/405, a
#: body of no known schema): the probe is wrong, so humans are told and nothing is run
PROBE_MISCONFIGURED = "probe_misconfigured"
SERVICE_DOWN_PREFIX = "service_down:"
STATIC_KINDS = (MEMORY_HIGH, DISK_HIGH, CPU_HIGH, HEALTH_ENDPOINT_DOWN, PROBE_MISCONFIGURED)


def service_down(dependency: str) -> str:
    """The problem kind of a dead dependency, e.g. `service_down:celery`."""
    return f"{SERVICE_DOWN_PREFIX}{dependency}"


@dataclass(frozen=True)
class Threshold:
    """Percent levels for one resource: `critical` opens, under `clear` closes."""

    critical: float
    clear: float
    warning: float | None = None
    #: disk only: run cleanup already above this level
    cleanup: float | None = None


@dataclass(frozen=True)
class Thresholds:
    memory: Threshold = Threshold(critical=80.0, clear=75.0, warning=65.0)
    disk: Threshold = Threshold(critical=85.0, clear=70.0, warning=75.0, cleanup=75.0)
    cpu: Threshold = Threshold(critical=95.0, clear=85.0, warning=85.0)


@dataclass(frozen=True)
class DependencyCheck:
    """A dependency whose death is the problem `service_down:<name>`.

    kind `redis`: PING the Redis at the URL in env `url_env`;
    kind `celery`: a remote-control ping to the workers through the broker in env `url_env`;
    kind `http`: GET `path` on the target's base URL (e.g. `/health/ready`: 503 = down).
    """

    name: str
    kind: str
    url_env: str | None = None
    path: str | None = None
    timeout: float = 5.0


@dataclass(frozen=True)
class TargetSettings:
    name: str
    base_url: str
    #: read in order, the next only when one fails (each costs the service a second)
    endpoints: tuple[str, ...] = ("/health/resources", "/health/system")
    #: read every endpoint on every poll, and keep the higher of each reading
    read_all_endpoints: bool = False
    ready_endpoint: str | None = None
    render_service_id: str | None = None
    worker_service_id: str | None = None
    #: read the agent's own host when the endpoints fail; loading a configuration
    #: refuses it for a target not on this host, and leaves it off there when unset
    fallback_local: bool = True
    #: the target shares this machine and filesystem although its base_url is not
    #: loopback (e.g. a public URL of the container the agent is embedded in)
    same_host: bool = False
    #: mount points the local fallback probe reads for disk usage
    local_mounts: tuple[str, ...] = ("/",)
    thresholds: Thresholds = Thresholds()
    dependencies: tuple[DependencyCheck, ...] = ()
    #: seconds allowed for one probe request
    probe_timeout: float = 5.0
    #: consecutive failed probes that make `health_endpoint_down`
    failures_before_down: int = 3
    #: the target's own rate limit for our polling (requests per minute)
    max_requests_per_minute: int = 30


@dataclass(frozen=True)
class AgentSettings:
    database_url: str | None = None
    enabled: bool = True
    auto_remediation: bool = True
    pam_integration: bool = True
    poll_interval: float = 30.0
    fast_poll_interval: float = 10.0
    #: polls come up to this fraction of the interval early, so targets drift out of lock-step
    poll_jitter: float = 0.1
    #: the level of the per-check `📊 Health check` line (DEBUG silences it at INFO)
    health_log_level: str = "INFO"
    #: health_check rows older than this many seconds are pruned (0 keeps them forever)
    health_retention: float = 14 * 86400.0
    verify_window: float = 90.0
    max_strikes: int = 3
    detect_deadline: float = 120.0
    action_deadline: float = 300.0
    reopen_window: float = 3600.0
    #: an escalated incident nobody acknowledged is escalated (notified) again after this
    escalation_repeat: float = 1800.0
    #: guardrails: at most this many actions per target per window
    action_budget: int = 3
    action_budget_window: float = 1800.0
    #: flapping: this many reopenings inside the window pause automatic action
    flap_threshold: int = 3
    flap_window: float = 3600.0
    #: Postgres only: elect one acting replica. Set false only when exactly one
    #: agent uses the database; then it also keeps acting through a database outage.
    leader_election: bool = True
    #: Postgres only: the leader lease between replicas, and how often it is renewed
    leader_ttl: float = 15.0
    leader_renew: float = 5.0
    #: where writes are journaled while the database is unreachable
    #: (default: beside a SQLite file, else ./incident_fsm.journal)
    journal_path: str | None = None
    #: the variable holding the bearer token the status endpoints ask for (unset: open)
    status_token_env: str | None = None


@dataclass(frozen=True)
class DiskCleanupSettings:
    roots: tuple[str, ...] = ()
    max_age_days: float = 7.0
    compress_over_mb: float = 50.0
    log_patterns: tuple[str, ...] = ("*.log", "*.log.*", "*.out", "*.err")
    litter_patterns: tuple[str, ...] = (
        "__pycache__", "*.pyc", ".pytest_cache", "htmlcov", ".coverage*", "*.tmp", "*.temp",
    )
    #: litter younger than this (seconds) is left alone: it may be in use right now
    litter_min_age: float = 3600.0
    timeout: float = 120.0


@dataclass(frozen=True)
class RenderSettings:
    api_url: str = "https://api.render.com/v1"
    api_key_env: str = "RENDER_API_KEY"
    min_instances: int = 1
    max_instances: int = 3
    timeout: float = 30.0


@dataclass(frozen=True)
class CommandSettings:
    """An allow-listed command: argv only, never a shell string."""

    name: str
    argv: tuple[str, ...]
    tier: str = "safe"
    timeout: float = 60.0
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class FailoverSettings:
    """The failover hook: a webhook (`url`) or an allow-listed command (`argv`)."""

    url: str | None = None
    secret_env: str | None = None
    argv: tuple[str, ...] | None = None
    tier: str = "approval"
    timeout: float = 60.0
    #: problem kinds it is a candidate for (after the default policy's own candidates)
    kinds: tuple[str, ...] = (HEALTH_ENDPOINT_DOWN,)


@dataclass(frozen=True)
class ActionsSettings:
    disk_cleanup: DiskCleanupSettings = DiskCleanupSettings()
    render: RenderSettings = RenderSettings()
    commands: Mapping[str, CommandSettings] = field(
        default_factory=lambda: MappingProxyType({})
    )
    failover: FailoverSettings | None = None


@dataclass(frozen=True)
class PamSettings:
    url: str
    user_id: str
    token_env: str = "PAM_TOKEN"  # noqa: S105 - the name of a variable, not a secret
    #: a file holding the token, read afresh at each connect (wins over `token_env`)
    token_file: str | None = None
    #: the `type` of each notification frame; PAM's socket answers `system_message`
    #: (and every type it does not know) with an error, which the channel reports
    frame_type: str = "system_message"
    #: every frame we send counts (pongs and delivery probes too); PAM allows 60
    messages_per_minute: int = 60
    timeout: float = 10.0
    #: after the WebSocket pong to a frame, how long an error reply may still come (s)
    reply_window: float = 1.0
    #: reconnect backoff after a close: first delay and cap (seconds)
    reconnect_initial: float = 1.0
    reconnect_max: float = 30.0


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret_env: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class PamInProcessSettings:
    """PAM from inside its own process (embedded): through the host's connection manager."""

    #: the PAM users (Supabase UUIDs) whose open sockets receive each notification
    user_ids: tuple[str, ...]
    #: `module.path:attribute` of the manager; None when the host passes `pam_manager=`
    manager: str | None = None
    #: `content.category` of each proactive_alert
    category: str = "system_health"
    #: seconds allowed for one send through the manager
    timeout: float = 10.0
    #: how often (s) the channel looks for a configured user who has just connected
    watch_interval: float = 1.0


@dataclass(frozen=True)
class PamRelaySettings:
    """PAM from a standalone agent: signed POSTs to the relay the host mounts."""

    url: str
    user_ids: tuple[str, ...]
    #: the variable holding the relay's HMAC secret (the relay reads the same one)
    secret_env: str = "INCIDENT_FSM_PAM_RELAY_SECRET"  # noqa: S105 - a variable's name
    category: str = "system_health"
    timeout: float = 10.0


@dataclass(frozen=True)
class ChannelsSettings:
    pam: PamSettings | None = None
    webhook: WebhookSettings | None = None
    pam_inprocess: PamInProcessSettings | None = None
    pam_relay: PamRelaySettings | None = None
    #: delivery attempts per notification before it is marked dead
    max_attempts: int = 8
    #: retry backoff after a failed attempt: first delay and cap (seconds), jittered
    retry_initial: float = 5.0
    retry_max: float = 600.0


@dataclass(frozen=True)
class Settings:
    agent: AgentSettings = AgentSettings()
    targets: tuple[TargetSettings, ...] = ()
    actions: ActionsSettings = ActionsSettings()
    #: problem kind -> candidate action names, best first (overrides the default policy)
    policy: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    channels: ChannelsSettings = ChannelsSettings()
