"""Replaying the outage journal: each entry applied to the database once, or set aside.

Each entry is idempotent against a crash half-way through a replay: an
incident is found again by its fingerprint and opening time, a transition
already present with the same sequence number and trigger is skipped, an
outcome already recorded is skipped (`AttemptAlreadySettled`). An entry
that cannot be applied -- a step that conflicts with a change someone made
meanwhile, what depends on it, or one that fails in a way nobody foresaw --
is not forced and does not stop the replay: it is logged at error level and
kept in `<journal>.rejected` for a human. `StoreUnavailable` stops the
replay where it is (the caller keeps its progress).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import anyio
from loguru import logger

from incident_fsm.errors import (
    AttemptAlreadySettled,
    ConcurrentUpdate,
    IncidentFSMError,
    InvalidInput,
    StoreUnavailable,
)
from incident_fsm.fsm.steps import StepRequest
from incident_fsm.models import ActionRun, IncidentId
from incident_fsm.persistence.journal_file import (
    JournalFile,
    decode_finish,
    decode_intent,
    decode_open,
    decode_step,
)
from incident_fsm.persistence.local_copy import LocalCopy
from incident_fsm.persistence.store import Store
from incident_fsm.text import one_line


class Replayer:
    """Applies journal entries to the database and refreshes the local copy afterwards."""

    def __init__(self, online: Store, local: LocalCopy, file: JournalFile) -> None:
        self.online = online
        self._local = local
        self._file = file

    def real_id(self, any_id: int) -> int:
        return self._local.aliases.get(any_id, any_id)

    async def reload_working_set(self) -> None:
        """After a replay: the local copy again holds database rows under real ids."""
        local = self._local
        ids = {self.real_id(i) for i in local.incidents}
        for old in [i for i in local.incidents if i < 0]:
            local.incidents.pop(old, None)
            local.forget_runs(old)
        for iid in sorted(i for i in ids if i > 0):
            try:
                found = await self.online.timeline(IncidentId(iid))
            except IncidentFSMError:
                local.incidents.pop(iid, None)
                local.forget_runs(iid)
                continue
            local.incidents.pop(iid, None)  # the database's row is the truth now
            local.remember(found.incident, found.actions)

    async def entry(self, entry: Mapping[str, Any]) -> None:
        """Apply one entry. StoreUnavailable aborts the replay; any other failure rejects it."""
        try:
            await self._apply_entry(entry)
        except StoreUnavailable:
            raise
        except IncidentFSMError as exc:
            await self._reject(entry, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            await self._reject(entry, f"unexpected {type(exc).__name__}: {one_line(str(exc))}")

    async def _apply_entry(self, entry: Mapping[str, Any]) -> None:
        op = entry["op"]
        if op == "base":
            return
        if op == "open":
            args = decode_open(entry["args"])
            real = await self._find_opened(args) or (
                await self.online.open_incident(**args)).incident.incident_id
            self._local.aliases[entry["id"]] = real
            return
        if op == "step":
            step = decode_step(entry["step"], self.real_id(entry["step"]["incident_id"]))
            if step.incident_id < 0:
                raise InvalidInput("its incident was never replayed")
            if step.intent is not None and entry.get("key"):
                # The attempt may have run offline under this key (an API saw it): the
                # database keeps the same one.
                step = replace(step, attempt_key=str(entry["key"]))
            run: ActionRun | None = None
            try:
                run = (await self.online.apply_transition(step)).attempt
            except ConcurrentUpdate:
                if not await self._already_applied(step):
                    raise
                if entry.get("run_id") is not None:  # applied by an earlier, cut replay
                    runs = (await self.online.timeline(step.incident_id)).actions
                    run = next((r for r in reversed(runs) if r.started_at == step.at), None)
            if entry.get("run_id") is not None and run is not None and run.id is not None:
                self._local.aliases[entry["run_id"]] = run.id
            return
        if op == "record_action":
            incident_id = self.real_id(entry["incident_id"])
            if incident_id < 0:
                raise InvalidInput("its incident was never replayed")
            at = datetime.fromisoformat(entry["at"])
            existing = [r for r in (await self.online.timeline(IncidentId(incident_id))).actions
                        if r.started_at == at and r.action == entry["intent"]["action"]]
            run = existing[0] if existing else await self.online.record_action(
                IncidentId(incident_id), decode_intent(entry["intent"]), at=at,
                key=str(entry["key"]) if entry.get("key") else None)
            self._local.aliases[entry["run_id"]] = run.id or 0
            return
        run_id = self.real_id(entry["run_id"])
        if run_id < 0:
            raise InvalidInput("its attempt was never replayed (its step was rejected)")
        if op == "claim":
            # False: claimed already (an earlier, interrupted replay). Fine.
            await self.online.claim_attempt(run_id, at=datetime.fromisoformat(entry["at"]))
            return
        try:
            if op == "finish":
                await self.online.finish_action(run_id, **decode_finish(entry["args"]))
            else:
                await self.online.judge_action(run_id, verified=entry["args"]["verified"])
        except AttemptAlreadySettled:
            pass  # recorded before the crash that interrupted the last replay: fine

    async def _find_opened(self, args: Mapping[str, Any]) -> int | None:
        """The incident an earlier (interrupted) replay created for this `open`, if any."""
        at: datetime = args["at"]
        rows = await self.online.list_incidents(
            target=args["target"], kind=args["kind"], since=at,
            until=at + timedelta(microseconds=1), limit=10)
        match = next((i for i in rows if i.opened_at == at), None)
        return None if match is None else match.incident_id

    async def _already_applied(self, step: StepRequest) -> bool:
        timeline = await self.online.timeline(step.incident_id)
        seq = step.expected_version + 1
        return any(t.seq == seq and t.trigger == step.trigger and t.at == step.at
                   for t in timeline.transitions)

    async def _reject(self, entry: Mapping[str, Any], why: str) -> None:
        logger.error("journaled {} not replayed: {}; kept in {}", entry.get("op"), why,
                     self._file.rejected_path)
        await anyio.to_thread.run_sync(self._file.reject, entry, why)
