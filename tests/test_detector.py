"""The detector's hysteresis, sample by sample: spikes, sustained breaches, recovery, flapping."""

from __future__ import annotations

import pytest

from incident_fsm.detection.dependencies import DependencyStatus
from incident_fsm.detection.detector import Change, Detector, Observation, Phase, status_label
from incident_fsm.detection.payload import HealthSnapshot, ProbeFailure
from incident_fsm.settings import TargetSettings, Threshold, Thresholds

SOURCE = "/health/resources"


def snap(memory: float = 50.0, disk: float = 60.0, cpu: float = 10.0,
         source: str = SOURCE) -> HealthSnapshot:
    return HealthSnapshot(source=source, memory_pct=memory, disk_pct=disk, cpu_pct=cpu)


def detector(**target: object) -> Detector:
    return Detector({"api": TargetSettings(name="api", base_url="http://api.test",
                                           **target)})  # type: ignore[arg-type]


def feed(d: Detector, *readings: HealthSnapshot | ProbeFailure,
         fallback: HealthSnapshot | None = None) -> list[list[tuple[str, str]]]:
    """Per sample, the (change, kind) findings."""
    return [[(f.change.value, f.problem.kind) for f in d.observe("api", Observation(r, fallback))]
            for r in readings]


def test_single_sample_spike_opens_nothing() -> None:
    d = detector()
    assert feed(d, snap(memory=95), snap(memory=50)) == [
        [("suspected", "memory_high")], [("dismissed", "memory_high")]]
    assert d.phase("api", "memory_high") is Phase.OK


def test_sustained_breach_is_confirmed_on_the_second_sample_and_only_once() -> None:
    d = detector()
    found = feed(d, snap(memory=81), snap(memory=85), snap(memory=90), snap(memory=99))
    assert found == [[("suspected", "memory_high")], [("confirmed", "memory_high")], [], []]
    problem = d.observe("api", Observation(snap(memory=50)))[0].problem
    assert problem.kind == "memory_high"


def test_recovery_needs_the_clear_threshold_not_just_the_trigger() -> None:
    d = detector()
    feed(d, snap(memory=90), snap(memory=90))
    # 79 and 76 are under the 80 trigger but not under the 75 clear level.
    assert feed(d, snap(memory=79), snap(memory=76), snap(memory=75)) == [[], [], []]
    assert d.phase("api", "memory_high") is Phase.OPEN
    assert feed(d, snap(memory=74.9)) == [[("cleared", "memory_high")]]
    assert d.phase("api", "memory_high") is Phase.OK


def test_oscillation_around_the_threshold_does_not_flap() -> None:
    d = detector()
    values = [81, 79, 81, 79, 81, 79, 81, 79, 81, 79]
    found = feed(d, *(snap(memory=v) for v in values))
    flat = [f for sample in found for f in sample]
    # Suspect, stays suspect in the band, confirmed on the next breach, then quiet.
    assert flat == [("suspected", "memory_high"), ("confirmed", "memory_high")]
    assert found[2] == [("confirmed", "memory_high")]
    assert d.phase("api", "memory_high") is Phase.OPEN


def test_suspect_in_the_band_is_dismissed_only_under_clear() -> None:
    d = detector()
    assert feed(d, snap(memory=95), snap(memory=77), snap(memory=60)) == [
        [("suspected", "memory_high")], [], [("dismissed", "memory_high")]]


def test_disk_above_cleanup_is_a_warning_and_above_critical_is_critical() -> None:
    d = detector()
    d.observe("api", Observation(snap(disk=78)))
    warning = d.observe("api", Observation(snap(disk=79)))[0]
    assert (warning.change, warning.problem.kind, warning.problem.severity) == (
        Change.CONFIRMED, "disk_high", "warning")
    assert warning.problem.details["threshold"] == 75.0

    d = detector()
    d.observe("api", Observation(snap(disk=80)))
    critical = d.observe("api", Observation(snap(disk=91)))[0]
    assert critical.problem.severity == "critical"
    assert critical.problem.reason.startswith("disk 91.0% > 85% on 2 consecutive sample(s)")
    # Disk clears under 70, not under 75.
    assert feed(d, snap(disk=72)) == [[]]
    assert feed(d, snap(disk=69)) == [[("cleared", "disk_high")]]


def test_per_target_thresholds_apply() -> None:
    d = detector(thresholds=Thresholds(memory=Threshold(critical=60.0, clear=50.0),
                                       cpu=Threshold(critical=50.0, clear=40.0)))
    assert feed(d, snap(memory=65, cpu=55), snap(memory=65, cpu=55))[1] == [
        ("confirmed", "memory_high"), ("confirmed", "cpu_high")]


def test_endpoint_down_after_n_failures_and_cleared_when_it_answers() -> None:
    d = detector(failures_before_down=3)
    fail = ProbeFailure("/health/resources", "HTTP 503")
    assert feed(d, fail, fail, fail, fail) == [
        [("suspected", "health_endpoint_down")], [], [("confirmed", "health_endpoint_down")], []]
    assert d.active("api")
    assert feed(d, snap()) == [[("cleared", "health_endpoint_down")]]
    assert not d.active("api")


def test_endpoint_blip_shorter_than_n_is_dismissed() -> None:
    d = detector(failures_before_down=3)
    fail = ProbeFailure("/health/resources", "timed out after 5s")
    assert feed(d, fail, fail, snap()) == [
        [("suspected", "health_endpoint_down")], [], [("dismissed", "health_endpoint_down")]]


def test_failures_without_fallback_leave_metric_phases_alone() -> None:
    d = detector()
    feed(d, snap(memory=90), snap(memory=90))
    assert feed(d, ProbeFailure("x", "down")) == [[("suspected", "health_endpoint_down")]]
    assert d.phase("api", "memory_high") is Phase.OPEN


def test_fallback_reading_drives_metric_kinds_while_the_endpoint_fails() -> None:
    d = detector()
    fail = ProbeFailure("/health/resources", "HTTP 503")
    local = snap(memory=92, source="local")
    found = feed(d, fail, fail, fallback=local)
    assert found == [[("suspected", "health_endpoint_down"), ("suspected", "memory_high")],
                     [("confirmed", "memory_high")]]


def test_dependency_down_twice_is_confirmed_unknown_changes_nothing() -> None:
    d = detector()

    def dep(state: str) -> list[tuple[str, str]]:
        status = DependencyStatus("celery", state, "x")  # type: ignore[arg-type]
        return [(f.change.value, f.problem.kind)
                for f in d.observe("api", Observation(snap(), None, (status,)))]

    assert dep("down") == [("suspected", "service_down:celery")]
    assert dep("unknown") == []
    assert dep("down") == [("confirmed", "service_down:celery")]
    assert dep("unknown") == []
    assert dep("up") == [("cleared", "service_down:celery")]


def test_set_phase_seeds_and_steps_back() -> None:
    d = detector()
    d.set_phase("api", "memory_high", Phase.OPEN)
    assert feed(d, snap(memory=10)) == [[("cleared", "memory_high")]]
    d.set_phase("api", "memory_high", Phase.SUSPECT)
    assert feed(d, snap(memory=90)) == [[("confirmed", "memory_high")]]
    with pytest.raises(KeyError):
        d.set_phase("nope", "memory_high", Phase.OK)


@pytest.mark.parametrize(("reading", "label"), [
    (snap(), "healthy"),
    (snap(memory=70), "warning"),
    (snap(disk=76), "warning"),
    (snap(memory=85), "critical"),
    (None, "unreachable"),
])
def test_status_label_comes_from_numbers(reading: HealthSnapshot | None, label: str) -> None:
    assert status_label(reading, Thresholds()) == label


DOWN = ProbeFailure(SOURCE, "timed out after 5s", cause="down")
THROTTLED = ProbeFailure(SOURCE, "HTTP 429 (throttled)", cause="throttled", retry_after=30.0)
NO_SUCH_PATH = ProbeFailure(SOURCE, "HTTP 404 from http://api.test/health/resourcez",
                            cause="unusable")


def test_a_long_429_stretch_changes_no_phase_at_all() -> None:
    d = detector(failures_before_down=3)
    assert feed(d, *[THROTTLED] * 20) == [[]] * 20
    assert d.phases("api") == {}


def test_429_between_timeouts_shows_the_service_alive() -> None:
    d = detector(failures_before_down=3)
    found = feed(d, DOWN, DOWN, THROTTLED, DOWN, DOWN)
    assert found == [[("suspected", "health_endpoint_down")], [],
                     [("dismissed", "health_endpoint_down")],
                     [("suspected", "health_endpoint_down")], []]


def test_an_answer_that_is_no_reading_is_a_misconfiguration_not_an_outage() -> None:
    d = detector(failures_before_down=3)
    found = feed(d, NO_SUCH_PATH, NO_SUCH_PATH, NO_SUCH_PATH, NO_SUCH_PATH)
    assert found == [[("suspected", "probe_misconfigured")], [],
                     [("confirmed", "probe_misconfigured")], []]
    assert d.phase("api", "health_endpoint_down") is Phase.OK
    confirmed = d.observe("api", Observation(NO_SUCH_PATH))
    assert confirmed == []
    cleared = d.observe("api", Observation(snap()))
    assert [(f.change.value, f.problem.kind) for f in cleared] == [
        ("cleared", "probe_misconfigured")]


def test_the_misconfiguration_names_the_url_and_status() -> None:
    d = detector(failures_before_down=1)
    (finding,) = d.observe("api", Observation(NO_SUCH_PATH))
    assert finding.problem.severity == "critical"
    assert "HTTP 404 from http://api.test/health/resourcez" in finding.problem.reason
