"""Preflight: everything the agent will need, checked before it may act, changing nothing.

`incident-fsm check` runs every check (like `nginx -t` or `amtool
check-config`); the agent itself runs the local ones (`local_checks`: no
network) at start and refuses to start on a failure there, so a missing
secret is found before the first incident rather than after three strikes.

Each check is one line: OK, WARN (the agent runs, but something will not
work as configured, or cannot be confirmed from here) or FAIL (the agent
would act blind or not at all). Checks never write: no POST to Render, no
message to a person, no database file created, no migration applied.
Secrets are named, never shown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread

from incident_fsm.detection.dependencies import dependency_checks
from incident_fsm.detection.payload import THROTTLED, HealthSnapshot
from incident_fsm.detection.probe import HttpProbe
from incident_fsm.errors import InvalidInput, StoreUnavailable
from incident_fsm.extras import install_line, installed
from incident_fsm.http_body import BodyRefused, exchange
from incident_fsm.lazy import HttpClient, httpx
from incident_fsm.persistence import database
from incident_fsm.remediation.actions.http_retry import MAX_BODY
from incident_fsm.settings import Settings

OK: Final = "OK"
WARN: Final = "WARN"
FAIL: Final = "FAIL"

#: filesystems that are not this host's own disk: cleanup there frees nothing here
NETWORK_FILESYSTEMS: Final = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "glusterfs", "ceph",
    "fuse.s3fs", "fuse.rclone", "davfs",
})


@dataclass(frozen=True)
class Check:
    """One line of the preflight report."""

    status: str
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status, "name": self.name, "detail": self.detail}


class PreflightFailed(InvalidInput):
    """A check the agent runs at start failed: it refuses to start (nothing was done)."""

    def __init__(self, failures: Sequence[Check]) -> None:
        self.failures = tuple(failures)
        listed = "; ".join(f"{c.name}: {c.detail}" for c in self.failures)
        super().__init__(f"the agent does not start: {listed} "
                         "(`incident-fsm check --config FILE` shows every check)")


@dataclass(frozen=True)
class Secret:
    """An environment variable the configuration names as holding a secret."""

    key: str
    env: str
    needed_by: str
    #: without it the agent would act blind (else: it only cannot deliver / monitor-only)
    required: bool


def secrets_needed(settings: Settings) -> list[Secret]:
    """Every secret the configuration names, with what needs it."""
    acting = settings.agent.auto_remediation
    found: list[Secret] = []
    render_targets = [t.name for t in settings.targets
                      if t.render_service_id or t.worker_service_id]
    if render_targets:
        found.append(Secret("actions.render.api_key_env", settings.actions.render.api_key_env,
                            "the Render actions of " + ", ".join(render_targets), acting))
    failover = settings.actions.failover
    if failover is not None and failover.secret_env:
        found.append(Secret("actions.failover.secret_env", failover.secret_env,
                            "the failover hook", acting))
    channels = settings.channels
    if channels.pam is not None and channels.pam.token_file is None:
        found.append(Secret("channels.pam.token_env", channels.pam.token_env,
                            "the PAM channel", settings.agent.pam_integration))
    if channels.webhook is not None and channels.webhook.secret_env:
        found.append(Secret("channels.webhook.secret_env", channels.webhook.secret_env,
                            "the webhook channel", True))
    if channels.pam_relay is not None:
        found.append(Secret("channels.pam_relay.secret_env", channels.pam_relay.secret_env,
                            "the PAM relay channel", settings.agent.pam_integration))
    if settings.agent.status_token_env:
        found.append(Secret("agent.status_token_env", settings.agent.status_token_env,
                            "the status endpoints", True))
    for target in settings.targets:
        for dep in target.dependencies:
            if dep.url_env:
                # Unset, the check would report the dependency down on every poll.
                found.append(Secret(f"targets.{target.name}.dependencies.{dep.name}.url_env",
                                    dep.url_env, f"the {dep.kind} check {dep.name!r}", True))
    return found


# --- local checks (no network) -------------------------------------------------------


def local_checks(settings: Settings, *, environ: Mapping[str, str] | None = None) -> list[Check]:
    """The checks that need no network: secrets present, files readable, roots usable."""
    env = os.environ if environ is None else environ
    checks = [_secret_check(s, env) for s in secrets_needed(settings)]
    pam = settings.channels.pam
    if pam is not None and pam.token_file is not None:
        checks.append(_token_file_check(pam.token_file))
    for root in settings.actions.disk_cleanup.roots:
        checks.append(cleanup_root_check(root))
    checks += _package_checks(settings)
    return checks


#: the package each dependency-check kind needs, and the extra that installs it
CHECK_PACKAGES: Final = {"redis": ("redis", "redis"), "celery": ("celery", "celery")}


#: the package each dependency probe class imports when it checks
_MODULE_OF: Final = {"RedisCheck": "redis", "CeleryCheck": "celery"}


def _package_checks(settings: Settings) -> list[Check]:
    """Redis and Celery are optional installs: a check of their kind needs its package."""
    kinds = sorted({dep.kind for t in settings.targets for dep in t.dependencies
                    if dep.kind in CHECK_PACKAGES})
    checks = []
    for kind in kinds:
        module, extra = CHECK_PACKAGES[kind]
        name = f"package {module}"
        if installed(module):
            checks.append(Check(OK, name, f"installed (for the {kind} dependency checks)"))
        else:
            # Without it the check could only fail: the dependency would look down.
            checks.append(Check(FAIL, name, f"not installed, and a {kind} dependency check is "
                                            f"configured: {install_line(extra)}"))
    return checks


def start_failures(settings: Settings, *,
                   environ: Mapping[str, str] | None = None) -> list[Check]:
    """The local checks that failed: the agent refuses to start on any of them."""
    return [c for c in local_checks(settings, environ=environ) if c.status == FAIL]


def _secret_check(secret: Secret, env: Mapping[str, str]) -> Check:
    name = f"secret {secret.env}"
    if env.get(secret.env, "").strip():
        return Check(OK, name, f"set (for {secret.needed_by})")
    why = f"not set in the environment; {secret.needed_by} cannot work without it ({secret.key})"
    if secret.required:
        return Check(FAIL, name, why)
    return Check(WARN, name, why + "; needed once that is switched on")


def _token_file_check(path: str) -> Check:
    name = "channels.pam.token_file"
    file = Path(path)
    if not file.is_file():
        return Check(FAIL, name, f"{path} does not exist or is not a file")
    if not os.access(file, os.R_OK):
        return Check(FAIL, name, f"{path} is not readable by this user")
    try:
        empty = not file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return Check(FAIL, name, f"{path} cannot be read ({type(exc).__name__})")
    if empty:
        return Check(FAIL, name, f"{path} is empty")
    return Check(OK, name, f"{path} is readable (its content is not shown)")


def cleanup_root_check(root: str) -> Check:
    """A cleanup root exists, is a readable directory, and is this host's own disk."""
    name = f"cleanup root {root}"
    path = Path(root)
    if not path.is_absolute():
        return Check(FAIL, name, "is not an absolute path")
    if not path.exists():
        return Check(FAIL, name, "does not exist on this host")
    if not path.is_dir():
        return Check(FAIL, name, "is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        return Check(FAIL, name, "is not readable by this user")
    fstype = filesystem_type(path)
    if fstype in NETWORK_FILESYSTEMS:
        return Check(FAIL, name, f"is on a network filesystem ({fstype}): cleaning it frees "
                                 "nothing on this host")
    writable = os.access(path, os.W_OK)
    detail = f"a readable directory on {fstype or 'an unknown filesystem'}"
    if not writable:
        return Check(WARN, name, detail + ", but not writable: cleanup could only report")
    return Check(OK, name, detail)


def filesystem_type(path: Path, mounts: Path = Path("/proc/mounts")) -> str | None:
    """The type of the filesystem `path` is on (the longest matching mount point)."""
    try:
        lines = mounts.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    resolved = str(path.resolve())
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


# --- checks that talk to something --------------------------------------------------


def database_check(url: str) -> Check:
    """The database is reachable and at head (blocking: run it in a thread)."""
    name = f"database {database.redact(url)}"
    try:
        state = database.schema_state(url)
    except StoreUnavailable as exc:
        return Check(FAIL, name, str(exc))
    if not state.exists:
        return Check(WARN, name, "does not exist yet: `incident-fsm run` creates and migrates "
                                 "it (SQLite)")
    if state.at_head:
        return Check(OK, name, f"reachable, schema at head ({state.head})")
    if database.is_sqlite(url):
        return Check(WARN, name, f"{state.describe()}: `incident-fsm run` migrates it first")
    return Check(FAIL, name, f"{state.describe()}: run `incident-fsm db upgrade "
                             f"--database-url {database.redact(url)}`")


async def target_checks(settings: Settings, http: HttpClient) -> list[Check]:
    """Each endpoint of each target answers and parses (readings shown); dependencies answer."""
    checks: list[Check] = []
    for target in settings.targets:
        probe = HttpProbe(base_url=target.base_url, endpoints=target.endpoints, client=http,
                          timeout=target.probe_timeout)
        for path in target.endpoints:
            result = await probe.read_endpoint(path)
            name = f"target {target.name} {path}"
            if isinstance(result, HealthSnapshot):
                checks.append(Check(OK, name, f"{_readings(result)} ({result.latency_ms:.0f} ms)"))
            elif result.cause == THROTTLED:
                checks.append(Check(WARN, name, f"throttled, try again later: {result.reason}"))
            else:
                checks.append(Check(FAIL, name, f"{result.cause}: {result.reason}"))
        try:
            deps = dependency_checks(target, client=http)
        except ValueError as exc:
            checks.append(Check(FAIL, f"target {target.name} dependencies", str(exc)))
            continue
        for dep in deps:
            module = _MODULE_OF.get(type(dep).__name__)
            if module is not None and not installed(module):
                checks.append(Check(FAIL, f"target {target.name} dependency {dep.name}",
                                    f"cannot be checked: the {module} package is not installed"))
                continue
            status = await dep.check()
            result_status = OK if status.state == "up" else FAIL
            checks.append(Check(result_status, f"target {target.name} dependency {dep.name}",
                                f"{status.state}: {status.reason}"))
    return checks


def _readings(snapshot: HealthSnapshot) -> str:
    return (f"memory {snapshot.memory_pct:.1f}%, disk {snapshot.disk_pct:.1f}%, "
            f"cpu {snapshot.cpu_pct:.1f}%")


async def render_checks(settings: Settings, http: HttpClient,
                        environ: Mapping[str, str]) -> list[Check]:
    """Each Render service id is readable with the key: a GET, never a POST."""
    from incident_fsm.remediation.actions.render import service_facts

    services = [(t.name, what, sid) for t in settings.targets
                for what, sid in (("service", t.render_service_id),
                                  ("worker service", t.worker_service_id)) if sid]
    if not services:
        return []
    render = settings.actions.render
    key = environ.get(render.api_key_env, "").strip()
    checks: list[Check] = []
    for target, what, sid in services:
        name = f"render {what} {sid} (target {target})"
        if not key:
            checks.append(Check(FAIL, name, f"cannot be read: {render.api_key_env} is not set"))
            continue
        url = f"{render.api_url.rstrip('/')}/services/{sid}"
        try:
            reply, answer = await exchange(
                http, method="GET", url=url, json=None, content=None,
                headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
                time_limit=render.timeout, max_body=MAX_BODY)
        except (httpx.HTTPError, TimeoutError) as exc:
            checks.append(Check(FAIL, name, f"Render API unreachable ({type(exc).__name__})"))
            continue
        except BodyRefused as exc:
            checks.append(Check(FAIL, name, f"Render answered HTTP {exc.status} with a {exc}"))
            continue
        if reply.status_code in (401, 403):
            checks.append(Check(FAIL, name, f"the key in {render.api_key_env} is refused "
                                            f"(HTTP {reply.status_code})"))
            continue
        if reply.status_code == 404:
            checks.append(Check(FAIL, name, "no such service, or the key cannot see it "
                                            "(HTTP 404)"))
            continue
        if reply.status_code != 200:
            checks.append(Check(FAIL, name, f"Render answered HTTP {reply.status_code}"))
            continue
        try:
            data = json.loads(answer)
        except ValueError:
            checks.append(Check(FAIL, name, "Render's answer is not JSON"))
            continue
        facts = service_facts(data)
        parts = [f"plan {facts.plan or 'unknown'}",
                 f"autoscaling {'on (manual scaling is ignored)' if facts.autoscaling else 'off'}"]
        if facts.instances is not None:
            parts.append(f"{facts.instances} instance(s)")
        suspended = isinstance(data, dict) and data.get("suspended") == "suspended"
        title = data.get("name") if isinstance(data, dict) else None
        detail = (f"{title!s}: " if isinstance(title, str) else "") + ", ".join(parts)
        if suspended:
            checks.append(Check(WARN, name, detail + "; the service is suspended"))
        else:
            checks.append(Check(OK, name, "readable with the key; " + detail))
    return checks


async def channel_checks(settings: Settings, http: HttpClient,
                         environ: Mapping[str, str]) -> list[Check]:
    """Each channel's peer is reachable and takes its credentials; nothing reaches a person."""
    from incident_fsm.notify.channels.pam_relay import check_relay
    from incident_fsm.notify.channels.webhook import safe_url

    channels = settings.channels
    checks: list[Check] = []
    if channels.pam is not None:
        checks.append(await pam_check(settings, environ))
    if channels.webhook is not None:
        hook = channels.webhook
        name = f"channel webhook {safe_url(hook.url)}"
        try:
            with anyio.fail_after(hook.timeout):
                reply = await http.head(hook.url)
            if reply.status_code in (404, 410):
                # Most receivers answer HEAD on their POST route with 405, not "no such path".
                checks.append(Check(WARN, name, f"reachable, but HTTP {reply.status_code} to "
                                                "HEAD: is the path right?"))
            else:
                checks.append(Check(OK, name, f"reachable (HTTP {reply.status_code} to HEAD); "
                                              "its signature is checked by the receiver only "
                                              "on a delivery"))
        except (httpx.HTTPError, TimeoutError) as exc:
            checks.append(Check(FAIL, name, f"unreachable ({type(exc).__name__})"))
    if channels.pam_relay is not None:
        fine, why = await check_relay(channels.pam_relay, http=http, environ=environ)
        checks.append(Check({True: OK, None: WARN, False: FAIL}[fine],
                            f"channel pam_relay {safe_url(channels.pam_relay.url)}", why))
    if channels.pam_inprocess is not None:
        checks.append(Check(WARN, "channel pam_inprocess",
                            f"delivers through the host's own connection manager to "
                            f"{len(channels.pam_inprocess.user_ids)} user(s): it can only be "
                            "checked inside the service (its status endpoint shows it)"))
    return checks


async def pam_check(settings: Settings, environ: Mapping[str, str]) -> Check:
    """Open PAM's socket with the token, wait for its `connected` word, close: sends nothing."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

    from incident_fsm.clock import SystemClock
    from incident_fsm.notify.channels.pam import CLOSE_AUTH, CLOSE_BLOCKED, PamChannel

    pam = settings.channels.pam
    assert pam is not None
    channel = PamChannel(pam, clock=SystemClock(), environ=environ)
    name = f"channel pam {channel.url()}"
    token, problem = await channel.read_token()  # as the channel reads it at each connect
    if not token:
        return Check(FAIL, name, problem or "no token (see the secret check)")
    try:
        with anyio.fail_after(pam.timeout):
            async with connect(channel.url(token=token), open_timeout=pam.timeout,
                               close_timeout=2.0) as ws:
                async for raw in ws:
                    try:
                        message = json.loads(raw)
                    except ValueError:
                        continue
                    if (isinstance(message, dict) and message.get("type") == "connection"
                            and message.get("status") == "connected"):
                        return Check(OK, name, "PAM accepted the token (nothing was sent)")
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            return Check(FAIL, name, f"PAM refused the token (HTTP {status})")
        return Check(FAIL, name, f"handshake refused (HTTP {status})")
    except TimeoutError:
        return Check(WARN, name, f"connected, but PAM did not confirm within {pam.timeout:g} s")
    except ConnectionClosed as exc:
        return _closed(name, exc.rcvd.code if exc.rcvd else None, CLOSE_AUTH, CLOSE_BLOCKED)
    except (OSError, WebSocketException) as exc:
        return Check(FAIL, name, f"cannot connect ({type(exc).__name__})")
    return _closed(name, None, CLOSE_AUTH, CLOSE_BLOCKED)


def _closed(name: str, code: int | None, auth: int, blocked: int) -> Check:
    if code == auth:
        return Check(FAIL, name, f"PAM refused the token (close code {auth})")
    if code == blocked:
        return Check(FAIL, name, f"PAM blocked this client (close code {blocked})")
    return Check(FAIL, name, f"PAM closed the socket before confirming (code {code})")


# --- all of it -----------------------------------------------------------------------


async def run_checks(settings: Settings, *, environ: Mapping[str, str] | None = None,
                     http: HttpClient | None = None) -> list[Check]:
    """Every check, in the order the report shows them (the configuration was loaded)."""
    env = os.environ if environ is None else environ
    url = database.resolve_url(settings.agent.database_url, environ=env)
    checks = [Check(OK, "configuration", _summary(settings)) if settings.targets else
              Check(WARN, "configuration", "valid, but no [[targets]]: nothing would be "
                                           "monitored (was --config forgotten?)")]
    checks += local_checks(settings, environ=env)
    checks.append(await anyio.to_thread.run_sync(database_check, url))
    own = http is None
    client = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
    try:
        checks += await target_checks(settings, client)
        checks += await render_checks(settings, client, env)
        checks += await channel_checks(settings, client, env)
    finally:
        if own:
            await client.aclose()
    return checks


def _summary(settings: Settings) -> str:
    agent = settings.agent
    mode = "acting" if agent.auto_remediation else "monitor-only (records what it would do)"
    return (f"valid: {len(settings.targets)} target(s), {mode}, "
            f"poll every {agent.poll_interval:g} s")


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing failed, 1 when a check failed (2, a bad configuration, comes earlier)."""
    return 1 if any(c.status == FAIL for c in checks) else 0


def report_text(checks: Sequence[Check]) -> str:
    counts = {s: sum(1 for c in checks if c.status == s) for s in (OK, WARN, FAIL)}
    lines = [c.line() for c in checks]
    lines.append(f"\n{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failed")
    return "\n".join(lines)


def report_json(checks: Sequence[Check]) -> str:
    return json.dumps({"ok": exit_code(checks) == 0,
                       "checks": [c.as_dict() for c in checks]}, indent=2, ensure_ascii=False)


__all__ = ["FAIL", "OK", "WARN", "Check", "PreflightFailed", "local_checks",
           "run_checks", "secrets_needed", "start_failures"]
