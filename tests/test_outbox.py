"""The notification policy, and the engine writing its rows in the step's own transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from incident_fsm.clock import ManualClock
from incident_fsm.errors import ConcurrentUpdate
from incident_fsm.machine import ActionIntent, IncidentEngine, MachinePolicy, StepView, Verdict
from incident_fsm.models import IncidentId, OutboxMessage
from incident_fsm.outbox import NotificationPolicy, notice_for, policy_from_settings
from incident_fsm.settings import ChannelsSettings, PamSettings, Settings, WebhookSettings
from incident_fsm.store import Store

pytestmark = pytest.mark.anyio

AT = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
CRITICAL = frozenset({"critical"})
RESTART = ActionIntent("render_restart", "major", Verdict.NOTIFY, "major tier: run and notify")
CLEANUP = ActionIntent("disk_cleanup", "safe", Verdict.AUTO, "safe tier")
FAILOVER = ActionIntent("failover", "approval", Verdict.HOLD, "needs an operator")


def step(trigger: str, source: str | None, dest: str, **kw: Any) -> StepView:
    fields: dict[str, Any] = dict(
        trigger=trigger, source=source, dest=dest, incident_id=IncidentId(7), target="api",
        kind="memory_high", severity="critical", actor="agent", reason="memory 91% > 80%",
        at=AT,
    )
    fields.update(kw)
    return StepView(**fields)


@pytest.mark.parametrize(
    ("view", "event", "prefix"),
    [
        (step("open", None, "detected", incident_id=None), "opened", "⚠️ System Alert: "),
        (step("reopen", "resolved", "detected", flap_count=2), "opened", "⚠️ System Alert: "),
        (step("remediate", "detected", "remediating",
              details={"action": "render_restart", "tier": "major", "verdict": "notify"}),
         "action", "🔧 System Alert: "),
        (step("approve", "escalated", "remediating",
              details={"action": "failover", "tier": "approval", "verdict": "approved"}),
         "action", "🔧 System Alert: "),
        (step("hold", "detected", "escalated",
              details={"action": "failover", "tier": "approval", "verdict": "hold"}),
         "held", "⚠️ System Alert: "),
        (step("still_failing", "verifying", "escalated", strikes=3), "escalated",
         "❌ System Issue: "),
        (step("timeout", "remediating", "escalated"), "escalated", "❌ System Issue: "),
        (step("recovered", "verifying", "resolved", notified_before=True), "resolved",
         "✅ System Recovery: "),
    ],
)
def test_steps_that_notify(view: StepView, event: str, prefix: str) -> None:
    notice = notice_for(view, alert_severities=CRITICAL)
    assert notice is not None
    assert notice.event == event
    assert notice.text.startswith(prefix)
    assert "memory_high on api" in notice.text


@pytest.mark.parametrize(
    "view",
    [
        step("open", None, "detected", incident_id=None, severity="warning"),
        step("remediate", "detected", "remediating",
             details={"action": "disk_cleanup", "tier": "safe", "verdict": "auto"}),
        step("action_finished", "remediating", "verifying"),
        step("still_failing", "verifying", "remediating",
             details={"action": "disk_cleanup", "tier": "safe", "verdict": "auto"}),
        step("recovered", "verifying", "resolved", notified_before=False),
        step("acknowledge", "escalated", "escalated"),
    ],
)
def test_steps_that_stay_quiet(view: StepView) -> None:
    assert notice_for(view, alert_severities=CRITICAL) is None


def test_the_action_message_names_the_action_and_the_payload_carries_the_fields() -> None:
    view = step("remediate", "detected", "remediating", reason="restart ranks first",
                details={"action": "render_restart", "tier": "major", "verdict": "notify"})
    (pam, log) = NotificationPolicy(channels=("pam", "log"))(view)
    assert (pam.channel, log.channel) == ("pam", "log")
    assert pam.payload == log.payload
    assert pam.payload["text"] == ("🔧 System Alert: memory_high on api (critical). "
                                   "Action taken: render_restart (restart ranks first)")
    assert {k: pam.payload[k] for k in ("incident_id", "state", "target", "kind", "action",
                                        "outcome", "severity", "event")} == {
        "incident_id": 7, "state": "remediating", "target": "api", "kind": "memory_high",
        "action": "render_restart", "outcome": "started", "severity": "critical",
        "event": "action",
    }


def test_channels_follow_the_settings() -> None:
    assert policy_from_settings(Settings()).channels == ("log",)
    both = Settings(channels=ChannelsSettings(
        pam=PamSettings(url="wss://pam.example", user_id="ops"),
        webhook=WebhookSettings(url="https://hooks.example/in")))
    assert policy_from_settings(both).channels == ("log", "pam", "webhook")


def _engine(store: Store, clock: ManualClock, policy: MachinePolicy,
            nudges: list[int] | None = None) -> IncidentEngine:
    return IncidentEngine(
        store, clock=clock, policy=policy, outbox=NotificationPolicy(channels=("log", "pam")),
        on_outbox=None if nudges is None else (lambda: nudges.append(1)),
    )


async def test_the_engine_writes_the_policys_rows_with_each_step(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    nudges: list[int] = []
    engine = _engine(store, clock, policy, nudges)
    opened = await engine.open(target="api", kind="memory_high", severity="critical",
                               reason="memory 91% > 80% on two samples")
    iid = opened.incident.incident_id
    again = await engine.open(target="api", kind="memory_high", severity="critical",
                              reason="still high")
    assert not again.created
    await engine.fire(iid, "remediate", actor="agent", reason="restart ranks first",
                      intent=RESTART)
    await engine.fire(iid, "action_finished", actor="agent", reason="202 from Render")
    await engine.fire(iid, "recovered", actor="agent", reason="memory 60% < 75%")
    timeline = await store.timeline(iid)
    rows = [(n.transition_seq, n.channel, n.payload["event"]) for n in timeline.notifications]
    assert rows == [(1, "log", "opened"), (1, "pam", "opened"),
                    (2, "log", "action"), (2, "pam", "action"),
                    (4, "log", "resolved"), (4, "pam", "resolved")]
    assert {n.status for n in timeline.notifications} == {"pending"}
    assert timeline.notifications[0].payload["text"].startswith("⚠️ System Alert: ")
    assert len(nudges) == 3  # one per step that wrote rows; not for the duplicate open


async def test_a_quiet_incident_resolves_quietly(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    engine = _engine(store, clock, policy)
    opened = await engine.open(target="api", kind="disk_high", severity="warning",
                               reason="disk 80%")
    iid = opened.incident.incident_id
    await engine.fire(iid, "remediate", actor="agent", reason="cleanup", intent=CLEANUP)
    await engine.fire(iid, "action_finished", actor="agent", reason="freed 2 GB")
    await engine.fire(iid, "recovered", actor="agent", reason="disk 60%")
    assert (await store.timeline(iid)).notifications == []


async def test_a_held_action_and_explicit_notifications(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    engine = _engine(store, clock, policy)
    opened = await engine.open(target="api", kind="memory_high", severity="warning",
                               reason="memory 82%")
    iid = opened.incident.incident_id
    await engine.fire(iid, "hold", actor="agent", reason="failover needs approval",
                      intent=FAILOVER,
                      notifications=[OutboxMessage("pam", {"text": "custom", "event": "x"})])
    notes = (await store.timeline(iid)).notifications
    # The explicit PAM message wins; the policy still adds its log row.
    assert [(n.channel, n.payload["text"]) for n in notes] == [
        ("pam", "custom"),
        ("log", "⚠️ System Alert: memory_high on api: action failover is waiting for approval "
                "(failover needs approval)"),
    ]


async def test_a_step_that_is_not_written_leaves_no_notification(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    engine = _engine(store, clock, policy)
    other = _engine(store, clock, policy)
    opened = await engine.open(target="api", kind="memory_high", severity="warning",
                               reason="memory 82%")
    iid = opened.incident.incident_id
    stale = await store.get_incident(iid)
    await other.fire(iid, "escalate", actor="alice", reason="taking over")

    class Stale:
        async def get_incident(self, _iid: IncidentId) -> Any:
            return stale

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

    racing = IncidentEngine(Stale(), clock=clock, policy=policy,  # type: ignore[arg-type]
                            outbox=NotificationPolicy(channels=("log", "pam")))
    clock.advance(policy.detect_deadline + 1)  # the (stale) deadline really has passed
    with pytest.raises(ConcurrentUpdate):
        await racing.fire(iid, "timeout", actor="agent", reason="deadline passed")
    notes = (await store.timeline(iid)).notifications
    # Only the operator's escalation notified; the lost step's rows were never written.
    assert [(n.transition_seq, n.payload["trigger"]) for n in notes] == [
        (2, "escalate"), (2, "escalate")]


async def test_the_sweeper_escalates_again_with_a_notice_until_acknowledged(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    from incident_fsm.sweeper import DeadlineSweeper

    engine = _engine(store, clock, policy)
    iid = (await engine.open(target="api", kind="memory_high", severity="critical",
                             reason="memory 95%")).incident.incident_id
    await engine.fire(iid, "escalate", actor="alice", reason="looking into it later")
    sweeper = DeadlineSweeper(engine=engine, store=store, clock=clock)
    clock.advance(policy.escalation_repeat - 1)
    assert await sweeper.sweep() == []
    clock.advance(1)
    (repeated,) = await sweeper.sweep()
    assert repeated.state == "escalated"
    notes = (await store.timeline(iid)).notifications
    last = [n.payload for n in notes if n.transition_seq == repeated.version]
    assert {p["event"] for p in last} == {"escalated"}
    assert "nobody has acknowledged" in last[0]["text"]
    await engine.fire(iid, "acknowledge", actor="alice", reason="on it now")
    clock.advance(10 * policy.escalation_repeat)
    assert await sweeper.sweep() == []
