"""The remediator on real databases: strikes, deadlines, dry runs and guardrails in the graph."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import httpx
import pytest
import respx

from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import Incident, IncidentId, Timeline
from incident_fsm.persistence.attempts import ActionTally
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.actions.base import Action, ActionContext, Outcome, Tier
from incident_fsm.remediation.actions.command import CommandAction
from incident_fsm.remediation.actions.failover import Failover
from incident_fsm.remediation.actions.render import RenderApi, RenderRestart, RenderScale
from incident_fsm.remediation.policy import Limits
from incident_fsm.remediation.remediator import Remediator, Verification
from incident_fsm.reports.format import timeline_text
from incident_fsm.runtime.sweeper import DeadlineSweeper
from incident_fsm.settings import CommandSettings, FailoverSettings, RenderSettings
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

from .logcapture import captured_logs
from .support import (
    advance_when_waiting,
    alive,
    remediating_without_attempt,
    run_with_waits,
    wait_until,
)

pytestmark = pytest.mark.anyio
VERIFY = 90.0


class ScriptedVerifier:
    """Answers from a script (then "still failing"); the controller's real one reads samples."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def verify(self, incident: Incident) -> Verification:
        self.asked += 1
        cleared = self.answers.pop(0) if self.answers else False
        return Verification(cleared, "disk 62%" if cleared else "disk still 91%",
                            {"disk_pct": 62.0 if cleared else 91.0})


class Actions:
    def __init__(self, actions: Mapping[str, Action]) -> None:
        self.actions = actions

    def for_target(self, target: str) -> Mapping[str, Action]:
        return self.actions


def touch(tmp_path: Path, name: str, *, tier: str = "safe",
          kinds: Sequence[str] = ("disk_high",)) -> CommandAction:
    """A real command that leaves a mark each time it runs."""
    return CommandAction(CommandSettings(
        name=name, argv=(sys.executable, "-c",
                         f"open({str(tmp_path / name)!r}, 'a').write('ran\\n')"),
        tier=tier, kinds=tuple(kinds)))


def runs(tmp_path: Path, name: str) -> int:
    marker = tmp_path / name
    return marker.read_text().count("ran") if marker.exists() else 0


def remediator(engine: IncidentEngine, store: Store, clock: ManualClock,
               actions: Mapping[str, Action], verifier: Any, *,
               policy: Mapping[str, Sequence[str]] | None = None,
               limits: Limits | None = None) -> Remediator:
    return Remediator(engine=engine, store=store, clock=clock, actions=Actions(actions),
                      verifier=verifier, policy=policy, limits=limits)


async def open_incident(engine: IncidentEngine, *, target: str = "api",
                        kind: str = "disk_high") -> IncidentId:
    opened = await engine.open(target=target, kind=kind, severity="critical",
                               reason="disk 91% > 85% on two samples")
    return opened.incident.incident_id


async def drive(rem: Remediator, clock: ManualClock, iid: IncidentId,
                waits: Sequence[float] = ()) -> Incident:
    return await run_with_waits(clock, lambda: rem.drive(iid), waits)


def sleeper(name: str, pid_file: Path, *, timeout: float) -> CommandAction:
    """A real command that writes its pid and then sleeps for ten minutes."""
    return CommandAction(CommandSettings(
        name=name, argv=(sys.executable, "-c",
                         f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid()));"
                         " time.sleep(600)"),
        timeout=timeout, kinds=("disk_high",)))


def path(timeline: Timeline) -> list[tuple[str, str]]:
    return [(t.trigger, t.dest) for t in timeline.transitions]


async def test_three_failed_attempts_escalate_with_three_runs_and_no_fourth(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    actions = {n: touch(tmp_path, n) for n in ("first", "second", "third", "fourth")}
    rem = remediator(engine, store, clock, actions, ScriptedVerifier(),
                     policy=MappingProxyType({"disk_high": ("first", "second", "third",
                                                            "fourth")}),
                     limits=Limits(action_budget=10))
    iid = await open_incident(engine)
    final = await drive(rem, clock, iid, [VERIFY] * 3)

    assert final.state == "escalated"
    assert final.strikes == 3
    timeline = await store.timeline(iid)
    assert path(timeline) == [
        ("open", "detected"),
        ("remediate", "remediating"), ("action_finished", "verifying"),
        ("still_failing", "remediating"), ("action_finished", "verifying"),
        ("still_failing", "remediating"), ("action_finished", "verifying"),
        ("still_failing", "escalated"),
    ]
    assert [(r.action, r.outcome, r.verified) for r in timeline.actions] == [
        ("first", "ok", False), ("second", "ok", False), ("third", "ok", False)]
    assert [runs(tmp_path, n) for n in actions] == [1, 1, 1, 0]
    remediate = timeline.transitions[1]
    assert remediate.details["verdict"] == "auto"
    assert "RunSafeActionsAutomatically" in remediate.details["verdict_reason"]
    assert remediate.details["ranking"][0]["action"] == "first"
    assert timeline.transitions[2].details["outcome"] == "ok"
    assert timeline.transitions[3].details["verification"] == {"disk_pct": 91.0}
    assert "3 strikes (max 3)" in timeline.transitions[-1].reason


async def test_a_verified_attempt_resolves_the_incident(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    rem = remediator(engine, store, clock, {"cleanup": touch(tmp_path, "cleanup")},
                     ScriptedVerifier(True))
    iid = await open_incident(engine)
    final = await drive(rem, clock, iid, [VERIFY])
    assert final.state == "resolved"
    timeline = await store.timeline(iid)
    assert path(timeline)[-1] == ("recovered", "resolved")
    assert "verified after cleanup: disk 62%" in timeline.transitions[-1].reason
    assert [(r.outcome, r.verified) for r in timeline.actions] == [("ok", True)]
    assert final.strikes == 0


async def test_a_hung_action_is_killed_at_its_timeout_and_is_a_strike(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    hang = sleeper("hang", pid_file, timeout=20)
    rem = remediator(engine, store, clock, {"hang": hang}, ScriptedVerifier())
    iid = await open_incident(engine)

    async def steps() -> None:
        await wait_until(lambda: pid_file.exists() and pid_file.read_text() != "")
        await advance_when_waiting(clock, 20)
        await advance_when_waiting(clock, VERIFY)

    result: list[Incident] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(steps)
        result.append(await rem.drive(iid))

    timeline = await store.timeline(iid)
    [run] = timeline.actions
    assert (run.outcome, run.verified) == ("timed_out", False)
    assert "still running after 20 s: killed" in run.evidence["summary"]
    assert result[0].strikes == 1
    assert path(timeline)[-1] == ("still_failing", "escalated")  # nothing else to try
    await wait_until(lambda: not alive(pid_file.read_text()))


async def test_an_action_still_running_at_the_action_deadline_escalates_the_incident(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    slow = CommandAction(CommandSettings(name="slow", argv=("/bin/sleep", "3600"), timeout=900,
                                         kinds=("disk_high",)))
    rem = remediator(engine, store, clock, {"slow": slow}, ScriptedVerifier())
    iid = await open_incident(engine)
    final = await drive(rem, clock, iid, [300])
    assert final.state == "escalated"
    timeline = await store.timeline(iid)
    assert path(timeline)[-1] == ("timeout", "escalated")
    assert "still not done at the action deadline" in timeline.transitions[-1].reason
    assert [r.outcome for r in timeline.actions] == ["timed_out"]
    assert final.strikes == 1
    assert clock.now() - timeline.transitions[1].at == timedelta(seconds=300)


async def test_render_failing_until_the_deadline_escalates_the_incident_at_the_deadline(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    async with respx.mock() as router, httpx.AsyncClient() as http:
        route = router.post("https://api.render.test/v1/services/srv-web/restart").mock(
            return_value=httpx.Response(503))
        api = RenderApi(RenderSettings(api_url="https://api.render.test/v1"), http=http,
                        environ={"RENDER_API_KEY": "k" * 20})
        rem = remediator(engine, store, clock,
                         {"render_restart": RenderRestart(api, service_id="srv-web", kinds=())},
                         ScriptedVerifier())
        iid = await open_incident(engine, kind="health_endpoint_down")
        # Back-off 1, 2, 4, 8, 16, then 30 s eight times (t = 271 s), then the last 29 s.
        final = await drive(rem, clock, iid, [1, 2, 4, 8, 16, *[30] * 8, 29])
    assert final.state == "escalated"
    timeline = await store.timeline(iid)
    assert path(timeline)[-1] == ("timeout", "escalated")
    assert timeline.transitions[-1].at - timeline.transitions[1].at == timedelta(seconds=300)
    [run] = timeline.actions
    assert (run.outcome, run.evidence["attempts"], run.evidence["http_status"]) == (
        "timed_out", 14, 503)
    assert route.call_count == 14
    assert final.strikes == 1


CLEARED_ANYWAY = "cleared without a working action"


async def test_a_restart_that_got_404_is_no_success_when_the_problem_cleared_anyway(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    async with respx.mock() as router, httpx.AsyncClient() as http:
        router.post("https://api.render.test/v1/services/srv-web/restart").mock(
            return_value=httpx.Response(404))
        api = RenderApi(RenderSettings(api_url="https://api.render.test/v1"), http=http,
                        environ={"RENDER_API_KEY": "k" * 20})
        rem = remediator(engine, store, clock,
                         {"render_restart": RenderRestart(api, service_id="srv-web", kinds=())},
                         ScriptedVerifier(True))
        iid = await open_incident(engine, kind="health_endpoint_down")
        final = await drive(rem, clock, iid, [VERIFY])
    assert final.state == "resolved"
    timeline = await store.timeline(iid)
    [run] = timeline.actions
    # The problem did clear after the attempt (that is what `verified` records) ...
    assert (run.outcome, run.verified, run.evidence["http_status"]) == ("failed", True, 404)
    recovered = timeline.transitions[-1]
    assert recovered.trigger == "recovered"
    # ... but the restart did not do it, and nothing may learn that it did.
    assert CLEARED_ANYWAY in recovered.reason and "verified after" not in recovered.reason
    assert recovered.details["recovery"] == CLEARED_ANYWAY
    assert recovered.details["action_outcome"] == "failed"
    assert await store.action_record("health_endpoint_down") == {
        "render_restart": ActionTally(0, 1)}
    (stats,) = (await store.statistics()).actions
    assert (stats.verified, stats.failed, stats.success_rate) == (0, 1, 0.0)
    line = next(ln for ln in timeline_text(timeline).splitlines()
                if "render_restart [major]" in ln)
    assert f"failed, {CLEARED_ANYWAY}" in line and ", verified" not in line


class Reporting:
    """A plug-in that changes nothing and reports a fixed outcome."""

    tier, kinds, timeout = Tier.SAFE, frozenset({"disk_high"}), 10.0

    def __init__(self, name: str, outcome: Outcome) -> None:
        self.name, self.outcome = name, outcome

    async def run(self, ctx: ActionContext) -> Outcome:
        return self.outcome


@pytest.mark.parametrize(("outcome", "stored"), [
    (Outcome.ok("restart requested", http_status=404), "failed"),  # says ok, got an error
    (Outcome.ok("restart requested", http_status=503), "failed"),
    (Outcome.timed_out("no answer within 10 s"), "timed_out"),
    (None, "failed"),  # approved by name, but the target has no such action
])
async def test_an_attempt_whose_action_failed_is_never_a_verified_success(
    store: Store, engine: IncidentEngine, clock: ManualClock, outcome: Outcome | None,
    stored: str
) -> None:
    actions: dict[str, Action] = {} if outcome is None else {
        "fix": Reporting("fix", outcome)}
    rem = remediator(engine, store, clock, actions, ScriptedVerifier(True))
    iid = await open_incident(engine)
    await engine.fire(iid, "hold", actor="agent", reason="needs approval")
    await engine.fire(iid, "approve", actor="alice", reason="go",
                      intent=ActionIntent("fix", "approval", Verdict.APPROVED, "approved"))
    final = await drive(rem, clock, iid, [VERIFY])
    assert final.state == "resolved"
    timeline = await store.timeline(iid)
    [run] = timeline.actions
    assert (run.outcome, run.verified) == (stored, True)
    assert CLEARED_ANYWAY in timeline.transitions[-1].reason
    assert timeline.transitions[-1].details["recovery"] == CLEARED_ANYWAY
    assert await store.action_record("disk_high") == {"fix": ActionTally(0, 1)}


async def test_an_action_that_worked_and_was_verified_is_a_success(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    rem = remediator(engine, store, clock,
                     {"fix": Reporting("fix", Outcome.ok("done", http_status=202))},
                     ScriptedVerifier(True))
    iid = await open_incident(engine)
    final = await drive(rem, clock, iid, [VERIFY])
    timeline = await store.timeline(iid)
    assert final.state == "resolved"
    assert [(r.outcome, r.verified) for r in timeline.actions] == [("ok", True)]
    assert "verified after fix" in timeline.transitions[-1].reason
    assert "recovery" not in timeline.transitions[-1].details
    assert await store.action_record("disk_high") == {"fix": ActionTally(1, 0)}


class Stuck:
    """An action that ignores cancellation until released: it never finishes on its own."""

    name = "stuck"
    tier = Tier.SAFE
    kinds = frozenset({"disk_high"})
    timeout = 600.0

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def run(self, ctx: ActionContext) -> Outcome:
        self.started.set()
        with anyio.CancelScope(shield=True):
            await self.release.wait()
        return Outcome.ok("finally done")


async def test_the_sweeper_escalates_an_attempt_that_never_finishes_at_the_deadline(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    stuck = Stuck()
    rem = remediator(engine, store, clock, {"stuck": stuck}, ScriptedVerifier())
    sweeper = DeadlineSweeper(engine=engine, store=store, clock=clock)
    iid = await open_incident(engine)
    result: list[Incident] = []

    async def go() -> None:
        result.append(await rem.drive(iid))

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await stuck.started.wait()
        clock.advance(299)
        assert await sweeper.sweep() == []
        clock.advance(1)
        [escalated] = await sweeper.sweep()
        assert escalated.state == "escalated"
        timeline = await store.timeline(iid)
        assert path(timeline)[-1] == ("timeout", "escalated")
        assert "the action did not finish before the action deadline" in \
            timeline.transitions[-1].reason
        assert [r.outcome for r in timeline.actions] == ["timed_out"]
        assert (await store.get_incident(iid)).strikes == 1
        stuck.release.set()

    # The late finish changes nothing: the attempt's outcome and the escalation stand.
    assert result[0].state == "escalated"
    after = await store.timeline(iid)
    assert len(after.transitions) == len(timeline.transitions)
    assert [r.outcome for r in after.actions] == ["timed_out"]


class Raising:
    name, tier, kinds, timeout = "raising", Tier.SAFE, frozenset({"disk_high"}), 10.0

    async def run(self, ctx: ActionContext) -> Outcome:
        raise RuntimeError("boom with password=hunter2")


class Garbage:
    name, tier, kinds, timeout = "garbage", Tier.SAFE, frozenset({"disk_high"}), 10.0

    async def run(self, ctx: ActionContext) -> Any:
        return {"status": "ok"}


async def test_an_action_that_raises_or_returns_garbage_is_a_failed_attempt(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    rem = remediator(engine, store, clock, {"raising": Raising(), "garbage": Garbage(),
                                            "cleanup": touch(tmp_path, "cleanup")},
                     ScriptedVerifier(False, False, True),
                     policy={"disk_high": ("raising", "garbage", "cleanup")})
    iid = await open_incident(engine)
    final = await drive(rem, clock, iid, [VERIFY] * 3)
    assert final.state == "resolved"
    runs_ = (await store.timeline(iid)).actions
    assert [(r.action, r.outcome) for r in runs_] == [
        ("raising", "failed"), ("garbage", "failed"), ("cleanup", "ok")]
    assert runs_[0].evidence["summary"] == "raising raised RuntimeError: boom with password=***"
    assert runs_[1].evidence["summary"] == "garbage returned dict, not an outcome"


async def test_monitor_only_runs_nothing_records_the_would_be_action_and_escalates_at_deadline(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    async with respx.mock(assert_all_called=False) as router, httpx.AsyncClient() as http:
        api = RenderApi(RenderSettings(api_url="https://api.render.test/v1"), http=http,
                        environ={"RENDER_API_KEY": "k" * 20})
        actions: dict[str, Action] = {
            "restart_celery_workers": touch(tmp_path, "restart_celery_workers",
                                            kinds=("memory_high",)),
            "render_restart": RenderRestart(api, service_id="srv-web", kinds=()),
            "render_scale": RenderScale(api, service_id="srv-web", kinds=()),
        }
        rem = remediator(engine, store, clock, actions, ScriptedVerifier(),
                         limits=Limits(auto_remediation=False))
        iid = await open_incident(engine, kind="memory_high")
        assert (await rem.drive(iid)).state == "detected"
        assert (await rem.drive(iid)).state == "detected"  # asked again: recorded once
        assert router.calls.call_count == 0
    assert runs(tmp_path, "restart_celery_workers") == 0

    timeline = await store.timeline(iid)
    [run] = timeline.actions
    assert (run.action, run.dry_run, run.outcome) == ("restart_celery_workers", True, "skipped")
    assert run.evidence["summary"].startswith("would run ")
    assert run.evidence["dry_run"] is True
    assert run.evidence["verdict"] == "auto"
    assert "DryRunWhenAutoRemediationOff" in run.evidence["verdict_reason"]
    assert path(timeline) == [("open", "detected")]
    assert (await store.count_strikes(iid)) == 0

    clock.advance(120)
    [escalated] = await DeadlineSweeper(engine=engine, store=store, clock=clock).sweep()
    assert escalated.state == "escalated"
    assert "no action started before the detect deadline" in \
        (await store.timeline(iid)).transitions[-1].reason


async def test_monitor_only_leaves_an_incident_free_to_resolve_by_itself(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    rem = remediator(engine, store, clock, {"cleanup": touch(tmp_path, "cleanup")},
                     ScriptedVerifier(), limits=Limits(auto_remediation=False))
    iid = await open_incident(engine)
    await rem.drive(iid)
    resolved = await engine.fire(iid, "recovered", actor="agent", reason="disk back at 60%")
    assert resolved.state == "resolved"
    assert runs(tmp_path, "cleanup") == 0


async def test_a_spent_action_budget_holds_and_escalates_until_the_window_passes(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    # Three actions on "api" in the last half hour, by other incidents.
    for kind in ("memory_high", "cpu_high", "health_endpoint_down"):
        other = await open_incident(engine, kind=kind)
        await engine.fire(other, "remediate", actor="agent", reason="earlier", intent=ActionIntent(
            "render_restart", "major", Verdict.NOTIFY, "earlier"))
        clock.advance(60)
    rem = remediator(engine, store, clock, {"cleanup": touch(tmp_path, "cleanup")},
                     ScriptedVerifier(True))
    iid = await open_incident(engine)
    held = await rem.drive(iid)
    assert held.state == "escalated"
    timeline = await store.timeline(iid)
    assert path(timeline)[-1] == ("hold", "escalated")
    details = timeline.transitions[-1].details
    assert details["verdict"] == "hold"
    assert "StayWithinActionBudget: action budget spent: 3 actions on api" in \
        details["verdict_reason"]
    assert timeline.actions == []
    assert runs(tmp_path, "cleanup") == 0

    # Another target has its own budget; and once the window has passed, "api" may act again.
    elsewhere = await open_incident(engine, target="worker")
    assert (await drive(rem, clock, elsewhere, [VERIFY])).state == "resolved"
    await engine.fire(iid, "resolve", actor="ops", reason="handled by hand")
    clock.advance(30 * 60)
    again = await open_incident(engine)
    rem = remediator(engine, store, clock, {"cleanup": touch(tmp_path, "cleanup")},
                     ScriptedVerifier(True))
    assert (await drive(rem, clock, again, [VERIFY])).state == "resolved"
    assert runs(tmp_path, "cleanup") == 2


async def test_flapping_pauses_automatic_action_and_escalates(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    iid = await open_incident(engine)
    for _ in range(3):
        await engine.fire(iid, "recovered", actor="agent", reason="cleared by itself")
        clock.advance(300)
        await engine.fire(iid, "reopen", actor="agent", reason="back again")
    rem = remediator(engine, store, clock, {"cleanup": touch(tmp_path, "cleanup")},
                     ScriptedVerifier(True))
    held = await rem.drive(iid)
    assert held.state == "escalated"
    assert held.flap_count == 3
    details = (await store.timeline(iid)).transitions[-1].details
    assert details["verdict"] == "hold"
    assert "PauseWhenFlapping: flapping: api:disk_high reopened 3 times" in \
        details["verdict_reason"]
    assert runs(tmp_path, "cleanup") == 0


async def test_an_approval_tier_action_is_held_for_an_operator(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    async with httpx.AsyncClient() as http:
        settings = FailoverSettings(argv=("/usr/bin/touch", str(tmp_path / "failed-over")))
        failover = Failover(settings, http=http, environ={})
        rem = remediator(engine, store, clock, {"failover": failover}, ScriptedVerifier())
        iid = await open_incident(engine, kind="health_endpoint_down")
        held = await rem.drive(iid)
    assert held.state == "escalated"
    last = (await store.timeline(iid)).transitions[-1]
    assert (last.trigger, last.details["action"], last.details["verdict"]) == (
        "hold", "failover", "hold")
    assert "HoldApprovalTierActions: failover is approval tier" in last.details["verdict_reason"]
    assert not (tmp_path / "failed-over").exists()


class PlainTier:
    """A plug-in whose tier is a plain string, one of them unknown."""

    kinds, timeout = frozenset({"disk_high"}), 10.0

    def __init__(self, name: str, tier: str) -> None:
        self.name, self.tier = name, tier
        self.ran = False

    async def run(self, ctx: ActionContext) -> Outcome:
        self.ran = True
        return Outcome.ok("ran")


@pytest.mark.parametrize("tier", ["approval", "whatever"])
async def test_plug_in_tiers_given_as_text_are_honoured_and_unknown_ones_held(
    store: Store, engine: IncidentEngine, clock: ManualClock, tier: str
) -> None:
    action = PlainTier("custom", tier)
    rem = remediator(engine, store, clock, {"custom": action}, ScriptedVerifier())
    iid = await open_incident(engine)
    held = await rem.drive(iid)
    assert held.state == "escalated"
    assert not action.ran
    assert "HoldApprovalTierActions" in (await store.timeline(iid)).transitions[-1].details[
        "verdict_reason"]


async def test_no_candidate_means_hold(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    rem = remediator(engine, store, clock, {}, ScriptedVerifier())
    iid = await open_incident(engine, kind="service_down:redis")
    held = await rem.drive(iid)
    assert held.state == "escalated"
    assert "no action is configured for service_down:redis on api" in \
        (await store.timeline(iid)).transitions[-1].reason


async def test_an_attempt_left_unfinished_by_a_crash_is_judged_not_run_again(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    rem = remediator(engine, store, clock, {"cleanup": touch(tmp_path, "cleanup")},
                     ScriptedVerifier(True))
    iid = await open_incident(engine)
    # A previous process recorded the attempt, began running it, and died before it finished.
    await engine.fire(iid, "remediate", actor="agent", reason="before the crash",
                      intent=ActionIntent("cleanup", "safe", Verdict.AUTO, "safe tier"))
    (started,) = (await store.timeline(iid)).actions
    assert await store.claim_attempt(started.id or 0, at=clock.now())
    final = await drive(rem, clock, iid, [VERIFY])
    assert final.state == "resolved"
    timeline = await store.timeline(iid)
    assert [(r.outcome, r.verified) for r in timeline.actions] == [("interrupted", True)]
    assert "cleanup was interrupted and is not run again" in timeline.transitions[2].reason
    # Nobody knows whether the interrupted cleanup did it: no success to learn from.
    assert CLEARED_ANYWAY in timeline.transitions[-1].reason
    assert await store.action_record("disk_high") == {"cleanup": ActionTally(0, 1)}
    assert runs(tmp_path, "cleanup") == 0


async def test_an_approved_attempt_that_never_started_runs_exactly_once(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    rem = remediator(engine, store, clock, {"cleanup": touch(tmp_path, "cleanup")},
                     ScriptedVerifier(True))
    iid = await open_incident(engine)
    await engine.fire(iid, "hold", actor="agent", reason="needs approval",
                      intent=ActionIntent("cleanup", "approval", Verdict.HOLD, "approval tier"))
    # An operator approves from the CLI: the attempt is recorded, nothing runs it yet.
    await engine.fire(iid, "approve", actor="alice", reason="go",
                      intent=ActionIntent("cleanup", "approval", Verdict.APPROVED, "approved"))
    assert runs(tmp_path, "cleanup") == 0
    final = await drive(rem, clock, iid, [VERIFY])
    assert final.state == "resolved"
    (run,) = (await store.timeline(iid)).actions
    assert (run.outcome, run.verified) == ("ok", True)
    assert run.executing_at is not None
    assert runs(tmp_path, "cleanup") == 1
    # Driving again (a second replica, a restart) never runs it a second time.
    assert not await store.claim_attempt(run.id or 0, at=clock.now())
    await rem.drive(iid)
    assert runs(tmp_path, "cleanup") == 1


async def test_concurrent_sweepers_escalate_once(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    iids = [await open_incident(engine, target=f"t{n}") for n in range(3)]
    clock.advance(121)
    sweepers = [DeadlineSweeper(engine=engine, store=store, clock=clock) for _ in range(3)]
    moved: list[Incident] = []

    async def sweep(sweeper: DeadlineSweeper) -> None:
        moved.extend(await sweeper.sweep())

    async with anyio.create_task_group() as tg:
        for sweeper in sweepers:
            tg.start_soon(sweep, sweeper)
    assert sorted(i.incident_id for i in moved) == sorted(iids)
    for iid in iids:
        assert [t.trigger for t in (await store.timeline(iid)).transitions] == ["open", "timeout"]


async def test_stopping_the_agent_mid_action_kills_it_and_a_restart_judges_it_without_rerun(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    slow = sleeper("slow", pid_file, timeout=900)
    rem = remediator(engine, store, clock, {"slow": slow}, ScriptedVerifier(True))
    iid = await open_incident(engine)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rem.drive, iid)
        await wait_until(lambda: pid_file.exists() and pid_file.read_text() != "")
        tg.cancel_scope.cancel()  # the agent is shutting down
    pid = pid_file.read_text()
    await wait_until(lambda: not alive(pid))
    [run] = (await store.timeline(iid)).actions
    assert run.outcome == "interrupted"
    assert (await store.get_incident(iid)).state == "remediating"

    pid_file.unlink()
    final = await drive(rem, clock, iid, [VERIFY])  # the restarted agent picks it up
    assert final.state == "resolved"
    assert not pid_file.exists()  # not run again
    assert [(r.outcome, r.verified) for r in (await store.timeline(iid)).actions] == [
        ("interrupted", True)]


async def test_remediating_with_no_attempt_on_record_is_escalated_once(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    iid = await remediating_without_attempt(engine, store)
    rem = remediator(engine, store, clock, {"clean": touch(tmp_path, "clean")},
                     ScriptedVerifier(True))
    with captured_logs() as logs:
        first = await rem.drive(iid)
        again = await rem.drive(iid)  # the next scan finds it escalated: nothing to do
    assert first.state == again.state == "escalated"
    timeline = await store.timeline(iid)
    assert path(timeline)[-1] == ("escalate", "escalated")
    assert [t.trigger for t in timeline.transitions].count("escalate") == 1
    assert timeline.transitions[-1].reason == "remediating with no attempt on record"
    assert timeline.actions == [] and runs(tmp_path, "clean") == 0  # nothing was run
    warned = [line for line in logs if line.startswith("WARNING|")]
    assert len(warned) == 1 and "no attempt on record" in warned[0]
