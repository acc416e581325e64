"""The notification policy and texts: which steps owe the operators a message, and what it says.

The one place notification texts are written. `notice_for` is a pure
function of one step (`StepView`): the engine calls it while it persists the
step and writes the resulting outbox rows in the same transaction, so a step
and the notifications it owes commit together or not at all. Delivery is the
dispatcher's job (`incident_fsm.notify.dispatcher`); every channel sends the text
`notification_text` gives for a row, and builds none of its own.

Default rules, first match wins:

- an incident opened (or reopened) at a severity in `alert_severities`
  (default: critical) → `⚠️ System Alert: …` (saying so when a silence
  matches it: the one message that says the agent keeps its hands off);
- an action starting on the `major` tier, or one an operator approved
  (verdict `notify` / `approved`) → `🔧 System Alert: … starting …`;
- an action that returned (`action_finished`), when it is not on the `safe`
  tier or the operators already heard of the incident →
  `🔧 System Alert: … Action taken: … (how it ended)`;
- a held action waiting for approval (`hold`, or a step whose verdict is
  `hold`) → `⚠️ System Alert: … needs an operator's approval`;
- any other escalation (failed attempts, a deadline, an operator) →
  `❌ System Issue: …`;
- the resolution of an incident that already has notifications (the engine
  reads that from the outbox before the step) → `✅ System Recovery: …`.

Each text says what happened and on which target, what the agent did or
does next, and ends with the incident id and the command that shows more.
Texts are built from the step's structured details, never from its
`reason`: the agent's reasons are written for the history and carry
rankings, scores and rule names. An operator's own reason (a step they
forced) is quoted.

Each message goes to every channel in `channels` with the same payload: the
text plus structured fields (incident id, state, target, kind, action,
outcome, severity, level).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from incident_fsm.fsm.steps import AttemptView, StepView
from incident_fsm.models import OutboxMessage
from incident_fsm.settings import (
    CPU_HIGH,
    DISK_HIGH,
    HEALTH_ENDPOINT_DOWN,
    MEMORY_HIGH,
    PROBE_MISCONFIGURED,
    SERVICE_DOWN_PREFIX,
    Settings,
)
from incident_fsm.text import one_line
from incident_fsm.vocabulary import OPEN_TRIGGER, Actor, AttemptOutcome, State, Trigger, Verdict

LOG_CHANNEL = "log"
PAM_CHANNEL = "pam"
WEBHOOK_CHANNEL = "webhook"
PAM_INPROCESS_CHANNEL = "pam_inprocess"
PAM_RELAY_CHANNEL = "pam_relay"

#: The actor of the agent's own steps; any other actor is a person.
AGENT_ACTOR: Final = Actor.AGENT
#: The longest quoted part (an action's account, an operator's reason).
QUOTE_LIMIT: Final = 200
#: The outcome of an action that returned without recording how it ended.
RETURNED: Final = "returned"

_PROBLEMS: Final = {
    MEMORY_HIGH: "high memory use",
    DISK_HIGH: "disk filling up",
    CPU_HIGH: "high CPU load",
    HEALTH_ENDPOINT_DOWN: "health endpoint down",
    PROBE_MISCONFIGURED: "health probe misconfigured",
}
_METRICS: Final = {MEMORY_HIGH: "memory", DISK_HIGH: "disk", CPU_HIGH: "cpu"}
_HOW_IT_DID_NOT_WORK: Final[Mapping[str, str]] = {AttemptOutcome.FAILED: "failed",
                               AttemptOutcome.TIMED_OUT: "did not finish in time",
                               AttemptOutcome.INTERRUPTED: "was interrupted",
                               AttemptOutcome.SKIPPED: "did not apply"}


@dataclass(frozen=True)
class Notice:
    """One message about one step, before it is addressed to channels."""

    event: str
    level: str
    text: str
    action: str | None = None
    outcome: str | None = None


def notice_for(step: StepView, *, alert_severities: frozenset[str]) -> Notice | None:
    """The message a step warrants under the default rules, or None (see the module docstring)."""
    d = step.details
    action = _str(d.get("action"))
    verdict = _str(d.get("verdict"))
    what = _what(step)
    ref = _reference(step.incident_id)
    if step.dest == State.DETECTED and step.trigger in (OPEN_TRIGGER, Trigger.REOPEN):
        if step.severity not in alert_severities:
            return None
        again = (f" It is back: reopened {_times(step.flap_count)}."
                 if step.trigger == Trigger.REOPEN else "")
        silenced = _str(d.get("silenced"))
        plan = (f"It is silenced ({one_line(silenced, QUOTE_LIMIT)}): the agent records it "
                "and runs no action until the silence ends." if silenced
                else "The agent will try to fix it and keep you posted.")
        return Notice("opened", "critical",
                      f"⚠️ System Alert: {what}: {_reading(step)}.{again} {plan}{ref}",
                      outcome="detected")
    if step.dest == State.REMEDIATING and step.source != State.REMEDIATING and action:
        if d.get("tier") != "major" and verdict not in (Verdict.NOTIFY, Verdict.APPROVED):
            return None
        return Notice("action", "warning",
                      f"🔧 System Alert: {what}: {_after(step)}{_starting(step, action, verdict)}"
                      f"{ref}", action=action, outcome="started")
    if step.trigger == Trigger.ACTION_FINISHED and step.attempt is not None:
        if step.attempt.tier == "safe" and not step.notified_before:
            return None
        outcome = _str(d.get("outcome")) or step.attempt.outcome or RETURNED
        return Notice("action", "warning",
                      f"🔧 System Alert: {what}. Action taken: "
                      f"{_finished(step, step.attempt, outcome)}{ref}",
                      action=step.attempt.action, outcome=outcome)
    if step.dest == State.ESCALATED and step.source != State.ESCALATED:
        if step.trigger == Trigger.HOLD or verdict == Verdict.HOLD:
            return Notice("held", "warning",
                          f"⚠️ System Alert: {what}: {_after(step)}{_held(step, action, d)}{ref}",
                          action=action, outcome="held")
        return Notice("escalated", "critical",
                      f"❌ System Issue: {what} {_escalated(step)} "
                      f"Take it with: incident-fsm force {_id(step)} acknowledge --reason TEXT."
                      f"{ref}", action=_action_of(step, action), outcome="escalated")
    if (step.dest == State.ESCALATED and step.source == State.ESCALATED
            and step.trigger == Trigger.TIMEOUT):
        return Notice("escalated", "critical",
                      f"❌ System Issue: {what} is still escalated and nobody has acknowledged "
                      f"it. The agent does not act on it. Take it with: incident-fsm force "
                      f"{_id(step)} acknowledge --reason TEXT.{ref}",
                      action=action, outcome="still escalated")
    if step.dest == State.RESOLVED and step.source != State.RESOLVED and step.notified_before:
        return Notice("resolved", "info",
                      f"✅ System Recovery: {what} is resolved: {_resolved(step)} "
                      f"No action needed.{ref}",
                      action=_action_of(step, action), outcome="resolved")
    return None


def notification_text(incident_id: int, payload: Mapping[str, Any]) -> str:
    """The text every channel sends for an outbox row of `incident_id` with `payload`.

    A payload written before its incident had a database id (the step that
    opened it, or a step journaled while the database was away) has a text
    without the incident reference; it is completed here, from the row.
    """
    text = payload.get("text")
    if not isinstance(text, str) or not text:
        event = payload.get("event") or "notification"
        return f"🔔 Incident {incident_id}: {event}.{_reference(incident_id)}"
    # The policy leaves the reference out exactly when it did not know the id.
    if "incident_id" in payload and not _known(payload["incident_id"]):
        return text + _reference(incident_id)
    return text


@dataclass(frozen=True)
class NotificationPolicy:
    """The default rules, addressed to `channels`. Pass an instance as the engine's `outbox`."""

    channels: tuple[str, ...] = (LOG_CHANNEL,)
    alert_severities: frozenset[str] = frozenset({"critical"})

    def __call__(self, step: StepView) -> list[OutboxMessage]:
        notice = notice_for(step, alert_severities=self.alert_severities)
        if notice is None:
            return []
        payload = _payload(step, notice)
        return [OutboxMessage(channel, payload) for channel in self.channels]


def policy_from_settings(settings: Settings) -> NotificationPolicy:
    """Log always; the PAM channels and the webhook when configured.

    PAM rows are written even with `pam_integration = false`: they stay queued
    until PAM delivery is switched on again (see the dispatcher).
    """
    channels = [LOG_CHANNEL]
    if settings.channels.pam is not None:
        channels.append(PAM_CHANNEL)
    if settings.channels.webhook is not None:
        channels.append(WEBHOOK_CHANNEL)
    if settings.channels.pam_inprocess is not None:
        channels.append(PAM_INPROCESS_CHANNEL)
    if settings.channels.pam_relay is not None:
        channels.append(PAM_RELAY_CHANNEL)
    return NotificationPolicy(channels=tuple(channels))


# --- the parts of a text ---------------------------------------------------------------


def problem_name(kind: str) -> str:
    """A problem kind as people say it: `memory_high` → "high memory use"."""
    if kind.startswith(SERVICE_DOWN_PREFIX):
        return f"{kind.removeprefix(SERVICE_DOWN_PREFIX)} down"
    return _PROBLEMS.get(kind, kind.replace("_", " "))


def _what(step: StepView) -> str:
    return f"{problem_name(step.kind)} on {step.target} ({step.severity})"


def _known(incident_id: object) -> bool:
    # None before the row exists; negative while it exists only in the offline journal.
    return isinstance(incident_id, int) and incident_id > 0


def _reference(incident_id: int | None) -> str:
    if not _known(incident_id):
        return ""  # completed from the row at delivery (`notification_text`)
    return f" Incident {incident_id} — details: incident-fsm show {incident_id}"


def _id(step: StepView) -> str:
    return str(step.incident_id) if _known(step.incident_id) else "ID"


def _reading(step: StepView) -> str:
    """What the detector saw, from its structured details."""
    d = step.details
    metric = _METRICS.get(step.kind)
    value, limit = _number(d.get("value")), _number(d.get("threshold"))
    if metric is not None:
        if value is None:
            return f"{metric} above its limit"
        over = f" (limit {_pct(limit)})" if limit is not None else ""
        return f"{metric} at {_pct(value)}{over}"
    if step.kind == HEALTH_ENDPOINT_DOWN:
        failures = _number(d.get("consecutive_failures"))
        return ("the health endpoint failed " +
                (f"{_times(int(failures))} in a row" if failures else "its checks"))
    if step.kind == PROBE_MISCONFIGURED:
        # The probe's own account (status and URL) is written for people: quoted.
        said = _str(d.get("reason"))
        return ("the health endpoint answers, but not with a health reading"
                + (f" ({_quote(said)})" if said else "")
                + ": check the target's base_url and endpoints")
    if step.kind.startswith(SERVICE_DOWN_PREFIX):
        return f"{step.kind.removeprefix(SERVICE_DOWN_PREFIX)} does not answer its health check"
    return "the health checks report a problem"


def _back(step: StepView) -> str:
    """The reading that shows the problem cleared, from the detector's or the verifier's details."""
    d = step.details
    seen = d.get("verification")
    checked = seen if isinstance(seen, Mapping) else d
    metric = _METRICS.get(step.kind)
    if metric is not None:
        value = _number(checked.get(f"{metric}_pct", checked.get("value")))
        clear = _number(checked.get("clear"))
        if value is not None:
            normal = f" (normal below {_pct(clear)})" if clear is not None else ""
            return f"{metric} is back at {_pct(value)}{normal}"
    if step.kind in (HEALTH_ENDPOINT_DOWN, PROBE_MISCONFIGURED):
        return "the health endpoint answers with a reading again"
    if step.kind.startswith(SERVICE_DOWN_PREFIX):
        return f"{step.kind.removeprefix(SERVICE_DOWN_PREFIX)} is up again"
    return "the health checks are back to normal"


def _after(step: StepView) -> str:
    """Why another action comes next: the one before did not fix the problem."""
    if step.trigger == Trigger.STILL_FAILING and step.attempt is not None:
        return f"{step.attempt.action} did not fix it; "
    return ""


def _starting(step: StepView, action: str, verdict: str | None) -> str:
    if step.details.get("dry_run"):
        return (f"the agent would start {action}, but automatic remediation is off: "
                "nothing is run.")
    if verdict == Verdict.APPROVED:
        who = f", approved by {_quote(step.actor)}" if step.actor != AGENT_ACTOR else ""
        return f"starting {action}{who}. You will hear how it ends."
    return (f"starting {action} (a major action, run without waiting for approval). "
            "You will hear how it ends.")


def _finished(step: StepView, attempt: AttemptView, outcome: str) -> str:
    action = attempt.action
    if outcome in (AttemptOutcome.OK, RETURNED):
        summary = _str(step.details.get("summary")) or attempt.summary
        done = f": {_quote(summary)}" if summary else ""
        verb = "finished" if outcome == AttemptOutcome.OK else "returned"
        return (f"{action} {verb}{done}. Next: fresh health readings confirm whether it "
                "worked.")
    then = ("Next: the agent checks whether the problem is still there, then tries another "
            "action or hands the incident to the operators.")
    if outcome == AttemptOutcome.SKIPPED:
        return f"{action} does not apply here and changed nothing. {then}"
    if outcome == AttemptOutcome.TIMED_OUT:
        return f"{action} did not finish within its time limit. {then}"
    if outcome == AttemptOutcome.INTERRUPTED:
        return f"{action} was interrupted when the agent stopped and is not run again. {then}"
    return f"{action} failed{_failure_code(step.details)}. {then}"


def _failure_code(details: Mapping[str, Any]) -> str:
    if isinstance(details.get("http_status"), int):
        return f" (HTTP {details['http_status']})"
    if isinstance(details.get("exit_code"), int):
        return f" (exit code {details['exit_code']})"
    return ""


def _held(step: StepView, action: str | None, d: Mapping[str, Any]) -> str:
    if action is None:
        return ("the agent has no action it may run for this, so an operator must decide. "
                f"Take it with: incident-fsm force {_id(step)} acknowledge --reason TEXT.")
    approve = f"incident-fsm force {_id(step)} approve --reason TEXT"
    if d.get("tier") == "approval":
        return f"{action} needs an operator's approval before it runs. To run it: {approve}."
    return (f"{action} is held by the agent's safety limits (its action budget, or a pause "
            f"while the problem keeps coming back). To run it anyway: {approve}.")


def _escalated(step: StepView) -> str:
    if step.actor != AGENT_ACTOR:
        why = f": {_quote(step.reason)}" if step.reason else ""
        return (f"was escalated by {_quote(step.actor)}{why}. The agent takes no further "
                "action unless an operator approves one.")
    if step.trigger == Trigger.TIMEOUT:
        action = step.attempt.action if step.attempt is not None else "an action"
        doing = {State.REMEDIATING.value: f"running {action}",
                 State.VERIFYING.value: f"checking the result of {action}"}.get(
                     step.source or "", "choosing an action")
        return (f"was not fixed in time: the deadline passed while the agent was {doing}. "
                "The agent has stopped acting on it.")
    if step.trigger == Trigger.ESCALATE:
        # The agent hands an incident over itself only when it cannot tell where it stands.
        return ("is marked as being remediated, but no attempt is on record: the agent cannot "
                "tell what ran, so it has stopped acting on it.")
    last = f" (the last: {step.attempt.action})" if step.attempt is not None else ""
    return (f"is still not fixed after {_times(step.strikes, 'failed attempt')}{last}. "
            "The agent has stopped acting on it.")


def _resolved(step: StepView) -> str:
    if step.actor != AGENT_ACTOR:
        why = f": {_quote(step.reason)}" if step.reason else ""
        return f"resolved by {_quote(step.actor)}{why}."
    back = _back(step)
    if step.source == State.VERIFYING and step.attempt is not None:
        action, outcome = step.attempt.action, step.attempt.outcome
        if outcome in (None, AttemptOutcome.OK):
            return f"{back} after {action}."
        # Cleared, but not by the action: say so rather than credit it.
        how = _HOW_IT_DID_NOT_WORK.get(outcome, "did not work")
        return f"{back}, although {action} {how}: it cleared anyway."
    if step.source == State.ESCALATED:
        return f"{back} while it was with the operators."
    return f"{back}; it cleared by itself."


def _action_of(step: StepView, action: str | None) -> str | None:
    return action or (step.attempt.action if step.attempt is not None else None)


def _times(n: int, what: str = "time") -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{round(value, 1):g}%"


def _quote(text: str) -> str:
    return one_line(text, QUOTE_LIMIT)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _payload(step: StepView, notice: Notice) -> Mapping[str, Any]:
    return {
        "text": notice.text,
        "event": notice.event,
        "level": notice.level,
        "incident_id": step.incident_id,
        "state": step.dest,
        "target": step.target,
        "kind": step.kind,
        "severity": step.severity,
        "trigger": step.trigger,
        "action": notice.action,
        "outcome": notice.outcome,
        "at": step.at.isoformat(),
    }


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
