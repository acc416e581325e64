"""The health-check repository: one row per probe, for statistics; prunable, unlike history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from incident_fsm.errors import (
    InvalidInput,
)
from incident_fsm.models import (
    HealthCheck,
    HealthRow,
)
from incident_fsm.persistence import direct
from incident_fsm.persistence.core import (
    StoreCore,
)
from incident_fsm.persistence.effects import _table

#: Rows one pruning statement deletes at most: short statements, short locks.
PRUNE_BATCH = 5000

_COLUMNS = ("target", "at", "source", "ok", "latency_ms", "memory_pct", "disk_pct", "cpu_pct",
            "error", "cause")
#: One row's insert, for the rows of a flush on the event loop (Postgres, see `direct`).
_INSERT = sa.insert(_table(HealthCheck)).values({c: sa.bindparam(c) for c in _COLUMNS})


def _values(check: HealthRow | HealthCheck) -> dict[str, Any]:
    """The row's columns, its texts clipped to fit (reasons come from remote answers)."""
    return dict(zip(_COLUMNS, (
        check.target[:200], check.at, check.source[:200], check.ok, check.latency_ms,
        check.memory_pct, check.disk_pct, check.cpu_pct, check.error[:1000], check.cause),
        strict=True))


async def _insert_rows(conn: direct.Connection, insert: direct.Prepared,
                       rows: list[dict[str, Any]]) -> None:
    # All or none, in one round trip: BEGIN, the inserts and COMMIT pipelined.
    async with conn.pipeline(), conn.transaction():
        await conn.cursor().executemany(insert.sql, [insert.params(row) for row in rows])


class HealthCheckRepository(StoreCore):
    """Health-check rows written by the monitor."""

    # --- health checks (written by the monitor; prunable, unlike history) -------

    async def record_health_check(self, *checks: HealthRow | HealthCheck) -> None:
        """Insert rows (of one poll, or of many) in one statement and one transaction."""
        rows = [_values(check) for check in checks]
        if not rows:
            return
        if self._direct is not None:
            await self._run(_insert_rows, self._prepared(_INSERT), rows)
            return

        def work() -> None:
            with self.engine.begin() as connection:
                connection.execute(sa.insert(HealthCheck), rows)
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
            with self._reading() as session:
                return list(session.exec(query).all())
        return await self._run(work)

    async def prune_health_checks(self, older_than: datetime, *,
                                  limit: int = PRUNE_BATCH) -> int:
        """Delete up to `limit` health-check rows older than `older_than`, oldest first.

        Returns how many went; fewer than `limit` means none older is left. One
        bounded statement holds its locks briefly: call again for the rest.
        """
        if limit < 1:
            raise InvalidInput("limit must be at least 1")
        oldest = (sa.select(col(HealthCheck.id)).where(col(HealthCheck.at) < older_than)
                  .order_by(col(HealthCheck.at)).limit(limit))

        def work() -> int:
            with self.engine.begin() as connection:
                result = connection.execute(
                    sa.delete(HealthCheck).where(col(HealthCheck.id).in_(oldest.scalar_subquery())))
                return int(result.rowcount)
        return await self._run(work)
