"""`force`: an operator's transition of one incident, checked against the graph and the config.

The trigger must be one the graph allows from the incident's state, and an
approved action one the agent may run for the incident's target and kind:
otherwise nothing is written. The step is recorded and notified like any
other, with the actor and the reason.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

from incident_fsm.cli.common import database_url_option, json_option, with_store
from incident_fsm.errors import InvalidInput, InvalidTransition


@click.command()
@database_url_option
@click.argument("incident_id", type=click.IntRange(min=1), metavar="ID")
@click.argument("trigger",
                type=click.Choice(["acknowledge", "approve", "resolve", "escalate", "label"]))
@click.argument("label", required=False, metavar="[real|noise]")
@click.option("--reason", required=True, help="Why (recorded with the transition).")
@click.option("--actor", default=None, help="Who (default: your OS user name).")
@click.option("--action", "action_name", default=None,
              help="With approve: the action to run (default: the one that was held).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="INCIDENT_FSM_CONFIG",
              help="The agent's TOML (env INCIDENT_FSM_CONFIG): its deadlines and channels, "
                   "and the actions --action may name. Required with --action.")
@json_option
def force(database_url: str | None, incident_id: int, trigger: str, label: str | None,
          reason: str, actor: str | None, action_name: str | None, config_path: str | None,
          as_json: bool) -> None:
    """Fire an operator transition, checked against the state graph and recorded with who and why.

    `label real|noise` records a judgement of the incident instead (any state; no state
    changes): what `stats` reads detection's precision from.

    Example: incident-fsm force 3 approve --reason "failover approved by on-call" --actor alice
    """
    from loguru import logger

    if trigger == "label" or label is not None:
        _label(database_url, incident_id, trigger, label, reason=reason, actor=actor,
               action_name=action_name, as_json=as_json)
        return

    if action_name is not None and trigger != "approve":
        raise InvalidInput("--action goes only with approve")
    if action_name is not None and config_path is None:
        # Without it nothing says what the agent could run: a typo would be approved,
        # notified as an action taken, spend a strike and fail.
        raise InvalidInput("--action needs the agent's configuration (--config FILE or env "
                           "INCIDENT_FSM_CONFIG) to check the name against the actions of "
                           "the incident's target; nothing was written")
    # The engine's own line about the step is for the agent's log, not this terminal.
    quiet = not (click.get_current_context().find_root().obj or {}).get("debug")
    if quiet:
        logger.disable("incident_fsm.fsm.engine")
    try:
        _force_command(database_url, incident_id, trigger, reason, actor, action_name,
                       config_path, as_json)
    finally:
        if quiet:
            logger.enable("incident_fsm.fsm.engine")


def _force_command(database_url: str | None, incident_id: int, trigger: str, reason: str,
                   actor: str | None, action_name: str | None, config_path: str | None,
                   as_json: bool) -> None:
    from incident_fsm.config import load_settings
    from incident_fsm.fsm.steps import MachinePolicy
    from incident_fsm.notify.policy import policy_from_settings
    from incident_fsm.reports.format import to_json

    who = actor if actor is not None else getpass.getuser()
    settings = load_settings(config_path)
    outbox = policy_from_settings(settings)
    policy = MachinePolicy.from_settings(settings.agent)
    # The agent's own database unless one is named: force acts where the agent does.
    url = database_url or settings.agent.database_url
    forced = with_store(url, lambda store: _force(
        store, incident_id=incident_id, trigger=trigger, reason=reason, actor=who,
        action_name=action_name, outbox=outbox, policy=policy, settings=settings,
        configured=config_path is not None))
    incident = forced.incident
    if as_json:
        click.echo(to_json(incident))
    else:
        click.echo(f"incident {incident.id} is now {incident.state} ({trigger} by {who})")
    if config_path is None:
        click.echo("note: no configuration (--config / INCIDENT_FSM_CONFIG): deadlines are the "
                   f"defaults (and INCIDENT_FSM_* variables): {_force_deadlines(policy)}",
                   err=True)
    if not forced.announced:
        click.echo("warning: the running agent could not be told of this step at once; "
                   "it finds it at its next look (within a minute)", err=True)
    if not forced.agents:
        waiting = (f"the approved {forced.action} waits until one runs, and so do the step's "
                   "notifications" if forced.action else
                   "the step's notifications wait in the outbox until one runs")
        click.echo("warning: no agent has been seen alive (no current heartbeat in the "
                   f"database): {waiting}", err=True)


def _label(database_url: str | None, incident_id: int, trigger: str, label: str | None, *,
           reason: str, actor: str | None, action_name: str | None, as_json: bool) -> None:
    from incident_fsm.models import IncidentId
    from incident_fsm.reports.format import to_json
    from incident_fsm.vocabulary import Label

    if trigger != "label":
        raise InvalidInput(f"only label takes a value, not {trigger}; nothing was written")
    if label not in set(Label):
        raise InvalidInput(f"label takes real or noise, not {label!r}; nothing was written")
    if action_name is not None:
        raise InvalidInput("--action goes only with approve")
    who = actor if actor is not None else getpass.getuser()
    row = with_store(database_url, lambda store: store.label_incident(
        IncidentId(incident_id), label, actor=who, reason=reason, at=datetime.now(UTC)))
    click.echo(to_json(row) if as_json else
               f"incident {incident_id} labelled {row.label} by {row.actor}: {row.reason}")


def _force_deadlines(policy: Any) -> str:
    """The deadline an incident gets on entering each state, as `force` applies them."""
    from incident_fsm.vocabulary import State

    start = datetime.now(UTC)
    parts = []
    for state in (State.DETECTED, State.REMEDIATING, State.VERIFYING, State.ESCALATED):
        deadline = policy.deadline_for(state, start)
        parts.append(f"{state.value} {(deadline - start).total_seconds():g}s")
    return ", ".join(parts)


@dataclass(frozen=True)
class _Forced:
    """What `force` did: the incident afterwards, the action it approved, the agents alive."""

    incident: Any
    action: str | None
    agents: list[tuple[str, datetime]]
    #: whether the running agents were told at once (see persistence.wakeups)
    announced: bool = True


async def _force(store: Any, *, incident_id: int, trigger: str, reason: str, actor: str,
                 action_name: str | None, outbox: Any, policy: Any,
                 settings: Any, configured: bool = False) -> _Forced:
    from incident_fsm.clock import SystemClock
    from incident_fsm.fsm.engine import IncidentEngine
    from incident_fsm.fsm.graph import operator_triggers_from, triggers_from
    from incident_fsm.fsm.steps import ActionIntent
    from incident_fsm.models import IncidentId
    from incident_fsm.vocabulary import Verdict

    iid = IncidentId(incident_id)
    incident = await store.get_incident(iid)
    if trigger not in triggers_from(incident.state):
        # Say what the graph allows before asking about a held action.
        raise InvalidTransition(incident_id=iid, state=incident.state, trigger=trigger,
                                allowed=operator_triggers_from(incident.state))
    intent = None
    if trigger == "approve":
        held = await _held_action(store, iid)
        if action_name is not None:
            tiers = await _approvable(settings, target=incident.target, kind=incident.kind)
            if action_name not in tiers:
                unknown_target = all(t.name != incident.target for t in settings.targets)
                hint = (f"; {incident.target} is not a [[targets]] entry of the configuration"
                        if unknown_target else "")
                raise InvalidInput(
                    f"'{action_name}' is not an action the agent may run for {incident.kind} "
                    f"on {incident.target} (configured: {', '.join(tiers) or 'none'}){hint}; "
                    "nothing was written")
            name, tier = action_name, tiers[action_name]
        else:
            if held is None:
                raise InvalidInput(
                    f"incident {incident_id} has no held action; name one with --action")
            name, tier = str(held["action"]), str(held.get("tier", "approval"))
            if configured and any(t.name == incident.target for t in settings.targets):
                # Held under another configuration, maybe: the agent would refuse to run it.
                tiers = await _approvable(settings, target=incident.target, kind=incident.kind)
                if name not in tiers:
                    raise InvalidInput(
                        f"the held action '{name}' is not one the configuration allows for "
                        f"{incident.kind} on {incident.target} (configured: "
                        f"{', '.join(tiers) or 'none'}); nothing was written")
        intent = ActionIntent(name, tier, Verdict.APPROVED, f"approved by {actor}: {reason}")
    clock = SystemClock()
    engine = IncidentEngine(store, clock=clock, outbox=outbox, policy=policy)
    moved = await engine.fire(iid, trigger, actor=actor, reason=reason,
                              details={"forced": True}, intent=intent)
    heard = await _announce(store)
    agents = await store.agents_seen(clock.now())
    return _Forced(moved, None if intent is None else intent.action, agents, heard)


async def _announce(store: Any) -> bool:
    """Wake the running agent for the step just committed; False when that failed (it
    then finds the step at its next look, within a minute)."""
    from incident_fsm.errors import StoreError

    try:
        await store.announce()
    except StoreError:
        return False
    return True


async def _approvable(settings: Any, *, target: str, kind: str) -> dict[str, str]:
    from incident_fsm.remediation.actions.catalog import offline_catalog, policy_tiers

    async with offline_catalog(settings) as catalog:
        return policy_tiers(catalog, settings, target=target, kind=kind)


async def _held_action(store: Any, incident_id: Any) -> dict[str, Any] | None:
    """The action of the latest step that held one (its details name it), if any."""
    timeline = await store.timeline(incident_id)
    for step in reversed(timeline.transitions):
        if step.details.get("verdict") == "hold" and step.details.get("action"):
            return dict(step.details)
    return None
