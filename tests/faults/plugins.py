"""Adding test plug-in actions to an agent's catalog, through its `actions=` hook."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from incident_fsm.remediation.actions.base import Action
from incident_fsm.remediation.remediator import ActionSource


class WithPlugIns:
    """The agent's own catalog, plus plug-ins on one target (how a host adds its actions)."""

    def __init__(self, base: ActionSource, target: str, extra: Mapping[str, Action]) -> None:
        self.base, self.target, self.extra = base, target, extra

    def for_target(self, target: str) -> Mapping[str, Action]:
        found = dict(self.base.for_target(target))
        return {**found, **self.extra} if target == self.target else found


def plug_ins(target: str, extra: Mapping[str, Action]) -> Callable[[ActionSource], ActionSource]:
    """`Agent(..., actions=plug_ins(target, extra))`: `extra` becomes available on `target`."""
    return lambda base: WithPlugIns(base, target, extra)
