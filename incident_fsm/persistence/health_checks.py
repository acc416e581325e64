"""The health-check repository: one row per probe, for statistics; prunable, unlike history."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select

from incident_fsm.errors import (
    InvalidInput,
)
from incident_fsm.models import (
    HealthCheck,
)
from incident_fsm.persistence.core import (
    StoreCore,
)


def _clipped_check(check: HealthCheck) -> HealthCheck:
    """A copy whose texts fit their columns (reasons come from remote answers)."""
    return HealthCheck(
        target=check.target[:200], at=check.at, source=check.source[:200], ok=check.ok,
        latency_ms=check.latency_ms, memory_pct=check.memory_pct, disk_pct=check.disk_pct,
        cpu_pct=check.cpu_pct, error=check.error[:1000], cause=check.cause,
    )

# --- remediation helpers -----------------------------------------------------------


class HealthCheckRepository(StoreCore):
    """Health-check rows written by the monitor."""

    # --- health checks (written by the monitor; prunable, unlike history) -------

    async def record_health_check(self, *checks: HealthCheck) -> None:
        """Insert the rows of one poll (probe, fallback, dependencies) in one transaction."""
        rows = [_clipped_check(check) for check in checks]
        if not rows:
            return

        def work() -> None:
            with self._session() as session:
                session.add_all(rows)
                session.commit()
        await self._run(work)

    async def health_checks(
        self,
        *,
        target: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[HealthCheck]:
        """Health-check rows at or after `since`, oldest first."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1")

        def work() -> list[HealthCheck]:
            query = select(HealthCheck)
            if target is not None:
                query = query.where(HealthCheck.target == target)
            if since is not None:
                query = query.where(HealthCheck.at >= since)
            query = query.order_by(col(HealthCheck.at), col(HealthCheck.id)).limit(limit)
            with self._session() as session:
                return list(session.exec(query).all())
        return await self._run(work)

    async def prune_health_checks(self, older_than: datetime) -> int:
        """Delete health-check rows older than `older_than`; returns how many went."""
        def work() -> int:
            with self._session() as session:
                result = session.execute(
                    sa.delete(HealthCheck).where(col(HealthCheck.at) < older_than)
                )
                session.commit()
                return int(result.rowcount)  # type: ignore[attr-defined]
        return await self._run(work)
