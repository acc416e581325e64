"""What the benchmarks share: result rows, size knobs, throwaway Postgres databases, statistics."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from incident_fsm.persistence import database

ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = os.environ.get(
    "INCIDENT_FSM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def knob(name: str, default: float, quick: float) -> float:
    """A size knob: env `BENCH_<NAME>` wins, else the quick or the full default."""
    raw = os.environ.get(f"BENCH_{name.upper()}")
    if raw is not None:
        return float(raw)
    return quick if os.environ.get("BENCH_QUICK") == "1" else default


@dataclass
class Row:
    """One figure, with the baseline measured beside it in the same run (when there is one)."""

    section: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def table(rows: Sequence[Row]) -> str:
    head = ("section", "metric", "value", "unit", "baseline (same run)", "target", "ok")
    lines = [(r.section, r.metric, fmt(r.value), r.unit,
              f"{fmt(r.baseline)} {r.baseline_label}".strip(), r.target,
              "" if r.ok is None else ("yes" if r.ok else "NO")) for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, lines)])


def markdown(rows: Sequence[Row], runs: Sequence[Sequence[Row]] = ()) -> str:
    """The README's table: each row of the first run, its same-run baseline, its target and
    whether it was met, and the range of its value over every run in `runs`."""
    seen: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        for r in run:
            seen.setdefault((r.section, r.metric), []).append(r.value)
    lines = ["| section | what | value | baseline, same run | target | met | over "
             f"{len(runs) or 1} run(s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        values = [v for v in seen.get((r.section, r.metric), []) if v == v]  # not NaN
        spread = (f"{fmt(min(values))} – {fmt(max(values))}" if len(values) > 1 else "")
        baseline = f"{fmt(r.baseline)} {r.baseline_label}".strip()
        met = "" if r.ok is None else ("yes" if r.ok else "**no**")
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.section} | {r.metric}{note} | {fmt(r.value)} {r.unit} | {baseline} "
                     f"| {r.target} | {met} | {spread} |")
    return "\n".join(lines)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan"), "n": 0}
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1],
            "n": len(ordered)}


def libpq(url: str) -> str:
    """A SQLAlchemy URL as libpq (psql, pgbench, psycopg) wants it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def throwaway_postgres(*, migrate: bool = True) -> Iterator[str]:
    """A new Postgres database (schema by Alembic), dropped afterwards."""
    name = f"ifsm_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq(ADMIN_URL), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            database.upgrade(url)
        yield url
    finally:
        with psycopg.connect(libpq(ADMIN_URL), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def python() -> str:
    return sys.executable


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: the repository importable, output unbuffered."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RENDER_API_KEY": "rnd_simulated"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
