"""The leases repository: leader election between replicas and the agents' heartbeats."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col

from incident_fsm.errors import (
    InvalidInput,
)
from incident_fsm.models import (
    Lease,
)
from incident_fsm.persistence.core import (
    MAX_ACTOR,
    StoreCore,
    _check_text,
)

#: Names of the `lease` rows that are heartbeats (`beat`), not leases.
HEARTBEAT_PREFIX = "heartbeat:"


def _heartbeat_name(replica: str) -> str:
    """The `lease` row of `replica`'s heartbeat (the column holds 100 characters)."""
    name = HEARTBEAT_PREFIX + replica
    if len(name) <= 100:
        return name
    # Two long replica names with the same beginning must not share a row.
    digest = hashlib.sha256(replica.encode()).hexdigest()[:16]
    return f"{name[:83]}~{digest}"


class LeaseRepository(StoreCore):
    """Named leases with a holder and an expiry; heartbeats are the rows `heartbeat:<replica>`."""

    # --- leases (leader election between replicas) ---------------------------

    async def acquire_lease(self, name: str, holder: str, *, now: datetime,
                            ttl: float) -> Lease:
        """Take or renew lease `name` for `holder` if it is free, expired, or already theirs.

        One atomic upsert, so two replicas can never both get it. Returns the
        lease as it stands afterwards: the caller holds it iff `.holder == holder`.
        """
        expires = now + timedelta(seconds=ttl)

        def work() -> Lease:
            table = Lease.__table__  # type: ignore[attr-defined]
            lease = self._upsert_lease(
                name, holder, now=now, expires=expires,
                keep_first=table.c.holder == holder,
                only_if=sa.or_(table.c.holder == holder, table.c.expires_at < now))
            assert lease is not None
            return lease
        return await self._run(work)

    def _upsert_lease(self, name: str, holder: str, *, now: datetime, expires: datetime,
                      keep_first: sa.ColumnElement[bool],
                      only_if: sa.ColumnElement[bool] | None) -> Lease | None:
        """Insert or update row `name` of `lease` in one statement (a worker-thread call).

        `acquired_at` is kept where `keep_first` holds; the update happens only
        where `only_if` holds (None: always).
        """
        table = Lease.__table__  # type: ignore[attr-defined]
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        stmt = insert(table).values(name=name, holder=holder, acquired_at=now,
                                    renewed_at=now, expires_at=expires)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.name],
            set_={
                "holder": stmt.excluded.holder,
                "acquired_at": sa.case((keep_first, table.c.acquired_at),
                                       else_=stmt.excluded.acquired_at),
                "renewed_at": stmt.excluded.renewed_at,
                "expires_at": stmt.excluded.expires_at,
            },
            where=only_if,
        )
        with self._session() as session:
            session.execute(stmt)
            lease = session.get(Lease, name, populate_existing=True)
            session.commit()
            return lease

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once (on clean shutdown), if `holder` still has it."""
        def work() -> None:
            with self._session() as session:
                session.execute(sa.delete(Lease).where(col(Lease.name) == name,
                                                       col(Lease.holder) == holder))
                session.commit()
        await self._run(work)

    # --- heartbeats: which agents are alive (rows `heartbeat:<replica>` in `lease`) -----
    # A heartbeat row is no lease: nobody competes for it, each replica only ever
    # writes its own. It lives in the `lease` table because it has the same shape
    # (who, since when, until when), so knowing who is alive needs no migration.

    async def beat(self, replica: str, *, now: datetime, ttl: float) -> bool:
        """Record that `replica` is alive until `now + ttl`; True once written.

        The row keeps the time of the replica's first beat (`acquired_at`).
        See `incident_fsm.runtime.heartbeat.Heartbeat` for the loop that calls this.
        """
        _check_text("replica", replica, MAX_ACTOR)
        if ttl <= 0:
            raise InvalidInput("a heartbeat's ttl must be greater than 0")
        name = _heartbeat_name(replica)
        expires = now + timedelta(seconds=ttl)

        def work() -> bool:
            table = Lease.__table__  # type: ignore[attr-defined]
            # Each replica writes only its own row: no condition, the first beat's time kept.
            self._upsert_lease(name, replica, now=now, expires=expires,
                               keep_first=table.c.holder == replica, only_if=None)
            return True
        return await self._run(work)

    async def end_beat(self, replica: str) -> None:
        """Remove `replica`'s heartbeat at once (it is stopping cleanly)."""
        await self.release_lease(_heartbeat_name(replica), replica)

    async def agents_seen(self, now: datetime) -> list[tuple[str, datetime]]:
        """(replica, alive until) of every agent whose last heartbeat is still valid at `now`."""
        query = (
            sa.select(col(Lease.holder), col(Lease.expires_at))
            .where(col(Lease.name).startswith(HEARTBEAT_PREFIX, autoescape=True),
                   col(Lease.expires_at) > now)
            .order_by(col(Lease.holder))
        )

        def work() -> list[tuple[str, datetime]]:
            with self._session() as session:
                return [(str(holder), until) for holder, until in session.execute(query).all()]
        return await self._run(work)
