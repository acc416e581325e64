"""Done when: real incidents walk the graph end to end, on both databases.

1. A loopback HTTP simulator serves `/health/resources` with a `disk_pct`
   computed from the bytes in a real temporary directory. A disk incident
   is resolved by a real `disk_cleanup` deleting real files; verification
   reads the simulator over HTTP.
2. Against a respx-mocked Render API and health endpoint, a memory incident
   walks restart -> verify -> scale -> verify -> escalated when nothing
   helps, with every step in its history.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.models import Incident
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.actions.catalog import Catalog
from incident_fsm.remediation.remediator import Remediator, Verification
from incident_fsm.settings import (
    ActionsSettings,
    DiskCleanupSettings,
    RenderSettings,
    Settings,
    TargetSettings,
)
from incident_fsm.testing import ManualClock

from .support import run_with_waits

pytestmark = pytest.mark.anyio

CAPACITY = 100_000  # bytes: the simulated disk
DAY = 86400.0


def used_bytes(root: Path) -> int:
    return sum(
        os.lstat(os.path.join(folder, name)).st_size
        for folder, _dirs, files in os.walk(root, followlinks=False) for name in files
    )


class Simulator:
    """The reference service's `/health/resources`, its disk being a real directory."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.requests = 0
        simulator = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                simulator.requests += 1
                if self.path != "/health/resources":
                    self.send_error(404)
                    return
                disk_pct = round(100.0 * used_bytes(simulator.disk) / CAPACITY, 2)
                alerts = [{"component": "disk", "level": "CRITICAL", "value": disk_pct,
                           "message": f"Critical disk usage: {disk_pct}%", "threshold": 85.0}
                          ] if disk_pct >= 85 else []
                body = json.dumps({
                    "status": "WARNING" if alerts else "HEALTHY", "health_score": 66.67,
                    "alerts": len(alerts), "alert_details": alerts,
                    "stats": {"memory_pct": 41.0, "disk_pct": disk_pct, "cpu_pct": 12.5},
                    "timestamp": datetime.now().isoformat(),  # naive local time, like theirs
                }).encode()
                self.send_response(200)  # always 200, like theirs
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Simulator:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class HealthVerifier:
    """Reads one stat of `/health/resources` and compares it with the clear threshold."""

    def __init__(self, http: httpx.AsyncClient, *, url: str, stat: str, clear: float) -> None:
        self.http, self.url, self.stat, self.clear = http, url, stat, clear

    async def read(self) -> float:
        response = await self.http.get(f"{self.url}/health/resources", timeout=5.0)
        return float(response.json()["stats"][self.stat])

    async def verify(self, incident: Incident) -> Verification:
        value = await self.read()
        return Verification(value < self.clear, f"{self.stat} {value:g}% (clear {self.clear:g}%)",
                            {self.stat: value})


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    root = tmp_path / "var-log-app"
    root.mkdir()
    then = time.time() - 10 * DAY
    for n in range(9):  # 90 % of the disk in week-old logs
        log = root / f"app.log.{n + 1}"
        log.write_bytes(b"2026-11-19 GET /api/v1/items 200\n" * 303)
        os.utime(log, (then, then))
    (root / "app.log").write_bytes(b"today\n" * 500)  # the live log stays
    return root


async def test_a_disk_incident_is_resolved_by_a_real_cleanup(
    store: Store, engine: IncidentEngine, clock: ManualClock, disk: Path
) -> None:
    settings = Settings(
        targets=(TargetSettings(name="api", base_url="http://127.0.0.1"),),
        actions=ActionsSettings(disk_cleanup=DiskCleanupSettings(roots=(str(disk),))),
    )
    before = used_bytes(disk)
    with Simulator(disk) as simulator:
        async with httpx.AsyncClient() as http:
            catalog = Catalog.from_settings(settings, http=http, environ={})
            assert set(catalog.for_target("api")) == {"disk_cleanup"}
            verifier = HealthVerifier(http, url=simulator.url, stat="disk_pct", clear=70.0)
            detected = await verifier.read()
            assert detected > 85.0
            opened = await engine.open(target="api", kind="disk_high", severity="critical",
                                       reason=f"disk {detected:g}% > 85%",
                                       details={"disk_pct": detected})
            remediator = Remediator(engine=engine, store=store, clock=clock, actions=catalog,
                                    verifier=verifier)
            incident = await run_with_waits(
                clock, lambda: remediator.drive(opened.incident.incident_id),
                [engine.policy.verify_window])
            after_pct = await verifier.read()

    assert incident.state == "resolved"
    assert after_pct < 70.0
    assert os.listdir(disk) == ["app.log"]
    timeline = await store.timeline(incident.incident_id)
    assert [(t.trigger, t.dest) for t in timeline.transitions] == [
        ("open", "detected"), ("remediate", "remediating"), ("action_finished", "verifying"),
        ("recovered", "resolved")]
    [run] = timeline.actions
    assert (run.action, run.tier, run.outcome, run.verified, run.dry_run) == (
        "disk_cleanup", "safe", "ok", True, False)
    assert run.evidence["bytes_freed"] == before - used_bytes(disk) == 9 * 303 * 33
    assert run.evidence["deleted_count"] == 9
    assert timeline.transitions[1].details["verdict"] == "auto"
    assert timeline.transitions[3].details["verification"] == {"disk_pct": after_pct}
    assert f"disk_pct {after_pct:g}% (clear 70%)" in timeline.transitions[3].reason
    assert simulator.requests == 3  # detection, verification, and our own check


async def test_a_memory_incident_walks_restart_verify_scale_verify_then_escalates(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    key = "rnd_memoryFlowKey0123456789"
    settings = Settings(
        targets=(TargetSettings(name="api", base_url="https://api.example.test",
                                render_service_id="srv-web"),),
        actions=ActionsSettings(render=RenderSettings(api_url="https://api.render.test/v1",
                                                      max_instances=3)),
    )
    async with respx.mock(assert_all_called=True) as router, httpx.AsyncClient() as http:
        restart = router.post("https://api.render.test/v1/services/srv-web/restart").mock(
            return_value=httpx.Response(202))
        read = router.get("https://api.render.test/v1/services/srv-web").mock(
            return_value=httpx.Response(200, json={"serviceDetails": {"numInstances": 1}}))
        scale = router.post("https://api.render.test/v1/services/srv-web/scale").mock(
            return_value=httpx.Response(202))
        health = router.get("https://api.example.test/health/resources").mock(
            return_value=httpx.Response(200, json={
                "status": "WARNING", "stats": {"memory_pct": 91.0, "disk_pct": 40.0,
                                               "cpu_pct": 20.0}}))
        catalog = Catalog.from_settings(settings, http=http, environ={"RENDER_API_KEY": key})
        verifier = HealthVerifier(http, url="https://api.example.test", stat="memory_pct",
                                  clear=75.0)
        opened = await engine.open(target="api", kind="memory_high", severity="critical",
                                   reason="memory 91% > 80%")
        remediator = Remediator(engine=engine, store=store, clock=clock, actions=catalog,
                                verifier=verifier)
        incident = await run_with_waits(
            clock, lambda: remediator.drive(opened.incident.incident_id),
            [engine.policy.verify_window] * 2)

    assert incident.state == "escalated"
    assert (restart.call_count, read.call_count, scale.call_count, health.call_count) == (
        1, 1, 1, 2)
    assert json.loads(scale.calls.last.request.content) == {"numInstances": 2}
    timeline = await store.timeline(incident.incident_id)
    steps = [(t.trigger, t.source, t.dest, t.details.get("action")) for t in timeline.transitions]
    assert steps == [
        ("open", None, "detected", None),
        ("remediate", "detected", "remediating", "render_restart"),
        ("action_finished", "remediating", "verifying", None),
        ("still_failing", "verifying", "remediating", "render_scale"),
        ("action_finished", "remediating", "verifying", None),
        ("still_failing", "verifying", "escalated", None),
    ]
    assert [t.details.get("verdict") for t in timeline.transitions] == [
        None, "notify", None, "notify", None, None]
    assert timeline.transitions[2].details["http_status"] == 202
    assert "memory_pct 91% (clear 75%)" in timeline.transitions[3].reason
    assert "every action for memory_high on api was tried" in timeline.transitions[-1].reason
    assert [(r.action, r.outcome, r.verified) for r in timeline.actions] == [
        ("render_restart", "ok", False), ("render_scale", "ok", False)]
    assert timeline.actions[1].evidence["to_instances"] == 2
    assert incident.strikes == 2
    assert key not in json.dumps([r.evidence for r in timeline.actions])
    assert key not in json.dumps([t.details for t in timeline.transitions])
