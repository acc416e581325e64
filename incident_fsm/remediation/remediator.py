"""The remediator: drives one incident through the graph by choosing, running and judging actions.

One `drive` call takes an incident from where it stands to a state that
waits for the world (resolved, escalated, or `detected` in monitor-only
mode):

    choose (policy + learned ranking) -> fire remediate / hold
    run the action, bounded by its time limit and the incident's deadline
    store its outcome -> fire action_finished
    wait the verify window (on the injected clock) -> ask the Verifier
    judge the attempt -> fire recovered, or still_failing with the next choice

An action that reports itself not applicable (outcome `skipped`, e.g. a
scale while Render autoscales) changed nothing: it is no strike and is not
verified; `still_failing` follows at once with the next choice.

An attempt whose action failed (an error answer, HTTP 4xx/5xx even from an
action that called it ok, not available for the target, timed out,
interrupted) is still verified: if the problem cleared anyway, the incident
is resolved "cleared without a working action" (reason and details say so)
and the attempt is never counted as the action's success.

The graph does the rest: `still_failing` escalates at `max_strikes` or
when no action is left. Every attempt is recorded by the engine before it
runs; an attempt found unfinished when `drive` starts (the agent stopped
while it ran) is marked interrupted and judged, never run twice. An action
that raises, returns something that is not an `Outcome`, or overruns, is a
failed or timed-out attempt, not a crash. When someone else moves the
incident meanwhile (the deadline sweeper, an operator, another replica),
`drive` stops and returns the incident as it is. An incident in
`remediating` with no attempt on record at all (nothing to run, judge or
wait for) is escalated to an operator at once, with that reason: left to
its deadline, every scan of the controller would find it again.

`drive` assumes it is the only driver of its incident at a time (the
controller runs one task per incident), and so holds the incident and its
attempts (`Held`): read once at the start, then taken from what each write
returns. The store is read again only when a write is refused: a step whose
version moved (`ConcurrentUpdate`), or a claim refused because the incident
left `remediating` at the held version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import anyio
from loguru import logger

from incident_fsm.clock import Clock
from incident_fsm.errors import (
    AttemptAlreadyFinished,
    AttemptAlreadyJudged,
    ConcurrentUpdate,
    InvalidInput,
    InvalidTransition,
)
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent, Stepped
from incident_fsm.models import ActionRun, Incident, IncidentId
from incident_fsm.persistence.effects import OUTCOME_OK, strike_count_of
from incident_fsm.remediation.actions.base import ActionContext, Outcome, OutcomeStatus
from incident_fsm.remediation.actions.redaction import redact
from incident_fsm.remediation.chooser import (
    NO_SILENCES,
    ActionSource,
    Choice,
    ChoiceStore,
    Chooser,
    SilenceSource,
)
from incident_fsm.remediation.policy import DEFAULT_RULES, Limits, Rule
from incident_fsm.remediation.running import run_action
from incident_fsm.timebox import within
from incident_fsm.vocabulary import Actor, AttemptOutcome, State, Verdict

__all__ = ["ActionSource", "AttemptStore", "Choice", "Held", "Remediator", "Verification",
           "Verifier"]

MAX_REASON: Final = 1000
#: Seconds a dry run's preview (e.g. scanning the cleanup roots) may take.
PREVIEW_LIMIT: Final = 60.0
ACTOR: Final = Actor.AGENT
#: How a recovery is recorded when the attempt before it had failed.
CLEARED_ANYWAY: Final = "cleared without a working action"
#: Why an incident in `remediating` with no attempt on record is escalated.
NO_ATTEMPT: Final = "remediating with no attempt on record"
_FAILED_HOW: Final[Mapping[str, str]] = {
    AttemptOutcome.FAILED: "failed", AttemptOutcome.TIMED_OUT: "timed out",
    AttemptOutcome.INTERRUPTED: "was interrupted"}


class AttemptStore(ChoiceStore, Protocol):
    """What the remediator needs of a store: the incident, its attempts, the guardrail counts."""

    async def attempts(self, incident_id: IncidentId) -> list[ActionRun]: ...

    async def claim_attempt(self, run_id: int, *, at: datetime,
                            incident_version: int | None = None) -> bool: ...

    async def finish_action(
        self,
        run_id: int,
        *,
        outcome: str,
        finished_at: datetime,
        output_excerpt: str = "",
        evidence: Mapping[str, Any] | None = None,
    ) -> ActionRun: ...

    async def get_incident(self, incident_id: IncidentId) -> Incident: ...

    async def judge_action(self, run_id: int, *, verified: bool) -> ActionRun: ...

    async def record_action(self, incident_id: IncidentId, intent: ActionIntent,
                            *, at: datetime) -> ActionRun: ...


@dataclass(frozen=True)
class Verification:
    """A verifier's answer: is the problem gone, judging by fresh samples?"""

    cleared: bool
    summary: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)


class Verifier(Protocol):
    """Judges an incident from fresh health samples (the controller provides one)."""

    async def verify(self, incident: Incident) -> Verification: ...


@dataclass
class Held:
    """The incident one drive holds and its attempts, as the driver's last write left them.

    The driver is the only writer of its incident while it drives it: it
    takes the new row from each step and each attempt from each write, and
    counts the strikes from the attempts it holds, as the store does.
    """

    incident: Incident
    attempts: list[ActionRun]

    @property
    def state(self) -> str:
        return self.incident.state

    def last(self) -> ActionRun | None:
        return _last_real(self.attempts)

    def took(self, stepped: Stepped) -> None:
        self.incident = stepped.incident
        if stepped.attempt is not None:
            self.attempts.append(stepped.attempt)

    def keep(self, run: ActionRun) -> None:
        """An attempt as a write returned it; an outcome or a verdict may change the strikes."""
        self.attempts = [run if r.id == run.id else r for r in self.attempts]
        if all(r.id != run.id for r in self.attempts):
            self.attempts.append(run)
        self.incident = self.incident.model_copy(
            update={"strikes": strike_count_of(self.attempts)})


class Remediator:
    """Chooses, runs and judges remediation actions for incidents."""

    def __init__(
        self,
        *,
        engine: IncidentEngine,
        store: AttemptStore,
        clock: Clock,
        actions: ActionSource,
        verifier: Verifier,
        limits: Limits | None = None,
        policy: Mapping[str, Sequence[str]] | None = None,
        rules: Sequence[Rule] = DEFAULT_RULES,
        verify_timeout: float = 30.0,
        on_attempt: Callable[[ActionRun], None] | None = None,
        silences: SilenceSource = NO_SILENCES,
    ) -> None:
        if verify_timeout <= 0:
            raise InvalidInput("verify_timeout must be greater than 0")
        self._engine = engine
        self._store = store
        self._clock = clock
        self._actions = actions
        self._verifier = verifier
        self.limits = limits or Limits()
        self._chooser = Chooser(store=store, clock=clock, actions=actions, limits=self.limits,
                                policy=policy, rules=tuple(rules), silences=silences)
        self._verify_timeout = verify_timeout
        #: called with each attempt once its outcome is stored (e.g. a metrics counter)
        self._on_attempt = on_attempt

    async def choose(self, incident: Incident,
                     attempts: Sequence[ActionRun] | None = None) -> Choice:
        """The best permitted untried action for the incident (see `Chooser.choose`)."""
        if attempts is None:
            attempts = await self._store.attempts(incident.incident_id)
        return await self._chooser.choose(incident, attempts)

    # --- driving ------------------------------------------------------------------

    async def drive(self, incident_id: IncidentId) -> Incident:
        """Take the incident as far as it goes now; returns it as persisted afterwards."""
        held = await self._hold(incident_id)
        try:
            if held.state == State.DETECTED:
                await self._begin(held)
                if held.state == State.REMEDIATING:
                    await self._attempt(held)
            elif held.state == State.REMEDIATING:
                await self._resume(held)
            # Bounded by the graph: each round adds a strike or ends the incident.
            while held.state == State.VERIFYING:
                await self._judge(held)
                if held.state == State.REMEDIATING:
                    await self._attempt(held)
        except (ConcurrentUpdate, InvalidTransition) as exc:
            _log(held.incident).info("incident {} moved on without the remediator: {}",
                                     incident_id, exc)
            return await self._store.get_incident(incident_id)
        return held.incident

    async def _hold(self, incident_id: IncidentId) -> Held:
        """The incident and its attempts as stored now: at the start, or after a conflict."""
        incident = await self._store.get_incident(incident_id)
        return Held(incident, await self._store.attempts(incident_id))

    async def _begin(self, held: Held) -> None:
        choice = await self.choose(held.incident, held.attempts)
        intent = choice.intent
        if intent is None:
            await self._fire(held, "hold", f"nothing to run: {choice.why}",
                             details=choice.details())
        elif intent.dry_run:
            await self._dry_run(held, intent)
        elif intent.verdict is Verdict.HOLD:
            await self._fire(held, "hold", f"holding {intent.action}: {intent.why}",
                             intent=intent, details=choice.details())
        else:
            await self._fire(held, "remediate", f"{intent.action}: {intent.why}",
                             intent=intent, details=choice.details())

    async def _attempt(self, held: Held) -> None:
        """Run the attempt the last step recorded, store its outcome, and move on."""
        run = held.last()
        if run is None or run.finished_at is not None:
            return await self._resume(held)
        incident = held.incident
        now = self._clock.now()
        # The claim holds only while the incident is still where we hold it: escalated,
        # resolved or claimed meanwhile (by us, before a crash), it is never run (twice).
        if run.id is None or not await self._store.claim_attempt(
                run.id, at=now, incident_version=incident.version):
            return await self._after_refused_claim(held)
        action = self._actions.for_target(incident.target).get(run.action)
        deadline = incident.deadline_at or now + timedelta(
            seconds=self._engine.policy.action_deadline)
        ctx = ActionContext(incident=incident, idempotency_key=run.idempotency_key,
                            deadline=deadline, clock=self._clock)
        try:
            outcome = await run_action(action, run.action, ctx, clock=self._clock)
        except BaseException:
            # Cancelled (the agent is stopping): say so, so a restart judges it, never reruns it.
            with anyio.CancelScope(shield=True):
                await self._finish(held, run, Outcome.failed("interrupted: the agent stopped"),
                                   status=AttemptOutcome.INTERRUPTED)
            raise
        if not await self._finish(held, run, outcome):
            # Someone else closed this attempt (the sweeper, at the deadline): theirs to move.
            held.incident = await self._store.get_incident(incident.incident_id)
            return None
        if outcome.status is OutcomeStatus.OK:
            _log(incident).info("🔧 Executed {} for {}: {}", run.action, incident.fingerprint,
                                outcome.summary)
        elif outcome.status is OutcomeStatus.SKIPPED:
            _log(incident).info("⏭ {} does not apply to {}: {}", run.action,
                                incident.fingerprint, outcome.summary)
        else:
            _log(incident).warning("❌ Failed to {}: {}", run.action, outcome.summary)
        details = _outcome_details(outcome)
        if outcome.status is OutcomeStatus.TIMED_OUT and self._clock.now() >= deadline:
            return await self._fire(
                held, "timeout",
                f"{run.action} was still not done at the action deadline: {outcome.summary}",
                details=details)
        return await self._fire(held, "action_finished",
                                f"{run.action} {outcome.status.value}: {outcome.summary}",
                                details=details)

    async def _after_refused_claim(self, held: Held) -> None:
        """The claim was refused: read the incident again and carry on from what it says."""
        fresh = await self._hold(held.incident.incident_id)
        held.incident, held.attempts = fresh.incident, fresh.attempts
        run = held.last()
        if held.state != State.REMEDIATING or run is None:
            return None  # not ours to run any more (or nothing to run: the next drive says)
        if run.executing_at is None and run.finished_at is None:
            # Still unstarted, at another version: the next drive starts from there.
            return None
        return await self._resume(held)

    async def _finish(self, held: Held, run: ActionRun, outcome: Outcome, *,
                      status: str | None = None) -> bool:
        """Store how the attempt ended; False if it had been closed by someone else."""
        assert run.id is not None
        try:
            finished = await self._store.finish_action(
                run.id, outcome=status or outcome.status.value, finished_at=self._clock.now(),
                output_excerpt=outcome.output_excerpt, evidence=_plain(outcome.record()))
        except AttemptAlreadyFinished:
            return False
        held.keep(finished)
        if self._on_attempt is not None:
            self._on_attempt(finished)
        return True

    async def _resume(self, held: Held) -> None:
        """An incident found in `remediating`: run its attempt if it never started, else judge it.

        Never started (no claim): an operator approved it, or the agent stopped
        between recording it and running it. Started but unfinished: the agent
        stopped while it ran, so it is marked interrupted and not run again.
        """
        run = held.last()
        if run is None:
            # Never judge what we cannot see, nor run something nobody chose. Hand it to a
            # human now, in one step: waiting for the deadline instead, every scan of the
            # controller would start a driver that finds the same and gives up again.
            _log(held.incident).warning("incident {} is {}: escalating it to an operator",
                                        held.incident.incident_id, NO_ATTEMPT)
            return await self._fire(held, "escalate", NO_ATTEMPT)
        if run.finished_at is None and run.executing_at is None:
            return await self._attempt(held)
        reason = "resuming: the attempt had finished"
        if run.finished_at is None:
            await self._finish(held, run, Outcome.failed(
                "interrupted: the agent stopped while this attempt ran; it is not run again"),
                status=AttemptOutcome.INTERRUPTED)
            reason = f"resuming: {run.action} was interrupted and is not run again"
        return await self._fire(held, "action_finished", reason)

    async def _judge(self, held: Held) -> None:
        run = held.last()
        if run is not None and run.outcome == OutcomeStatus.SKIPPED.value:
            # Not applicable: it changed nothing, so there is nothing to wait for or verify,
            # and no strike (a skipped attempt is none); straight on to the next candidate.
            summary = str((run.evidence or {}).get("summary", "")) or "not applicable"
            return await self._next(held, f"{run.action} did not apply: {summary}", details={})
        wait = self._engine.policy.verify_window - (
            self._clock.now() - held.incident.updated_at).total_seconds()
        if wait > 0:
            # Not read again afterwards: if someone moved the incident meanwhile, the
            # step below is refused (its version moved) and the drive ends there.
            await self._clock.sleep(wait)
        verification = await self._verify(held.incident)
        label = run.action if run is not None else "the last action"
        if run is not None and run.id is not None:
            try:
                held.keep(await self._store.judge_action(run.id, verified=verification.cleared))
            except AttemptAlreadyJudged as exc:  # judged before a restart; the verdict stands
                _log(held.incident).warning("keeping the earlier verdict: {}", exc)
        details: dict[str, Any] = {"verification": _plain(dict(verification.evidence))}
        if verification.cleared and run is not None and run.outcome != OUTCOME_OK:
            # `verified` records that the problem cleared after the attempt; the action
            # itself did not work, so the recovery is not put down to it (nor learned).
            how = _FAILED_HOW.get(run.outcome or "", "did not finish")
            details |= {"recovery": CLEARED_ANYWAY, "action_outcome": run.outcome}
            return await self._fire(
                held, "recovered",
                f"{CLEARED_ANYWAY} ({label} {how}): {verification.summary or 'cleared'}",
                details=details)
        if verification.cleared:
            return await self._fire(held, "recovered",
                                    f"verified after {label}: {verification.summary or 'cleared'}",
                                    details=details)
        still = f"still failing after {label}: {verification.summary or 'not cleared'}"
        return await self._next(held, still, details=details)

    async def _next(self, held: Held, still: str, *, details: dict[str, Any]) -> None:
        """From `verifying`, not cleared: the next candidate, or escalation (`still_failing`)."""
        strikes = held.incident.strikes
        max_strikes = self._engine.policy.max_strikes
        if strikes >= max_strikes:
            return await self._fire(held, "still_failing",
                                    f"{still}; {strikes} strikes (max {max_strikes})",
                                    details=details)
        choice = await self.choose(held.incident, held.attempts)
        intent = choice.intent
        details |= choice.details()
        if intent is None:
            return await self._fire(held, "still_failing", f"{still}; {choice.why}",
                                    details=details)
        if intent.dry_run:
            await self._dry_run(held, intent)
            return await self._fire(held, "still_failing",
                                    f"{still}; monitor-only: {intent.action} not run",
                                    details=details)
        return await self._fire(held, "still_failing",
                                f"{still}; next: {intent.action}: {intent.why}",
                                intent=intent, details=details)

    async def _verify(self, incident: Incident) -> Verification:
        try:
            result = await within(self._clock, self._verify_timeout,
                                  lambda: self._verifier.verify(incident))
        except TimeoutError:
            return Verification(False, f"no verdict within {self._verify_timeout:g} s",
                                {"error": "verifier timed out"})
        except Exception as exc:
            return Verification(False, f"verifier failed: {type(exc).__name__}",
                                {"error": redact(str(exc))[:300]})
        if not isinstance(result, Verification):
            return Verification(False, "verifier gave no verdict",
                                {"error": f"verifier returned {type(result).__name__}"})
        return result

    async def _dry_run(self, held: Held, intent: ActionIntent) -> None:
        """Monitor-only: record what would run (once per stay in `detected`), run nothing."""
        incident = held.incident
        if any(r.dry_run and r.started_at >= incident.updated_at for r in held.attempts):
            return
        run = await self._store.record_action(incident.incident_id, intent,
                                              at=self._clock.now())
        held.keep(run)
        action = self._actions.for_target(incident.target).get(intent.action)
        ctx = ActionContext(incident=incident, idempotency_key=run.idempotency_key,
                            deadline=self._clock.now() + timedelta(seconds=PREVIEW_LIMIT),
                            clock=self._clock, dry_run=True)
        preview = await run_action(action, intent.action, ctx, clock=self._clock)
        # The verdict would otherwise be lost: a dry run moves the incident nowhere.
        preview = replace(preview, evidence={**preview.evidence, "verdict": intent.verdict.value,
                                             "verdict_reason": intent.why})
        await self._finish(held, run, preview, status=AttemptOutcome.SKIPPED)
        _log(incident).info("monitor-only: would run {} for {}: {}", intent.action,
                            incident.fingerprint, preview.summary)

    async def _fire(self, held: Held, trigger: str, reason: str, *,
                    intent: ActionIntent | None = None,
                    details: Mapping[str, Any] | None = None) -> None:
        held.took(await self._engine.step(
            held.incident, trigger, actor=ACTOR, reason=_short(reason), details=details,
            intent=intent, attempts=held.attempts))


def _last_real(attempts: Sequence[ActionRun]) -> ActionRun | None:
    real = [r for r in attempts if not r.dry_run]
    return real[-1] if real else None


def _outcome_details(outcome: Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {"outcome": outcome.status.value, "summary": _short(outcome.summary)}
    if outcome.exit_code is not None:
        out["exit_code"] = outcome.exit_code
    if outcome.http_status is not None:
        out["http_status"] = outcome.http_status
    return out


def _short(text: str) -> str:
    text = text.strip() or "(no detail)"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def _plain(value: Mapping[str, Any]) -> dict[str, Any]:
    """`value` as plain JSON data (anything exotic as text), so storing it cannot fail."""
    try:
        plain: dict[str, Any] = json.loads(json.dumps(dict(value), default=str,
                                                      allow_nan=False))
    except (TypeError, ValueError):
        return {"unreadable": repr(value)[:300]}
    return plain


def _log(incident: Incident) -> Any:
    return logger.bind(incident_id=incident.id, state=incident.state, target=incident.target)
