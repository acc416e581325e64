"""Adding test plug-in actions to a running agent's catalog."""

from __future__ import annotations

from collections.abc import Mapping

from incident_fsm.remediation.actions.base import Action
from incident_fsm.remediation.remediator import ActionSource
from incident_fsm.runtime.agent import Agent


class WithPlugIns:
    """The agent's own catalog, plus plug-ins on one target (how a host adds its actions)."""

    def __init__(self, base: ActionSource, target: str, extra: Mapping[str, Action]) -> None:
        self.base, self.target, self.extra = base, target, extra

    def for_target(self, target: str) -> Mapping[str, Action]:
        found = dict(self.base.for_target(target))
        return {**found, **self.extra} if target == self.target else found


def add_plug_ins(agent: Agent, target: str, extra: Mapping[str, Action]) -> None:
    """Before the agent starts: `extra` becomes available on `target`."""
    agent.remediator._actions = WithPlugIns(agent.remediator._actions, target, extra)
