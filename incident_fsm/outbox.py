"""The notification policy: which steps of an incident owe the operators a message, and its text.

A pure function of one step (`StepView`): the engine calls it while it
persists the step and writes the resulting outbox rows in the same
transaction, so a step and the notifications it owes commit together or not
at all. Delivery is the dispatcher's job (`incident_fsm.dispatcher`).

Default rules, first match wins:

- an incident opened (or reopened) at a severity in `alert_severities`
  (default: critical) → `⚠️ System Alert: …`;
- an action started on the `major` tier, or one an operator approved
  (verdict `notify` / `approved`) → `🔧 System Alert: … Action taken: …`;
- a held action waiting for approval (`hold`, or a step whose verdict is
  `hold`) → `⚠️ System Alert: … waiting for approval`;
- any other escalation (three strikes, a deadline, an operator) →
  `❌ System Issue: …`;
- the resolution of an incident that already has notifications (the engine
  reads that from the outbox before the step) → `✅ System Recovery: …`.

Each message goes to every channel in `channels` with the same payload: the
text plus structured fields (incident id, state, target, kind, action,
outcome, severity, level).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .machine import OPEN_TRIGGER, State, StepView, Trigger, Verdict
from .models import OutboxMessage
from .settings import Settings

LOG_CHANNEL = "log"
PAM_CHANNEL = "pam"
WEBHOOK_CHANNEL = "webhook"
PAM_INPROCESS_CHANNEL = "pam_inprocess"
PAM_RELAY_CHANNEL = "pam_relay"


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
    what = f"{step.kind} on {step.target}"
    if step.dest == State.DETECTED and step.trigger in (OPEN_TRIGGER, Trigger.REOPEN):
        if step.severity not in alert_severities:
            return None
        again = f" (back again, flap {step.flap_count})" if step.trigger == Trigger.REOPEN else ""
        return Notice("opened", "critical",
                      f"⚠️ System Alert: {what} is {step.severity}{again}: {step.reason}",
                      outcome="detected")
    if step.dest == State.REMEDIATING and step.source != State.REMEDIATING and action:
        if d.get("tier") != "major" and verdict not in (Verdict.NOTIFY, Verdict.APPROVED):
            return None
        verb = "Action that would be taken (dry run)" if d.get("dry_run") else "Action taken"
        return Notice("action", "warning",
                      f"🔧 System Alert: {what} ({step.severity}). {verb}: {action} "
                      f"({step.reason})", action=action, outcome="started")
    if step.dest == State.ESCALATED and step.source != State.ESCALATED:
        if step.trigger == Trigger.HOLD or verdict == Verdict.HOLD:
            held = (f"action {action} is waiting for approval" if action
                    else "no action is permitted, an operator must decide")
            return Notice("held", "warning", f"⚠️ System Alert: {what}: {held} ({step.reason})",
                          action=action, outcome="held")
        return Notice("escalated", "critical",
                      f"❌ System Issue: {what} escalated to the operators after "
                      f"{step.strikes} failed attempt(s): {step.reason}",
                      action=action, outcome="escalated")
    if (step.dest == State.ESCALATED and step.source == State.ESCALATED
            and step.trigger == Trigger.TIMEOUT):
        return Notice("escalated", "critical",
                      f"❌ System Issue: {what} is still escalated and nobody has acknowledged "
                      f"it: {step.reason}", action=action, outcome="still escalated")
    if step.dest == State.RESOLVED and step.source != State.RESOLVED and step.notified_before:
        return Notice("resolved", "info", f"✅ System Recovery: {what} resolved: {step.reason}",
                      action=action, outcome="resolved")
    return None


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
