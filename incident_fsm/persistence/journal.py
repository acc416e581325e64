"""Riding out a store outage: a local journal of the agent's writes, replayed when it is back.

`JournalingStore` is a `Store` whose write and working-set read methods fall
back to a local copy when the database is unreachable (`StoreUnavailable`):

- every write the agent makes while offline (opening an incident, a
  transition with its attempt and outbox rows, the claim that starts an
  attempt, an attempt's outcome or verdict, a dry-run record) is applied to
  the local copy and appended to a JSON-lines journal file, flushed and
  fsynced before the call returns;
- an incident first touched while offline is journaled as a `base` entry
  (its row and attempts as last read), so the local copy can be rebuilt
  from the journal alone after a restart during the outage;
- incidents and attempts created offline get provisional negative ids. The
  replay maps them to real ids, and every method accepts the provisional id
  ever after, so a task that started with one keeps working;
- the local copy of an incident's attempts is kept only while it is known
  to be complete (it is tied to the incident's version); otherwise an
  offline read of them fails rather than answer from a stale copy;
- `replay()` applies the entries in order once the database answers again.
  Each entry is idempotent against a crash half-way through: an incident is
  found again by its fingerprint and opening time, a transition already
  present with the same sequence number and trigger is skipped, an outcome
  already recorded the same way is skipped. An entry that cannot be applied
  (a step that conflicts with a change someone made meanwhile, and what
  depends on it) is not forced: it is logged at error level, kept in
  `<journal>.rejected` for a human, and the replay goes on. The journal is
  cleared only when nothing is left in it.

Not journaled: health-check rows (statistics only; they are dropped while
offline and counted in `dropped_health_checks`), heartbeats (skipped while
offline: `beat` answers False), and reads other than the
working set (history, statistics: they wait for the database). Offline, the
remediator's queries answer from the local copy: no learned ranking (policy
order decides), guardrail counts from the actions known locally, and a
returning problem opens a new incident rather than reopening one. Outbox
rows written offline are delivered after the replay.
"""

from __future__ import annotations

import enum
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
from loguru import logger

from incident_fsm.errors import (
    ConcurrentUpdate,
    IncidentFSMError,
    InvalidInput,
    InvalidTransition,
    StoreUnavailable,
)
from incident_fsm.fsm.graph import edge_destinations, operator_triggers_from
from incident_fsm.fsm.steps import ActionIntent, StepRequest
from incident_fsm.models import (
    OUTCOME_SKIPPED,
    ActionRun,
    HealthCheck,
    Incident,
    IncidentId,
    Opened,
    OutboxMessage,
    Timeline,
)
from incident_fsm.persistence import database
from incident_fsm.persistence.attempts import ActionTally
from incident_fsm.persistence.effects import strike_count_of
from incident_fsm.persistence.store import Store
from incident_fsm.vocabulary import State, Verdict

T = TypeVar("T")


class _Offline(enum.Enum):
    """The marker `_try_online` returns when the answer must come from the local copy."""

    LOCAL = "local"


LOCAL: Final = _Offline.LOCAL


class JournalingStore(Store):
    """A store that keeps the agent working through database outages; see the module docstring."""

    def __init__(self, url: str, *, journal_path: str | Path, max_threads: int = 4,
                 call_timeout: float = database.STATEMENT_TIMEOUT + 5) -> None:
        super().__init__(url, max_threads=max_threads, call_timeout=call_timeout)
        self.journal_path = Path(journal_path)
        self._incidents: dict[int, Incident] = {}
        #: attempts per incident, present only while known complete for `_runs_at` version
        self._runs: dict[int, dict[int, ActionRun]] = {}
        self._runs_at: dict[int, int] = {}
        self._journaled: set[int] = set()
        #: provisional id -> real id, once replayed (incidents and runs share the space)
        self._aliases: dict[int, int] = {}
        self._next_provisional = -1
        self._lock = anyio.Lock()
        self._replayed = 0
        self.dropped_health_checks = 0
        self._pending = False
        self._load()

    # --- state --------------------------------------------------------------------

    @property
    def offline(self) -> bool:
        """True while journal entries wait to be replayed (then every call stays local)."""
        return self._pending

    def real_id(self, any_id: int) -> int:
        """The database id for an id handed out while offline (or the id itself)."""
        return self._aliases.get(any_id, any_id)

    async def _try_online(self, call: Callable[[], Awaitable[T]], *,
                          local_id: int | None = None) -> T | _Offline:
        """The database's answer, or LOCAL when offline (journal pending, database away, or
        `local_id` is a provisional id the database does not know)."""
        if self.offline or (local_id is not None and local_id < 0):
            return LOCAL
        try:
            return await call()
        except StoreUnavailable:
            return LOCAL

    def _remember(self, incident: Incident, runs: Sequence[ActionRun] | None = None) -> Incident:
        iid = incident.incident_id
        self._incidents[iid] = incident
        if runs is not None:
            self._runs[iid] = {r.id or 0: r for r in runs}
            self._runs_at[iid] = incident.version
        elif self._runs_at.get(iid) != incident.version:
            # It moved (e.g. an operator approved an attempt): the copy may be incomplete.
            self._forget_runs(iid)
        if not incident.is_open and iid > 0 and not self.offline:
            # Resolved incidents leave the working set (memory stays flat).
            self._incidents.pop(iid, None)
            self._forget_runs(iid)
        return incident

    def _forget_runs(self, incident_id: int) -> None:
        self._runs.pop(incident_id, None)
        self._runs_at.pop(incident_id, None)

    def _local(self, incident_id: int) -> Incident:
        incident = self._incidents.get(incident_id)
        if incident is None:
            raise StoreUnavailable(
                f"database unavailable and incident {incident_id} is not in the local copy"
            )
        return incident

    def _local_runs(self, incident_id: int) -> dict[int, ActionRun]:
        runs = self._runs.get(incident_id)
        if runs is None:
            raise StoreUnavailable(
                f"database unavailable and the attempts of incident {incident_id} are not "
                "known locally")
        return runs

    def _keep_run(self, run: ActionRun) -> None:
        """Keep a run the database just returned in the local copy, if that copy is kept."""
        runs = self._runs.get(run.incident_id)
        if runs is not None and run.id is not None:
            runs[run.id] = ActionRun(**run.model_dump())

    # --- working-set reads ----------------------------------------------------------

    async def get_incident(self, incident_id: IncidentId) -> Incident:
        iid = self.real_id(incident_id)
        found = await self._try_online(
            lambda: super(JournalingStore, self).get_incident(IncidentId(iid)), local_id=iid)
        if found is not LOCAL:
            return _copy(self._remember(found))
        return _copy(self._local(iid))

    async def find_open(self, fingerprint: str) -> Incident | None:
        found = await self._try_online(lambda: super(JournalingStore, self).find_open(fingerprint))
        if found is not LOCAL:
            return found
        return next((_copy(i) for i in self._incidents.values()
                     if i.fingerprint == fingerprint and i.is_open), None)

    async def timeline(self, incident_id: IncidentId) -> Timeline:
        iid = self.real_id(incident_id)
        found = await self._try_online(
            lambda: super(JournalingStore, self).timeline(IncidentId(iid)), local_id=iid)
        if found is not LOCAL:
            self._remember(found.incident, found.actions)
            return found
        incident = self._local(iid)
        runs = sorted(self._local_runs(iid).values(), key=lambda r: r.attempt)
        return Timeline(_copy(incident), [], [ActionRun(**r.model_dump()) for r in runs], [])

    async def count_strikes(self, incident_id: IncidentId) -> int:
        iid = self.real_id(incident_id)
        found = await self._try_online(
            lambda: super(JournalingStore, self).count_strikes(IncidentId(iid)), local_id=iid)
        if found is not LOCAL:
            return found
        return strike_count_of(self._local_runs(iid).values())

    # --- working-set queries of the remediator, supervisor and sweeper -------------
    # Offline these answer from the local copy: degraded but safe answers (no
    # learned ranking, guardrail counts from the actions known locally).

    async def list_incidents(self, *, states: Iterable[str] = (), kind: str | None = None,
                             target: str | None = None, since: datetime | None = None,
                             until: datetime | None = None, limit: int = 100) -> list[Incident]:
        wanted = tuple(states)
        found = await self._try_online(lambda: super(JournalingStore, self).list_incidents(
            states=wanted, kind=kind, target=target, since=since, until=until, limit=limit))
        if found is not LOCAL:
            return found
        rows = [_copy(i) for i in self._incidents.values()
                if (not wanted or i.state in wanted) and kind in (None, i.kind)
                and target in (None, i.target) and (since is None or i.opened_at >= since)
                and (until is None or i.opened_at < until)]
        return sorted(rows, key=lambda i: i.opened_at, reverse=True)[:limit]

    async def overdue(self, now: datetime, *, limit: int = 100) -> list[Incident]:
        found = await self._try_online(
            lambda: super(JournalingStore, self).overdue(now, limit=limit))
        if found is not LOCAL:
            return found
        due = [_copy(i) for i in self._incidents.values()
               if i.is_open and i.deadline_at is not None and i.deadline_at <= now]
        return sorted(due, key=lambda i: i.deadline_at or now)[:limit]

    async def attempts(self, incident_id: IncidentId) -> list[ActionRun]:
        iid = self.real_id(incident_id)
        found = await self._try_online(
            lambda: super(JournalingStore, self).attempts(IncidentId(iid)), local_id=iid)
        if found is not LOCAL:
            cached = self._incidents.get(iid)
            if cached is not None:
                self._runs[iid] = {r.id or 0: r for r in found}
                self._runs_at[iid] = cached.version
            return found
        self._local(iid)
        runs = sorted(self._local_runs(iid).values(), key=lambda r: r.attempt)
        return [ActionRun(**r.model_dump()) for r in runs]

    async def action_record(self, kind: str) -> dict[str, ActionTally]:
        found = await self._try_online(lambda: super(JournalingStore, self).action_record(kind))
        if found is not LOCAL:
            return found
        return {}  # no learned ranking while offline: policy order decides

    async def count_actions(self, *, target: str, since: datetime) -> int:
        found = await self._try_online(
            lambda: super(JournalingStore, self).count_actions(target=target, since=since))
        if found is not LOCAL:
            return found
        return sum(1 for iid, runs in self._runs.items()
                   if iid in self._incidents and self._incidents[iid].target == target
                   for r in runs.values() if not r.dry_run and r.started_at >= since
                   and r.outcome != OUTCOME_SKIPPED)

    async def count_reopenings(self, *, fingerprint: str, since: datetime) -> int:
        found = await self._try_online(lambda: super(JournalingStore, self).count_reopenings(
            fingerprint=fingerprint, since=since))
        if found is not LOCAL:
            return found
        return sum(i.flap_count for i in self._incidents.values()
                   if i.fingerprint == fingerprint and i.updated_at >= since)

    async def has_notifications(self, incident_id: IncidentId) -> bool:
        iid = self.real_id(incident_id)
        found = await self._try_online(
            lambda: super(JournalingStore, self).has_notifications(IncidentId(iid)),
            local_id=iid)
        if found is not LOCAL:
            return found
        return True  # unknown offline: rather one resolution notice too many than none

    async def last_resolved(self, fingerprint: str) -> Incident | None:
        found = await self._try_online(
            lambda: super(JournalingStore, self).last_resolved(fingerprint))
        if found is not LOCAL:
            return found
        return None  # offline a returning problem opens a new incident

    # --- heartbeat ----------------------------------------------------------------

    async def beat(self, replica: str, *, now: datetime, ttl: float) -> bool:
        """The database's heartbeat, or False (skipped) while the database is away.

        Never journaled: a beat replayed later would claim the agent was seen
        when nobody could see it. It is tried even while journal entries wait,
        as it depends on nothing in them.
        """
        try:
            return await super().beat(replica, now=now, ttl=ttl)
        except StoreUnavailable:
            return False

    # --- writes -------------------------------------------------------------------

    async def open_incident(self, **kwargs: Any) -> Opened:
        found = await self._try_online(lambda: super(JournalingStore, self).open_incident(
            **kwargs))
        if found is not LOCAL:
            self._remember(found.incident, [] if found.created else None)
            return found
        async with self._lock:
            fingerprint = f"{kwargs['target']}:{kwargs['kind']}"
            existing = next((i for i in self._incidents.values()
                             if i.fingerprint == fingerprint and i.is_open), None)
            if existing is not None:
                return Opened(_copy(existing), created=False)
            provisional = self._take_provisional()
            incident = _incident_from_open(provisional, kwargs)
            await self._journal(None, [{"op": "open", "id": provisional,
                                        "args": _encode_open(kwargs)}])
            self._incidents[provisional] = incident
            self._runs[provisional] = {}
            self._runs_at[provisional] = 1
            self._journaled.add(provisional)
            return Opened(_copy(incident), created=True)

    async def apply_transition(self, step: StepRequest) -> Incident:
        iid = self.real_id(step.incident_id)
        step = _with_incident(step, iid)
        found = await self._try_online(
            lambda: super(JournalingStore, self).apply_transition(step), local_id=iid)
        if found is not LOCAL:
            return _copy(self._remember(found))
        _validate_offline_step(step)
        async with self._lock:
            incident = self._local(iid)
            if incident.version != step.expected_version or incident.state != step.source:
                raise ConcurrentUpdate(incident_id=iid, expected_version=step.expected_version,
                                       found_version=incident.version, found_state=incident.state)
            runs = self._local_runs(iid) if step.intent is not None else None
            run_id = self._take_provisional() if step.intent is not None else None
            key = f"offline-{uuid.uuid4().hex}"
            await self._journal(iid, [{"op": "step", "step": _encode_step(step),
                                       "run_id": run_id, "key": key}])
            updated = _copy(incident)
            updated.state, updated.version = step.dest, step.expected_version + 1
            updated.deadline_at, updated.flap_count = step.deadline_at, step.flap_count
            updated.resolved_at, updated.updated_at = step.resolved_at, step.at
            self._incidents[iid] = updated
            if runs is not None and step.intent is not None and run_id is not None:
                runs[run_id] = _local_run(iid, run_id, runs, step.intent, step.at, key)
            if iid in self._runs_at:
                self._runs_at[iid] = updated.version
            logger.bind(incident_id=iid, state=step.dest).warning(
                "store unavailable: journaled {} → {} ({}) for replay",
                step.source, step.dest, step.trigger)
            return _copy(updated)

    async def claim_attempt(self, run_id: int, *, at: datetime) -> bool:
        rid = self.real_id(run_id)
        claimed = await self._try_online(
            lambda: super(JournalingStore, self).claim_attempt(rid, at=at), local_id=rid)
        if claimed is not LOCAL:
            run = self._find_run(rid)
            if claimed and run is not None:
                run.executing_at = at
            return claimed
        async with self._lock:
            run = self._require_run(rid)
            if run.executing_at is not None or run.finished_at is not None:
                return False
            await self._journal(run.incident_id, [{"op": "claim", "run_id": rid,
                                                   "at": at.isoformat()}])
            run.executing_at = at
            return True

    async def finish_action(self, run_id: int, **kwargs: Any) -> ActionRun:
        rid = self.real_id(run_id)
        return await self._change_run(
            rid, "finish", kwargs,
            lambda: super(JournalingStore, self).finish_action(rid, **kwargs))

    async def judge_action(self, run_id: int, *, verified: bool) -> ActionRun:
        rid = self.real_id(run_id)
        return await self._change_run(
            rid, "judge", {"verified": verified},
            lambda: super(JournalingStore, self).judge_action(rid, verified=verified))

    async def record_action(self, incident_id: IncidentId, intent: ActionIntent,
                            *, at: datetime) -> ActionRun:
        iid = self.real_id(incident_id)
        recorded = await self._try_online(
            lambda: super(JournalingStore, self).record_action(IncidentId(iid), intent, at=at),
            local_id=iid)
        if recorded is not LOCAL:
            self._keep_run(recorded)
            return recorded
        async with self._lock:
            self._local(iid)
            runs = self._local_runs(iid)
            run_id = self._take_provisional()
            key = f"offline-{uuid.uuid4().hex}"
            await self._journal(iid, [{"op": "record_action", "incident_id": iid,
                                       "run_id": run_id, "intent": _encode_intent(intent),
                                       "at": at.isoformat(), "key": key}])
            run = _local_run(iid, run_id, runs, intent, at, key)
            runs[run_id] = run
            return ActionRun(**run.model_dump())

    async def record_health_check(self, *checks: HealthCheck) -> None:
        """Health-check rows are statistics: dropped (and counted) while offline."""
        if self.offline:
            self.dropped_health_checks += len(checks)
            return
        try:
            await super().record_health_check(*checks)
        except StoreUnavailable:
            self.dropped_health_checks += len(checks)

    async def _change_run(self, run_id: int, op: str, args: Mapping[str, Any],
                          online: Callable[[], Awaitable[ActionRun]]) -> ActionRun:
        """Finish or judge an attempt online, else locally and journaled."""
        result = await self._try_online(online, local_id=run_id)
        if result is not LOCAL:
            self._keep_run(result)
            return result
        async with self._lock:
            run = self._require_run(run_id)
            if op == "finish" and run.finished_at is not None:
                raise InvalidInput(f"action run {run_id} already finished as '{run.outcome}'")
            encoded = _encode_finish(args) if op == "finish" else dict(args)
            await self._journal(run.incident_id, [{"op": op, "run_id": run_id,
                                                   "args": encoded}])
            _apply_run_change(run, op, encoded)
            incident = self._incidents[run.incident_id]
            incident.strikes = strike_count_of(self._runs[run.incident_id].values())
            return ActionRun(**run.model_dump())

    # --- replay -------------------------------------------------------------------

    async def replay(self) -> int:
        """Apply the journal to the database in order; returns the entries applied.

        Raises `StoreUnavailable` (keeping the journal and its progress) if the
        database is away; safe to call again at any time. The lock is held
        only for the final check, so the agent keeps journaling meanwhile.
        """
        applied = 0
        while True:
            entries = await anyio.to_thread.run_sync(self._read)
            todo = entries[self._replayed:]
            if not todo:
                async with self._lock:
                    if len(await anyio.to_thread.run_sync(self._read)) <= self._replayed:
                        self.journal_path.unlink(missing_ok=True)
                        self._journaled.clear()
                        self._replayed = 0
                        self._pending = False
                        break
                continue
            for entry in todo:
                await self._replay_one(entry)
                self._replayed += 1
                applied += 1
        await self._reload_working_set()
        if applied:
            logger.info("store back: replayed {} journaled entries", applied)
        return applied

    async def _reload_working_set(self) -> None:
        """After a replay: the local copy again holds database rows under real ids."""
        ids = {self.real_id(i) for i in self._incidents}
        for old in [i for i in self._incidents if i < 0]:
            self._incidents.pop(old, None)
            self._forget_runs(old)
        for iid in sorted(i for i in ids if i > 0):
            try:
                found = await super().timeline(IncidentId(iid))
            except IncidentFSMError:
                self._incidents.pop(iid, None)
                self._forget_runs(iid)
                continue
            self._remember(found.incident, found.actions)

    async def _replay_one(self, entry: Mapping[str, Any]) -> None:
        """Apply one entry. StoreUnavailable aborts the replay; any other refusal rejects it."""
        try:
            await self._apply_entry(entry)
        except StoreUnavailable:
            raise
        except IncidentFSMError as exc:
            await self._reject(entry, f"{type(exc).__name__}: {exc}")

    async def _apply_entry(self, entry: Mapping[str, Any]) -> None:
        op = entry["op"]
        if op == "base":
            return
        if op == "open":
            args = _decode_open(entry["args"])
            real = await self._find_opened(args) or (
                await super().open_incident(**args)).incident.incident_id
            self._aliases[entry["id"]] = real
            return
        if op == "step":
            step = _decode_step(entry["step"], self.real_id)
            if step.incident_id < 0:
                raise InvalidInput("its incident was never replayed")
            try:
                await super().apply_transition(step)
            except ConcurrentUpdate:
                if not await self._already_applied(step):
                    raise
            if entry.get("run_id") is not None:
                runs = (await super().timeline(step.incident_id)).actions
                run = next((r for r in reversed(runs) if r.started_at == step.at), None)
                if run is not None and run.id is not None:
                    self._aliases[entry["run_id"]] = run.id
            return
        if op == "record_action":
            incident_id = self.real_id(entry["incident_id"])
            if incident_id < 0:
                raise InvalidInput("its incident was never replayed")
            at = datetime.fromisoformat(entry["at"])
            existing = [r for r in (await super().timeline(IncidentId(incident_id))).actions
                        if r.started_at == at and r.action == entry["intent"]["action"]]
            run = existing[0] if existing else await super().record_action(
                IncidentId(incident_id), _decode_intent(entry["intent"]), at=at)
            self._aliases[entry["run_id"]] = run.id or 0
            return
        run_id = self.real_id(entry["run_id"])
        if run_id < 0:
            raise InvalidInput("its attempt was never replayed (its step was rejected)")
        if op == "claim":
            # False: claimed already (an earlier, interrupted replay). Fine.
            await super().claim_attempt(run_id, at=datetime.fromisoformat(entry["at"]))
            return
        try:
            if op == "finish":
                await super().finish_action(run_id, **_decode_finish(entry["args"]))
            else:
                await super().judge_action(run_id, verified=entry["args"]["verified"])
        except InvalidInput as exc:
            if "already" not in str(exc):
                raise  # recorded before the crash that interrupted the last replay: fine

    async def _find_opened(self, args: Mapping[str, Any]) -> int | None:
        """The incident an earlier (interrupted) replay created for this `open`, if any."""
        at: datetime = args["at"]
        rows = await super().list_incidents(target=args["target"], kind=args["kind"], since=at,
                                            until=at + timedelta(microseconds=1), limit=10)
        match = next((i for i in rows if i.opened_at == at), None)
        return None if match is None else match.incident_id

    async def _already_applied(self, step: StepRequest) -> bool:
        timeline = await super().timeline(step.incident_id)
        seq = step.expected_version + 1
        return any(t.seq == seq and t.trigger == step.trigger and t.at == step.at
                   for t in timeline.transitions)

    async def _reject(self, entry: Mapping[str, Any], why: str) -> None:
        logger.error("journaled {} not replayed: {}; kept in {}.rejected", entry.get("op"), why,
                     self.journal_path)
        line = json.dumps({"why": why, "entry": entry}) + "\n"

        def write() -> None:
            with open(f"{self.journal_path}.rejected", "a", encoding="utf-8") as out:
                out.write(line)

        await anyio.to_thread.run_sync(write)

    # --- journal file ---------------------------------------------------------------

    async def _journal(self, incident_id: int | None,
                       entries: Sequence[Mapping[str, Any]]) -> None:
        """Append `entries` (after the incident's `base` entry if it has none yet). Lock held."""
        base: list[Mapping[str, Any]] = []
        if incident_id is not None and incident_id not in self._journaled:
            incident = self._local(incident_id)
            runs = list(self._runs.get(incident_id, {}).values())
            base = [{"op": "base", "incident": _encode_row(incident),
                     "runs": [_encode_row(r) for r in runs],
                     "runs_known": incident_id in self._runs}]
        lines = "".join(json.dumps(e, allow_nan=False) + "\n" for e in (*base, *entries))

        def write() -> None:
            self.journal_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.journal_path, "a", encoding="utf-8") as out:
                out.write(lines)
                out.flush()
                os.fsync(out.fileno())

        await anyio.to_thread.run_sync(write)
        # Only now: if the write failed, the next entry must carry the base again.
        if incident_id is not None:
            self._journaled.add(incident_id)
        self._pending = True

    def _read(self) -> list[dict[str, Any]]:
        if not self.journal_path.exists():
            return []
        entries = []
        with open(self.journal_path, encoding="utf-8") as source:
            for line in source:
                if line.strip():
                    try:
                        entries.append(json.loads(line))
                    except json.JSONDecodeError:
                        # A torn last line from a crash mid-write: that write never returned.
                        logger.warning("journal: ignoring a torn line")
        return entries

    def _load(self) -> None:
        """Rebuild the local copy from a journal left by a previous run (at start-up)."""
        entries = self._read()
        for entry in entries:
            op = entry["op"]
            if op == "base":
                incident = Incident(**_decode_row(entry["incident"]))
                iid = incident.incident_id
                self._incidents[iid] = incident
                if entry.get("runs_known", True):
                    self._runs[iid] = {r["id"]: ActionRun(**_decode_row(r))
                                       for r in entry["runs"]}
                    self._runs_at[iid] = incident.version
                self._journaled.add(iid)
            elif op == "open":
                self._incidents[entry["id"]] = _incident_from_open(
                    entry["id"], _decode_open(entry["args"]))
                self._runs[entry["id"]] = {}
                self._runs_at[entry["id"]] = 1
                self._journaled.add(entry["id"])
            elif op == "step":
                step = _decode_step(entry["step"], lambda v: v)
                incident = self._incidents[step.incident_id]
                incident.state, incident.version = step.dest, step.expected_version + 1
                incident.deadline_at, incident.flap_count = step.deadline_at, step.flap_count
                incident.resolved_at, incident.updated_at = step.resolved_at, step.at
                runs = self._runs.get(step.incident_id)
                if runs is not None:
                    self._runs_at[step.incident_id] = incident.version
                    if step.intent is not None:
                        runs[entry["run_id"]] = _local_run(
                            step.incident_id, entry["run_id"], runs, step.intent, step.at,
                            entry.get("key", ""))
            elif op == "record_action":
                runs = self._runs.get(entry["incident_id"])
                if runs is not None:
                    runs[entry["run_id"]] = _local_run(
                        entry["incident_id"], entry["run_id"], runs,
                        _decode_intent(entry["intent"]), datetime.fromisoformat(entry["at"]),
                        entry.get("key", ""))
            elif op == "claim":
                run = self._find_run(entry["run_id"])
                if run is not None:
                    run.executing_at = datetime.fromisoformat(entry["at"])
            elif op in ("finish", "judge"):
                run = self._find_run(entry["run_id"])
                if run is not None:
                    _apply_run_change(run, op, entry["args"])
            for key in ("id", "run_id"):
                value = entry.get(key)
                if isinstance(value, int) and value <= self._next_provisional:
                    self._next_provisional = value - 1
        for incident_id, incident in self._incidents.items():
            if incident_id in self._runs:
                incident.strikes = strike_count_of(self._runs[incident_id].values())
        self._pending = bool(entries)

    def _find_run(self, run_id: int) -> ActionRun | None:
        for runs in self._runs.values():
            if run_id in runs:
                return runs[run_id]
        return None

    def _require_run(self, run_id: int) -> ActionRun:
        run = self._find_run(run_id)
        if run is None:
            raise StoreUnavailable(
                f"database unavailable and action run {run_id} is not in the local copy")
        return run

    def _take_provisional(self) -> int:
        value = self._next_provisional
        self._next_provisional -= 1
        return value


# --- local copies ---------------------------------------------------------------------


def _validate_offline_step(step: StepRequest) -> None:
    # The same checks the database path makes before it writes anything.
    if step.dest not in edge_destinations(step.trigger, step.source):
        raise InvalidTransition(incident_id=step.incident_id, state=step.source,
                                trigger=step.trigger,
                                allowed=operator_triggers_from(step.source))
    if not step.reason.strip() or not step.actor.strip():
        raise InvalidInput("a transition needs an actor and a reason")


def _with_incident(step: StepRequest, incident_id: int) -> StepRequest:
    if step.incident_id == incident_id:
        return step
    from dataclasses import replace

    return replace(step, incident_id=IncidentId(incident_id))


def _incident_from_open(provisional: int, args: Mapping[str, Any]) -> Incident:
    at: datetime = args["at"]
    return Incident(
        id=provisional, fingerprint=f"{args['target']}:{args['kind']}", target=args["target"],
        kind=args["kind"], severity=args["severity"], state=State.DETECTED.value, version=1,
        summary=args.get("summary", ""), details=dict(args.get("details") or {}),
        deadline_at=args["deadline_at"], opened_at=at, updated_at=at)


def _local_run(incident_id: int, run_id: int, runs: Mapping[int, ActionRun],
               intent: ActionIntent, at: datetime, key: str) -> ActionRun:
    return ActionRun(
        id=run_id, incident_id=incident_id,
        attempt=1 + max((r.attempt for r in runs.values()), default=0), action=intent.action,
        tier=intent.tier, idempotency_key=key or f"offline-{uuid.uuid4().hex}",
        dry_run=intent.dry_run, started_at=at)


def _apply_run_change(run: ActionRun, op: str, encoded: Mapping[str, Any]) -> None:
    if op == "finish":
        decoded = _decode_finish(encoded)
        run.outcome, run.finished_at = decoded["outcome"], decoded["finished_at"]
        run.output_excerpt = str(decoded.get("output_excerpt", ""))[:4000]
        run.evidence = dict(decoded.get("evidence") or {})
    else:
        run.verified = bool(encoded["verified"])


# --- encoding (JSON-safe, datetimes as ISO 8601) ----------------------------------------


def _copy(incident: Incident) -> Incident:
    return Incident(**incident.model_dump())


def _encode_row(row: Incident | ActionRun) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in row.model_dump().items()}


_TIME_FIELDS = {"opened_at", "updated_at", "resolved_at", "deadline_at", "started_at",
                "executing_at", "finished_at", "at"}


def _decode_row(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (datetime.fromisoformat(v) if k in _TIME_FIELDS and v else v)
            for k, v in data.items()}


def _encode_intent(intent: ActionIntent) -> dict[str, Any]:
    return {**asdict(intent), "verdict": intent.verdict.value}


def _decode_intent(data: Mapping[str, Any]) -> ActionIntent:
    return ActionIntent(data["action"], data["tier"], Verdict(data["verdict"]), data["why"],
                        bool(data.get("dry_run", False)))


def _encode_open(args: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in args.items() if k != "notifications"}
    out["at"] = args["at"].isoformat()
    out["deadline_at"] = args["deadline_at"].isoformat() if args.get("deadline_at") else None
    out["notifications"] = [{"channel": m.channel, "payload": dict(m.payload)}
                            for m in args.get("notifications", ())]
    return out


def _decode_open(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    out["at"] = datetime.fromisoformat(data["at"])
    out["deadline_at"] = datetime.fromisoformat(data["deadline_at"]) if data.get(
        "deadline_at") else None
    out["notifications"] = [OutboxMessage(m["channel"], m["payload"])
                            for m in data.get("notifications", ())]
    return out


def _encode_step(step: StepRequest) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "incident_id": step.incident_id, "expected_version": step.expected_version,
        "trigger": step.trigger, "source": step.source, "dest": step.dest, "actor": step.actor,
        "reason": step.reason, "at": iso(step.at), "deadline_at": iso(step.deadline_at),
        "flap_count": step.flap_count, "resolved_at": iso(step.resolved_at),
        "details": dict(step.details),
        "intent": None if step.intent is None else _encode_intent(step.intent),
        "notifications": [{"channel": m.channel, "payload": dict(m.payload)}
                          for m in step.notifications],
    }


def _decode_step(data: Mapping[str, Any], real: Any) -> StepRequest:
    def when(value: str | None) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)

    at = when(data["at"])
    assert at is not None
    return StepRequest(
        incident_id=IncidentId(real(data["incident_id"])),
        expected_version=data["expected_version"], trigger=data["trigger"],
        source=data["source"], dest=data["dest"], actor=data["actor"], reason=data["reason"],
        at=at, deadline_at=when(data["deadline_at"]), flap_count=data["flap_count"],
        resolved_at=when(data["resolved_at"]), details=data["details"],
        intent=None if data["intent"] is None else _decode_intent(data["intent"]),
        notifications=[OutboxMessage(m["channel"], m["payload"]) for m in data["notifications"]],
    )


def _encode_finish(args: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(args)
    out["finished_at"] = args["finished_at"].isoformat()
    return out


def _decode_finish(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    out["finished_at"] = datetime.fromisoformat(data["finished_at"])
    return out
