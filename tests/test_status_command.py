"""`incident-fsm status`: one screen for "is it alive, what does it read, what waits for me"."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from click.testing import CliRunner

from incident_fsm.cli import main as cli
from incident_fsm.clock import SystemClock
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import HealthCheck, OutboxMessage
from incident_fsm.persistence import database
from incident_fsm.persistence.store import Store
from incident_fsm.vocabulary import Verdict


def _seed(url: str, *, alive: bool = True, leads: bool = True) -> dict[str, int]:
    async def main() -> dict[str, int]:
        now = datetime.now(UTC)
        async with Store(url) as store:
            if alive:
                await store.beat("host-a:1", now=now - timedelta(hours=2), ttl=30,
                                 version="9.9.9")
                await store.beat("host-a:1", now=now, ttl=30, version="9.9.9")
                if leads:
                    await store.acquire_lease("agent-leader", "host-a:1", now=now, ttl=15)
            await store.record_health_check(*[
                HealthCheck(target="api", at=now - timedelta(seconds=s), source="/health/system",
                            ok=True, latency_ms=80, memory_pct=81.5, disk_pct=40.0,
                            cpu_pct=12.0) for s in (25, 15, 5)])
            await store.record_health_check(HealthCheck(
                target="web", at=now - timedelta(seconds=4), source="/health", ok=False,
                latency_ms=2, error="HTTP 404 from /health"))
            engine = IncidentEngine(store, clock=SystemClock())
            detected = (await engine.open(target="api", kind="disk_high", severity="critical",
                                          reason="disk 91%")).incident
            held = (await engine.open(target="api", kind="memory_high", severity="critical",
                                      reason="memory 92%")).incident
            await engine.fire(held.incident_id, "hold", actor="agent", reason="approval tier",
                              intent=ActionIntent("failover", "approval", Verdict.HOLD,
                                                  "failover is approval tier"),
                              notifications=[OutboxMessage("pam", {"text": "held"})])
            taken = (await engine.open(target="web", kind="probe_misconfigured",
                                       severity="warning", reason="404")).incident
            await engine.fire(taken.incident_id, "escalate", actor="agent", reason="no action")
            await engine.fire(taken.incident_id, "acknowledge", actor="alice", reason="mine")
            later = now + timedelta(seconds=1)
            [row] = await store.due_notifications("pam", now=later)
            assert await store.claim_notifications([row.id or 0], now=later,
                                                   lease_until=later + timedelta(seconds=60))
            await store.reschedule_notification(row.id or 0, next_attempt_at=now,
                                                error="pam closed the connection (1011)")
            await store.add_silence(target="web", kind=None, starts_at=now,
                                    ends_at=now + timedelta(hours=1), actor="bob",
                                    reason="deploy", at=now)
            return {"detected": detected.id or 0, "held": held.id or 0, "taken": taken.id or 0}
    return anyio.run(main)


def _status(url: str, *args: str) -> Any:
    return CliRunner().invoke(cli.cli, ["status", "--database-url", url, *args])


def test_status_answers_the_operator_questions_and_exits_0_while_an_agent_acts(
    db_url: str
) -> None:
    ids = _seed(db_url)
    result = _status(db_url, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    [agent] = data["agents"]
    sqlite = database.is_sqlite(db_url)
    assert (agent["replica"], agent["alive"], agent["version"]) == ("host-a:1", True, "9.9.9")
    assert agent["role"] == ("acting" if sqlite else "leader")
    assert 7190 < agent["uptime_s"] < 7300
    api = next(t for t in data["targets"] if t["name"] == "api")
    assert (api["memory_pct"], api["disk_pct"], api["source"]) == (81.5, 40.0, "/health/system")
    assert 4 < api["read_age_s"] < 60
    assert api["cadence_effective_s"] == 10.0
    web = next(t for t in data["targets"] if t["name"] == "web")
    assert web["memory_pct"] is None and web["last_error"] == "HTTP 404 from /health"
    by_id = {i["id"]: i for i in data["incidents"]}
    assert by_id[ids["taken"]]["acknowledged_by"] == "alice"
    assert by_id[ids["held"]]["acknowledged_by"] is None
    assert by_id[ids["detected"]]["state"] == "detected"
    [approval] = data["approvals"]
    assert (approval["incident"], approval["action"]) == (ids["held"], "failover")
    assert approval["approve"] == (f"incident-fsm force {ids['held']} approve --reason TEXT "
                                   f"--database-url {database.redact(db_url)}")
    [pam] = data["channels"]
    assert (pam["channel"], pam["pending"], pam["failing"]) == ("pam", 1, 1)
    assert pam["last_error"] == "pam closed the connection (1011)"
    [silence] = data["silences"]
    assert (silence["target"], silence["actor"], silence["reason"]) == ("web", "bob", "deploy")

    text = _status(db_url)
    assert text.exit_code == 0
    assert text.output.startswith("● incident-fsm: 1 agent(s) alive; acting: host-a:1")
    assert f"approve it: incident-fsm force {ids['held']} approve --reason TEXT" in text.output
    assert "81.5%" in text.output and "(--config) / 10.0s" in text.output
    assert "HTTP 404 from /health" in text.output and "by silence" in text.output
    assert all(line == line.rstrip() for line in text.output.splitlines())
    assert "alice" in text.output and "until" in text.output and "deploy" in text.output


def test_status_exits_1_when_no_agent_is_alive(db_url: str) -> None:
    _seed(db_url, alive=False)
    result = _status(db_url)
    assert result.exit_code == 1
    assert "NONE ACTING" in result.output and "none seen by heartbeat" in result.output


def test_status_exits_1_when_agents_only_stand_by(postgres_url: str) -> None:
    from .conftest import _empty_postgres

    _empty_postgres(postgres_url)
    _seed(postgres_url, leads=False)
    result = _status(postgres_url, "--json")
    assert result.exit_code == 1
    assert [a["role"] for a in json.loads(result.output)["agents"]] == ["standby"]
