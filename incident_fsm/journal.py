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
- incidents and attempts created offline get provisional negative ids,
  mapped to the real ids during replay;
- `replay()` applies the entries in order once the database answers again.
  Each entry is idempotent against a crash half-way through: an incident is
  found again by its fingerprint, a transition already present with the same
  sequence number and trigger is skipped, an outcome already recorded the
  same way is skipped. The journal is cleared only after the last entry.

Not journaled: health-check rows (statistics only; they are dropped while
offline and counted in `dropped_health_checks`), and reads other than the
working set (history, statistics: they wait for the database). Offline, the
remediator's queries answer from the local copy: no learned ranking (policy
order decides), guardrail counts from the actions known locally, and a
returning problem opens a new incident rather than reopening one. Outbox rows
written offline are delivered after the replay. A replayed step that
conflicts with a change someone else made meanwhile is not forced: it is
logged at error level and kept in `<journal>.rejected` for a human.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
from loguru import logger

from . import database
from .errors import ConcurrentUpdate, InvalidInput, InvalidTransition, StoreUnavailable
from .machine import (
    ActionIntent,
    State,
    StepRequest,
    Verdict,
    edge_destinations,
    triggers_from,
)
from .models import ActionRun, HealthCheck, Incident, IncidentId, OutboxMessage
from .store import ActionTally, Opened, Store, Timeline, strike_count_of

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
        self._runs: dict[int, dict[int, ActionRun]] = {}
        self._journaled: set[int] = set()
        self._next_provisional = -1
        self._lock = anyio.Lock()
        self.dropped_health_checks = 0
        self._pending = False
        self._load()

    # --- state --------------------------------------------------------------------

    @property
    def offline(self) -> bool:
        """True while journal entries wait to be replayed (then every call stays local)."""
        return self._pending

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
        self._incidents[incident.incident_id] = incident
        if runs is not None:
            self._runs[incident.incident_id] = {r.id or 0: r for r in runs}
        if not incident.is_open and incident.incident_id > 0 and not self.offline:
            # Resolved incidents leave the working set (memory stays flat).
            self._incidents.pop(incident.incident_id, None)
            self._runs.pop(incident.incident_id, None)
        return incident

    def _local(self, incident_id: int) -> Incident:
        incident = self._incidents.get(incident_id)
        if incident is None:
            raise StoreUnavailable(
                f"database unavailable and incident {incident_id} is not in the local copy"
            )
        return incident

    # --- working-set reads ----------------------------------------------------------

    async def get_incident(self, incident_id: IncidentId) -> Incident:
        if incident_id < 0 or self.offline:
            return _copy(self._local(incident_id))
        try:
            return self._remember(await super().get_incident(incident_id))
        except StoreUnavailable:
            return _copy(self._local(incident_id))

    async def find_open(self, fingerprint: str) -> Incident | None:
        found = await self._try_online(lambda: super(JournalingStore, self).find_open(fingerprint))
        if found is not LOCAL:
            return found
        return next((_copy(i) for i in self._incidents.values()
                     if i.fingerprint == fingerprint and i.is_open), None)

    async def timeline(self, incident_id: IncidentId) -> Timeline:
        if incident_id > 0 and not self.offline:
            try:
                found = await super().timeline(incident_id)
                self._remember(found.incident, found.actions)
                return found
            except StoreUnavailable:
                pass
        incident = self._local(incident_id)
        runs = sorted(self._runs.get(incident_id, {}).values(), key=lambda r: r.attempt)
        return Timeline(_copy(incident), [], [ActionRun(**r.model_dump()) for r in runs], [])

    async def count_strikes(self, incident_id: IncidentId) -> int:
        found = await self._try_online(
            lambda: super(JournalingStore, self).count_strikes(incident_id), local_id=incident_id)
        if found is not LOCAL:
            return found
        return strike_count_of(self._runs.get(incident_id, {}).values())

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
        found = await self._try_online(
            lambda: super(JournalingStore, self).attempts(incident_id), local_id=incident_id)
        if found is not LOCAL:
            if incident_id in self._incidents:
                self._runs[incident_id] = {r.id or 0: r for r in found}
            return found
        self._local(incident_id)
        runs = sorted(self._runs.get(incident_id, {}).values(), key=lambda r: r.attempt)
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
                   for r in runs.values() if not r.dry_run and r.started_at >= since)

    async def count_reopenings(self, *, fingerprint: str, since: datetime) -> int:
        found = await self._try_online(lambda: super(JournalingStore, self).count_reopenings(
            fingerprint=fingerprint, since=since))
        if found is not LOCAL:
            return found
        return sum(i.flap_count for i in self._incidents.values()
                   if i.fingerprint == fingerprint and i.updated_at >= since)

    async def has_notifications(self, incident_id: IncidentId) -> bool:
        found = await self._try_online(
            lambda: super(JournalingStore, self).has_notifications(incident_id),
            local_id=incident_id)
        if found is not LOCAL:
            return found
        return True  # unknown offline: rather one resolution notice too many than none

    async def last_resolved(self, fingerprint: str) -> Incident | None:
        found = await self._try_online(
            lambda: super(JournalingStore, self).last_resolved(fingerprint))
        if found is not LOCAL:
            return found
        return None  # offline a returning problem opens a new incident

    # --- writes -------------------------------------------------------------------

    async def open_incident(self, **kwargs: Any) -> Opened:
        if not self.offline:
            try:
                opened = await super().open_incident(**kwargs)
                self._remember(opened.incident)
                return opened
            except StoreUnavailable:
                pass
        async with self._lock:
            fingerprint = f"{kwargs['target']}:{kwargs['kind']}"
            existing = next((i for i in self._incidents.values()
                             if i.fingerprint == fingerprint and i.is_open), None)
            if existing is not None:
                return Opened(_copy(existing), created=False)
            provisional = self._take_provisional()
            at: datetime = kwargs["at"]
            incident = Incident(
                id=provisional, fingerprint=fingerprint, target=kwargs["target"],
                kind=kwargs["kind"], severity=kwargs["severity"], state=State.DETECTED.value,
                version=1, summary=kwargs.get("summary", ""), details=dict(kwargs.get("details")
                                                                             or {}),
                deadline_at=kwargs["deadline_at"], opened_at=at, updated_at=at,
            )
            entry = {"op": "open", "id": provisional, "args": _encode_open(kwargs)}
            await self._append([entry])
            self._incidents[provisional] = incident
            self._runs[provisional] = {}
            self._journaled.add(provisional)
            return Opened(_copy(incident), created=True)

    async def apply_transition(self, step: StepRequest) -> Incident:
        if step.incident_id > 0 and not self.offline:
            try:
                return self._remember(await super().apply_transition(step))
            except StoreUnavailable:
                pass
        await self._validate_offline_step(step)
        async with self._lock:
            incident = self._local(step.incident_id)
            if incident.version != step.expected_version or incident.state != step.source:
                raise ConcurrentUpdate(incident_id=step.incident_id,
                                       expected_version=step.expected_version,
                                       found_version=incident.version, found_state=incident.state)
            entries = self._base_entries(step.incident_id)
            run_id = self._take_provisional() if step.intent is not None else None
            entries.append({"op": "step", "step": _encode_step(step), "run_id": run_id})
            await self._append(entries)
            updated = _copy(incident)
            updated.state, updated.version = step.dest, step.expected_version + 1
            updated.deadline_at, updated.flap_count = step.deadline_at, step.flap_count
            updated.resolved_at, updated.updated_at = step.resolved_at, step.at
            self._incidents[step.incident_id] = updated
            if step.intent is not None and run_id is not None:
                runs = self._runs.setdefault(step.incident_id, {})
                attempt = 1 + max((r.attempt for r in runs.values()), default=0)
                runs[run_id] = ActionRun(
                    id=run_id, incident_id=step.incident_id, attempt=attempt,
                    action=step.intent.action, tier=step.intent.tier,
                    idempotency_key=f"offline-{step.incident_id}-{run_id}",
                    dry_run=step.intent.dry_run, started_at=step.at)
            logger.bind(incident_id=step.incident_id, state=step.dest).warning(
                "store unavailable: journaled {} → {} ({}) for replay",
                step.source, step.dest, step.trigger)
            return _copy(updated)

    async def finish_action(self, run_id: int, **kwargs: Any) -> ActionRun:
        return await self._update_run_offline(
            run_id, "finish", kwargs, lambda: super(JournalingStore, self).finish_action(
                run_id, **kwargs))

    async def judge_action(self, run_id: int, *, verified: bool) -> ActionRun:
        return await self._update_run_offline(
            run_id, "judge", {"verified": verified},
            lambda: super(JournalingStore, self).judge_action(run_id, verified=verified))

    async def claim_attempt(self, run_id: int, *, at: datetime) -> bool:
        claimed = await self._try_online(
            lambda: super(JournalingStore, self).claim_attempt(run_id, at=at), local_id=run_id)
        if claimed is not LOCAL:
            return claimed
        async with self._lock:
            run = self._find_run(run_id)
            if run is None:
                raise StoreUnavailable(
                    f"database unavailable and action run {run_id} is not in the local copy")
            if run.executing_at is not None or run.finished_at is not None:
                return False
            entries = self._base_entries(run.incident_id)
            entries.append({"op": "claim", "run_id": run_id, "at": at.isoformat()})
            await self._append(entries)
            run.executing_at = at
            return True

    async def record_action(self, incident_id: IncidentId, intent: ActionIntent,
                            *, at: datetime) -> ActionRun:
        recorded = await self._try_online(
            lambda: super(JournalingStore, self).record_action(incident_id, intent, at=at),
            local_id=incident_id)
        if recorded is not LOCAL:
            return recorded
        async with self._lock:
            self._local(incident_id)
            run_id = self._take_provisional()
            entries = self._base_entries(incident_id)
            entries.append({"op": "record_action", "incident_id": incident_id, "run_id": run_id,
                            "intent": _encode_intent(intent), "at": at.isoformat()})
            await self._append(entries)
            runs = self._runs.setdefault(incident_id, {})
            run = ActionRun(id=run_id, incident_id=incident_id,
                            attempt=1 + max((r.attempt for r in runs.values()), default=0),
                            action=intent.action, tier=intent.tier,
                            idempotency_key=f"offline-{incident_id}-{run_id}",
                            dry_run=intent.dry_run, started_at=at)
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

    # --- replay -------------------------------------------------------------------

    async def replay(self) -> int:
        """Apply the journal to the database in order; returns the entries applied.

        Raises `StoreUnavailable` (keeping the journal) if the database is
        still away; safe to call again at any time.
        """
        async with self._lock:
            entries = self._read()
            if not entries:
                return 0
            ids: dict[int, int] = {}
            applied = 0
            for entry in entries:
                await self._replay_one(entry, ids)
                applied += 1
            self.journal_path.unlink(missing_ok=True)
            self._journaled.clear()
            self._pending = False
            # Reload the working set with real ids.
            for old in ids:
                if old < 0:
                    self._incidents.pop(old, None)
                    self._runs.pop(old, None)
            for incident_id in list(self._incidents):
                found = await super().timeline(IncidentId(incident_id))
                self._remember(found.incident, found.actions)
            logger.info("store back: replayed {} journaled entries", applied)
            return applied

    async def _replay_one(self, entry: Mapping[str, Any], ids: dict[int, int]) -> None:
        op = entry["op"]

        def real(value: int) -> int:
            return ids.get(value, value)

        if op == "base":
            return
        if op == "open":
            opened = await super().open_incident(**_decode_open(entry["args"]))
            ids[entry["id"]] = opened.incident.incident_id
            self._incidents[opened.incident.incident_id] = opened.incident
        elif op == "step":
            step = _decode_step(entry["step"], real)
            try:
                await super().apply_transition(step)
            except ConcurrentUpdate:
                if not await self._already_applied(step):
                    self._reject(entry, "conflicts with a change made meanwhile")
                    return
            if entry.get("run_id") is not None:
                runs = (await super().timeline(step.incident_id)).actions
                run = next((r for r in reversed(runs) if r.started_at == step.at), None)
                if run is not None and run.id is not None:
                    ids[entry["run_id"]] = run.id
        elif op == "record_action":
            incident_id = real(entry["incident_id"])
            at = datetime.fromisoformat(entry["at"])
            existing = [r for r in (await super().timeline(IncidentId(incident_id))).actions
                        if r.started_at == at and r.action == entry["intent"]["action"]]
            run = existing[0] if existing else await super().record_action(
                IncidentId(incident_id), _decode_intent(entry["intent"]), at=at)
            ids[entry["run_id"]] = run.id or 0
        elif op == "claim":
            # False means it was claimed already (an earlier, interrupted replay): fine.
            await super().claim_attempt(real(entry["run_id"]),
                                        at=datetime.fromisoformat(entry["at"]))
        elif op in ("finish", "judge"):
            run_id = real(entry["run_id"])
            try:
                if op == "finish":
                    await super().finish_action(run_id, **_decode_finish(entry["args"]))
                else:
                    await super().judge_action(run_id, verified=entry["args"]["verified"])
            except InvalidInput as exc:
                # Recorded before the crash that interrupted the last replay: fine.
                if "already" not in str(exc):
                    raise

    async def _already_applied(self, step: StepRequest) -> bool:
        timeline = await super().timeline(step.incident_id)
        seq = step.expected_version + 1
        return any(t.seq == seq and t.trigger == step.trigger and t.at == step.at
                   for t in timeline.transitions)

    def _reject(self, entry: Mapping[str, Any], why: str) -> None:
        logger.error("journaled entry not replayed ({}): {}", why, entry.get("op"))
        with open(f"{self.journal_path}.rejected", "a", encoding="utf-8") as out:
            out.write(json.dumps({"why": why, "entry": entry}) + "\n")

    # --- journal file ---------------------------------------------------------------

    async def _append(self, entries: Sequence[Mapping[str, Any]]) -> None:
        lines = "".join(json.dumps(e, allow_nan=False) + "\n" for e in entries)

        def write() -> None:
            self.journal_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.journal_path, "a", encoding="utf-8") as out:
                out.write(lines)
                out.flush()
                os.fsync(out.fileno())

        await anyio.to_thread.run_sync(write)
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
        """Rebuild the local copy from a journal left by a previous run."""
        for entry in self._read():
            op = entry["op"]
            if op == "base":
                incident = Incident(**_decode_row(entry["incident"]))
                self._incidents[incident.incident_id] = incident
                self._runs[incident.incident_id] = {
                    r["id"]: ActionRun(**_decode_row(r)) for r in entry["runs"]}
                self._journaled.add(incident.incident_id)
            elif op == "open":
                args = _decode_open(entry["args"])
                at = args["at"]
                self._incidents[entry["id"]] = Incident(
                    id=entry["id"], fingerprint=f"{args['target']}:{args['kind']}",
                    target=args["target"], kind=args["kind"], severity=args["severity"],
                    state=State.DETECTED.value, version=1, summary=args.get("summary", ""),
                    details=dict(args.get("details") or {}), deadline_at=args["deadline_at"],
                    opened_at=at, updated_at=at)
                self._runs[entry["id"]] = {}
                self._journaled.add(entry["id"])
            elif op == "step":
                step = _decode_step(entry["step"], lambda v: v)
                incident = self._incidents[step.incident_id]
                incident.state, incident.version = step.dest, step.expected_version + 1
                incident.deadline_at, incident.flap_count = step.deadline_at, step.flap_count
                incident.resolved_at, incident.updated_at = step.resolved_at, step.at
                if step.intent is not None:
                    self._add_local_run(step.incident_id, entry["run_id"], step.intent, step.at)
            elif op == "record_action":
                self._add_local_run(entry["incident_id"], entry["run_id"],
                                    _decode_intent(entry["intent"]),
                                    datetime.fromisoformat(entry["at"]))
            elif op == "claim":
                run = self._find_run(entry["run_id"])
                if run is not None:
                    run.executing_at = datetime.fromisoformat(entry["at"])
            elif op in ("finish", "judge"):
                run = self._find_run(entry["run_id"])
                if run is not None and op == "finish":
                    decoded = _decode_finish(entry["args"])
                    run.outcome, run.finished_at = decoded["outcome"], decoded["finished_at"]
                elif run is not None:
                    run.verified = entry["args"]["verified"]
            for key in ("id", "run_id"):
                value = entry.get(key)
                if isinstance(value, int) and value <= self._next_provisional:
                    self._next_provisional = value - 1
        for incident_id, incident in self._incidents.items():
            incident.strikes = strike_count_of(self._runs.get(incident_id, {}).values())
        self._pending = bool(self._incidents) and self.journal_path.exists()

    def _add_local_run(self, incident_id: int, run_id: int, intent: ActionIntent,
                       at: datetime) -> None:
        runs = self._runs.setdefault(incident_id, {})
        runs[run_id] = ActionRun(
            id=run_id, incident_id=incident_id,
            attempt=1 + max((r.attempt for r in runs.values()), default=0), action=intent.action,
            tier=intent.tier, idempotency_key=f"offline-{incident_id}-{run_id}",
            dry_run=intent.dry_run, started_at=at)

    def _find_run(self, run_id: int) -> ActionRun | None:
        for runs in self._runs.values():
            if run_id in runs:
                return runs[run_id]
        return None

    def _take_provisional(self) -> int:
        value = self._next_provisional
        self._next_provisional -= 1
        return value

    def _base_entries(self, incident_id: int) -> list[dict[str, Any]]:
        if incident_id in self._journaled:
            return []
        self._journaled.add(incident_id)
        incident = self._local(incident_id)
        runs = list(self._runs.get(incident_id, {}).values())
        return [{"op": "base", "incident": _encode_row(incident),
                 "runs": [_encode_row(r) for r in runs]}]

    async def _validate_offline_step(self, step: StepRequest) -> None:
        # The same checks the database path makes before it writes anything.

        if step.dest not in edge_destinations(step.trigger, step.source):
            raise InvalidTransition(incident_id=step.incident_id, state=step.source,
                                    trigger=step.trigger, allowed=triggers_from(step.source))
        if not step.reason.strip() or not step.actor.strip():
            raise InvalidInput("a transition needs an actor and a reason")

    async def _update_run_offline(self, run_id: int, op: str, args: Mapping[str, Any],
                                  online: Callable[[], Awaitable[ActionRun]]) -> ActionRun:
        result = await self._try_online(online, local_id=run_id)
        if result is not LOCAL:
            return result
        async with self._lock:
            run = self._find_run(run_id)
            if run is None:
                raise StoreUnavailable(
                    f"database unavailable and action run {run_id} is not in the local copy")
            if op == "finish" and run.finished_at is not None:
                raise InvalidInput(f"action run {run_id} already finished as '{run.outcome}'")
            entries = self._base_entries(run.incident_id)
            encoded = _encode_finish(args) if op == "finish" else dict(args)
            entries.append({"op": op, "run_id": run_id, "args": encoded})
            await self._append(entries)
            if op == "finish":
                decoded = _decode_finish(encoded)
                run.outcome, run.finished_at = decoded["outcome"], decoded["finished_at"]
                run.output_excerpt = decoded.get("output_excerpt", "")[:4000]
                run.evidence = dict(decoded.get("evidence") or {})
            else:
                run.verified = bool(args["verified"])
            incident = self._incidents[run.incident_id]
            incident.strikes = strike_count_of(self._runs[run.incident_id].values())
            return ActionRun(**run.model_dump())


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
