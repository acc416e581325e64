"""Parsing health payloads: both schemas, the older variant, the quirks, and anything hostile."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st

from incident_fsm.detection.payload import (
    HealthSnapshot,
    ProbeFailure,
    combine,
    parse_health,
    parse_payload,
)

from . import payloads

SCHEMAS = {
    "resources": payloads.resources,
    "system": payloads.system,
    "legacy": payloads.legacy_system,
}


def _parse(payload: Any, source: str = "/health/resources") -> HealthSnapshot | ProbeFailure:
    return parse_health(json.dumps(payload).encode(), source=source, latency_ms=12.0)


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("level", payloads.LEVELS)
def test_every_schema_at_every_level_gives_the_numbers(schema: str, level: str) -> None:
    memory, disk, cpu = payloads.LEVELS[level]
    result = _parse(SCHEMAS[schema](memory, disk, cpu))
    assert isinstance(result, HealthSnapshot)
    assert (result.memory_pct, result.disk_pct, result.cpu_pct) == (memory, disk, cpu)
    assert result.latency_ms == 12.0
    assert result.source == "/health/resources"


def test_single_critical_component_is_reported_as_warning_but_read_as_critical() -> None:
    payload = payloads.resources(85.0, 60.0, 12.5)
    assert payload["status"] == "WARNING"  # the quirk, as the service answers
    result = _parse(payload)
    assert isinstance(result, HealthSnapshot)
    assert result.memory_pct == 85.0
    assert result.components["memory"] == "CRITICAL"
    assert result.components["disk"] == "ok"
    assert result.reported_status == "WARNING"
    assert result.issues == ("Critical memory usage: 85.0%",)


def test_healthy_status_does_not_hide_critical_numbers() -> None:
    payload = payloads.resources(92.0, 60.0, 12.5)
    payload["status"] = "HEALTHY"
    payload["alert_details"] = []
    result = _parse(payload)
    assert isinstance(result, HealthSnapshot) and result.memory_pct == 92.0


def test_system_components_and_issues_are_kept() -> None:
    result = _parse(payloads.system(82.1, 61.0, 12.5), "/health/system")
    assert isinstance(result, HealthSnapshot)
    assert result.components["memory"] == "degraded"
    assert result.components["process"] == "healthy"
    assert result.issues == ("High memory usage: 82.1%",)
    assert result.reported_status == "degraded"


def test_error_answered_with_200_is_a_failure_with_its_message() -> None:
    result = _parse(payloads.ERROR_200)
    assert isinstance(result, ProbeFailure)
    assert result.reason == ("endpoint reported status ERROR: "
                             "Failed to get resource usage: psutil.AccessDenied")
    # ERROR wins even when numbers are present.
    payload = {**payloads.resources(10, 10, 10), "status": "error"}
    assert isinstance(_parse(payload), ProbeFailure)


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda p: p["stats"].pop("disk_pct"), "'stats.disk_pct' is missing"),
    (lambda p: p["stats"].update(memory_pct="85"), "'stats.memory_pct' is a string"),
    (lambda p: p["stats"].update(memory_pct=True), "'stats.memory_pct' is a boolean"),
    (lambda p: p["stats"].update(cpu_pct=None), "'stats.cpu_pct' is missing"),
    (lambda p: p["stats"].update(cpu_pct=-1), "'stats.cpu_pct' is outside 0..100"),
    (lambda p: p["stats"].update(disk_pct=100.5), "'stats.disk_pct' is 100.5, outside 0..100"),
    (lambda p: p["stats"].update(disk_pct=10**400), "'stats.disk_pct' is outside 0..100"),
    (lambda p: p.update(stats=[1, 2]), "'stats' is an array"),
    (lambda p: p.update(status=3), "'status' is a number"),
])
def test_bad_numbers_are_failures_with_a_reason(mutate: Any, reason: str) -> None:
    payload = payloads.resources(50, 60, 10)
    mutate(payload)
    result = parse_payload(payload, source="/health/resources")
    assert isinstance(result, ProbeFailure)
    assert result.reason.startswith(reason)


@pytest.mark.parametrize("body", [b"NaN", b'{"stats": {"memory_pct": NaN, "disk_pct": 1,'
                                          b' "cpu_pct": 1}}',
                                  b'{"stats": {"memory_pct": Infinity, "disk_pct": 1, '
                                  b'"cpu_pct": 1}}',
                                  b'{"stats": {"memory_pct": 1e999, "disk_pct": 1, '
                                  b'"cpu_pct": 1}}'])
def test_nan_and_infinity_are_failures(body: bytes) -> None:
    assert isinstance(parse_health(body, source="x"), ProbeFailure)


@pytest.mark.parametrize(("body", "reason"), [
    (b"<html>502 Bad Gateway</html>", "body is not JSON"),
    (b"\xff\xfe\x00", "body is not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, "body is JSON nested too deeply"),
    (b'{"x": ' + b"9" * 5000 + b"}", "body is not JSON"),
    (b"[]", "expected a JSON object, got an array"),
    (b'{"status": "healthy"}', "unrecognised health payload"),
    (b'{"status": "SUCCESS", "data": {"memory_percent": 1}}', "'data.disk_percent' is missing"),
    (b'{"status": "healthy", "checks": {"cpu": {"usage_percent": 1}}}',
     "'checks.memory' is null"),
])
def test_unusable_bodies_are_failures(body: bytes, reason: str) -> None:
    result = parse_health(body, source="/health/system")
    assert isinstance(result, ProbeFailure)
    assert result.reason.startswith(reason)
    assert result.source == "/health/system"


def test_payload_text_cannot_forge_or_colour_a_log_line() -> None:
    hostile = "boom\x1b[2J\x1b[31m\r\n2026-01-01 | CRITICAL | forged\u202e\x00"
    failure = _parse({"status": "ERROR", "message": hostile})
    assert isinstance(failure, ProbeFailure)
    assert failure.reason == ("endpoint reported status ERROR: boom\\x1b[2J\\x1b[31m "
                              "2026-01-01 | CRITICAL | forged\\u202e\\x00")
    snapshot = parse_payload({**payloads.resources(10, 10, 10), "alert_details": [
        {"component": "disk\x1b[0m", "level": "CRITICAL\n", "message": hostile}]},
        source="/health/resources")
    assert isinstance(snapshot, HealthSnapshot)
    assert all(text.isprintable() for text in (*snapshot.issues, *snapshot.components))


def test_malformed_informational_fields_are_skipped_not_fatal() -> None:
    payload = payloads.resources(85, 60, 10)
    payload["alert_details"] = ["nonsense", {"component": 1}, {"message": "x" * 10_000}]
    result = _parse(payload)
    assert isinstance(result, HealthSnapshot)
    assert len(result.issues[0]) == 200  # clipped


def test_combine_takes_the_worse_reading_and_lists_partial_failures() -> None:
    a = _parse(payloads.resources(85.0, 60.0, 10.0))
    b = _parse(payloads.system(80.0, 70.0, 20.0), "/health/system")
    assert isinstance(a, HealthSnapshot) and isinstance(b, HealthSnapshot)
    both = combine([a, b])
    assert isinstance(both, HealthSnapshot)
    assert (both.memory_pct, both.disk_pct, both.cpu_pct) == (85.0, 70.0, 20.0)
    assert both.source == "/health/resources+/health/system"

    failed = ProbeFailure("/health/system", "HTTP 503", 3.0)
    one = combine([a, failed])
    assert isinstance(one, HealthSnapshot)
    assert one.memory_pct == 85.0
    assert one.partial_failures == ("/health/system: HTTP 503",)

    none = combine([failed, ProbeFailure("/health/resources", "timed out after 5s")])
    assert isinstance(none, ProbeFailure)
    assert none.reason == "/health/system: HTTP 503; /health/resources: timed out after 5s"


# --- property-based: nothing makes the parser raise, nothing bad becomes healthy -------------

_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
            | st.sampled_from(["ERROR", "SUCCESS", "HEALTHY", "WARNING"]))
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner,
                                                                max_size=4),
    max_leaves=25,
)
_keys = st.sampled_from([
    "status", "stats", "checks", "data", "alert_details", "issues", "message", "memory_pct",
    "disk_pct", "cpu_pct", "memory", "disk", "cpu", "usage_percent", "memory_percent",
    "disk_percent", "cpu_percent", "component", "level",
])
# Payloads made of the real field names, so the search reaches the deep branches.
_shaped = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=30,
)

_number_ish = st.floats(0, 100) | st.integers(0, 100) | _scalars
# Payloads of the three real shapes whose numbers may be good or anything else
# (missing fields come from the strategies above): these reach the success
# path too, where the numbers must still be sound.
_near_valid = st.one_of(
    st.fixed_dictionaries(
        {"stats": st.fixed_dictionaries(dict.fromkeys(
            ("memory_pct", "disk_pct", "cpu_pct"), _number_ish))},
        optional={"status": _scalars, "alert_details": _shaped}),
    st.fixed_dictionaries(
        {"checks": st.fixed_dictionaries({
            m: st.fixed_dictionaries({"usage_percent": _number_ish},
                                     optional={"status": _scalars})
            for m in ("memory", "disk", "cpu")}, optional={"process": _shaped})},
        optional={"status": _scalars, "issues": _shaped}),
    st.fixed_dictionaries(
        {"status": st.sampled_from(["SUCCESS", "success"]) | _scalars,
         "data": st.fixed_dictionaries(dict.fromkeys(
             ("memory_percent", "disk_percent", "cpu_percent"), _number_ish))}),
)


def _assert_sound(result: object) -> None:
    assert isinstance(result, HealthSnapshot | ProbeFailure)
    if isinstance(result, HealthSnapshot):
        for value in (result.memory_pct, result.disk_pct, result.cpu_pct):
            assert isinstance(value, float)
            assert math.isfinite(value) and 0.0 <= value <= 100.0
    else:
        assert result.reason


@settings(max_examples=400, suppress_health_check=[HypothesisHealthCheck.too_slow])
@given(st.one_of(_json, _shaped, _near_valid))
def test_any_json_value_gives_a_sound_snapshot_or_a_failure(payload: Any) -> None:
    _assert_sound(parse_payload(payload, source="/health/resources"))
    try:
        body = json.dumps(payload).encode()
    except ValueError:
        return
    _assert_sound(parse_health(body, source="/health/system"))


@settings(max_examples=400)
@given(st.binary(max_size=512))
def test_any_bytes_give_a_sound_snapshot_or_a_failure(body: bytes) -> None:
    _assert_sound(parse_health(body, source="/health/resources"))


@settings(max_examples=300)
@given(_near_valid)
def test_near_valid_payloads_keep_their_numbers_or_fail(payload: dict[str, Any]) -> None:
    result = parse_payload(payload, source="/health/system")
    _assert_sound(result)
    if isinstance(result, HealthSnapshot):
        given_memory = (payload.get("stats", {}).get("memory_pct")
                        if "stats" in payload else
                        payload["checks"]["memory"]["usage_percent"] if "checks" in payload
                        else payload["data"]["memory_percent"])
        assert result.memory_pct == float(given_memory)
