"""Persistence throughput on Postgres: transitions per second through the store vs pgbench.

Writers (1 and 4, each on its own incident) step `acknowledge` through the
real `IncidentEngine` and `Store` for a fixed time, holding the incident as
the remediator does (`IncidentEngine.step`, no read before the write): per
step the store, in one transaction, updates the incident (version-checked,
the row handed back by RETURNING), inserts the transition row and the outbox
row. The baseline is `pgbench` running those same statements in one
transaction with as many clients, against the same throwaway database, in
the same run.
"""

# ruff: noqa: E501 - the pgbench script is SQL, one statement per line

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import anyio

from incident_fsm import IncidentEngine, MachinePolicy, OutboxMessage, Store, SystemClock
from incident_fsm.models import IncidentId

from .common import Row, knob, libpq, throwaway_postgres

COLUMNS = ("id, fingerprint, target, kind, severity, state, strikes, flap_count, version, "
           "summary, details, deadline_at, opened_at, updated_at, resolved_at")
SCRIPT = f"""\\set id :client_id + :base
BEGIN;
UPDATE incident SET state = 'detected', flap_count = flap_count, version = version + 1, deadline_at = now() + interval '120 seconds', updated_at = now(), resolved_at = NULL WHERE id = :id AND state = 'detected' RETURNING {COLUMNS};
INSERT INTO transition (incident_id, seq, trigger, source, dest, actor, reason, details, at) SELECT :id, version, 'acknowledge', 'detected', 'detected', 'bench', 'r', '{{}}'::jsonb, now() FROM incident WHERE id = :id;
INSERT INTO notification (incident_id, transition_seq, channel, payload, dedupe_key, status, attempts, next_attempt_at, created_at, delivered_at, last_error) SELECT :id, version, 'log', '{{"k": 1}}'::jsonb, 'pgbench-' || :id || '-' || version, 'pending', 0, now(), now(), NULL, '' FROM incident WHERE id = :id;
COMMIT;
"""


async def store_rate(engine: IncidentEngine, store: Store, ids: list[int],
                     seconds: float) -> float:
    done = 0

    async def writer(incident_id: int) -> None:
        nonlocal done
        incident = await store.get_incident(IncidentId(incident_id))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            incident = (await engine.step(incident, "acknowledge", actor="bench",
                                          reason="throughput",
                                          notifications=[OutboxMessage("log", {"k": 1})])
                        ).incident
            done += 1

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for incident_id in ids:
            tg.start_soon(writer, incident_id)
    return done / (time.monotonic() - started)


async def pgbench_rate(url: str, script: Path, *, clients: int, base: int,
                       seconds: float) -> float:
    argv = ["pgbench", "-n", "-f", str(script), "-c", str(clients), "-j", str(clients),
            "-T", str(int(seconds)), "-D", f"base={base}", libpq(url)]
    with anyio.fail_after(seconds + 60):
        out = await anyio.run_process(argv)
    match = re.search(r"tps = ([0-9.]+)", out.stdout.decode())
    if match is None:
        raise RuntimeError(f"pgbench printed no tps: {out.stdout.decode()[-500:]}")
    return float(match.group(1))


async def run() -> list[Row]:
    seconds = knob("throughput_seconds", 10, 3)
    rows = []
    with tempfile.TemporaryDirectory() as d, throwaway_postgres() as url:
        script = Path(d) / "step.sql"
        script.write_text(SCRIPT)
        async with Store(url) as store:
            engine = IncidentEngine(store, clock=SystemClock(), policy=MachinePolicy())
            ids = []
            for n in range(8):
                opened = await engine.open(target=f"w{n}", kind="memory_high",
                                           severity="critical", reason="throughput benchmark")
                ids.append(int(opened.incident.incident_id))
            await store_rate(engine, store, ids[:1], 1.0)  # warm-up: connections, statement cache
            for writers in (1, 4):
                ours = await store_rate(engine, store, ids[:writers], seconds)
                theirs = await pgbench_rate(url, script, clients=writers, base=ids[4],
                                            seconds=seconds)
                rows.append(Row("throughput", f"transitions/s through the store, {writers} "
                                f"writer(s)", ours, "/s", theirs, "pgbench, same SQL"))
                rows.append(Row("throughput", f"store / pgbench ratio, {writers} writer(s)",
                                ours / theirs, "x", target=">= 0.5", ok=ours / theirs >= 0.5))
    return rows
