"""The fault suite's session-wide check: no secret ever leaves through what a test exposed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .exposure import Exposure, exposed


@pytest.fixture(autouse=True)
def exposure() -> Iterator[Exposure]:
    """Every fault test runs under capture; afterwards nothing it exposed may hold a secret."""
    with exposed() as found:
        yield found
    leaks = found.leaks()
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated, empty SQLite database (for agent-level cases that are not about Postgres)."""
    target = tmp_path / "incidents.db"
    shutil.copyfile(sqlite_template, target)
    return f"sqlite:///{target}"
