"""The notification policy, and the engine writing its rows in the step's own transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from incident_fsm.errors import ConcurrentUpdate
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent, AttemptView, MachinePolicy, StepView
from incident_fsm.models import IncidentId, OutboxMessage
from incident_fsm.notify.channels.base import Outgoing
from incident_fsm.notify.policy import NotificationPolicy, notice_for, policy_from_settings
from incident_fsm.persistence.store import Store
from incident_fsm.settings import ChannelsSettings, PamSettings, Settings, WebhookSettings
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

pytestmark = pytest.mark.anyio

AT = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
CRITICAL = frozenset({"critical"})
RESTART = ActionIntent("render_restart", "major", Verdict.NOTIFY, "major tier: run and notify")
CLEANUP = ActionIntent("disk_cleanup", "safe", Verdict.AUTO, "safe tier")
FAILOVER = ActionIntent("failover", "approval", Verdict.HOLD, "needs an operator")


#: A reason as the agent writes it for the history: ranking, score, rule names, exceptions.
MACHINE = ("render_restart: ranked 1 of 2 for memory_high (3 verified, 1 failed, score 0.67); "
           "NotifyOnMajorActions: render_restart is major tier: run and notify; "
           "probe: ConnectError: [Errno 111] Connection refused")
LEAKS = ("score", "ranked", "verified,", "NotifyOnMajorActions", "HoldApprovalTierActions",
         "ConnectError", "Errno", "Tier", MACHINE[:30])
REFERENCE = " Incident 7 — details: incident-fsm show 7"
RESTARTED = AttemptView("render_restart", "major", "ok", "restart of srv-web: requested (HTTP 202)")


def step(trigger: str, source: str | None, dest: str, **kw: Any) -> StepView:
    fields: dict[str, Any] = dict(
        trigger=trigger, source=source, dest=dest, incident_id=IncidentId(7), target="api",
        kind="memory_high", severity="critical", actor="agent", reason=MACHINE, at=AT,
    )
    fields.update(kw)
    return StepView(**fields)


MEMORY = {"metric": "memory", "value": 91.04, "threshold": 90, "clear": 75,
          "source": "/health/resources"}


@pytest.mark.parametrize(
    ("view", "event", "prefix", "says"),
    [
        (step("open", None, "detected", details=MEMORY), "opened", "⚠️ System Alert: ",
         "high memory use on api (critical): memory at 91% (limit 90%). The agent will try"),
        (step("reopen", "resolved", "detected", flap_count=2, details=MEMORY), "opened",
         "⚠️ System Alert: ", "It is back: reopened 2 times."),
        (step("remediate", "detected", "remediating",
              details={"action": "render_restart", "tier": "major", "verdict": "notify",
                       "verdict_reason": MACHINE}),
         "action", "🔧 System Alert: ", "starting render_restart (a major action, run without"),
        (step("approve", "escalated", "remediating", actor="alice", reason="go ahead",
              details={"action": "failover", "tier": "approval", "verdict": "approved"}),
         "action", "🔧 System Alert: ", "starting failover, approved by alice."),
        (step("still_failing", "verifying", "remediating", attempt=RESTARTED,
              details={"action": "render_scale", "tier": "major", "verdict": "notify"}),
         "action", "🔧 System Alert: ", "render_restart did not fix it; starting render_scale"),
        (step("action_finished", "remediating", "verifying", attempt=RESTARTED,
              details={"outcome": "ok", "summary": "restart of srv-web: requested (HTTP 202)"}),
         "action", "🔧 System Alert: ",
         "Action taken: render_restart finished: restart of srv-web: requested (HTTP 202). "
         "Next: fresh health readings"),
        (step("action_finished", "remediating", "verifying", attempt=RESTARTED,
              details={"outcome": "failed", "http_status": 503,
                       "summary": "render_restart raised ConnectError: refused"}),
         "action", "🔧 System Alert: ", "Action taken: render_restart failed (HTTP 503)."),
        (step("hold", "detected", "escalated",
              details={"action": "failover", "tier": "approval", "verdict": "hold",
                       "verdict_reason": "HoldApprovalTierActions: failover is approval tier"}),
         "held", "⚠️ System Alert: ",
         "failover needs an operator's approval before it runs. To run it: "
         "incident-fsm force 7 approve --reason TEXT."),
        (step("still_failing", "verifying", "escalated", strikes=3,
              attempt=AttemptView("render_scale", "major", "ok")), "escalated",
         "❌ System Issue: ",
         "is still not fixed after 3 failed attempts (the last: render_scale). The agent has "
         "stopped acting on it. Take it with: incident-fsm force 7 acknowledge --reason TEXT."),
        (step("timeout", "remediating", "escalated", attempt=RESTARTED), "escalated",
         "❌ System Issue: ", "the deadline passed while the agent was running render_restart"),
        (step("escalate", "detected", "escalated", actor="alice", reason="taking over"),
         "escalated", "❌ System Issue: ", "was escalated by alice: taking over."),
        (step("escalate", "remediating", "escalated"), "escalated", "❌ System Issue: ",
         "is marked as being remediated, but no attempt is on record: the agent cannot tell "
         "what ran, so it has stopped acting on it. Take it with: incident-fsm force 7 "
         "acknowledge --reason TEXT."),
        (step("recovered", "verifying", "resolved", notified_before=True, attempt=RESTARTED,
              details={"verification": {"memory_pct": 60.0, "clear": 75, "source": "x"}}),
         "resolved", "✅ System Recovery: ",
         "high memory use on api (critical) is resolved: memory is back at 60% (normal below "
         "75%) after render_restart. No action needed."),
        (step("recovered", "verifying", "resolved", notified_before=True,
              attempt=AttemptView("render_restart", "major", "failed"),
              details={"verification": {"memory_pct": 60.0, "clear": 75, "source": "x"}}),
         "resolved", "✅ System Recovery: ",
         "memory is back at 60% (normal below 75%), although render_restart failed: it cleared "
         "anyway."),
    ],
)
def test_steps_that_notify(view: StepView, event: str, prefix: str, says: str) -> None:
    notice = notice_for(view, alert_severities=CRITICAL)
    assert notice is not None
    assert notice.event == event
    assert notice.text.startswith(prefix + "high memory use on api (critical)")
    assert says in notice.text
    # Which incident, and the command to see more, end every text.
    assert notice.text.endswith(REFERENCE)
    # Built from the step's details: nothing of the machine's reason gets through.
    assert not [leak for leak in LEAKS if leak in notice.text]


@pytest.mark.parametrize(
    "view",
    [
        step("open", None, "detected", incident_id=None, severity="warning"),
        step("remediate", "detected", "remediating",
             details={"action": "disk_cleanup", "tier": "safe", "verdict": "auto"}),
        step("action_finished", "remediating", "verifying"),
        step("action_finished", "remediating", "verifying",
             attempt=AttemptView("disk_cleanup", "safe", "ok", "freed 2 GB")),
        step("still_failing", "verifying", "remediating",
             details={"action": "disk_cleanup", "tier": "safe", "verdict": "auto"}),
        step("recovered", "verifying", "resolved", notified_before=False),
        step("acknowledge", "escalated", "escalated"),
    ],
)
def test_steps_that_stay_quiet(view: StepView) -> None:
    assert notice_for(view, alert_severities=CRITICAL) is None


def test_a_safe_action_that_returned_is_reported_once_the_operators_know_the_incident() -> None:
    view = step("action_finished", "remediating", "verifying", notified_before=True,
                attempt=AttemptView("disk_cleanup", "safe", "ok", "freed 2 GB"),
                kind="disk_high", details={"outcome": "ok", "summary": "freed 2 GB"})
    notice = notice_for(view, alert_severities=CRITICAL)
    assert notice is not None
    assert notice.text == ("🔧 System Alert: disk filling up on api (critical). Action taken: "
                           "disk_cleanup finished: freed 2 GB. Next: fresh health readings "
                           "confirm whether it worked." + REFERENCE)


def test_the_action_messages_and_their_payload_fields() -> None:
    start = step("remediate", "detected", "remediating",
                 details={"action": "render_restart", "tier": "major", "verdict": "notify"})
    (pam, log) = NotificationPolicy(channels=("pam", "log"))(start)
    assert (pam.channel, log.channel) == ("pam", "log")
    assert pam.payload == log.payload
    assert pam.payload["text"] == (
        "🔧 System Alert: high memory use on api (critical): starting render_restart (a major "
        "action, run without waiting for approval). You will hear how it ends." + REFERENCE)
    # It has only started: "Action taken" waits for the step that records its end.
    assert "Action taken" not in pam.payload["text"]
    assert {k: pam.payload[k] for k in ("incident_id", "state", "target", "kind", "action",
                                        "outcome", "severity", "event", "level")} == {
        "incident_id": 7, "state": "remediating", "target": "api", "kind": "memory_high",
        "action": "render_restart", "outcome": "started", "severity": "critical",
        "event": "action", "level": "warning",
    }
    done = step("action_finished", "remediating", "verifying", attempt=RESTARTED,
                details={"outcome": "timed_out", "summary": "gave no result within 30 s"})
    (finished,) = NotificationPolicy(channels=("pam",))(done)
    assert finished.payload["text"] == (
        "🔧 System Alert: high memory use on api (critical). Action taken: render_restart did "
        "not finish within its time limit. Next: the agent checks whether the problem is still "
        "there, then tries another action or hands the incident to the operators." + REFERENCE)
    assert {k: finished.payload[k] for k in ("state", "action", "outcome", "event")} == {
        "state": "verifying", "action": "render_restart", "outcome": "timed_out",
        "event": "action"}


@pytest.mark.parametrize(("view", "unknown"), [
    # the step that opens it: the row has no id yet
    (step("open", None, "detected", incident_id=None, details=MEMORY), None),
    # a step journaled while the database was away: a provisional id, replaced on replay
    (step("escalate", "detected", "escalated", incident_id=IncidentId(-1), actor="alice",
          reason="mine"), -1),
])
def test_a_text_written_before_the_incident_had_an_id_is_completed_when_sent(
    view: StepView, unknown: int | None,
) -> None:
    (row,) = NotificationPolicy(channels=("pam",))(view)
    assert row.payload["incident_id"] == unknown
    assert "incident-fsm show" not in row.payload["text"]
    sent = Outgoing(notification_id=1, incident_id=IncidentId(12), channel="pam",
                    dedupe_key="incident-12-seq-1-pam", attempt=1, payload=row.payload)
    assert sent.text == row.payload["text"] + " Incident 12 — details: incident-fsm show 12"


def test_a_text_written_with_its_incident_id_goes_out_as_written() -> None:
    (later,) = NotificationPolicy(channels=("pam",))(step("escalate", "detected", "escalated",
                                                          actor="alice", reason="mine"))
    assert Outgoing(notification_id=2, incident_id=IncidentId(7), channel="pam",
                    dedupe_key="incident-7-seq-2-pam", attempt=1,
                    payload=later.payload).text == later.payload["text"]


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
    rows = [(n.transition_seq, n.channel, n.payload["event"], n.payload["outcome"])
            for n in timeline.notifications]
    assert rows == [(1, "log", "opened", "detected"), (1, "pam", "opened", "detected"),
                    (2, "log", "action", "started"), (2, "pam", "action", "started"),
                    (3, "log", "action", "returned"), (3, "pam", "action", "returned"),
                    (4, "log", "resolved", "resolved"), (4, "pam", "resolved", "resolved")]
    assert {n.status for n in timeline.notifications} == {"pending"}
    assert timeline.notifications[0].payload["text"].startswith("⚠️ System Alert: ")
    assert len(nudges) == 4  # one per step that wrote rows; not for the duplicate open


async def test_action_taken_is_told_when_the_action_returned_with_its_outcome(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    engine = _engine(store, clock, policy)
    iid = (await engine.open(target="api", kind="memory_high", severity="critical",
                             reason="memory 91% > 90%")).incident.incident_id
    await engine.fire(iid, "remediate", actor="agent", reason=MACHINE, intent=RESTART)
    (run,) = await store.attempts(iid)
    assert run.id is not None
    clock.advance(3)
    await store.finish_action(run.id, outcome="failed", finished_at=clock.now(),
                              evidence={"summary": "render_restart raised ConnectError: x"})
    await engine.fire(iid, "action_finished", actor="agent",
                      reason="render_restart failed: render_restart raised ConnectError: x",
                      details={"outcome": "failed", "http_status": 503,
                               "summary": "render_restart raised ConnectError: x"})
    notes = [n for n in (await store.timeline(iid)).notifications if n.channel == "pam"]
    started, finished = (n.payload for n in notes[1:])
    assert "starting render_restart" in started["text"]
    assert "Action taken" not in started["text"]
    assert finished["text"] == (
        "🔧 System Alert: high memory use on api (critical). Action taken: render_restart "
        "failed (HTTP 503). Next: the agent checks whether the problem is still there, then "
        f"tries another action or hands the incident to the operators. Incident {iid} — "
        f"details: incident-fsm show {iid}")
    assert (finished["state"], finished["action"], finished["outcome"], notes[2].transition_seq
            ) == ("verifying", "render_restart", "failed", 3)


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
        ("log", "⚠️ System Alert: high memory use on api (warning): failover needs an "
                f"operator's approval before it runs. To run it: incident-fsm force {iid} "
                f"approve --reason TEXT. Incident {iid} — details: incident-fsm show {iid}"),
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
    from incident_fsm.runtime.sweeper import DeadlineSweeper

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


async def test_the_sweeper_knows_the_nearest_deadline_so_it_can_sleep_until_then(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    from incident_fsm.runtime.sweeper import LOOKAHEAD, DeadlineSweeper

    engine = _engine(store, clock, policy)
    sweeper = DeadlineSweeper(engine=engine, store=store, clock=clock)
    assert await sweeper.sweep() == [] and sweeper.pause() == LOOKAHEAD  # nothing due: the cap
    opened = (await engine.open(target="api", kind="memory_high", severity="critical",
                                reason="memory 95%")).incident
    assert opened.deadline_at is not None
    clock.advance((opened.deadline_at - clock.now()).total_seconds() - 12)
    assert await sweeper.sweep() == []
    assert sweeper.next_deadline == opened.deadline_at and sweeper.pause() == 12
    clock.advance(12)
    (late,) = await sweeper.sweep()
    assert late.incident_id == opened.incident_id and late.state == "escalated"
