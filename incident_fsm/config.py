"""Loading the configuration: one TOML file, environment variables over it, CLI flags over both.

`load_settings` returns a validated `Settings` or raises `ConfigError` naming
the offending key (`targets[0].thresholds.memory.clear: must be below
critical (80)`). Unknown keys are errors, not ignored: a typo must not
silently fall back to a default. Secrets are never accepted as values: the
file names the environment variable that holds them (`api_key_env`,
`token_env`, `secret_env`, `url_env`).

Environment variables (each overrides the `[agent]` key beside it):

    INCIDENT_FSM_DATABASE_URL        agent.database_url
    AUTONOMOUS_MONITORING_ENABLED    agent.enabled
    AUTO_REMEDIATION_ENABLED         agent.auto_remediation
    PAM_INTEGRATION_ENABLED          agent.pam_integration
    INCIDENT_FSM_<KEY>               agent.<key> for every other [agent] key,
                                     e.g. INCIDENT_FSM_POLL_INTERVAL=5
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from loguru import logger

from incident_fsm.errors import InvalidInput
from incident_fsm.settings import (
    STATIC_KINDS,
    ActionsSettings,
    AgentSettings,
    ChannelsSettings,
    CommandSettings,
    DependencyCheck,
    DiskCleanupSettings,
    FailoverSettings,
    PamInProcessSettings,
    PamRelaySettings,
    PamSettings,
    RenderSettings,
    Settings,
    TargetSettings,
    Threshold,
    Thresholds,
    WebhookSettings,
    service_down,
)

T = TypeVar("T")

TIERS = ("safe", "major", "approval")
BUILTIN_ACTIONS = (
    "disk_cleanup", "restart_celery_workers", "render_restart", "render_scale", "failover",
)
DEPENDENCY_KINDS = ("redis", "celery", "http")
ENV_FLAGS = {
    "INCIDENT_FSM_DATABASE_URL": "database_url",
    "AUTONOMOUS_MONITORING_ENABLED": "enabled",
    "AUTO_REMEDIATION_ENABLED": "auto_remediation",
    "PAM_INTEGRATION_ENABLED": "pam_integration",
}
#: the PAM channel keeps 6 frames a minute for pongs and needs 2 per notification
#: (the frame and its probe): below this nothing could ever go out
PAM_MIN_MESSAGES = 8
#: the sub-tables of [channels], one per channel
_CHANNEL_TABLES = ("pam", "webhook", "pam_inprocess", "pam_relay")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(InvalidInput):
    """The configuration is invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"{key}: {problem}")


# --- entry point ---------------------------------------------------------------------


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from a TOML file (optional), the environment, and CLI overrides.

    `overrides` maps `[agent]` keys to values already typed by the CLI
    (None means "not given").
    """
    raw: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(str(file), "configuration file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file), f"not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(str(file), f"cannot be read: {exc.strerror}") from None
    env = os.environ if environ is None else environ
    settings = _settings(raw)
    agent = _agent_from_env(settings.agent, env)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _field_names(AgentSettings):
            raise ConfigError(f"--{key.replace('_', '-')}", "unknown setting")
        agent = replace(agent, **{key: _coerce(f"agent.{key}", value, _field_type(key))})
    _check_agent(agent, "agent")
    return replace(settings, agent=agent)


# --- sections --------------------------------------------------------------------------


def _settings(raw: Mapping[str, Any]) -> Settings:
    _known(raw, "", ("agent", "targets", "actions", "policy", "channels"))
    agent = _simple(AgentSettings, _table(raw, "agent", "agent"), "agent")
    targets = tuple(
        _target(item, f"targets[{i}]")
        for i, item in enumerate(_list_of_tables(raw, "targets", "targets"))
    )
    names = [t.name for t in targets]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"targets[{i}].name", f"duplicate target name {name!r}")
    actions = _actions(_table(raw, "actions", "actions"))
    _check_cleanup_targets(actions.disk_cleanup, targets)
    policy = _policy(_table(raw, "policy", "policy"), actions)
    channels = _channels(_table(raw, "channels", "channels"))
    return Settings(agent=agent, targets=targets, actions=actions, policy=policy,
                    channels=channels)


def _agent_from_env(agent: AgentSettings, env: Mapping[str, str]) -> AgentSettings:
    changes: dict[str, Any] = {}
    for name in _field_names(AgentSettings):
        variable = next((v for v, k in ENV_FLAGS.items() if k == name),
                        f"INCIDENT_FSM_{name.upper()}")
        if variable in env and env[variable] != "":
            changes[name] = _from_env_text(variable, env[variable], _field_type(name))
    return replace(agent, **changes)


def _check_agent(agent: AgentSettings, key: str) -> None:
    for name in ("poll_interval", "fast_poll_interval", "verify_window", "detect_deadline",
                 "action_deadline", "reopen_window", "escalation_repeat",
                 "action_budget_window", "flap_window"):
        if getattr(agent, name) <= 0:
            raise ConfigError(f"{key}.{name}", "must be greater than 0")
    if agent.fast_poll_interval > agent.poll_interval:
        raise ConfigError(f"{key}.fast_poll_interval",
                          f"must not exceed poll_interval ({agent.poll_interval})")
    if not 0 < agent.leader_renew < agent.leader_ttl / 2:
        raise ConfigError(f"{key}.leader_renew",
                          f"must be above 0 and below half of leader_ttl ({agent.leader_ttl})")
    for name in ("max_strikes", "action_budget", "flap_threshold"):
        if getattr(agent, name) < 1:
            raise ConfigError(f"{key}.{name}", "must be at least 1")


def _target(raw: Mapping[str, Any], key: str) -> TargetSettings:
    thresholds_raw = _table(raw, "thresholds", f"{key}.thresholds")
    dependencies_raw = _list_of_tables(raw, "dependencies", f"{key}.dependencies")
    simple = {k: v for k, v in raw.items() if k not in ("thresholds", "dependencies")}
    target = _simple(TargetSettings, simple, key, required=("name", "base_url"))
    _check_name(target.name, f"{key}.name")
    _check_url(target.base_url, f"{key}.base_url", ("http", "https"))
    if not target.endpoints:
        raise ConfigError(f"{key}.endpoints", "needs at least one endpoint")
    for i, endpoint in enumerate(target.endpoints):
        _check_path(endpoint, f"{key}.endpoints[{i}]")
    if target.ready_endpoint is not None:
        _check_path(target.ready_endpoint, f"{key}.ready_endpoint")
    for i, mount in enumerate(target.local_mounts):
        if not os.path.isabs(mount):
            raise ConfigError(f"{key}.local_mounts[{i}]", "must be an absolute path")
    if target.probe_timeout <= 0:
        raise ConfigError(f"{key}.probe_timeout", "must be greater than 0")
    if target.failures_before_down < 1:
        raise ConfigError(f"{key}.failures_before_down", "must be at least 1")
    if target.max_requests_per_minute < 1:
        raise ConfigError(f"{key}.max_requests_per_minute", "must be at least 1")
    on_host = _on_this_host(target)
    if "fallback_local" not in raw:
        # Unset: on where it means the target's own machine, off where it would read ours.
        target = replace(target, fallback_local=on_host)
    elif target.fallback_local and not on_host:
        raise ConfigError(f"{key}.fallback_local",
                          f"fallback_local reads the host the agent runs on, but "
                          f"{_not_here(target, key)}")
    dependencies = tuple(
        _dependency(item, f"{key}.dependencies[{i}]") for i, item in enumerate(dependencies_raw)
    )
    return replace(target, thresholds=_thresholds(thresholds_raw, f"{key}.thresholds"),
                   dependencies=dependencies)


def _on_this_host(target: TargetSettings) -> bool:
    """Whether `target` runs on the machine the agent runs on (shares its filesystem).

    True for a loopback `base_url` (127.0.0.0/8, ::1, localhost) or when the
    target declares `same_host`. Names are never resolved: DNS may say
    anything, and an answer that changes must not change what the agent may do.
    """
    if target.same_host:
        return True
    host = (urlsplit(target.base_url).hostname or "").rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _not_here(target: TargetSettings, key: str) -> str:
    return (f"{key}.base_url {target.base_url} (target {target.name!r}) is not on this host; "
            "set same_host = true on the target if it shares this machine and filesystem")


def _check_cleanup_targets(cleanup: DiskCleanupSettings,
                           targets: tuple[TargetSettings, ...]) -> None:
    # Every target is offered disk_cleanup once roots are set (actions.catalog),
    # so one remote target is enough for the agent to delete its own files
    # in answer to someone else's full disk.
    if not cleanup.roots:
        return
    for i, target in enumerate(targets):
        if not _on_this_host(target):
            where = _not_here(target, f"targets[{i}]")
            raise ConfigError("actions.disk_cleanup.roots",
                              "disk cleanup deletes files on the host the agent runs on and "
                              f"every target is offered it, but {where} (or remove the roots)")


def _thresholds(raw: Mapping[str, Any], key: str) -> Thresholds:
    _known(raw, key, ("memory", "disk", "cpu"))
    defaults = Thresholds()
    result: dict[str, Threshold] = {}
    for name in ("memory", "disk", "cpu"):
        sub = _table(raw, name, f"{key}.{name}")
        allowed = ("critical", "clear", "warning", "cleanup") if name == "disk" else (
            "critical", "clear", "warning")
        _known(sub, f"{key}.{name}", allowed)
        base: Threshold = getattr(defaults, name)
        level = replace(base, **{
            k: _coerce(f"{key}.{name}.{k}", v, "float") for k, v in sub.items()
        })
        _check_threshold(level, f"{key}.{name}")
        result[name] = level
    return Thresholds(**result)


def _check_threshold(level: Threshold, key: str) -> None:
    for name in ("critical", "clear", "warning", "cleanup"):
        value = getattr(level, name)
        if value is not None and not 0 < value <= 100:
            raise ConfigError(f"{key}.{name}", f"must be a percentage in (0, 100], got {value}")
    if level.clear >= level.critical:
        raise ConfigError(f"{key}.clear", f"must be below critical ({level.critical})")
    if level.cleanup is not None and not level.clear < level.cleanup <= level.critical:
        raise ConfigError(f"{key}.cleanup",
                          f"must be above clear ({level.clear}) and at most critical "
                          f"({level.critical})")


def _dependency(raw: Mapping[str, Any], key: str) -> DependencyCheck:
    check = _simple(DependencyCheck, raw, key, required=("name", "kind"))
    _check_name(check.name, f"{key}.name")
    if check.kind not in DEPENDENCY_KINDS:
        raise ConfigError(f"{key}.kind", f"must be one of {', '.join(DEPENDENCY_KINDS)}")
    if check.kind in ("redis", "celery") and not check.url_env:
        raise ConfigError(f"{key}.url_env",
                          f"a {check.kind} check needs the environment variable holding its URL")
    if check.kind == "http":
        if check.path is None:
            raise ConfigError(f"{key}.path", "an http check needs a path, e.g. /health/ready")
        _check_path(check.path, f"{key}.path")
    if check.timeout <= 0:
        raise ConfigError(f"{key}.timeout", "must be greater than 0")
    return check


def _actions(raw: Mapping[str, Any]) -> ActionsSettings:
    _known(raw, "actions", ("disk_cleanup", "render", "commands", "failover"))
    cleanup = _simple(DiskCleanupSettings, _table(raw, "disk_cleanup", "actions.disk_cleanup"),
                      "actions.disk_cleanup")
    for i, root in enumerate(cleanup.roots):
        _check_cleanup_root(root, f"actions.disk_cleanup.roots[{i}]")
    if cleanup.max_age_days < 0:
        raise ConfigError("actions.disk_cleanup.max_age_days", "must not be negative")
    if cleanup.litter_min_age < 0:
        raise ConfigError("actions.disk_cleanup.litter_min_age", "must not be negative")
    if cleanup.compress_over_mb <= 0:
        raise ConfigError("actions.disk_cleanup.compress_over_mb", "must be greater than 0")
    render = _simple(RenderSettings, _table(raw, "render", "actions.render"), "actions.render")
    _check_url(render.api_url, "actions.render.api_url", ("http", "https"))
    if not 0 <= render.min_instances <= render.max_instances:
        raise ConfigError("actions.render.max_instances",
                          "need 0 <= min_instances <= max_instances")
    commands: dict[str, CommandSettings] = {}
    for name, sub in _table(raw, "commands", "actions.commands").items():
        key = f"actions.commands.{name}"
        if not isinstance(sub, Mapping):
            raise ConfigError(key, "must be a table with argv, tier, timeout, kinds")
        _check_name(name, key)
        if name in BUILTIN_ACTIONS:
            raise ConfigError(key, "a command may not reuse a built-in action's name")
        if isinstance(sub.get("argv"), str):
            raise ConfigError(f"{key}.argv",
                              "must be a list of arguments (argv), never a shell string")
        command = _simple(CommandSettings, {**sub, "name": name}, key, required=("argv",))
        _check_argv(command.argv, f"{key}.argv")
        _check_tier(command.tier, f"{key}.tier")
        for i, kind in enumerate(command.kinds):
            _check_kind(kind, f"{key}.kinds[{i}]")
        if command.timeout <= 0:
            raise ConfigError(f"{key}.timeout", "must be greater than 0")
        commands[name] = command
    failover = None
    if "failover" in raw:
        fraw = _table(raw, "failover", "actions.failover")
        if isinstance(fraw.get("argv"), str):
            raise ConfigError("actions.failover.argv",
                              "must be a list of arguments (argv), never a shell string")
        failover = _simple(FailoverSettings, fraw, "actions.failover")
        if (failover.url is None) == (failover.argv is None):
            raise ConfigError("actions.failover", "set exactly one of url or argv")
        if failover.url is not None:
            _check_url(failover.url, "actions.failover.url", ("http", "https"))
        if failover.argv is not None:
            _check_argv(failover.argv, "actions.failover.argv")
        _check_tier(failover.tier, "actions.failover.tier")
        for i, kind in enumerate(failover.kinds):
            _check_kind(kind, f"actions.failover.kinds[{i}]")
    return ActionsSettings(disk_cleanup=cleanup, render=render,
                           commands=MappingProxyType(commands), failover=failover)


def _policy(raw: Mapping[str, Any], actions: ActionsSettings) -> Mapping[str, tuple[str, ...]]:
    known_actions = set(BUILTIN_ACTIONS) | set(actions.commands)
    policy: dict[str, tuple[str, ...]] = {}
    for kind, names in raw.items():
        key = f"policy.{kind}"
        _check_kind(kind, key)
        candidates = _coerce(key, names, "tuple[str, ...]")
        for i, name in enumerate(candidates):
            if name not in known_actions:
                known = ", ".join(sorted(known_actions))
                raise ConfigError(f"{key}[{i}]", f"unknown action {name!r}; known: {known}")
        policy[kind] = candidates
    return MappingProxyType(policy)


def _channels(raw: Mapping[str, Any]) -> ChannelsSettings:
    scalars = {k: v for k, v in raw.items() if k not in _CHANNEL_TABLES}
    base = _simple(ChannelsSettings, scalars, "channels")
    if base.max_attempts < 1:
        raise ConfigError("channels.max_attempts", "must be at least 1")
    if not 0 < base.retry_initial <= base.retry_max:
        raise ConfigError("channels.retry_max", "need 0 < retry_initial <= retry_max")
    pam = webhook = None
    if "pam" in raw:
        table = dict(_table(raw, "pam", "channels.pam"))
        if table.pop("connects_per_minute", None) is not None:
            # Removed: PAM does not limit connects. An old file keeps loading.
            logger.warning("channels.pam.connects_per_minute is no longer used (PAM does not "
                           "limit connects); remove it from the configuration")
        pam = _simple(PamSettings, table, "channels.pam", required=("url", "user_id"))
        _check_url(pam.url, "channels.pam.url", ("ws", "wss", "http", "https"))
        _check_name(pam.user_id, "channels.pam.user_id")
        if not PAM_MIN_MESSAGES <= pam.messages_per_minute <= 60:
            raise ConfigError("channels.pam.messages_per_minute",
                              f"must be between {PAM_MIN_MESSAGES} and 60 (PAM's own limit is 60 "
                              "frames a minute, pongs and delivery probes included)")
        if not pam.frame_type or pam.frame_type == "chat":
            raise ConfigError("channels.pam.frame_type",
                              "must be set and not 'chat' (chat makes PAM's assistant answer)")
        if pam.token_file is not None and not os.path.isabs(pam.token_file):
            raise ConfigError("channels.pam.token_file", "must be an absolute path")
        if not 0 < pam.reply_window <= pam.timeout:
            raise ConfigError("channels.pam.reply_window", "need 0 < reply_window <= timeout")
        if not 0 < pam.reconnect_initial <= pam.reconnect_max:
            raise ConfigError("channels.pam.reconnect_max",
                              "need 0 < reconnect_initial <= reconnect_max")
    if "webhook" in raw:
        webhook = _simple(WebhookSettings, _table(raw, "webhook", "channels.webhook"),
                          "channels.webhook", required=("url",))
        _check_url(webhook.url, "channels.webhook.url", ("http", "https"))
    inprocess = relay = None
    if "pam_inprocess" in raw:
        key = "channels.pam_inprocess"
        inprocess = _simple(PamInProcessSettings, _table(raw, "pam_inprocess", key), key,
                            required=("user_ids",))
        if inprocess.manager is not None:
            _check_import_path(inprocess.manager, f"{key}.manager")
        _check_pam_users(inprocess.user_ids, inprocess.category, inprocess.timeout, key)
        if inprocess.watch_interval <= 0:
            raise ConfigError(f"{key}.watch_interval", "must be greater than 0")
    if "pam_relay" in raw:
        key = "channels.pam_relay"
        relay = _simple(PamRelaySettings, _table(raw, "pam_relay", key), key,
                        required=("url", "user_ids"))
        _check_url(relay.url, f"{key}.url", ("http", "https"))
        _check_pam_users(relay.user_ids, relay.category, relay.timeout, key)
        if not relay.secret_env:
            raise ConfigError(f"{key}.secret_env", "must name the variable holding the secret")
    return replace(base, pam=pam, webhook=webhook, pam_inprocess=inprocess, pam_relay=relay)


def _check_pam_users(user_ids: tuple[str, ...], category: str, timeout: float, key: str) -> None:
    if not user_ids:
        raise ConfigError(f"{key}.user_ids", "needs at least one PAM user id")
    for i, user in enumerate(user_ids):
        _check_name(user, f"{key}.user_ids[{i}]")
    if len(set(user_ids)) != len(user_ids):
        raise ConfigError(f"{key}.user_ids", "lists a user twice")
    if not category:
        raise ConfigError(f"{key}.category", "must not be empty")
    if timeout <= 0:
        raise ConfigError(f"{key}.timeout", "must be greater than 0")


def _check_import_path(path: str, key: str) -> None:
    module, _, attribute = path.partition(":")
    if not (module and attribute and all(p.isidentifier() for p in module.split("."))
            and all(p.isidentifier() for p in attribute.split("."))):
        raise ConfigError(key, "must be 'package.module:attribute', e.g. "
                               "'app.core.websocket_manager:manager'")


# --- generic helpers ---------------------------------------------------------------------


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _field_type(name: str, cls: type = AgentSettings) -> str:
    return str(next(f.type for f in fields(cls) if f.name == name))


def _simple(cls: type[T], raw: Mapping[str, Any], key: str,
            required: tuple[str, ...] = ()) -> T:
    """A dataclass of scalar / list fields from a TOML table, every value type-checked."""
    names = {f.name: str(f.type) for f in fields(cls)}  # type: ignore[arg-type]
    # Nested tables are parsed by their own functions before this is called.
    nested = {"thresholds", "dependencies", *_CHANNEL_TABLES}
    _known(raw, key, tuple(n for n in names if n not in nested))
    for name in required:
        if name not in raw:
            raise ConfigError(f"{key}.{name}", "is required")
    values = {name: _coerce(f"{key}.{name}", value, names[name]) for name, value in raw.items()}
    return cls(**values)


def _coerce(key: str, value: Any, type_name: str) -> Any:
    optional = type_name.endswith("| None")
    base = type_name.removesuffix(" | None")
    if value is None:
        if optional:
            return None
        raise ConfigError(key, "must be set")
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {_show(value)}")
        return value
    if base in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {_show(value)}")
        if not math.isfinite(value):
            raise ConfigError(key, "must be a finite number")
        if base == "int":
            if value != int(value):
                raise ConfigError(key, f"must be a whole number, got {value}")
            return int(value)
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {_show(value)}")
        return value
    if base == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"must be a list of strings, got {_show(value)}")
        return tuple(value)
    raise ConfigError(key, f"cannot be set here (type {type_name})")  # pragma: no cover


def _from_env_text(variable: str, text: str, type_name: str) -> Any:
    base = type_name.removesuffix(" | None")
    if base == "bool":
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ConfigError(variable, f"must be one of {'/'.join(_TRUE + _FALSE)}")
    if base in ("float", "int"):
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(variable, "must be a number") from None
        return _coerce(variable, number, base)
    return text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _known(raw: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    for name in raw:
        if name not in allowed:
            where = f"{key}.{name}" if key else name
            raise ConfigError(where, f"unknown key (known here: {', '.join(sorted(allowed))})")


def _table(raw: Mapping[str, Any], name: str, key: str) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a table")
    return value


def _list_of_tables(raw: Mapping[str, Any], name: str, key: str) -> list[Mapping[str, Any]]:
    value = raw.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(key, f"must be an array of tables ([[{key}]])")
    return value


def _check_name(name: str, key: str) -> None:
    if not name or len(name) > 100 or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(key, "must be 1-100 characters of letters, digits, '-', '_' or '.'")


def _check_url(url: str, key: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(key, f"must be a {'/'.join(schemes)} URL with a host")
    if parts.password or parts.query:
        raise ConfigError(key, "must not carry credentials or a query: name an *_env variable")


def _check_path(path: str, key: str) -> None:
    if not path.startswith("/") or ".." in path.split("/") or "?" in path:
        raise ConfigError(key, "must be an absolute URL path like /health/resources")


def _check_cleanup_root(root: str, key: str) -> None:
    if not os.path.isabs(root):
        raise ConfigError(key, "must be an absolute path")
    normal = os.path.normpath(root)
    if normal == "/" or ".." in Path(root).parts:
        raise ConfigError(key, "must be a folder below / without '..' (cleanup never leaves it)")
    if normal in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys",
                  "/usr", "/var", "/home", "/root"):
        raise ConfigError(key, f"{normal} is a system folder; name the application's own folder")


def _check_argv(argv: tuple[str, ...], key: str) -> None:
    if not argv or not argv[0]:
        raise ConfigError(key, "must name a program")
    if len(argv) == 1 and " " in argv[0]:
        raise ConfigError(key, "looks like a shell string; split it into a list of arguments")


def _check_tier(tier: str, key: str) -> None:
    if tier not in TIERS:
        raise ConfigError(key, f"must be one of {', '.join(TIERS)}")


def _check_kind(kind: str, key: str) -> None:
    if kind in STATIC_KINDS:
        return
    prefix = service_down("")
    if kind.startswith(prefix) and kind[len(prefix):]:
        _check_name(kind[len(prefix):], key)
        return
    raise ConfigError(key, f"unknown problem kind {kind!r}; kinds are "
                           f"{', '.join(STATIC_KINDS)} and service_down:<dependency>")
