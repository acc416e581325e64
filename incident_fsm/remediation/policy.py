"""Policy: which actions are candidates for a problem, and whether one may run now.

Two parts. `DEFAULT_POLICY` maps each problem kind to its candidate
actions, best first (operators override it per kind with `[policy]`); only
actions the target actually has count. Then a short list of rules, each a
small class named as the sentence it enforces, judges one proposed action
against the facts of the moment and yields the verdict the engine stores
with the transition: `auto` (safe tier), `notify` (major tier) or `hold`
(approval tier, budget spent, flapping), with the reason.

Rules are pure: the remediator gathers the facts (`Situation`) from the
store first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import Incident
from incident_fsm.remediation.actions.base import Action, Tier
from incident_fsm.settings import (
    CPU_HIGH,
    DISK_HIGH,
    HEALTH_ENDPOINT_DOWN,
    MEMORY_HIGH,
    AgentSettings,
    service_down,
)
from incident_fsm.vocabulary import Verdict

DEFAULT_POLICY: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    DISK_HIGH: ("disk_cleanup",),
    MEMORY_HIGH: ("restart_celery_workers", "render_restart", "render_scale"),
    service_down("celery"): ("restart_celery_workers",),
    HEALTH_ENDPOINT_DOWN: ("render_restart",),
    CPU_HIGH: ("render_scale",),
})


def default_kinds(action: str) -> frozenset[str]:
    """The problem kinds the default policy lists `action` for."""
    return frozenset(kind for kind, names in DEFAULT_POLICY.items() if action in names)


def candidates(kind: str, *, available: Mapping[str, Action],
               override: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Candidate actions for `kind`, best first, limited to those the target has.

    An override for the kind is taken as the operator's exact list. Without
    one, the default list comes first, then any other available action that
    names the kind itself (a configured command with `kinds = [...]`).
    """
    if override is not None and kind in override:
        names: Iterable[str] = override[kind]
    else:
        listed = DEFAULT_POLICY.get(kind, ())
        extra = sorted(n for n, a in available.items() if kind in a.kinds and n not in listed)
        names = (*listed, *extra)
    return [n for n in dict.fromkeys(names) if n in available]


@dataclass(frozen=True)
class Limits:
    """The guardrail numbers (from `[agent]`)."""

    auto_remediation: bool = True
    action_budget: int = 3
    action_budget_window: float = 1800.0
    flap_threshold: int = 3
    flap_window: float = 3600.0

    @classmethod
    def from_settings(cls, agent: AgentSettings) -> Limits:
        return cls(auto_remediation=agent.auto_remediation, action_budget=agent.action_budget,
                   action_budget_window=agent.action_budget_window,
                   flap_threshold=agent.flap_threshold, flap_window=agent.flap_window)


@dataclass(frozen=True)
class Situation:
    """The facts one decision rests on."""

    incident: Incident
    action: str
    tier: Tier
    #: real (not dry-run) actions on this target inside the budget window, all incidents
    recent_actions: int
    #: reopenings of this fingerprint inside the flap window
    recent_reopenings: int
    #: the silence in force on this target and kind, described (None: not silenced)
    silence: str | None = None


@dataclass(frozen=True)
class Ruling:
    """A rule's word: a verdict (None: no say on it), why, and whether to only pretend."""

    verdict: Verdict | None
    why: str
    dry_run: bool = False


class Rule(Protocol):
    def apply(self, situation: Situation, limits: Limits) -> Ruling | None: ...


class DryRunWhileSilenced:
    def apply(self, situation: Situation, limits: Limits) -> Ruling | None:
        if situation.silence is None:
            return None
        return Ruling(None, f"silenced ({situation.silence}): recorded, not run", dry_run=True)


class DryRunWhenAutoRemediationOff:
    def apply(self, situation: Situation, limits: Limits) -> Ruling | None:
        if limits.auto_remediation:
            return None
        return Ruling(None, "AUTO_REMEDIATION_ENABLED is off: recorded, not run", dry_run=True)


class PauseWhenFlapping:
    def apply(self, situation: Situation, limits: Limits) -> Ruling | None:
        if situation.recent_reopenings < limits.flap_threshold:
            return None
        return Ruling(Verdict.HOLD, (
            f"flapping: {situation.incident.fingerprint} reopened "
            f"{situation.recent_reopenings} times in the last {limits.flap_window:g} s "
            f"(limit {limits.flap_threshold}); automatic action paused"
        ))


class StayWithinActionBudget:
    def apply(self, situation: Situation, limits: Limits) -> Ruling | None:
        if situation.recent_actions < limits.action_budget:
            return None
        return Ruling(Verdict.HOLD, (
            f"action budget spent: {situation.recent_actions} actions on "
            f"{situation.incident.target} in the last {limits.action_budget_window:g} s "
            f"(limit {limits.action_budget})"
        ))


class HoldApprovalTierActions:
    def apply(self, situation: Situation, limits: Limits) -> Ruling | None:
        if situation.tier is not Tier.APPROVAL:
            return None
        return Ruling(Verdict.HOLD, f"{situation.action} is approval tier: an operator decides")


class NotifyOnMajorActions:
    def apply(self, situation: Situation, limits: Limits) -> Ruling | None:
        if situation.tier is not Tier.MAJOR:
            return None
        return Ruling(Verdict.NOTIFY, f"{situation.action} is major tier: run and notify")


class RunSafeActionsAutomatically:
    def apply(self, situation: Situation, limits: Limits) -> Ruling | None:
        if situation.tier is not Tier.SAFE:
            return None
        return Ruling(Verdict.AUTO, f"{situation.action} is safe tier: run automatically")


#: In order: the first rule with a verdict decides; dry-run marks accumulate on the way.
DEFAULT_RULES: Final[tuple[Rule, ...]] = (
    DryRunWhileSilenced(),
    DryRunWhenAutoRemediationOff(),
    PauseWhenFlapping(),
    StayWithinActionBudget(),
    HoldApprovalTierActions(),
    NotifyOnMajorActions(),
    RunSafeActionsAutomatically(),
)


def decide(situation: Situation, limits: Limits,
           rules: Sequence[Rule] = DEFAULT_RULES) -> ActionIntent:
    """The intent for `situation.action`, with the verdict and the rules that led to it."""
    reasons: list[str] = []
    dry_run = False
    verdict = Verdict.HOLD
    decided = False
    for rule in rules:
        ruling = rule.apply(situation, limits)
        if ruling is None:
            continue
        reasons.append(f"{type(rule).__name__}: {ruling.why}")
        dry_run = dry_run or ruling.dry_run
        if ruling.verdict is not None:
            verdict, decided = ruling.verdict, True
            break
    if not decided:
        reasons.append(f"no rule allows tier {situation.tier.value!r}: held")
    return ActionIntent(action=situation.action, tier=situation.tier.value, verdict=verdict,
                        why="; ".join(reasons), dry_run=dry_run)
