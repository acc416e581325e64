"""What the agent says about itself right now: plain data for the status endpoints and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from incident_fsm.about import VERSION


@dataclass(frozen=True)
class TargetStatus:
    name: str
    last_poll_at: datetime | None = None
    last_ok: bool | None = None
    last_error: str = ""
    #: of a failed last poll: `down`, `throttled` (429) or `unusable` (see `health`)
    last_cause: str = ""
    #: polls answered 429 in a row, and the Retry-After the last one asked for
    throttled_polls: int = 0
    retry_after: float | None = None
    #: the last reading (the target's own, else the local fallback): where from, when
    reading_source: str = ""
    read_at: datetime | None = None
    memory_pct: float | None = None
    disk_pct: float | None = None
    cpu_pct: float | None = None


@dataclass(frozen=True)
class AgentStatus:
    """What the agent says about itself right now."""

    running: bool
    role: str  # "leader", "standby" or "single" (SQLite: one process, always acting)
    replica: str
    started_at: datetime | None = None
    targets: tuple[TargetStatus, ...] = ()
    queues: dict[str, int] = field(default_factory=dict)
    version: str = VERSION

    @property
    def may_act(self) -> bool:
        """The leader, or the only agent (no election): the replica that acts."""
        return self.role in ("leader", "single")

    @property
    def acting(self) -> bool:
        return self.running and self.may_act
