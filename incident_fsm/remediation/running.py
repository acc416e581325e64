"""Running one action within its limit: exceptions, garbage answers and overruns become outcomes.

Whatever an action does -- raises, returns something that is not an
`Outcome`, answers an HTTP error as success, or hangs -- the remediator
gets an `Outcome` back, by the action's deadline plus a short grace.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from incident_fsm.clock import Clock
from incident_fsm.remediation.actions.base import Action, ActionContext, Outcome, OutcomeStatus
from incident_fsm.remediation.actions.redaction import redact
from incident_fsm.timebox import within

#: Extra seconds an action gets past its limit to report its own timeout, with evidence.
GRACE: Final = 5.0


async def run_action(action: Action | None, name: str, ctx: ActionContext, *,
                     clock: Clock) -> Outcome:
    """Run `action` within its limit; exceptions, garbage and overruns become outcomes."""
    if action is None:
        return Outcome.failed(f"{name} is not available for {ctx.incident.target}")
    # The grace lets an action that watches its own limit (all of ours do) report the
    # timeout itself, with its evidence; the cut-off here is for those that hang.
    # The incident escalates at its deadline regardless (the sweeper sees to it);
    # the grace only lets a late action say how it ended.
    limit = min(action.timeout, ctx.remaining()) + GRACE

    async def guarded() -> Outcome:
        try:
            result = await action.run(ctx)
        except Exception as exc:
            return Outcome.failed(f"{name} raised {type(exc).__name__}: "
                                  f"{redact(str(exc))[:300]}")
        if not isinstance(result, Outcome):
            return Outcome.failed(f"{name} returned {type(result).__name__}, not an outcome")
        if result.status is OutcomeStatus.OK and (result.http_status or 0) >= 400:
            # An error answer is no success, whatever the action made of it.
            return replace(result, status=OutcomeStatus.FAILED,
                           summary=f"{result.summary} (answered HTTP {result.http_status})")
        return result

    try:
        return await within(clock, limit, guarded)
    except TimeoutError:
        return Outcome.timed_out(f"{name} gave no result within {limit:g} s")
