"""Alembic environment: runs migrations against the URL the agent itself would use.

The URL comes from the Alembic config (set by `incident_fsm.persistence.database`), else
from INCIDENT_FSM_DATABASE_URL or the default SQLite file. SQLite gets batch
mode, since it cannot ALTER most things in place.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlmodel.sql.sqltypes import AutoString

from incident_fsm.models import UTCDateTime, metadata
from incident_fsm.persistence import database

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)


def render_item(type_: str, obj: Any, _context: Any) -> str | bool:
    """Write the package's column types as plain SQLAlchemy ones.

    A migration must not import the package: later model changes would
    silently rewrite history.
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def run_migrations() -> None:
    url = database.resolve_url(config.get_main_option("sqlalchemy.url"))
    engine = database.create_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
                render_item=render_item,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations()
