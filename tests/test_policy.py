"""Policy: candidates per problem kind, and the rules that turn a proposal into a verdict."""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest

from incident_fsm.remediation.actions.base import ActionContext, Outcome, Tier
from incident_fsm.remediation.policy import (
    DEFAULT_POLICY,
    Limits,
    Situation,
    candidates,
    decide,
    default_kinds,
)
from incident_fsm.vocabulary import Verdict

from .support import incident


class Named:
    """Just enough of an action for choosing among them (choosing runs nothing)."""

    timeout = math.inf

    def __init__(self, name: str, tier: Tier = Tier.MAJOR, kinds: frozenset[str] = frozenset()):
        self.name, self.tier, self.kinds = name, tier, kinds

    async def run(self, ctx: ActionContext) -> Outcome:
        raise AssertionError("choosing must not run anything")


def available(*names: str, **extra: Named) -> dict[str, Named]:
    out = {n: Named(n) for n in names}
    out.update(extra)
    return out


ALL = available("disk_cleanup", "restart_celery_workers", "render_restart", "render_scale")


def test_default_candidates_follow_the_prd_order() -> None:
    assert candidates("memory_high", available=ALL) == [
        "restart_celery_workers", "render_restart", "render_scale"]
    assert candidates("disk_high", available=ALL) == ["disk_cleanup"]
    assert candidates("service_down:celery", available=ALL) == ["restart_celery_workers"]
    assert candidates("health_endpoint_down", available=ALL) == ["render_restart"]
    assert candidates("cpu_high", available=ALL) == ["render_scale"]
    assert candidates("service_down:redis", available=ALL) == []


def test_only_actions_the_target_has_count() -> None:
    web_only = available("render_restart", "render_scale")
    assert candidates("memory_high", available=web_only) == ["render_restart", "render_scale"]
    assert candidates("disk_high", available=web_only) == []


def test_configured_commands_join_the_kinds_they_name_and_an_override_is_exact() -> None:
    actions = available("render_restart", "restart_celery_workers",
                        flush_redis=Named("flush_redis", kinds=frozenset({"memory_high"})),
                        restart_workers=Named("restart_workers",
                                              kinds=frozenset({"service_down:celery"})))
    assert candidates("memory_high", available=actions) == [
        "restart_celery_workers", "render_restart", "flush_redis"]
    assert candidates("service_down:celery", available=actions) == [
        "restart_celery_workers", "restart_workers"]
    override = MappingProxyType({"memory_high": ("flush_redis", "nope", "render_restart")})
    assert candidates("memory_high", available=actions, override=override) == [
        "flush_redis", "render_restart"]
    assert candidates("service_down:celery", available=actions, override=override) == [
        "restart_celery_workers", "restart_workers"]


def test_default_kinds_come_from_the_default_policy() -> None:
    assert default_kinds("render_scale") == {"memory_high", "cpu_high"}
    assert default_kinds("restart_celery_workers") == {"memory_high", "service_down:celery"}
    assert set(DEFAULT_POLICY) >= {"disk_high", "memory_high"}


def situation(tier: Tier, *, recent: int = 0, reopenings: int = 0) -> Situation:
    return Situation(incident=incident(), action="an_action", tier=tier, recent_actions=recent,
                     recent_reopenings=reopenings)


@pytest.mark.parametrize(
    ("tier", "verdict", "rule"),
    [
        (Tier.SAFE, Verdict.AUTO, "RunSafeActionsAutomatically"),
        (Tier.MAJOR, Verdict.NOTIFY, "NotifyOnMajorActions"),
        (Tier.APPROVAL, Verdict.HOLD, "HoldApprovalTierActions"),
    ],
)
def test_tiers_map_to_verdicts(tier: Tier, verdict: Verdict, rule: str) -> None:
    intent = decide(situation(tier), Limits())
    assert (intent.action, intent.tier, intent.verdict, intent.dry_run) == (
        "an_action", tier.value, verdict, False)
    assert intent.why.startswith(rule + ":")


def test_a_spent_budget_holds_even_safe_actions() -> None:
    assert decide(situation(Tier.SAFE, recent=2), Limits()).verdict is Verdict.AUTO
    held = decide(situation(Tier.SAFE, recent=3), Limits())
    assert held.verdict is Verdict.HOLD
    assert held.why == ("StayWithinActionBudget: action budget spent: 3 actions on api in the "
                        "last 1800 s (limit 3)")


def test_flapping_pauses_automatic_action() -> None:
    assert decide(situation(Tier.SAFE, reopenings=2), Limits()).verdict is Verdict.AUTO
    held = decide(situation(Tier.SAFE, reopenings=3), Limits())
    assert held.verdict is Verdict.HOLD
    assert held.why.startswith("PauseWhenFlapping: flapping: api:disk_high reopened 3 times")


def test_monitor_only_marks_the_intent_as_a_dry_run_and_keeps_the_verdict() -> None:
    limits = Limits(auto_remediation=False)
    intent = decide(situation(Tier.SAFE), limits)
    assert intent.dry_run is True
    assert intent.verdict is Verdict.AUTO
    assert intent.why.startswith("DryRunWhenAutoRemediationOff: AUTO_REMEDIATION_ENABLED is off")
    assert decide(situation(Tier.APPROVAL), limits).verdict is Verdict.HOLD
