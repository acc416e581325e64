"""Riding out a store outage: the agent's writes journaled locally, replayed when it is back.

`JournalingStore` wraps a `Store` (it composes it; it is not one). Its
working-set reads and its writes go to the database first and fall back to
the local copy (`persistence.local_copy`) when the database is unreachable
(`StoreUnavailable`):

- every write the agent makes while offline (opening an incident, a
  transition with its attempt and outbox rows, the claim that starts an
  attempt, an attempt's outcome or verdict, a dry-run record) is appended
  to a JSON-lines journal (`persistence.journal_file`), flushed and fsynced
  before the call returns, and then applied to the local copy with the
  same effect functions the store uses;
- an incident first touched while offline is journaled as a `base` entry
  (its row and attempts as last read), so the local copy can be rebuilt
  from the journal alone after a restart during the outage (read in a
  worker thread on first use, never on the event loop);
- incidents and attempts created offline get provisional negative ids. The
  replay maps them to real ids, and every method accepts the provisional id
  ever after, so a task that started with one keeps working;
- `replay()` applies the entries in order once the database answers again
  (`persistence.replay`: idempotent per entry; what cannot be applied is
  logged and kept in `<journal>.rejected`, never forced). The journal is
  cleared only when nothing is left in it.

Only the methods below exist here: a new `Store` method is not reachable
through the journal until it is given its offline behaviour (or is
declared online-only). Not journaled: health-check rows (statistics only:
dropped while offline, counted in `dropped_health_checks`), heartbeats
(`beat` answers False while offline), the dispatcher's queue, leases, and
reads other than the working set (history, statistics: they wait for the
database). Offline there is no learned ranking (policy order decides);
guardrail counts come from what the copy holds. Outbox rows written
offline are delivered after the replay.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
from loguru import logger

from incident_fsm.errors import (
    ConcurrentUpdate,
    InvalidInput,
    InvalidTransition,
    StoreUnavailable,
)
from incident_fsm.fsm.graph import edge_destinations, operator_triggers_from
from incident_fsm.fsm.steps import ActionIntent, Stepped, StepRequest
from incident_fsm.models import (
    ActionRun,
    HealthCheck,
    HealthRow,
    Incident,
    IncidentId,
    Opened,
    Timeline,
)
from incident_fsm.persistence import database
from incident_fsm.persistence.attempts import ActionTally
from incident_fsm.persistence.effects import finish_run, judge_run, strike_count_of
from incident_fsm.persistence.journal_file import (
    JournalFile,
    decode_finish,
    encode_finish,
    encode_intent,
    encode_open,
    encode_step,
)
from incident_fsm.persistence.local_copy import LocalCopy, copy
from incident_fsm.persistence.online_only import OnlineOnly
from incident_fsm.persistence.replay import Replayer
from incident_fsm.persistence.store import Store
from incident_fsm.vocabulary import State

T = TypeVar("T")

class _Offline(enum.Enum):
    """The marker `_online` returns when the answer must come from the local copy."""

    LOCAL = "local"


LOCAL: Final = _Offline.LOCAL


class JournalingStore(OnlineOnly):
    """A store that keeps the agent working through database outages; see the module docstring."""

    def __init__(self, store: Store | str, *, journal_path: str | Path, max_threads: int = 4,
                 call_timeout: float = database.STATEMENT_TIMEOUT + 5) -> None:
        self.online = store if isinstance(store, Store) else Store(
            store, max_threads=max_threads, call_timeout=call_timeout)
        self.journal_path = Path(journal_path)
        self._file = JournalFile(self.journal_path)
        self._local = LocalCopy()
        self._replayer = Replayer(self.online, self._local, self._file)
        self._journaled: set[int] = set()
        self._lock = anyio.Lock()
        self._replayed = 0
        self.dropped_health_checks = 0
        self._loaded = False
        # Only whether a journal waits; it is read on first use, in a worker thread.
        self._pending = self.journal_path.exists()

    def __repr__(self) -> str:
        return f"JournalingStore({self.online!r}, journal={str(self.journal_path)!r})"

    # --- state --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.online.url

    @property
    def engine(self) -> Any:
        return self.online.engine

    @property
    def idle(self) -> bool:
        return self.online.idle

    @property
    def offline(self) -> bool:
        """True while journal entries wait to be replayed (then every call stays local)."""
        return self._pending

    def real_id(self, any_id: int) -> int:
        """The database id for an id handed out while offline (or the id itself)."""
        return self._local.aliases.get(any_id, any_id)

    async def close(self, *, grace: float = 5.0) -> None:
        await self.online.close(grace=grace)

    async def __aenter__(self) -> JournalingStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ready(self) -> None:
        """Load a journal left by a previous run, once, off the event loop."""
        if self._loaded:
            return
        async with self._lock:
            if self._loaded:
                return
            entries = await anyio.to_thread.run_sync(self._file.read)
            for entry in entries:
                self._local.apply(entry)
                for key in ("id", "incident_id"):
                    if isinstance(entry.get(key), int):
                        self._journaled.add(entry[key])
                if entry["op"] == "base":
                    self._journaled.add(int(entry["incident"]["id"]))
            self._local.recount_strikes()
            self._pending = bool(entries)
            self._loaded = True

    async def _online(self, call: Callable[[], Awaitable[T]], *,
                      local_id: int | None = None) -> T | _Offline:
        """The database's answer, or LOCAL when offline (journal pending, database away, or
        `local_id` is a provisional id the database does not know)."""
        await self._ready()
        if self.offline or (local_id is not None and local_id < 0):
            return LOCAL
        try:
            return await call()
        except StoreUnavailable:
            return LOCAL

    # --- working-set reads ----------------------------------------------------------

    async def get_incident(self, incident_id: IncidentId) -> Incident:
        iid = self.real_id(incident_id)
        found = await self._online(lambda: self.online.get_incident(IncidentId(iid)),
                                   local_id=iid)
        if found is LOCAL:
            return copy(self._local.get(iid))
        return copy(self._local.remember(found))

    async def find_open(self, fingerprint: str) -> Incident | None:
        found = await self._online(lambda: self.online.find_open(fingerprint))
        if found is LOCAL:
            return self._local.find_open(fingerprint)
        return found

    async def timeline(self, incident_id: IncidentId) -> Timeline:
        iid = self.real_id(incident_id)
        found = await self._online(lambda: self.online.timeline(IncidentId(iid)), local_id=iid)
        if found is LOCAL:
            return Timeline(copy(self._local.get(iid)), [], self._local.attempts(iid), [])
        self._local.remember(found.incident, found.actions)
        return found

    async def attempts(self, incident_id: IncidentId) -> list[ActionRun]:
        iid = self.real_id(incident_id)
        found = await self._online(lambda: self.online.attempts(IncidentId(iid)), local_id=iid)
        if found is LOCAL:
            return self._local.attempts(iid)
        self._local.remember_runs(iid, found)
        return found

    async def count_strikes(self, incident_id: IncidentId) -> int:
        iid = self.real_id(incident_id)
        found = await self._online(lambda: self.online.count_strikes(IncidentId(iid)),
                                   local_id=iid)
        if found is LOCAL:
            return strike_count_of(self._local.runs_of(iid).values())
        return found

    async def list_incidents(self, *, states: Iterable[str] = (), kind: str | None = None,
                             target: str | None = None, since: datetime | None = None,
                             until: datetime | None = None, limit: int = 100) -> list[Incident]:
        wanted = tuple(states)
        found = await self._online(lambda: self.online.list_incidents(
            states=wanted, kind=kind, target=target, since=since, until=until, limit=limit))
        if found is LOCAL:
            return self._local.incidents_where(states=wanted, kind=kind, target=target, since=since,
                                    until=until, limit=limit)
        return found

    async def overdue(self, now: datetime, *, limit: int = 100) -> list[Incident]:
        found = await self._online(lambda: self.online.overdue(now, limit=limit))
        if found is LOCAL:
            return self._local.overdue(now, limit)
        return found

    # --- the remediator's queries: offline from the inputs the copy holds -----------

    async def action_record(self, kind: str) -> dict[str, ActionTally]:
        found = await self._online(lambda: self.online.action_record(kind))
        if found is LOCAL:
            return {}  # no learned ranking while offline: policy order decides
        return found

    async def count_actions(self, *, target: str, since: datetime) -> int:
        found = await self._online(
            lambda: self.online.budget_attempts(target=target, since=since))
        if found is LOCAL:
            return self._local.count_actions(target, since)
        self._local.budget_known(target, since, found)
        return len(found)

    async def count_reopenings(self, *, fingerprint: str, since: datetime) -> int:
        found = await self._online(
            lambda: self.online.reopenings(fingerprint=fingerprint, since=since))
        if found is LOCAL:
            return self._local.count_reopenings(fingerprint, since)
        self._local.reopens_known(fingerprint, since, found)
        return len(found)

    async def has_notifications(self, incident_id: IncidentId) -> bool:
        iid = self.real_id(incident_id)
        found = await self._online(lambda: self.online.has_notifications(IncidentId(iid)),
                                   local_id=iid)
        if found is LOCAL:
            return self._local.has_notifications(iid)
        self._local.notified[iid] = bool(found)
        return bool(found)

    async def last_resolved(self, fingerprint: str) -> Incident | None:
        found = await self._online(lambda: self.online.last_resolved(fingerprint))
        if found is LOCAL:
            return self._local.last_resolved(fingerprint)
        self._local.resolved_known(fingerprint, found)
        return found

    async def opening_candidates(self, fingerprint: str
                                 ) -> tuple[Incident | None, Incident | None]:
        found = await self._online(lambda: self.online.opening_candidates(fingerprint))
        if found is LOCAL:
            return (self._local.find_open(fingerprint), self._local.last_resolved(fingerprint))
        self._local.resolved_known(fingerprint, found[1])
        return found

    # --- writes -------------------------------------------------------------------

    async def open_incident(self, **kwargs: Any) -> Opened:
        found = await self._online(lambda: self.online.open_incident(**kwargs))
        if found is not LOCAL:
            self._local.remember(found.incident, [] if found.created else None)
            if found.created:
                self._local.notified[found.incident.incident_id] = bool(
                    kwargs.get("notifications"))
            return found
        async with self._lock:
            existing = self._local.find_open(f"{kwargs['target']}:{kwargs['kind']}")
            if existing is not None:
                return Opened(existing, created=False)
            provisional = self._local.take_provisional()
            await self._journal(None, {"op": "open", "id": provisional,
                                       "args": encode_open(kwargs)})
            self._journaled.add(provisional)
            return Opened(copy(self._local.get(provisional)), created=True)

    async def apply_transition(self, step: StepRequest) -> Stepped:
        iid = self.real_id(step.incident_id)
        if step.incident_id != iid:
            step = replace(step, incident_id=IncidentId(iid))
        found = await self._online(lambda: self.online.apply_transition(step), local_id=iid)
        if found is not LOCAL:
            kept = self._local.took_step(step, found)
            return Stepped(copy(kept), found.attempt)
        _validate_offline_step(step)
        async with self._lock:
            incident = self._local.get(iid)
            if incident.version != step.expected_version or incident.state != step.source:
                raise ConcurrentUpdate(incident_id=iid, expected_version=step.expected_version,
                                       found_version=incident.version, found_state=incident.state)
            if step.intent is not None:
                self._local.runs_of(iid)  # an attempt is numbered from the known ones
            entry = {"op": "step", "step": encode_step(step),
                     "run_id": self._local.take_provisional() if step.intent else None,
                     "key": f"offline-{uuid.uuid4().hex}"}
            updated = await self._journal(iid, entry)
            logger.bind(incident_id=iid, state=step.dest).warning(
                "store unavailable: journaled {} → {} ({}) for replay",
                step.source, step.dest, step.trigger)
            assert isinstance(updated, Incident)
            run_id = entry["run_id"]
            run = None if not isinstance(run_id, int) else self._local.require_run(run_id)
            return Stepped(copy(updated), None if run is None else ActionRun(**run.model_dump()))

    async def claim_attempt(self, run_id: int, *, at: datetime,
                            incident_version: int | None = None) -> bool:
        rid = self.real_id(run_id)
        claimed = await self._online(
            lambda: self.online.claim_attempt(rid, at=at, incident_version=incident_version),
            local_id=rid)
        if claimed is not LOCAL:
            run = self._local.find_run(rid)
            if claimed and run is not None:
                run.executing_at = at
            return claimed
        async with self._lock:
            run = self._local.require_run(rid)
            if run.executing_at is not None or run.finished_at is not None:
                return False
            if incident_version is not None:
                incident = self._local.get(run.incident_id)
                if (incident.version, incident.state) != (incident_version, State.REMEDIATING):
                    return False
            # The entry needs no version: the replay applies the entries in order.
            await self._journal(run.incident_id, {"op": "claim", "run_id": rid,
                                                  "at": at.isoformat()})
            return True

    async def finish_action(self, run_id: int, **kwargs: Any) -> ActionRun:
        rid = self.real_id(run_id)
        return await self._change_run(rid, "finish", encode_finish(kwargs),
                                      lambda: self.online.finish_action(rid, **kwargs))

    async def judge_action(self, run_id: int, *, verified: bool) -> ActionRun:
        rid = self.real_id(run_id)
        return await self._change_run(rid, "judge", {"verified": verified},
                                      lambda: self.online.judge_action(rid, verified=verified))

    async def record_action(self, incident_id: IncidentId, intent: ActionIntent,
                            *, at: datetime) -> ActionRun:
        iid = self.real_id(incident_id)
        recorded = await self._online(
            lambda: self.online.record_action(IncidentId(iid), intent, at=at), local_id=iid)
        if recorded is not LOCAL:
            self._local.keep_run(recorded)
            return recorded
        async with self._lock:
            self._local.get(iid)
            self._local.runs_of(iid)
            run = await self._journal(iid, {
                "op": "record_action", "incident_id": iid,
                "run_id": self._local.take_provisional(), "intent": encode_intent(intent),
                "at": at.isoformat(), "key": f"offline-{uuid.uuid4().hex}"})
            assert isinstance(run, ActionRun)
            return ActionRun(**run.model_dump())

    async def _change_run(self, run_id: int, op: str, encoded: Mapping[str, Any],
                          online: Callable[[], Awaitable[ActionRun]]) -> ActionRun:
        """Finish or judge an attempt online, else locally and journaled."""
        result = await self._online(online, local_id=run_id)
        if result is not LOCAL:
            self._local.keep_run(result)
            return result
        async with self._lock:
            run = self._local.require_run(run_id)
            # Refused before anything is written, exactly as the store refuses it.
            probe = ActionRun(**run.model_dump())
            if op == "finish":
                args = decode_finish(encoded)
                finish_run(probe, outcome=args["outcome"],
                                   finished_at=args["finished_at"],
                                   output_excerpt=str(args.get("output_excerpt", "")),
                                   evidence=dict(args.get("evidence") or {}))
            else:
                judge_run(probe, verified=bool(encoded["verified"]))
            await self._journal(run.incident_id, {"op": op, "run_id": run_id,
                                                  "args": dict(encoded)})
            return ActionRun(**self._local.require_run(run_id).model_dump())

    # --- online only: statistics and queues wait for the database -----------------

    async def record_health_check(self, *checks: HealthRow | HealthCheck) -> None:
        """Health-check rows are statistics: dropped (and counted) while offline."""
        if self.offline:
            self.dropped_health_checks += len(checks)
            return
        try:
            await self.online.record_health_check(*checks)
        except StoreUnavailable:
            self.dropped_health_checks += len(checks)

    async def beat(self, replica: str, *, now: datetime, ttl: float,
                   version: str | None = None) -> bool:
        """The database's heartbeat, or False (skipped) while the database is away.

        Never journaled: a beat replayed later would claim the agent was seen
        when nobody could see it. It is tried even while journal entries wait,
        as it depends on nothing in them.
        """
        try:
            return await self.online.beat(replica, now=now, ttl=ttl, version=version)
        except StoreUnavailable:
            return False

    # --- replay -------------------------------------------------------------------

    async def replay(self) -> int:
        """Apply the journal to the database in order; returns the entries applied.

        Raises `StoreUnavailable` (keeping the journal and its progress) if the
        database is away; safe to call again at any time. The lock is held
        only for the final check, so the agent keeps journaling meanwhile.
        """
        await self._ready()
        applied = 0
        while True:
            entries = await anyio.to_thread.run_sync(self._file.read)
            todo = entries[self._replayed:]
            if not todo:
                async with self._lock:
                    if len(await anyio.to_thread.run_sync(self._file.read)) <= self._replayed:
                        await anyio.to_thread.run_sync(self._file.clear)
                        self._journaled.clear()
                        self._replayed = 0
                        self._pending = False
                        break
                continue
            for entry in todo:
                await self._replayer.entry(entry)
                self._replayed += 1
                applied += 1
        await self._replayer.reload_working_set()
        if applied:
            logger.info("store back: replayed {} journaled entries", applied)
        return applied

    # --- journal file ---------------------------------------------------------------

    async def _journal(self, incident_id: int | None,
                       entry: Mapping[str, Any]) -> Incident | ActionRun | None:
        """Append `entry` (after the incident's `base` entry if it has none yet), then make
        its effect in the local copy. Lock held."""
        entries: list[Mapping[str, Any]] = []
        if incident_id is not None and incident_id not in self._journaled:
            entries.append(self._local.base_entry(incident_id))
        entries.append(entry)
        await anyio.to_thread.run_sync(self._file.append, entries)
        # Only now: if the write failed, the next entry must carry the base again.
        if incident_id is not None:
            self._journaled.add(incident_id)
        self._pending = True
        return self._local.apply(entry)


def _validate_offline_step(step: StepRequest) -> None:
    # The same checks the database path makes before it writes anything.
    if step.dest not in edge_destinations(step.trigger, step.source):
        raise InvalidTransition(incident_id=step.incident_id, state=step.source,
                                trigger=step.trigger,
                                allowed=operator_triggers_from(step.source))
    if not step.reason.strip() or not step.actor.strip():
        raise InvalidInput("a transition needs an actor and a reason")
