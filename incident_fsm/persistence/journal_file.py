"""The outage journal's file: JSON lines appended and fsynced, read back tolerant of a torn end.

Each entry is one JSON object with an `op` (`base`, `open`, `step`,
`record_action`, `claim`, `finish`, `judge`); datetimes travel as ISO 8601
text. The encoders here are the only code that knows the format; the local
copy (`persistence.local_copy`) and the replay read entries through the
decoders. All file access is blocking: call it from a worker thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from loguru import logger

from incident_fsm.fsm.steps import ActionIntent, StepRequest
from incident_fsm.models import ActionRun, Incident, IncidentId, OutboxMessage
from incident_fsm.vocabulary import Verdict


class JournalFile:
    """An append-only JSON-lines file, flushed and fsynced before each append returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rejected_path = Path(f"{path}.rejected")

    def append(self, entries: Sequence[Mapping[str, Any]]) -> None:
        lines = "".join(json.dumps(e, allow_nan=False) + "\n" for e in entries)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(lines)
            out.flush()
            os.fsync(out.fileno())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        with open(self.path, encoding="utf-8") as source:
            for line in source:
                if line.strip():
                    try:
                        entries.append(json.loads(line))
                    except json.JSONDecodeError:
                        # A torn last line from a crash mid-write: that write never returned.
                        logger.warning("journal: ignoring a torn line")
        return entries

    def reject(self, entry: Mapping[str, Any], why: str) -> None:
        """Keep an entry the replay could not apply, with the reason, for a human."""
        with open(self.rejected_path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"why": why, "entry": entry}, default=str) + "\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# --- encoding (JSON-safe, datetimes as ISO 8601) ----------------------------------------

_TIME_FIELDS = {"opened_at", "updated_at", "resolved_at", "deadline_at", "started_at",
                "executing_at", "finished_at", "at"}


def encode_row(row: Incident | ActionRun) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in row.model_dump().items()}


def decode_row(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (datetime.fromisoformat(v) if k in _TIME_FIELDS and v else v)
            for k, v in data.items()}


def encode_intent(intent: ActionIntent) -> dict[str, Any]:
    return {**asdict(intent), "verdict": intent.verdict.value}


def decode_intent(data: Mapping[str, Any]) -> ActionIntent:
    return ActionIntent(data["action"], data["tier"], Verdict(data["verdict"]), data["why"],
                        bool(data.get("dry_run", False)))


def _encode_messages(messages: Sequence[OutboxMessage]) -> list[dict[str, Any]]:
    return [{"channel": m.channel, "payload": dict(m.payload)} for m in messages]


def _decode_messages(data: Sequence[Mapping[str, Any]]) -> list[OutboxMessage]:
    return [OutboxMessage(m["channel"], m["payload"]) for m in data]


def encode_open(args: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in args.items() if k != "notifications"}
    out["at"] = args["at"].isoformat()
    out["deadline_at"] = args["deadline_at"].isoformat() if args.get("deadline_at") else None
    out["notifications"] = _encode_messages(args.get("notifications", ()))
    return out


def decode_open(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    out["at"] = datetime.fromisoformat(data["at"])
    out["deadline_at"] = datetime.fromisoformat(data["deadline_at"]) if data.get(
        "deadline_at") else None
    out["notifications"] = _decode_messages(data.get("notifications", ()))
    return out


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def encode_step(step: StepRequest) -> dict[str, Any]:
    return {
        "incident_id": step.incident_id, "expected_version": step.expected_version,
        "trigger": step.trigger, "source": step.source, "dest": step.dest, "actor": step.actor,
        "reason": step.reason, "at": _iso(step.at), "deadline_at": _iso(step.deadline_at),
        "flap_count": step.flap_count, "resolved_at": _iso(step.resolved_at),
        "details": dict(step.details),
        "intent": None if step.intent is None else encode_intent(step.intent),
        "notifications": _encode_messages(step.notifications),
    }


def decode_step(data: Mapping[str, Any], incident_id: int | None = None) -> StepRequest:
    """The step of an entry; `incident_id` replaces the journaled one (a replayed id)."""
    at = _when(data["at"])
    assert at is not None
    return StepRequest(
        incident_id=IncidentId(data["incident_id"] if incident_id is None else incident_id),
        expected_version=data["expected_version"], trigger=data["trigger"],
        source=data["source"], dest=data["dest"], actor=data["actor"], reason=data["reason"],
        at=at, deadline_at=_when(data["deadline_at"]), flap_count=data["flap_count"],
        resolved_at=_when(data["resolved_at"]), details=data["details"],
        intent=None if data["intent"] is None else decode_intent(data["intent"]),
        notifications=_decode_messages(data["notifications"]),
    )


def encode_finish(args: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(args)
    out["finished_at"] = args["finished_at"].isoformat()
    return out


def decode_finish(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    out["finished_at"] = datetime.fromisoformat(data["finished_at"])
    return out
