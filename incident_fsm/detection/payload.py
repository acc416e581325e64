"""Health snapshots and the parsers that turn health-endpoint payloads into them.

A `HealthSnapshot` is one reading of a target: memory, disk and cpu percent,
per-component status, the endpoint's own issue texts, the probe latency and
where the reading came from. A `ProbeFailure` is a probe that produced no
usable reading, with the reason.

The parsers never raise: every payload becomes a snapshot or a failure.
They decide from the numbers (`stats`, `checks.*.usage_percent`,
`data.*_percent`) and never from the top-level `status`, which is misleading
(one critical component yields `"WARNING"` on `/health/resources`).
`{"status": "ERROR"}` answered with HTTP 200 is a failure, and so is a
`/health/system` whose `checks` is empty (it still says "healthy"), and a
decision-bearing number that is missing, of the wrong type (a bool is not a
number), NaN, infinite or outside 0..100. Informational fields (alert
details, issue texts, component statuses) are read leniently: a malformed
one is skipped, since no decision rests on it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from incident_fsm.text import one_line

#: The three numbers every snapshot carries.
METRICS: Final = ("memory", "disk", "cpu")
#: Longest text taken over from a payload (messages, issues), so a hostile
#: endpoint cannot fill logs or the database.
MAX_TEXT: Final = 200
MAX_ISSUES: Final = 20


@dataclass(frozen=True)
class HealthSnapshot:
    """One reading of one target. Percentages are 0..100."""

    source: str
    memory_pct: float
    disk_pct: float
    cpu_pct: float
    latency_ms: float = 0.0
    #: component -> status as the endpoint named it (e.g. "CRITICAL", "degraded", "ok")
    components: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    issues: tuple[str, ...] = ()
    #: the endpoint's own top-level status: shown, never used to decide
    reported_status: str | None = None
    #: endpoints that failed while another one answered ("<source>: <reason>")
    partial_failures: tuple[str, ...] = ()

    def value(self, metric: str) -> float:
        """The percentage of `memory`, `disk` or `cpu`."""
        reading: float = getattr(self, f"{metric}_pct")
        return reading


#: Why a probe produced no reading; each cause means something else for detection.
#: `down`: no answer (timeout, transport error) or a 5xx: the only evidence that the
#: endpoint is down.
DOWN: Final = "down"
#: `throttled`: HTTP 429: the service is alive and busy; wait, never act.
THROTTLED: Final = "throttled"
#: `unusable`: the service answered, but not with a reading (401/403/404/405, a body of
#: no known schema, `status: ERROR`, empty `checks`): a probe to fix, not a service to restart.
UNUSABLE: Final = "unusable"
#: When endpoints disagree, the cause a combined failure takes: any sign of death first,
#: then any sign of life.
_CAUSE_ORDER: Final = (DOWN, THROTTLED, UNUSABLE)


@dataclass(frozen=True)
class ProbeFailure:
    """A probe that produced no usable reading, why, and what kind of failure it is."""

    source: str
    reason: str
    latency_ms: float = 0.0
    cause: str = DOWN
    #: throttled only: seconds the service asked us to wait (`Retry-After`)
    retry_after: float | None = None


ProbeResult = HealthSnapshot | ProbeFailure


class _Invalid(Exception):
    """Internal: the payload is unusable; carries the reason. Never leaves this module."""


def parse_health(body: bytes, *, source: str, latency_ms: float = 0.0) -> ProbeResult:
    """Parse the body of a health endpoint (either schema, or the older variant)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return ProbeFailure(source, "body is not UTF-8 text", latency_ms, cause=UNUSABLE)
    try:
        payload = json.loads(text)
    except RecursionError:
        return ProbeFailure(source, "body is JSON nested too deeply", latency_ms,
                            cause=UNUSABLE)
    except ValueError as exc:  # JSONDecodeError, and Python's cap on huge integer literals
        return ProbeFailure(source, f"body is not JSON ({_clip(str(exc), 80)})", latency_ms,
                            cause=UNUSABLE)
    return parse_payload(payload, source=source, latency_ms=latency_ms)


def parse_payload(payload: object, *, source: str, latency_ms: float = 0.0) -> ProbeResult:
    """Parse an already decoded JSON value; see the module docstring for the rules."""
    try:
        return _parse(payload, source=source, latency_ms=latency_ms)
    except _Invalid as exc:
        return ProbeFailure(source, str(exc), latency_ms, cause=UNUSABLE)


def _parse(payload: object, *, source: str, latency_ms: float) -> HealthSnapshot:
    if not isinstance(payload, dict):
        raise _Invalid(f"expected a JSON object, got {_json_type(payload)}")
    status = payload.get("status")
    if status is not None and not isinstance(status, str):
        raise _Invalid(f"'status' is {_json_type(status)}, expected a string")
    if status is not None and status.upper() == "ERROR":
        message = payload.get("message")
        detail = f": {_clip(message)}" if isinstance(message, str) and message else ""
        raise _Invalid(f"endpoint reported status ERROR{detail}")
    if "stats" in payload:
        return _resources(payload, status, source=source, latency_ms=latency_ms)
    if "checks" in payload:
        return _system(payload, status, source=source, latency_ms=latency_ms)
    if "data" in payload and status is not None and status.upper() == "SUCCESS":
        return _legacy_system(payload, status, source=source, latency_ms=latency_ms)
    raise _Invalid("unrecognised health payload: no 'stats', 'checks' or SUCCESS 'data'")


def _resources(payload: dict[str, object], status: str | None, *, source: str,
               latency_ms: float) -> HealthSnapshot:
    """`/health/resources`: numbers in `stats`, component levels in `alert_details`."""
    stats = _object(payload["stats"], "stats")
    values = {m: _percent(stats.get(f"{m}_pct"), f"stats.{m}_pct") for m in METRICS}
    components = {m: "ok" for m in METRICS}
    issues: list[str] = []
    alerts = payload.get("alert_details")
    for alert in alerts if isinstance(alerts, list) else ():
        if not isinstance(alert, dict):
            continue
        component, level = alert.get("component"), alert.get("level")
        if isinstance(component, str) and isinstance(level, str):
            components[_clip(component, 50)] = _clip(level, 50)
        message = alert.get("message")
        if isinstance(message, str):
            issues.append(_clip(message))
    return HealthSnapshot(
        source=source, latency_ms=latency_ms, memory_pct=values["memory"],
        disk_pct=values["disk"], cpu_pct=values["cpu"],
        components=MappingProxyType(components), issues=tuple(issues[:MAX_ISSUES]),
        reported_status=None if status is None else _clip(status, 50),
    )


def _system(payload: dict[str, object], status: str | None, *, source: str,
            latency_ms: float) -> HealthSnapshot:
    """`/health/system`: numbers in `checks.<metric>.usage_percent`."""
    checks = _object(payload["checks"], "checks")
    if not checks:
        # What the service answers when psutil failed inside it, still saying "healthy".
        raise _Invalid(f"'checks' is empty (the endpoint could not measure itself; "
                       f"its status {_clip(str(status), 20)!r} is not a reading)")
    values: dict[str, float] = {}
    for metric in METRICS:
        check = _object(checks.get(metric), f"checks.{metric}")
        values[metric] = _percent(check.get("usage_percent"), f"checks.{metric}.usage_percent")
    components: dict[str, str] = {}
    for name, entry in checks.items():
        word = entry.get("status") if isinstance(entry, dict) else None
        if isinstance(word, str):
            components[_clip(name, 50)] = _clip(word, 50)
    issues = payload.get("issues")
    texts = [_clip(i) for i in issues if isinstance(i, str)] if isinstance(issues, list) else []
    return HealthSnapshot(
        source=source, latency_ms=latency_ms, memory_pct=values["memory"],
        disk_pct=values["disk"], cpu_pct=values["cpu"],
        components=MappingProxyType(components), issues=tuple(texts[:MAX_ISSUES]),
        reported_status=None if status is None else _clip(status, 50),
    )


def _legacy_system(payload: dict[str, object], status: str, *, source: str,
                   latency_ms: float) -> HealthSnapshot:
    """The older `/health/system`: `{"status": "SUCCESS", "data": {"memory_percent": ...}}`."""
    data = _object(payload["data"], "data")
    values = {m: _percent(data.get(f"{m}_percent"), f"data.{m}_percent") for m in METRICS}
    return HealthSnapshot(
        source=source, latency_ms=latency_ms, memory_pct=values["memory"],
        disk_pct=values["disk"], cpu_pct=values["cpu"], reported_status=_clip(status, 50),
    )


def combine(results: Sequence[ProbeResult], *, source: str | None = None) -> ProbeResult:
    """One result from the answers of several endpoints of one target.

    Any answering endpoint makes the target answered; failed ones are listed
    in `partial_failures`. Where both report a metric the higher reading is
    kept: they measure the same host, and missing a real breach costs more
    than a late all-clear.
    """
    snapshots = [r for r in results if isinstance(r, HealthSnapshot)]
    failures = [r for r in results if isinstance(r, ProbeFailure)]
    name = source or "+".join(r.source for r in results)
    latency = max((r.latency_ms for r in results), default=0.0)
    if not snapshots:
        reason = "; ".join(f"{f.source}: {f.reason}" for f in failures) or "no endpoint probed"
        causes = {f.cause for f in failures}
        cause = next((c for c in _CAUSE_ORDER if c in causes), DOWN)
        waits = [f.retry_after for f in failures if f.retry_after is not None]
        return ProbeFailure(name, reason, latency, cause=cause,
                            retry_after=max(waits) if waits else None)
    if len(snapshots) == 1 and not failures:
        return snapshots[0]
    components: dict[str, str] = {}
    issues: list[str] = []
    for snap in snapshots:
        components.update(snap.components)
        issues.extend(i for i in snap.issues if i not in issues)
    return HealthSnapshot(
        source="+".join(s.source for s in snapshots),
        latency_ms=latency,
        memory_pct=max(s.memory_pct for s in snapshots),
        disk_pct=max(s.disk_pct for s in snapshots),
        cpu_pct=max(s.cpu_pct for s in snapshots),
        components=MappingProxyType(components),
        issues=tuple(issues[:MAX_ISSUES]),
        reported_status="/".join(s.reported_status for s in snapshots if s.reported_status)
        or None,
        partial_failures=tuple(f"{f.source}: {f.reason}" for f in failures),
    )


# --- helpers -------------------------------------------------------------------


def _object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _Invalid(f"'{where}' is {_json_type(value)}, expected an object")
    return value


def _percent(value: object, where: str) -> float:
    # bool is an int subclass in Python; `true` is not a percentage.
    if value is None:
        raise _Invalid(f"'{where}' is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"'{where}' is {_json_type(value)}, expected a number")
    if isinstance(value, int) and not 0 <= value <= 100:
        # Checked before float(): a huge JSON integer would overflow it.
        raise _Invalid(f"'{where}' is outside 0..100")
    number = float(value)
    if not math.isfinite(number):
        raise _Invalid(f"'{where}' is not a finite number")
    if not 0.0 <= number <= 100.0:
        raise _Invalid(f"'{where}' is {number:g}, outside 0..100")
    return number


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    # A payload's text can neither forge nor recolour a log line.
    return one_line(text, limit)
