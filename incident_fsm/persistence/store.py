"""The store: the only code that talks to the database.

Every public method is a coroutine that runs one short synchronous
SQLAlchemy unit of work in a worker thread (`anyio.to_thread.run_sync`,
bounded by a capacity limiter). Worker threads let one code path serve
Postgres (psycopg 3) and SQLite alike, and Alembic and the CLI share the
same engine setup. On Postgres the calls made most (a step without an
attempt, an opening, `show`'s snapshot, the reads of one table) run on the
event loop instead, over psycopg's async connections (`direct`): there the
hop to a thread cost as much as the statement.

Invariants the store keeps:
- one transition = one transaction: the version-checked update of the
  incident copy, the `transition` row, the attempt it starts and its outbox
  rows commit together or not at all (on Postgres a step that starts no
  attempt is one statement, its rows written by data-modifying CTEs only if
  the update matched: one round trip);
- `incident.version` equals the number of `transition` rows of the incident
  (the opening row is seq 1), so the version is also the next row's seq;
- strikes are recomputed from the incident's `action_run` rows whenever
  those change; nothing counts them in memory;
- history rows are only ever inserted.
"""

from __future__ import annotations

from incident_fsm.persistence.attempts import ActionTally, AttemptRepository
from incident_fsm.persistence.health_checks import HealthCheckRepository
from incident_fsm.persistence.incidents import IncidentRepository
from incident_fsm.persistence.labels import LabelRepository
from incident_fsm.persistence.leases import LeaseRepository
from incident_fsm.persistence.outbox import OutboxRepository
from incident_fsm.persistence.recorded import RecordedRepository
from incident_fsm.persistence.silences import SilenceRepository
from incident_fsm.persistence.statistics import Statistics, StatisticsRepository

__all__ = ["ActionTally", "Statistics", "Store"]


class Store(IncidentRepository, AttemptRepository, OutboxRepository, LeaseRepository,
            HealthCheckRepository, StatisticsRepository, SilenceRepository, LabelRepository,
            RecordedRepository):
    """Async access to incidents and their history. Create one per process and share it.

    One class per aggregate (`persistence.incidents`, `.attempts`, `.outbox`,
    `.leases`, `.health_checks`, `.statistics`, `.silences`, `.labels`, `.recorded`) over one
    `StoreCore`; consumers depend on the small protocols of what they use, not on all
    of it.
    """
