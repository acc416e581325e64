"""Earned trust: what each action's record says about its tier, as a recommendation.

For each action and problem kind, over a window (default 30 days): the
real attempts, how many worked (the action returned ok and verification
passed: `succeeded_condition`), how many failed (`failed_condition`), the
dry runs on incidents an operator later labelled real (the action would
have been wanted), and a recommendation for its tier by these rules:

- **promote** `approval → major` when at least `PROMOTE_AFTER` (5) runs at
  the approval tier were all verified; `major → safe` when at least
  `PROMOTE_SAFE_AFTER` (10) runs were, with no failure;
- **demote** one tier (`safe → major`, `major → approval`) when 2 or more
  of the last 5 runs failed;
- otherwise **keep**, saying what is missing.

Nothing here changes a tier: promotion stays a configuration change made by
a person. Pure: the attempts are read by the store first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from incident_fsm.remediation.actions.base import Tier

PROMOTE_AFTER: Final = 5
PROMOTE_SAFE_AFTER: Final = 10
#: The last runs a demotion looks at, and how many failures in them demote.
RECENT: Final = 5
DEMOTE_AT: Final = 2
_UP: Final = {Tier.APPROVAL: Tier.MAJOR, Tier.MAJOR: Tier.SAFE}
_DOWN: Final = {Tier.SAFE: Tier.MAJOR, Tier.MAJOR: Tier.APPROVAL}


@dataclass(frozen=True)
class Run:
    """One real attempt as trust weighs it, oldest first."""

    tier: str
    verified: bool
    failed: bool


@dataclass(frozen=True)
class Trust:
    """One action for one problem kind: its record and the tier it has earned."""

    action: str
    kind: str
    tier: str
    attempts: int
    verified: int
    failed: int
    dry_runs_labelled_real: int
    recommendation: str
    #: the tier it recommends (the current one when it says keep)
    recommended_tier: str
    why: str


def judge(action: str, kind: str, runs: Sequence[Run], *, tier: str | None,
          dry_runs_labelled_real: int, days: float) -> Trust:
    """The record of `runs` (oldest first) and what it says about `tier` (else the last run's)."""
    current = Tier(tier or (runs[-1].tier if runs else Tier.APPROVAL))
    verified = sum(r.verified for r in runs)
    failed = sum(r.failed for r in runs)
    recent = runs[-RECENT:]
    recent_failed = sum(r.failed for r in recent)
    window = f"in {days:g} days"

    def trust(recommendation: str, to: Tier, why: str) -> Trust:
        return Trust(action, kind, current.value, len(runs), verified, failed,
                     dry_runs_labelled_real, recommendation, to.value, why)

    if current in _DOWN and len(recent) >= DEMOTE_AT and recent_failed >= DEMOTE_AT:
        to = _DOWN[current]
        return trust("demote", to, f"{current.value} → {to.value}: {recent_failed} of the last "
                                   f"{len(recent)} runs failed")
    at_tier = [r for r in runs if r.tier == current.value]
    needed = PROMOTE_AFTER if current is Tier.APPROVAL else PROMOTE_SAFE_AFTER
    if current in _UP:
        to = _UP[current]
        good = sum(r.verified for r in at_tier)
        if len(at_tier) >= needed and good == len(at_tier):
            return trust("promote", to, f"{current.value} → {to.value}: {good} of "
                                        f"{len(at_tier)} {current.value} runs verified {window}")
        if at_tier and good < len(at_tier):
            return trust("keep", current, f"{len(at_tier) - good} of {len(at_tier)} "
                                          f"{current.value} runs not verified {window}")
        extra = (f"; {dry_runs_labelled_real} dry run(s) on incidents labelled real"
                 if dry_runs_labelled_real else "")
        return trust("keep", current, f"{len(at_tier)} of the {needed} verified "
                                      f"{current.value} runs promotion needs{extra}")
    return trust("keep", current, f"{verified} of {len(runs)} runs verified {window}"
                 if runs else "no runs yet")


def judge_all(rows: Iterable[tuple[str, str, Run]], dry_real: dict[tuple[str, str], int],
              tiers: dict[str, str], *, days: float) -> list[Trust]:
    """`judge` for every (action, kind) in `rows` ((action, kind, run), oldest first)."""
    grouped: dict[tuple[str, str], list[Run]] = {}
    for action, kind, run in rows:
        grouped.setdefault((action, kind), []).append(run)
    for key in dry_real:
        grouped.setdefault(key, [])
    return [judge(action, kind, runs, tier=tiers.get(action),
                  dry_runs_labelled_real=dry_real.get((action, kind), 0), days=days)
            for (action, kind), runs in sorted(grouped.items())]
