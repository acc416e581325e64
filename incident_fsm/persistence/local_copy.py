"""The outage journal's local copy: the agent's working set, kept in memory, answering offline.

While the database answers, the journal keeps here what it read and wrote
of the incidents the agent works on (the rows, their attempts while known
complete) and the inputs of the guardrail answers it gave (attempt start
times per target, reopen times per fingerprint, the last resolved incident
per fingerprint, whether an incident has notified anyone). While it does
not, every write is a journal entry, and `apply` makes the entry's effect
here with the same functions the store uses (`persistence.effects`): the
offline answers are the online ones, for what the copy holds.

Ids handed out offline are provisional and negative; `aliases` maps them
to the database's ids once replayed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from incident_fsm.errors import StoreUnavailable
from incident_fsm.fsm.steps import Stepped, StepRequest
from incident_fsm.models import OUTCOME_SKIPPED, ActionRun, Incident
from incident_fsm.persistence import effects
from incident_fsm.persistence.journal_file import (
    decode_finish,
    decode_intent,
    decode_open,
    decode_row,
    decode_step,
    encode_row,
)
from incident_fsm.vocabulary import State, Trigger


class LocalCopy:
    """The working set in memory; see the module docstring."""

    def __init__(self) -> None:
        self.incidents: dict[int, Incident] = {}
        #: attempts per incident, present only while known complete for `runs_at` version
        self.runs: dict[int, dict[int, ActionRun]] = {}
        self.runs_at: dict[int, int] = {}
        #: provisional id -> real id, once replayed (incidents and runs share the space)
        self.aliases: dict[int, int] = {}
        self.next_provisional = -1
        #: target -> (known since, {(incident id, started_at)}) of the attempts spending budget
        self.budget: dict[str, tuple[datetime, set[tuple[int, datetime]]]] = {}
        #: fingerprint -> (known since, reopen times)
        self.reopens: dict[str, tuple[datetime, list[datetime]]] = {}
        #: fingerprint -> the last resolved incident
        self.resolved: dict[str, Incident] = {}
        #: incident id -> whether it has outbox rows
        self.notified: dict[int, bool] = {}

    # --- what the database said --------------------------------------------------

    def remember(self, incident: Incident, runs: Sequence[ActionRun] | None = None, *,
                 keep_closed: bool = False) -> Incident:
        """Keep a row the database returned; an older version never replaces a newer copy.

        Returns the copy kept (the newer one when the database's answer was
        older: a read that was in flight while a step was journaled).
        """
        iid = incident.incident_id
        current = self.incidents.get(iid)
        if current is not None and current.version > incident.version:
            return current
        self.incidents[iid] = incident
        if runs is not None:
            self.runs[iid] = _keyed(runs)
            self.runs_at[iid] = incident.version
        elif self.runs_at.get(iid) != incident.version:
            # It moved (e.g. an operator approved an attempt): the copy may be incomplete.
            self.forget_runs(iid)
        self._note_resolution(incident)
        if not incident.is_open and iid > 0 and not keep_closed:
            # Resolved incidents leave the working set (memory stays flat).
            self.incidents.pop(iid, None)
            self.forget_runs(iid)
            self.notified.pop(iid, None)
        return incident

    def remember_runs(self, incident_id: int, runs: Sequence[ActionRun]) -> None:
        cached = self.incidents.get(incident_id)
        if cached is not None:
            self.runs[incident_id] = _keyed(runs)
            self.runs_at[incident_id] = cached.version

    def keep_run(self, run: ActionRun) -> None:
        """Keep a run the database just returned, if this incident's runs are kept."""
        runs = self.runs.get(run.incident_id)
        if runs is not None and run.id is not None:
            runs[run.id] = ActionRun(**run.model_dump())
            incident = self.incidents.get(run.incident_id)
            if incident is not None:  # the store recounted them with this write
                incident.strikes = effects.strike_count_of(runs.values())
        self._count_budget(run)

    def forget_runs(self, incident_id: int) -> None:
        self.runs.pop(incident_id, None)
        self.runs_at.pop(incident_id, None)

    def took_step(self, step: StepRequest, result: Stepped) -> Incident:
        """Keep what a step the database took left: its row and the attempt it recorded.

        The attempts stay known if they were known just before the step (it
        adds at most the one it returns), so a driver that goes offline
        right after it can still finish and judge that attempt here.
        """
        iid = result.incident.incident_id
        known = self.runs.get(iid) if self.runs_at.get(iid) == step.expected_version else None
        runs = None
        if known is not None:
            runs = [*known.values(), *([] if result.attempt is None else [result.attempt])]
        kept = self.remember(result.incident, runs)
        self.stepped_online(step, result.incident)
        return kept

    def stepped_online(self, step: StepRequest, after: Incident) -> None:
        """A step the database took: note the guardrail inputs it changes."""
        known = self.budget.get(after.target)
        if known is not None and step.intent is not None and not step.intent.dry_run:
            known[1].add((after.incident_id, step.at))  # the attempt it started
        if step.trigger == Trigger.REOPEN:
            self._note_reopen(after.fingerprint, step.at)
        if step.notifications:
            self.notified[after.incident_id] = True
        self._note_resolution(after)

    def _note_resolution(self, incident: Incident) -> None:
        """Keep the last resolved incident of each fingerprint (what `last_resolved` says)."""
        last = self.resolved.get(incident.fingerprint)
        if incident.state == State.RESOLVED:
            if last is None or (incident.opened_at, incident.incident_id) >= (
                    last.opened_at, last.incident_id):
                self.resolved[incident.fingerprint] = incident
        elif last is not None and last.incident_id == incident.incident_id:
            self.resolved.pop(incident.fingerprint)  # reopened: no longer resolved

    def resolved_known(self, fingerprint: str, last: Incident | None) -> None:
        """What the database said is the last resolved incident of `fingerprint`."""
        if last is None:
            self.resolved.pop(fingerprint, None)
        else:
            self.resolved[fingerprint] = last

    def budget_known(self, target: str, since: datetime,
                     pairs: Iterable[tuple[int, datetime]]) -> None:
        self.budget[target] = (since, set(pairs))

    def reopens_known(self, fingerprint: str, since: datetime, times: Iterable[datetime]) -> None:
        self.reopens[fingerprint] = (since, list(times))

    # --- answers ---------------------------------------------------------------------

    def get(self, incident_id: int) -> Incident:
        incident = self.incidents.get(incident_id)
        if incident is None:
            raise StoreUnavailable(
                f"database unavailable and incident {incident_id} is not in the local copy")
        return incident

    def runs_of(self, incident_id: int) -> dict[int, ActionRun]:
        runs = self.runs.get(incident_id)
        if runs is None:
            raise StoreUnavailable(
                f"database unavailable and the attempts of incident {incident_id} are not "
                "known locally")
        return runs

    def attempts(self, incident_id: int) -> list[ActionRun]:
        self.get(incident_id)
        runs = sorted(self.runs_of(incident_id).values(), key=lambda r: r.attempt)
        return [ActionRun(**r.model_dump()) for r in runs]

    def find_open(self, fingerprint: str) -> Incident | None:
        return next((copy(i) for i in self.incidents.values()
                     if i.fingerprint == fingerprint and i.is_open), None)

    def incidents_where(self, *, states: Sequence[str], kind: str | None, target: str | None,
             since: datetime | None, until: datetime | None, limit: int) -> list[Incident]:
        rows = [copy(i) for i in self.incidents.values()
                if (not states or i.state in states) and kind in (None, i.kind)
                and target in (None, i.target) and (since is None or i.opened_at >= since)
                and (until is None or i.opened_at < until)]
        # The store's order: newest first, the higher id first on a tie.
        return sorted(rows, key=lambda i: (i.opened_at, i.incident_id), reverse=True)[:limit]

    def overdue(self, now: datetime, limit: int) -> list[Incident]:
        due = [copy(i) for i in self.incidents.values()
               if i.is_open and i.deadline_at is not None and i.deadline_at <= now]
        return sorted(due, key=lambda i: i.deadline_at or now)[:limit]

    def count_actions(self, target: str, since: datetime) -> int:
        known = self.budget.get(target)
        if known is not None and known[0] <= since:
            return sum(1 for _, at in known[1] if at >= since)
        # Not asked online since far enough back: what the local attempts say.
        return sum(1 for iid, runs in self.runs.items()
                   if iid in self.incidents and self.incidents[iid].target == target
                   for r in runs.values() if _spends_budget(r) and r.started_at >= since)

    def count_reopenings(self, fingerprint: str, since: datetime) -> int:
        known = self.reopens.get(fingerprint)
        if known is not None and known[0] <= since:
            return sum(1 for at in known[1] if at >= since)
        return sum(i.flap_count for i in self.incidents.values()
                   if i.fingerprint == fingerprint and i.updated_at >= since)

    def last_resolved(self, fingerprint: str) -> Incident | None:
        found = self.resolved.get(fingerprint)
        return None if found is None else copy(found)

    def has_notifications(self, incident_id: int) -> bool:
        # Unknown offline: rather one resolution notice too many than none.
        return self.notified.get(incident_id, True)

    def find_run(self, run_id: int) -> ActionRun | None:
        for runs in self.runs.values():
            if run_id in runs:
                return runs[run_id]
        return None

    def require_run(self, run_id: int) -> ActionRun:
        run = self.find_run(run_id)
        if run is None:
            raise StoreUnavailable(
                f"database unavailable and action run {run_id} is not in the local copy")
        return run

    def take_provisional(self) -> int:
        value = self.next_provisional
        self.next_provisional -= 1
        return value

    # --- what a journal entry does ---------------------------------------------------

    def base_entry(self, incident_id: int) -> dict[str, Any]:
        """The `base` entry of an incident first touched offline: its row and known attempts."""
        incident = self.get(incident_id)
        return {"op": "base", "incident": encode_row(incident),
                "runs": [encode_row(r) for r in self.runs.get(incident_id, {}).values()],
                "runs_known": incident_id in self.runs}

    def apply(self, entry: Mapping[str, Any]) -> Incident | ActionRun | None:
        """Make `entry`'s effect here (offline now, or loaded from a journal at start)."""
        op = entry["op"]
        result: Incident | ActionRun | None = None
        if op == "base":
            incident = Incident(**decode_row(entry["incident"]))
            iid = incident.incident_id
            self.incidents[iid] = incident
            if entry.get("runs_known", True):
                self.runs[iid] = {r["id"]: ActionRun(**decode_row(r)) for r in entry["runs"]}
                self.runs_at[iid] = incident.version
        elif op == "open":
            result = self._open(entry["id"], decode_open(entry["args"]))
        elif op == "step":
            result = self._step(decode_step(entry["step"]), entry.get("run_id"),
                                entry.get("key", ""))
        elif op == "record_action":
            runs = self.runs.get(entry["incident_id"])
            if runs is not None:
                result = self._add_run(entry["incident_id"], runs, entry["run_id"],
                                       decode_intent(entry["intent"]),
                                       datetime.fromisoformat(entry["at"]), entry.get("key", ""))
        elif op == "claim":
            run = self.find_run(entry["run_id"])
            if run is not None:
                run.executing_at = datetime.fromisoformat(entry["at"])
            result = run
        elif op in ("finish", "judge"):
            result = self._settle(entry["run_id"], op, entry["args"])
        for key in ("id", "run_id"):
            value = entry.get(key)
            if isinstance(value, int) and value <= self.next_provisional:
                self.next_provisional = value - 1
        return result

    def _open(self, provisional: int, args: Mapping[str, Any]) -> Incident:
        at: datetime = args["at"]
        incident = Incident(
            id=provisional, fingerprint=f"{args['target']}:{args['kind']}",
            target=args["target"], kind=args["kind"], severity=args["severity"],
            state=State.DETECTED.value, version=1, summary=args.get("summary", ""),
            details=dict(args.get("details") or {}), deadline_at=args["deadline_at"],
            opened_at=at, updated_at=at)
        self.incidents[provisional] = incident
        self.runs[provisional] = {}
        self.runs_at[provisional] = 1
        self.notified[provisional] = bool(args.get("notifications"))
        return incident

    def _step(self, step: StepRequest, run_id: int | None, key: str) -> Incident:
        iid = step.incident_id
        updated = effects.stepped(self.get(iid), step)
        self.incidents[iid] = updated
        runs = self.runs.get(iid)
        if runs is not None:
            self.runs_at[iid] = updated.version
            if step.intent is not None and run_id is not None:
                self._add_run(iid, runs, run_id, step.intent, step.at, key)
        self.stepped_online(step, updated)
        return updated

    def _add_run(self, incident_id: int, runs: dict[int, ActionRun], run_id: int,
                 intent: Any, at: datetime, key: str) -> ActionRun:
        after = max((r.attempt for r in runs.values()), default=0)
        run = effects.new_attempt(incident_id, after=after, intent=intent, at=at,
                                  run_id=run_id, key=key or None)
        runs[run_id] = run
        self._count_budget(run)
        return run

    def _settle(self, run_id: int, op: str, args: Mapping[str, Any]) -> ActionRun | None:
        run = self.find_run(run_id)
        if run is None:
            return None
        if op == "finish":
            decoded = decode_finish(args)
            effects.finish_run(run, outcome=decoded["outcome"],
                               finished_at=decoded["finished_at"],
                               output_excerpt=str(decoded.get("output_excerpt", "")),
                               evidence=dict(decoded.get("evidence") or {}))
            self._count_budget(run)
        else:
            effects.judge_run(run, verified=bool(args["verified"]))
        incident = self.incidents.get(run.incident_id)
        if incident is not None:
            incident.strikes = effects.strike_count_of(self.runs[run.incident_id].values())
        return run

    def _count_budget(self, run: ActionRun) -> None:
        incident = self.incidents.get(run.incident_id)
        known = None if incident is None else self.budget.get(incident.target)
        if known is None:
            return
        if _spends_budget(run):
            known[1].add((run.incident_id, run.started_at))
        else:
            known[1].discard((run.incident_id, run.started_at))

    def _note_reopen(self, fingerprint: str, at: datetime) -> None:
        known = self.reopens.get(fingerprint)
        if known is not None:
            known[1].append(at)

    def recount_strikes(self) -> None:
        for incident_id, incident in self.incidents.items():
            if incident_id in self.runs:
                incident.strikes = effects.strike_count_of(self.runs[incident_id].values())


def _spends_budget(run: ActionRun) -> bool:
    # The store's `budget_attempts` condition, for a run held in memory.
    return not run.dry_run and run.outcome != OUTCOME_SKIPPED


def _keyed(runs: Sequence[ActionRun]) -> dict[int, ActionRun]:
    # Copies: the local copy changes its rows in place, the caller's are theirs.
    return {r.id or 0: ActionRun(**r.model_dump()) for r in runs}


def copy(incident: Incident) -> Incident:
    return Incident(**incident.model_dump())
