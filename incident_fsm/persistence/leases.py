"""The leases repository: leader election between replicas and the agents' heartbeats."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col

from incident_fsm.errors import (
    InvalidInput,
)
from incident_fsm.models import Lease, from_row
from incident_fsm.persistence import direct
from incident_fsm.persistence.core import (
    MAX_ACTOR,
    StoreCore,
    _check_text,
)

#: The lease the acting replica holds (see `incident_fsm.runtime.leader`).
LEADER: Final = "agent-leader"
#: Names of the `lease` rows that are heartbeats (`beat`), not leases.
HEARTBEAT_PREFIX = "heartbeat:"


@dataclass(frozen=True)
class AgentSeen:
    """One agent, as its heartbeat row says: since when, last beat, alive, leading."""

    replica: str
    started_at: datetime
    last_beat: datetime
    alive: bool
    leader: bool
    version: str | None


def _heartbeat_name(replica: str) -> str:
    """The `lease` row of `replica`'s heartbeat (the column holds 100 characters)."""
    name = HEARTBEAT_PREFIX + replica
    if len(name) <= 100:
        return name
    # Two long replica names with the same beginning must not share a row.
    digest = hashlib.sha256(replica.encode()).hexdigest()[:16]
    return f"{name[:83]}~{digest}"


_LEASE: sa.Table = Lease.__table__  # type: ignore[attr-defined]
_BY_NAME = sa.select(_LEASE).where(_LEASE.c.name == sa.bindparam("name"))
@functools.cache
def _upsert(dialect: str, *, contested: bool, beat: bool = False) -> sa.Executable:
    """The upsert per dialect and whether the row is contested, built when first used:
    building one costs more than running it, and the agent renews every few seconds.

    With `beat` (Postgres), the same statement also writes the heartbeat row of the
    lease's holder (parameters `beat_name`, `beat_expires`, `beat_version`): a
    data-modifying CTE, so renewing and beating cost one round trip, not two."""
    stmt = _upsert_of(dialect, contested=contested, prefix="")
    if beat:
        stmt = stmt.add_cte(_upsert_of(dialect, contested=False, prefix="beat_").cte("beat"))
    statement: sa.Executable = stmt
    return statement


def _upsert_of(dialect: str, *, contested: bool, prefix: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    c, now = _LEASE.c, sa.bindparam("now", type_=_LEASE.c.renewed_at.type)
    stmt = insert(_LEASE).values(name=sa.bindparam(prefix + "name"),
                                 holder=sa.bindparam("holder"), acquired_at=now, renewed_at=now,
                                 expires_at=sa.bindparam(prefix + "expires",
                                                         type_=c.expires_at.type),
                                 version=sa.bindparam(prefix + "version"))
    stmt = stmt.on_conflict_do_update(
        index_elements=[c.name],
        set_={
            "holder": stmt.excluded.holder,
            "acquired_at": sa.case((c.holder == stmt.excluded.holder, c.acquired_at),
                                   else_=stmt.excluded.acquired_at),
            "renewed_at": stmt.excluded.renewed_at,
            "expires_at": stmt.excluded.expires_at,
            "version": stmt.excluded.version,
        },
        # A lease changes hands only once it has expired.
        where=sa.or_(c.holder == stmt.excluded.holder, c.expires_at < now) if contested else None,
    )
    return stmt if prefix else stmt.returning(*c)


async def _acquire(conn: direct.Connection, upsert: direct.Prepared, by_name: direct.Prepared,
                   params: dict[str, Any]) -> Lease:
    """`acquire_lease`'s statement on a connection of `direct`'s."""
    rows = await direct.fetch(conn, upsert, params)
    if not rows:  # the condition kept it from us: as it stands, someone else's
        rows = await direct.fetch(conn, by_name, {"name": params["name"]})
    return from_row(Lease, rows[0])


class LeaseRepository(StoreCore):
    """Named leases with a holder and an expiry; heartbeats are the rows `heartbeat:<replica>`."""

    # --- leases (leader election between replicas) ---------------------------

    async def acquire_lease(self, name: str, holder: str, *, now: datetime, ttl: float,
                            beat_ttl: float | None = None, version: str | None = None) -> Lease:
        """Take or renew lease `name` for `holder` if it is free, expired, or already theirs.

        One atomic upsert, so two replicas can never both get it. Returns the
        lease as it stands afterwards: the caller holds it iff `.holder == holder`.
        With `beat_ttl`, `holder`'s heartbeat (see `beat`) is written by the same
        statement, whoever gets the lease.
        """
        expires = now + timedelta(seconds=ttl)
        beat = None
        if beat_ttl is not None:
            _check_text("replica", holder, MAX_ACTOR)
            if beat_ttl <= 0:
                raise InvalidInput("a heartbeat's ttl must be greater than 0")
            beat = {"beat_name": _heartbeat_name(holder),
                    "beat_expires": now + timedelta(seconds=beat_ttl),
                    "beat_version": None if version is None else version[:40]}

        if self._direct is not None:  # one statement, on the event loop (see `direct`)
            params = {"name": name, "holder": holder, "now": now, "expires": expires,
                      "version": None, **(beat or {})}
            return await self._run(
                _acquire, self._prepared(_upsert("postgresql", contested=True,
                                                 beat=beat is not None)),
                self._prepared(_BY_NAME), params, _lane=self._urgent)

        def work() -> Lease:
            lease = self._upsert_lease(name, holder, now=now, expires=expires, contested=True,
                                       beat=beat)
            assert lease is not None
            return lease
        return await self._run_urgent(work)

    def _upsert_lease(self, name: str, holder: str, *, now: datetime, expires: datetime,
                      contested: bool, version: str | None = None,
                      beat: dict[str, Any] | None = None) -> Lease | None:
        """Insert or update row `name` of `lease` in one statement (a worker-thread call).

        `acquired_at` is kept while the holder stays the same. A `contested` row
        (a lease) is taken over only once it has expired; a heartbeat's row is
        always written. `beat`: the parameters of the holder's heartbeat row, written
        in the same transaction (SQLite; on Postgres `acquire_lease` writes both in one
        statement on the event loop, see `_acquire`).
        """
        dialect = self.engine.dialect.name
        params = {"name": name, "holder": holder, "now": now, "expires": expires,
                  "version": version}
        with self._one_statement() as conn:
            if beat is not None:
                conn.execute(_upsert(dialect, contested=False),
                             {"name": beat["beat_name"], "holder": holder, "now": now,
                              "expires": beat["beat_expires"], "version": beat["beat_version"]})
            row = conn.execute(_upsert(dialect, contested=contested), params).first()
            if row is None:  # the condition kept it from us: as it stands, someone else's
                row = conn.execute(_BY_NAME, {"name": name}).first()
        return None if row is None else from_row(Lease, row._mapping)

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once (on clean shutdown), if `holder` still has it."""
        def work() -> None:
            with self._session() as session:
                session.execute(sa.delete(Lease).where(col(Lease.name) == name,
                                                       col(Lease.holder) == holder))
                session.commit()
        await self._run_urgent(work)

    # --- heartbeats: which agents are alive (rows `heartbeat:<replica>` in `lease`) -----
    # A heartbeat row is no lease: nobody competes for it, each replica only ever
    # writes its own. It lives in the `lease` table because it has the same shape
    # (who, since when, until when), so knowing who is alive needs no migration.

    async def beat(self, replica: str, *, now: datetime, ttl: float,
                   version: str | None = None) -> bool:
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
            # Each replica writes only its own row: no condition, the first beat's time kept.
            self._upsert_lease(name, replica, now=now, expires=expires, contested=False,
                               version=None if version is None else version[:40])
            return True
        return await self._run_urgent(work)

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
            with self._reading() as session:
                return [(str(holder), until) for holder, until in session.execute(query).all()]
        return await self._run(work)

    async def agents(self, now: datetime, *, forgotten_after: float = 86400.0) -> list[AgentSeen]:
        """Every agent with a heartbeat row (a clean stop removes it; a crash leaves it to
        expire), alive or not at `now`, and whether it holds `leader` -- rows last renewed
        more than `forgotten_after` seconds ago left out."""
        since = now - timedelta(seconds=forgotten_after)
        beats = (
            sa.select(Lease)
            .where(col(Lease.name).startswith(HEARTBEAT_PREFIX, autoescape=True),
                   col(Lease.renewed_at) >= since)
            .order_by(col(Lease.holder))
        )

        def work() -> list[AgentSeen]:
            with self._reading() as session:
                lead = session.get(Lease, LEADER)
                leader = lead.holder if lead is not None and lead.expires_at > now else None
                return [AgentSeen(replica=b.holder, started_at=b.acquired_at,
                                  last_beat=b.renewed_at, alive=b.expires_at > now,
                                  leader=b.holder == leader, version=b.version)
                        for (b,) in session.execute(beats).all()]
        return await self._run(work)
