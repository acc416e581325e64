"""Latencies on loopback with real short intervals: detection, action start, notification, backlog.

A real `Agent` (Postgres, polls every 0.2 s, 0.1 s while suspect) watches a
`Simulator`; a live `PamSimulator` receives notifications. Each repetition
puts the service under memory pressure (the breach), waits until the agent
has opened, remediated (a Render restart that really clears the leak),
verified and resolved the incident, and reads the times back:

- breach -> detected: `incident.opened_at` minus the moment the breach was
  set (expected at most one normal plus one fast interval: 0.3 s + work);
- detected -> action started: the attempt's `executing_at` (its claim)
  minus `opened_at`;
- action recorded -> notification delivered: the PAM notification written
  with the `remediate` step, `delivered_at` minus `created_at` (the outbox
  row is written in the same transaction as the attempt);
- PAM back after an outage -> backlog delivered: PAM is stopped, incidents
  run their course, PAM is started again; the time until the last queued
  notification is delivered (and PAM has received every one of them). The
  PAM channel keeps PAM's own limit of 5 new connections per minute, spent
  on reconnect attempts during the outage, so this is bounded by that window.
"""

from __future__ import annotations

import tempfile
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio
from sqlalchemy import text

from incident_fsm import Agent
from incident_fsm.demo.pam_simulator import PamSimulator
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.models import Incident
from tests.scenario import ENV, PAM_TOKEN, fast_agent, sim_settings, until

from ..pam_server import ACCEPTS
from .common import Row, knob, percentiles, throwaway_postgres

FINGERPRINT = "api:memory_high"


async def one_incident(agent: Agent, sim: Simulator, after: datetime) -> Incident:
    """Breach now, wait for the incident to be resolved, return it (its times are read later)."""
    sim.state.leaked_memory_pct = 50.0  # 90 % memory: critical

    async def resolved() -> bool:
        rows = await agent.store.list_incidents(kind="memory_high", since=after, limit=5)
        return bool(rows) and rows[0].state == "resolved"

    await until(resolved, within=30, step=0.02)
    (incident, *_) = await agent.store.list_incidents(kind="memory_high", since=after, limit=5)
    # Two healthy polls, so the next breach starts from a quiet detector.
    await anyio.sleep(0.5)
    return incident


async def pending_pam(agent: Agent) -> int:
    def work() -> int:
        with agent.store.engine.connect() as conn:
            return int(conn.execute(text(
                "select count(*) from notification where channel = 'pam' "
                "and status = 'pending'")).scalar_one())
    return await anyio.to_thread.run_sync(work)


async def run() -> list[Row]:
    # PAM's rate limit paces the repetitions (see `within_pams_rate`): about 3 a minute.
    reps = int(knob("latency_reps", 15, 6))
    outages = int(knob("latency_outages", 2, 1))
    detect, start, notify, backlog = [], [], [], []
    queued_total = arrived_total = 0
    with tempfile.TemporaryDirectory() as d, throwaway_postgres() as url:
        # A restart per repetition, faster than Render's 30 POSTs a minute would allow.
        async with Simulator(ServiceState(render_post_limit=1_000_000)) as sim, \
                PamSimulator(token=PAM_TOKEN, accepts=ACCEPTS) as pam:
            agent_settings = fast_agent(url, health_log_level="DEBUG", reopen_window=0.001,
                                        action_budget=100000, flap_threshold=100000)
            settings = sim_settings(sim, url, pam_url=pam.url, agent=agent_settings)
            settings = replace(settings, policy={"memory_high": ("render_restart",)})
            async with Agent(settings, environ=ENV, journal_path=Path(d) / "j") as agent:
                await anyio.sleep(1.0)
                sent: deque[tuple[float, int]] = deque()  # (when, PAM frames) per repetition
                for _ in range(reps):
                    await within_pams_rate(pam, sent)
                    breach = datetime.now(UTC)
                    incident = await one_incident(agent, sim, breach)
                    timeline = await agent.store.timeline(incident.incident_id)
                    detect.append((incident.opened_at - breach).total_seconds())
                    run_ = timeline.actions[0]
                    assert run_.executing_at is not None
                    start.append((run_.executing_at - incident.opened_at).total_seconds())
                    seq = next(t.seq for t in timeline.transitions if t.trigger == "remediate")
                    ours = [n for n in timeline.notifications
                            if n.channel == "pam" and n.transition_seq == seq]
                    for n in ours:
                        await until(lambda n=n: _delivered(agent, n.id), within=10)
                    for n in (await agent.store.timeline(incident.incident_id)).notifications:
                        if n.channel == "pam" and n.transition_seq == seq and n.delivered_at:
                            notify.append((n.delivered_at - n.created_at).total_seconds())
                    await until(lambda: _drained(agent), within=60, step=0.02)
                    sent.append((anyio.current_time(), len(pam.received) - sum(
                        n for _, n in sent)))
                for _ in range(outages):
                    await pam.stop()
                    for _ in range(2):
                        await one_incident(agent, sim, datetime.now(UTC))
                    queued = await pending_pam(agent)
                    received = _notifications(pam.accepted)
                    back = anyio.current_time()
                    await pam.start()
                    await until(lambda: _drained(agent), within=60, step=0.02)
                    backlog.append(anyio.current_time() - back)
                    assert queued > 0
                    queued_total += queued
                    arrived_total += _notifications(pam.accepted) - received
    rows = []
    for name, values, target, limit in (
            ("breach -> incident detected", detect, "<= 0.3 s (0.2 + 0.1)", 0.3),
            ("detected -> action started", start, "< 1 s", 1.0),
            ("action recorded -> PAM delivered", notify, "< 1 s", 1.0),
            ("PAM back -> backlog delivered", backlog, "", None)):
        p = percentiles(values)
        ok = None if limit is None else p["max"] < limit
        rows.append(Row("latency", f"{name} p50", p["p50"], "s", target=target))
        rows.append(Row("latency", f"{name} p95", p["p95"], "s", target=target))
        rows.append(Row("latency", f"{name} max (n={p['n']})", p["max"], "s", target=target,
                        ok=ok))
    # Every queued row left the queue; this says whether each reached PAM's socket.
    rows.append(Row("latency", "backlog notifications PAM received / rows queued",
                    arrived_total / max(1, queued_total), "x", target="1 (none lost)",
                    ok=arrived_total >= queued_total,
                    note=f"{arrived_total} of {queued_total}"))
    return rows


#: PAM frames a minute the repetitions may use: PAM takes 60, the channel keeps 6 for
#: pongs, and a margin is left for its pings' answers and probes in flight.
PACE: Final = 40


async def within_pams_rate(pam: PamSimulator, sent: deque[tuple[float, int]]) -> None:
    """Wait until one more repetition's frames fit in PAM's last minute: past `PACE`, the
    channel would hold notifications back (as it must), and the figure would measure PAM's
    rate limit instead of the agent's delivery."""
    if not sent:
        return
    need, now = max(n for _, n in sent), anyio.current_time()
    window = [(at, n) for at, n in sent if at > now - 60]  # oldest first
    total, wait = sum(n for _, n in window), 0.0
    for at, n in window:
        if total + need <= PACE:
            break
        total, wait = total - n, at + 60 - now  # when this repetition's frames leave
    await anyio.sleep(wait)


async def _delivered(agent: Agent, notification_id: int | None) -> bool:
    def work() -> bool:
        with agent.store.engine.connect() as conn:
            return conn.execute(text("select status from notification where id = :i"),
                                {"i": notification_id}).scalar_one() != "pending"
    return await anyio.to_thread.run_sync(work)


def _notifications(frames: list[dict[str, Any]]) -> int:
    """Notifications in PAM frames: a batched frame carries several (`pam_frames`)."""
    return sum(int(f.get("metadata", {}).get("batched", 1)) for f in frames)


async def _drained(agent: Agent) -> bool:
    return await pending_pam(agent) == 0
