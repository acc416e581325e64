"""Choosing the next action of an incident: policy's candidates, ranked by what worked, judged.

`Chooser.choose` takes the incident and the attempts its driver holds, and
reads only what changes with other incidents: the learned record of the
problem kind and the two guardrail counts (actions on the target in the
budget window, reopenings of the fingerprint in the flap window).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from incident_fsm.clock import Clock
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import ActionRun, Incident, Silence
from incident_fsm.persistence.attempts import ActionTally
from incident_fsm.remediation.actions.base import Action, Tier
from incident_fsm.remediation.policy import Limits, Rule, Situation, candidates, decide
from incident_fsm.remediation.ranking import Ranked, rank
from incident_fsm.vocabulary import Verdict


class ChoiceStore(Protocol):
    """What choosing reads: the learned record and the guardrail counts."""

    async def action_record(self, kind: str) -> dict[str, ActionTally]: ...

    async def count_actions(self, *, target: str, since: datetime) -> int: ...

    async def count_reopenings(self, *, fingerprint: str, since: datetime) -> int: ...


class SilenceSource(Protocol):
    """The silences in force (`incident_fsm.runtime.silences.Silences`)."""

    async def silence_for(self, target: str, kind: str, now: datetime) -> Silence | None: ...


class _NoSilences:
    async def silence_for(self, target: str, kind: str, now: datetime) -> Silence | None:
        return None


NO_SILENCES: SilenceSource = _NoSilences()


class ActionSource(Protocol):
    """Where the remediator finds the actions of a target (`actions.catalog.Catalog`)."""

    def for_target(self, target: str) -> Mapping[str, Action]: ...


@dataclass(frozen=True)
class Choice:
    """The next action to propose (or None), the ranking it came from, and why."""

    intent: ActionIntent | None
    ranking: tuple[Ranked, ...]
    why: str

    def details(self) -> dict[str, Any]:
        return {"ranking": [r.as_dict() for r in self.ranking]}


@dataclass(frozen=True)
class Chooser:
    """The best permitted untried action for an incident, with policy's verdict on it."""

    store: ChoiceStore
    clock: Clock
    actions: ActionSource
    limits: Limits
    policy: Mapping[str, Sequence[str]] | None
    rules: tuple[Rule, ...]
    silences: SilenceSource = NO_SILENCES

    async def choose(self, incident: Incident, attempts: Sequence[ActionRun]) -> Choice:
        """If every candidate is held, the best held one (its verdict says why); if none is
        left, the intent is None."""
        available = self.actions.for_target(incident.target)
        names = candidates(incident.kind, available=available, override=self.policy)
        tried = {run.action for run in attempts if not run.dry_run}
        record = await self.store.action_record(incident.kind)
        ranking = tuple(rank(names, record, exclude=tried))
        if not ranking:
            why = (f"every action for {incident.kind} on {incident.target} was tried"
                   if names else f"no action is configured for {incident.kind} on "
                                 f"{incident.target}")
            return Choice(None, ranking, why)
        now = self.clock.now()
        recent = await self.store.count_actions(
            target=incident.target,
            since=now - timedelta(seconds=self.limits.action_budget_window))
        reopenings = await self.store.count_reopenings(
            fingerprint=incident.fingerprint,
            since=now - timedelta(seconds=self.limits.flap_window))
        silence = await self.silences.silence_for(incident.target, incident.kind, now)
        first_held: ActionIntent | None = None
        for place, ranked in enumerate(ranking, start=1):
            situation = Situation(incident=incident, action=ranked.action,
                                  tier=_tier_of(available[ranked.action]), recent_actions=recent,
                                  recent_reopenings=reopenings,
                                  silence=None if silence is None else silence.describe())
            intent = decide(situation, self.limits, self.rules)
            intent = replace(intent, why=(
                f"ranked {place} of {len(ranking)} for {incident.kind} "
                f"({ranked.successes} verified, {ranked.failures} failed, "
                f"score {ranked.score:.2f}); {intent.why}"
            ))
            if intent.verdict is not Verdict.HOLD:
                return Choice(intent, ranking, intent.why)
            first_held = first_held or intent
        assert first_held is not None
        return Choice(first_held, ranking, first_held.why)


def _tier_of(action: Action) -> Tier:
    """The action's tier; a plug-in's unknown tier is treated as needing approval."""
    try:
        return Tier(action.tier)
    except ValueError:
        return Tier.APPROVAL
