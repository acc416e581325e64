"""The labels repository: operators' judgements of incidents, real problem or noise.

A label is appended, never changed, in any state, and moves no state: the
latest one is the incident's label. `label_counts` gives, per problem kind,
how many incidents were judged real and noise: detection's precision, read
before remediation is switched on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select

from incident_fsm.errors import IncidentNotFound, InvalidInput
from incident_fsm.models import ActionRun, Incident, IncidentId, IncidentLabel
from incident_fsm.persistence.core import MAX_ACTOR, MAX_REASON, StoreCore, _check_text
from incident_fsm.persistence.effects import failed_condition, succeeded_condition
from incident_fsm.vocabulary import Label


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt as `incident-fsm trust` weighs it (see `remediation.trust`)."""

    action: str
    kind: str
    tier: str
    dry_run: bool
    #: the action worked and verification passed after it (`succeeded_condition`)
    worked: bool
    #: the action failed or verification said no (`failed_condition`)
    failed: bool
    #: the incident's latest label (None: not labelled)
    label: str | None


class LabelRepository(StoreCore):
    """Labels: add one, read an incident's, count them per kind."""

    async def label_incident(self, incident_id: IncidentId, label: str, *, actor: str,
                             reason: str, at: datetime) -> IncidentLabel:
        """Record `label` (real or noise) on the incident. Nothing else changes."""
        if label not in set(Label):
            raise InvalidInput(f"unknown label {label!r}; labels are "
                               + ", ".join(lb.value for lb in Label))
        _check_text("actor", actor, MAX_ACTOR)
        _check_text("reason", reason, MAX_REASON)
        row = IncidentLabel(incident_id=incident_id, label=label, actor=actor.strip(),
                            reason=reason.strip(), at=at)

        def work() -> IncidentLabel:
            with self._session() as session:
                if session.get(Incident, incident_id) is None:
                    raise IncidentNotFound(incident_id)
                session.add(row)
                session.commit()
                session.refresh(row)
                return row
        return await self._run(work)

    async def labels_of(self, incident_id: IncidentId) -> list[IncidentLabel]:
        """The incident's labels, oldest first (the last is its label)."""
        query = (select(IncidentLabel).where(col(IncidentLabel.incident_id) == incident_id)
                 .order_by(col(IncidentLabel.id)))

        def work() -> list[IncidentLabel]:
            with self._reading() as session:
                return list(session.exec(query).all())
        return await self._run(work)

    async def label_counts(self, *, since: datetime | None = None
                           ) -> dict[str, dict[str, int]]:
        """Per problem kind, incidents (opened since `since`) by their latest label."""
        latest = (sa.select(sa.func.max(col(IncidentLabel.id)))
                  .group_by(col(IncidentLabel.incident_id)).scalar_subquery())
        opened = [] if since is None else [col(Incident.opened_at) >= since]
        query = (
            sa.select(col(Incident.kind), col(IncidentLabel.label), sa.func.count())
            .join(Incident, col(Incident.id) == col(IncidentLabel.incident_id))
            .where(col(IncidentLabel.id).in_(latest), *opened)
            .group_by(col(Incident.kind), col(IncidentLabel.label))
        )

        def work() -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            with self._reading() as session:
                for kind, label, n in session.execute(query).all():
                    out.setdefault(str(kind), {lb.value: 0 for lb in Label})[str(label)] = int(n)
            return out
        return await self._run(work)

    async def attempt_records(self, *, since: datetime) -> list[AttemptRecord]:
        """Every attempt started since `since`, oldest first, with its incident's kind and
        latest label."""
        latest = (sa.select(col(IncidentLabel.incident_id), sa.func.max(col(IncidentLabel.id))
                            .label("last"))
                  .group_by(col(IncidentLabel.incident_id)).subquery())
        query = (
            # The one definition of success and failure (`persistence.effects`).
            sa.select(col(ActionRun.action), col(Incident.kind), col(ActionRun.tier),
                      col(ActionRun.dry_run), sa.case((succeeded_condition(), True), else_=False),
                      sa.case((failed_condition(), True), else_=False),
                      col(IncidentLabel.label))
            .join(Incident, col(Incident.id) == col(ActionRun.incident_id))
            .outerjoin(latest, latest.c.incident_id == col(ActionRun.incident_id))
            .outerjoin(IncidentLabel, col(IncidentLabel.id) == latest.c.last)
            .where(col(ActionRun.started_at) >= since)
            .order_by(col(ActionRun.started_at), col(ActionRun.id))
        )

        def work() -> list[AttemptRecord]:
            with self._reading() as session:
                return [AttemptRecord(str(action), str(kind), str(tier), bool(dry),
                                      worked=bool(worked), failed=bool(failed),
                                      label=None if label is None else str(label))
                        for action, kind, tier, dry, worked, failed, label
                        in session.execute(query).all()]
        return await self._run(work)
