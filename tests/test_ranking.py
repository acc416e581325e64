"""Learned choice: verified history decides, smoothing lets new actions in, tried ones wait."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import Incident
from incident_fsm.persistence.attempts import ActionTally
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.actions.base import Action
from incident_fsm.remediation.actions.command import CommandAction
from incident_fsm.remediation.actions.render import RenderApi, RenderRestart, RenderScale
from incident_fsm.remediation.ranking import learned_rankings, rank, score
from incident_fsm.remediation.remediator import Remediator, Verification
from incident_fsm.settings import CommandSettings, RenderSettings
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

pytestmark = pytest.mark.anyio


def test_score_is_the_beta_posterior_mean() -> None:
    assert score(0, 0) == 0.5
    assert score(3, 1) == pytest.approx(4 / 6)
    assert score(0, 4) == pytest.approx(1 / 6)


def test_rank_orders_by_score_excludes_tried_and_keeps_policy_order_on_ties() -> None:
    record = {"b": ActionTally(successes=4, failures=1), "c": ActionTally(0, 5)}
    ranked = rank(["a", "b", "c", "d"], record)
    assert [r.action for r in ranked] == ["b", "a", "d", "c"]  # a and d tie: policy order
    assert [r.action for r in rank(["a", "b", "c"], record, exclude={"b"})] == ["a", "c"]
    assert ranked[0].as_dict() == {"action": "b", "score": 0.7143, "successes": 4,
                                   "failures": 1}


async def seed(store: Store, engine: IncidentEngine, clock: ManualClock, *, target: str,
               kind: str, action: str, outcome: str, verified: bool | None,
               dry_run: bool = False) -> None:
    """One past attempt of `action` on an incident of `kind`, ended as given."""
    opened = await engine.open(target=target, kind=kind, severity="critical", reason="seeded")
    iid = opened.incident.incident_id
    intent = ActionIntent(action, "major", Verdict.NOTIFY, "seeded history", dry_run=dry_run)
    if dry_run:
        run = await store.record_action(iid, intent, at=clock.now())
    else:
        await engine.fire(iid, "remediate", actor="agent", reason="seeded", intent=intent)
        run = (await store.attempts(iid))[-1]
    assert run.id is not None
    await store.finish_action(run.id, outcome=outcome, finished_at=clock.advance(1))
    if verified is not None:
        await store.judge_action(run.id, verified=verified)


async def test_the_record_counts_verified_success_not_returning_ok(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    history = [
        ("render_restart", "ok", True), ("render_restart", "ok", True),
        ("render_restart", "failed", False),
        ("restart_celery_workers", "ok", False), ("restart_celery_workers", "ok", False),
        ("restart_celery_workers", "ok", False),
        ("render_scale", "timed_out", None),  # never judged: still a failure
        ("render_scale", "ok", None),  # not judged yet: neither
    ]
    for n, (action, outcome, verified) in enumerate(history):
        await seed(store, engine, clock, target=f"svc-{n}", kind="memory_high", action=action,
                   outcome=outcome, verified=verified)
    await seed(store, engine, clock, target="dry", kind="memory_high", action="render_scale",
               outcome="skipped", verified=None, dry_run=True)
    await seed(store, engine, clock, target="other", kind="disk_high", action="render_restart",
               outcome="ok", verified=False)

    record = await store.action_record("memory_high")
    assert record == {
        "render_restart": ActionTally(2, 1),
        "restart_celery_workers": ActionTally(0, 3),
        "render_scale": ActionTally(0, 1),
    }
    assert await store.action_record("cpu_high") == {}


class NeverAsked:
    async def verify(self, incident: Incident) -> Verification:
        raise AssertionError("choosing does not verify")


async def test_the_best_verified_action_is_chosen_and_the_useless_one_sinks(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    # restart_celery_workers always "succeeds" but never fixes memory; render_restart does.
    for n in range(4):
        await seed(store, engine, clock, target=f"old-{n}", kind="memory_high",
                   action="restart_celery_workers", outcome="ok", verified=False)
    for n in range(3):
        await seed(store, engine, clock, target=f"older-{n}", kind="memory_high",
                   action="render_restart", outcome="ok", verified=True)
    api = RenderApi(RenderSettings(), http=httpx.AsyncClient(), environ={})
    actions: dict[str, Action] = {
        "restart_celery_workers": CommandAction(CommandSettings(
            name="restart_celery_workers", argv=("/usr/bin/touch", str(tmp_path / "x")))),
        "render_restart": RenderRestart(api, service_id="srv-web", kinds=()),
        "render_scale": RenderScale(api, service_id="srv-web", kinds=()),
    }

    class Actions:
        def for_target(self, target: str) -> dict[str, Action]:
            return actions

    remediator = Remediator(engine=engine, store=store, clock=clock, actions=Actions(),
                            verifier=NeverAsked())
    opened = await engine.open(target="api", kind="memory_high", severity="critical",
                               reason="memory 91%")
    choice = await remediator.choose(opened.incident)
    assert [r.action for r in choice.ranking] == [
        "render_restart", "render_scale", "restart_celery_workers"]
    assert choice.intent is not None
    assert choice.intent.action == "render_restart"
    assert choice.intent.verdict is Verdict.NOTIFY
    assert choice.intent.why.startswith(
        "ranked 1 of 3 for memory_high (3 verified, 0 failed, score 0.80)")
    assert choice.details()["ranking"][1] == {"action": "render_scale", "score": 0.5,
                                              "successes": 0, "failures": 0}

    # Once render_restart was tried in this incident, the untried one comes next.
    await engine.fire(opened.incident.incident_id, "remediate", actor="agent", reason="test",
                      intent=choice.intent)
    incident = await store.get_incident(opened.incident.incident_id)
    again = await remediator.choose(incident)
    assert again.intent is not None and again.intent.action == "render_scale"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("outcome", ["failed", "timed_out", "interrupted"])
async def test_an_action_that_failed_is_no_success_even_when_the_problem_cleared_after(
    store: Store, engine: IncidentEngine, clock: ManualClock, outcome: str
) -> None:
    # A restart that got 404 twice, each time followed by the problem clearing by itself,
    # against a scale that worked once and did not help once.
    for n in range(2):
        await seed(store, engine, clock, target=f"gone-{n}", kind="memory_high",
                   action="render_restart", outcome=outcome, verified=True)
    await seed(store, engine, clock, target="scaled-0", kind="memory_high",
               action="render_scale", outcome="ok", verified=True)
    await seed(store, engine, clock, target="scaled-1", kind="memory_high",
               action="render_scale", outcome="ok", verified=False)

    assert await store.action_record("memory_high") == {
        "render_restart": ActionTally(0, 2), "render_scale": ActionTally(1, 1)}
    ranked = (await learned_rankings(store, ["memory_high"]))["memory_high"]
    assert [r.action for r in ranked][:2] == ["restart_celery_workers", "render_scale"]
    assert ranked[-1].action == "render_restart"
    by_action = {a.action: a for a in (await store.statistics()).actions}
    restart, scale = by_action["render_restart"], by_action["render_scale"]
    assert (restart.attempts, restart.verified, restart.failed, restart.success_rate) == (
        2, 0, 2, 0.0)
    assert (scale.verified, scale.failed, scale.success_rate) == (1, 1, 0.5)
