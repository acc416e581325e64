"""Verification: is a problem kind cleared in one observation of its target?

The remediator's verifier (`runtime.agent.MonitorVerifier`) waits for the
target's next poll after the verify window and asks `judge`: metric kinds
need the value under their `clear` threshold, the endpoint kinds an answer,
a dependency kind the dependency up.
"""

from __future__ import annotations

from incident_fsm.detection.detector import METRIC_KINDS, Observation
from incident_fsm.detection.payload import DOWN, HealthSnapshot
from incident_fsm.remediation.remediator import Verification
from incident_fsm.settings import (
    HEALTH_ENDPOINT_DOWN,
    PROBE_MISCONFIGURED,
    SERVICE_DOWN_PREFIX,
    TargetSettings,
)


def judge(kind: str, observation: Observation, target: TargetSettings) -> Verification:
    """Is `kind` cleared in this observation? Metric kinds need the value under `clear`."""
    for metric, metric_kind in METRIC_KINDS.items():
        if kind == metric_kind:
            reading = observation.reading
            if reading is None:
                return Verification(False, f"no {metric} reading", {"source": "none"})
            value = reading.value(metric)
            clear = getattr(target.thresholds, metric).clear
            return Verification(value < clear, f"{metric} {value:.1f}% (clear below {clear:g}%)",
                                {f"{metric}_pct": value, "clear": clear,
                                 "source": reading.source})
    if kind == PROBE_MISCONFIGURED:
        reads = isinstance(observation.health, HealthSnapshot)
        why = "the health endpoint gives a reading" if reads else (
            f"the health endpoint still gives none: {getattr(observation.health, 'reason', '')}")
        return Verification(reads, why, {})
    if kind == HEALTH_ENDPOINT_DOWN:
        health = observation.health
        # Any answer but a 5xx shows the service alive (see the detector).
        answered = isinstance(health, HealthSnapshot) or health.cause != DOWN
        why = "the health endpoint answers" if answered else (
            f"the health endpoint still fails: {getattr(observation.health, 'reason', '')}")
        return Verification(answered, why, {})
    if kind.startswith(SERVICE_DOWN_PREFIX):
        name = kind[len(SERVICE_DOWN_PREFIX):]
        status = next((d for d in observation.dependencies if d.name == name), None)
        if status is None:
            return Verification(False, f"{name} was not checked", {})
        return Verification(status.state == "up", f"{name} is {status.state}: {status.reason}",
                            {"dependency": name, "state": status.state})
    return Verification(False, f"no way to verify {kind}", {})
