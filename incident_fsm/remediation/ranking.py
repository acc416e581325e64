"""Learned action choice: rank candidates by how often they really fixed this kind of problem.

The record comes from `action_run`, counted by the store with the same
definitions `stats` uses (`store.succeeded_condition`,
`store.failed_condition`): an attempt is a success when its action worked
(`ok`) *and* the verification after it passed -- not when the action merely
returned ok, nor when the problem cleared after an action that failed -- and
a failure when verification said no, or the action failed, timed out or was
interrupted. Dry runs do not count.
The score is the mean of a Beta(1, 1) posterior, (successes + 1) /
(attempts + 2): an action never tried scores 0.5, so it still gets its turn
ahead of one that keeps not helping. Actions already tried in this
incident are left out; ties keep the policy's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from incident_fsm.persistence.store import Store


class Tally(Protocol):
    """Verified successes and failures of one action for one problem kind."""

    @property
    def successes(self) -> int: ...

    @property
    def failures(self) -> int: ...



@dataclass(frozen=True)
class Ranked:
    action: str
    score: float
    successes: int
    failures: int
    #: position in the policy's list (the tie-breaker)
    policy_rank: int

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "score": round(self.score, 4),
                "successes": self.successes, "failures": self.failures}


def score(successes: int, failures: int) -> float:
    """Posterior mean success rate under a Beta(1, 1) prior."""
    return (successes + 1) / (successes + failures + 2)


def rank(candidates: Sequence[str], record: Mapping[str, Tally], *,
         exclude: Iterable[str] = ()) -> list[Ranked]:
    """`candidates` (in policy order) minus `exclude`, best first."""
    skip = set(exclude)
    ranked = []
    for position, name in enumerate(dict.fromkeys(candidates)):
        if name in skip:
            continue
        tally = record.get(name)
        wins, losses = (tally.successes, tally.failures) if tally is not None else (0, 0)
        ranked.append(Ranked(name, score(wins, losses), wins, losses, position))
    return sorted(ranked, key=lambda r: (-r.score, r.policy_rank))


async def learned_rankings(store: Store, kinds: Iterable[str], *,
                           override: Mapping[str, Sequence[str]] | None = None,
                           ) -> dict[str, list[Ranked]]:
    """Per problem kind, the candidates as the agent would rank them now (for `stats`).

    The candidates are the policy's list for the kind plus every action with
    history for it; which of them a given target has is not considered here.
    """
    from incident_fsm.remediation.policy import DEFAULT_POLICY

    result: dict[str, list[Ranked]] = {}
    for kind in kinds:
        record = await store.action_record(kind)
        listed = (override or {}).get(kind) or DEFAULT_POLICY.get(kind, ())
        result[kind] = rank([*listed, *sorted(record)], record)
    return result
