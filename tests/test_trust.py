"""`trust`: the record each action earned, and the tier it recommends by the stated rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import anyio
from click.testing import CliRunner

from incident_fsm.cli import main as cli
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.trust import Run, judge
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

OK = Run("approval", verified=True, failed=False)
BAD = Run("approval", verified=False, failed=True)


def test_five_verified_approval_runs_earn_major() -> None:
    t = judge("failover", "memory_high", [OK] * 5, tier=None, dry_runs_labelled_real=0, days=30)
    assert (t.recommendation, t.recommended_tier) == ("promote", "major")
    assert t.why == "approval → major: 5 of 5 approval runs verified in 30 days"


def test_fewer_runs_or_one_unverified_keep_the_tier_and_say_why() -> None:
    four = judge("failover", "k", [OK] * 4, tier=None, dry_runs_labelled_real=2, days=30)
    assert (four.recommendation, four.recommended_tier) == ("keep", "approval")
    assert four.why == ("4 of the 5 verified approval runs promotion needs; 2 dry run(s) on "
                        "incidents labelled real")
    one_bad = judge("failover", "k", [OK] * 5 + [BAD], tier=None, dry_runs_labelled_real=0,
                    days=30)
    assert one_bad.recommendation == "keep" and "1 of 6 approval runs not verified" in one_bad.why


def test_two_failures_in_the_last_five_demote_one_tier() -> None:
    major_ok, major_bad = Run("major", True, False), Run("major", False, True)
    t = judge("render_restart", "k", [major_ok] * 8 + [major_bad, major_ok, major_bad],
              tier=None, dry_runs_labelled_real=0, days=30)
    assert (t.recommendation, t.recommended_tier) == ("demote", "approval")
    assert t.why == "major → approval: 2 of the last 5 runs failed"
    safe = judge("disk_cleanup", "k", [Run("safe", False, True)] * 2, tier=None,
                 dry_runs_labelled_real=0, days=30)
    assert (safe.recommendation, safe.recommended_tier) == ("demote", "major")
    # Failures long ago, none in the last five: no demotion.
    old = judge("render_restart", "k", [major_bad] * 2 + [major_ok] * 5, tier=None,
                dry_runs_labelled_real=0, days=30)
    assert old.recommendation == "keep"


def test_ten_clean_major_runs_earn_safe_and_safe_is_as_high_as_it_goes() -> None:
    major = judge("render_restart", "k", [Run("major", True, False)] * 10, tier=None,
                  dry_runs_labelled_real=0, days=30)
    assert (major.recommendation, major.recommended_tier) == ("promote", "safe")
    safe = judge("disk_cleanup", "k", [Run("safe", True, False)] * 20, tier=None,
                 dry_runs_labelled_real=0, days=30)
    assert (safe.recommendation, safe.why) == ("keep", "20 of 20 runs verified in 30 days")


def _seed(url: str) -> None:
    async def work() -> None:
        clock = ManualClock(datetime.now(UTC))
        async with Store(url) as store:
            engine = IncidentEngine(store, clock=clock)
            for n in range(5):
                incident = (await engine.open(target=f"t{n}", kind="memory_high",
                                              severity="critical", reason="memory 92%")
                            ).incident
                run = await store.record_action(
                    incident.incident_id,
                    ActionIntent("failover", "approval", Verdict.APPROVED, "approved"),
                    at=clock.now())
                await store.finish_action(run.id or 0, outcome="ok", finished_at=clock.now())
                await store.judge_action(run.id or 0, verified=True)
            watched = (await engine.open(target="w", kind="memory_high", severity="critical",
                                         reason="memory 91%")).incident
            dry = await store.record_action(
                watched.incident_id,
                ActionIntent("failover", "approval", Verdict.HOLD, "monitor-only",
                             dry_run=True), at=clock.now())
            await store.finish_action(dry.id or 0, outcome="skipped", finished_at=clock.now())
            await store.label_incident(watched.incident_id, "real", actor="alice",
                                       reason="it was real", at=clock.now())
    anyio.run(work)


def test_trust_reads_the_record_from_the_database(db_url: str) -> None:
    _seed(db_url)
    result = CliRunner().invoke(cli.cli, ["trust", "--json", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    [failover] = json.loads(result.output)
    assert (failover["action"], failover["kind"], failover["attempts"], failover["verified"],
            failover["dry_runs_labelled_real"], failover["recommendation"]) == (
        "failover", "memory_high", 5, 5, 1, "promote")
    text = CliRunner().invoke(cli.cli, ["trust", "--database-url", db_url]).output
    assert "approval → major: 5 of 5 approval runs verified in 30 days" in text
    assert "a tier changes only when a person changes it in the configuration" in text
