"""History at scale: the operator's read commands over 1,000,000 transitions / 100,000 incidents.

Also a metrics scrape and the reads of `incident-fsm status`, over that
history and over ten incidents loaded the same way: their ratio shows what
history costs them (it should cost nothing: they read only what is open).

The rows are loaded straight into a throwaway Postgres database with
server-side multi-row `INSERT ... SELECT generate_series` (not through the
store): incidents spread over 30 days across 50 targets and 5 kinds, ten
transitions, two action attempts and three notifications each, plus health
checks. Then the store methods the CLI calls are timed (median and max of
repeated calls): `show` (`timeline`), `incidents` with a state and time
filter, `history` for one day, and `stats` over everything. The SQL each
call sends is captured and run under `EXPLAIN ANALYZE` five times; the plans
are printed, and the server's own execution time (summed over the
statements, the median of the five) is the baseline beside ours.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from incident_fsm import IncidentId, Store
from incident_fsm.persistence.snapshot import BEGIN_SNAPSHOT

from .common import Row, knob, libpq, throwaway_postgres

KINDS = "ARRAY['memory_high','disk_high','cpu_high','health_endpoint_down','service_down:celery']"
TRIGGERS = ("ARRAY['open','remediate','action_finished','still_failing','action_finished',"
            "'still_failing','action_finished','recovered','acknowledge','reopen']")


def load(url: str, *, incidents: int, per: int, checks: int) -> float:
    started = time.monotonic()
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(f"""
            INSERT INTO incident (id, fingerprint, target, kind, severity, state, strikes,
                                  flap_count, version, summary, details, deadline_at, opened_at,
                                  updated_at, resolved_at)
            SELECT g, 'api-' || (g % 50) || ':' || ({KINDS})[1 + g % 5]
                      || CASE WHEN g % 1000 = 0 OR g % 500 = 1 THEN ':' || g ELSE '' END,
                   'api-' || (g % 50), ({KINDS})[1 + g % 5], 'critical',
                   CASE WHEN g % 1000 = 0 THEN 'detected' WHEN g % 500 = 1 THEN 'escalated'
                        ELSE 'resolved' END,
                   g % 3, 0, {per}, 'bulk-loaded incident', '{{}}'::jsonb,
                   CASE WHEN g % 1000 = 0 THEN now() + interval '2 minutes' END, t, t,
                   CASE WHEN g % 1000 = 0 OR g % 500 = 1 THEN NULL
                        ELSE t + (g % 900) * interval '1 second' END
            FROM generate_series(1, {incidents}) g,
                 LATERAL (SELECT now() - interval '30 days' * (1 - g::float / {incidents}) AS t) o
        """)
        conn.execute("SELECT setval('incident_id_seq', (SELECT max(id) FROM incident))")
        conn.execute(f"""
            INSERT INTO transition (incident_id, seq, trigger, source, dest, actor, reason,
                                    details, at)
            SELECT i.id, s, ({TRIGGERS})[s], CASE WHEN s > 1 THEN 'verifying' END,
                   CASE WHEN s = {per} AND i.state = 'escalated' THEN 'escalated'
                        ELSE 'remediating' END,
                   'agent', 'bulk-loaded step', '{{}}'::jsonb, i.opened_at + s * interval '1 s'
            FROM incident i, generate_series(1, {per}) s
        """)
        conn.execute("""
            INSERT INTO action_run (incident_id, attempt, action, tier, idempotency_key, dry_run,
                                    started_at, executing_at, finished_at, outcome, verified,
                                    output_excerpt, evidence)
            SELECT i.id, a, (ARRAY['render_restart','render_scale'])[a], 'safe',
                   'bulk-' || i.id || '-' || a, false, i.opened_at + a * interval '2 s',
                   i.opened_at + a * interval '2 s', i.opened_at + a * interval '3 s', 'ok',
                   a = 2, '', '{}'::jsonb
            FROM incident i, generate_series(1, 2) a
        """)
        conn.execute("""
            INSERT INTO notification (incident_id, transition_seq, channel, payload, dedupe_key,
                                      status, attempts, next_attempt_at, created_at,
                                      delivered_at, last_error)
            SELECT i.id, n, (ARRAY['log','pam','webhook'])[n], '{}'::jsonb,
                   'bulk-' || i.id || '-' || n, 'delivered', 1, i.opened_at, i.opened_at,
                   i.opened_at + interval '20 ms', ''
            FROM incident i, generate_series(1, 3) n
        """)
        conn.execute(f"""
            INSERT INTO health_check (target, at, source, ok, latency_ms, memory_pct, disk_pct,
                                      cpu_pct, error)
            SELECT 'api-' || (g % 50), now() - interval '7 days' * (1 - g::float / {checks}),
                   '/health/resources', g % 97 <> 0, 3 + g % 40, 40, 50, 12, ''
            FROM generate_series(1, {checks}) g
        """)
        conn.execute("VACUUM ANALYZE")
    return time.monotonic() - started


class Capture:
    """The SQL statements (with parameters) a store call sends, in a worker thread or on
    the event loop (`persistence.direct`): what psycopg's cursors execute, but for the
    snapshot's BEGIN and COMMIT."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.on = False
        real, real_async = psycopg.Cursor.execute, psycopg.AsyncCursor.execute

        def execute(cursor: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            self._seen(query, params)
            return real(cursor, query, params, **kwargs)

        async def execute_async(cursor: Any, query: Any, params: Any = None,
                                **kwargs: Any) -> Any:
            self._seen(query, params)
            return await real_async(cursor, query, params, **kwargs)
        psycopg.Cursor.execute = execute  # type: ignore[method-assign,assignment]
        psycopg.AsyncCursor.execute = execute_async  # type: ignore[method-assign,assignment]

    def _seen(self, query: Any, params: Any) -> None:
        if self.on and not str(query).startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            self.statements.append((str(query), params))


def explain(url: str, statements: list[tuple[str, Any]], rounds: int = 5
            ) -> tuple[str, float]:
    """The plans (text) and the server's execution time (ms) of `statements`: summed over
    them, the median of `rounds` runs. One run of a fraction of a millisecond moved by
    half between runs, and our figure is a median too."""
    plans: list[str] = []
    totals = []
    with psycopg.connect(libpq(url)) as conn:
        for _ in range(rounds):
            total = 0.0
            for statement, parameters in statements:
                rows = conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + statement,
                                    parameters).fetchall()
                text = "\n".join(r[0] for r in rows)
                if len(plans) < len(statements):
                    plans.append(text)
                for line in text.splitlines():
                    if line.startswith("Execution Time:"):
                        total += float(line.split()[2])
            totals.append(total)
    return "\n\n".join(plans), statistics.median(totals)


async def timed(call: Callable[[], Awaitable[Any]], reps: int) -> tuple[float, float]:
    await call()  # warm: connections, statement caches
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000, max(samples) * 1000


async def run() -> list[Row]:
    incidents = int(knob("history_incidents", 100_000, 100_000))
    per = 10
    reps = int(knob("history_reps", 20, 5))
    rows: list[Row] = []
    with throwaway_postgres() as url:
        seconds = load(url, incidents=incidents, per=per, checks=incidents * 5)
        rows.append(Row("history", f"bulk load {incidents:,} incidents / {incidents * per:,} "
                        "transitions", seconds, "s", note="INSERT ... SELECT generate_series"))
        now = datetime.now(UTC)
        some = IncidentId(incidents // 2 + 7)
        async with Store(url) as store:
            capture = Capture()
            # (name, call, absolute budget in ms, budget as a ratio to the server's time)
            calls: list[tuple[str, Callable[[], Awaitable[Any]], float | None,
                              float | None]] = [
                ("show ID (timeline of one incident)", lambda: store.timeline(some), 10.0, 5.0),
                ("incidents --state escalated --since 7d",
                 lambda: store.list_incidents(states=("escalated",),
                                              since=now - timedelta(days=7), limit=50), 50.0,
                 None),
                ("history for one day (limit 1000)",
                 lambda: store.history(since=now - timedelta(days=2),
                                       until=now - timedelta(days=1), limit=1000), None, None),
                ("stats over everything", lambda: store.statistics(), 1000.0, 1.5),
            ]
            for name, call, limit, ratio in calls:
                median, worst = await timed(call, reps)
                capture.statements, capture.on = [], True
                await call()
                capture.on = False
                plans, server = explain(url, capture.statements)
                print(f"\n--- EXPLAIN ANALYZE: {name}\n{plans}\n", flush=True)
                rows.append(Row("history", f"{name} median", median, "ms", server,
                                "server execution time (EXPLAIN ANALYZE, median of 5)",
                                "" if limit is None else f"< {limit:g} ms",
                                None if limit is None else median < limit,
                                note=f"max {worst:.1f} ms over {reps}; "
                                     f"index scans: {plans.count('Index')}; "
                                     f"seq scans: {plans.count('Seq Scan')}"))
                if ratio is not None:
                    rows.append(Row("history", f"{name.split(' (')[0]} / server time",
                                    median / server, "x", target=f"<= {ratio:g}",
                                    ok=median / server <= ratio))
                if name.startswith("show"):
                    rows += await driver_floor(url, capture.statements, server, reps)
    rows += await scrape_rows(incidents, per, reps)
    return rows


async def driver_floor(url: str, statements: list[tuple[str, Any]], server: float,
                       reps: int) -> list[Row]:
    """What `show`'s reads cost through psycopg alone, on one connection of its own: the
    same statements in the same snapshot and pipeline, their rows left as tuples (no
    models, no pool, no lane), and an empty round trip (`SELECT 1`). What no code of
    ours can go below."""
    async with await psycopg.AsyncConnection.connect(libpq(url), autocommit=True) as conn:
        async def pipeline() -> None:
            async with conn.pipeline():
                await conn.execute(BEGIN_SNAPSHOT)
                cursors = [await conn.execute(q, p) for q, p in statements]
                await conn.execute("COMMIT")
            for cursor in cursors:
                await cursor.fetchall()

        async def round_trip() -> None:
            await (await conn.execute("SELECT 1")).fetchall()

        alone = (await timed(pipeline, 5 * reps))[0]
        empty = (await timed(round_trip, 5 * reps))[0]
    return [
        Row("history", "show ID's statements through psycopg alone (rows as tuples) / server "
            "time", alone / server, "x", note=f"{alone:.3f} ms against {server:.3f} ms; "
            f"median of {5 * reps}"),
        Row("history", "an empty round trip (SELECT 1) through psycopg / show ID's server time",
            empty / server, "x", note=f"{empty:.3f} ms; median of {5 * reps}"),
    ]


async def scrape_rows(incidents: int, per: int, reps: int) -> list[Row]:
    """A metrics scrape and the `status` reads over the big history, and over the same open
    incidents with the resolved ones (the history) deleted, in this run: the ratio is what
    history costs them."""
    from incident_fsm.reports.figures import AgentStatus
    from incident_fsm.reports.metrics import AgentMetrics

    status = AgentStatus(running=True, role="leader", replica="bench")
    timings: dict[str, dict[bool, float]] = {}
    for history in (True, False):
        with throwaway_postgres() as url:
            load(url, incidents=incidents, per=per, checks=incidents * 5)
            if not history:
                forget_history(url)
            async with Store(url) as store:
                metrics = AgentMetrics()
                for name, call in (
                        ("metrics scrape", lambda m=metrics, s=store: m.exposition(
                            status, s, datetime.now(UTC))),
                        ("status reads", lambda s=store: status_reads(s))):
                    timings.setdefault(name, {})[history] = (await timed(call, reps))[0]
    out = []
    for name, by in timings.items():
        big, small = by[True], by[False]
        out.append(Row("history", f"{name} median, {incidents:,} incidents", big, "ms", small,
                       "the same open incidents, no history", "< 3x without history",
                       big < 3 * small, note=f"ratio {big / small:.2f}"))
    return out


async def status_reads(store: Store) -> None:
    """What `incident-fsm status` reads."""
    now = datetime.now(UTC)
    await store.agents(now)
    await store.latest_checks(since=now - timedelta(hours=24))
    await store.open_incidents()
    await store.channel_states()
    await store.silences(now=now)


def forget_history(url: str) -> None:
    """Delete the resolved incidents and their rows: the open ones stay as they were."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        gone = "(SELECT id FROM incident WHERE state = 'resolved')"
        for table in ("transition", "action_run", "notification"):
            conn.execute(f"DELETE FROM {table} WHERE incident_id IN {gone}")
        conn.execute("DELETE FROM incident WHERE state = 'resolved'")
        conn.execute("DELETE FROM health_check WHERE at < now() - interval '1 day'")
        conn.execute("VACUUM ANALYZE")
