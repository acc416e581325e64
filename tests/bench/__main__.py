"""`python -m tests.bench [--quick] [--only memory,cpu,...] [--runs 3] [--markdown FILE]`.

Runs the benchmarks in order (`--runs` times), prints one table and writes the
figures as JSON; `--markdown` writes the README's table: the first run's
figures with their same-run baselines and targets, and how far each figure
moved over all the runs. Sizes come from `BENCH_*` environment variables (see each module) or
`--quick` for a short smoke run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import anyio
import psutil
from loguru import logger

from .common import Row, markdown, table

BENCHES = ("memory", "cpu", "latency", "throughput", "history", "concurrency", "backtest")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated benchmarks")
    parser.add_argument("--out", default="bench-results.json")
    parser.add_argument("--runs", type=int, default=1, help="run everything this many times")
    parser.add_argument("--markdown", default="", help="write the README table to this file")
    args = parser.parse_args()
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"
    # The in-process benchmarks run real agents: their log lines would drown the table.
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    # The simulators' connections cut at shutdown are expected; asyncio would log each one.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for name in names:
        if name not in BENCHES:
            parser.error(f"unknown benchmark {name!r}; known: {', '.join(BENCHES)}")
    runs: list[list[Row]] = []
    failed: dict[str, str] = {}
    timings: dict[str, float] = {}
    for n in range(max(1, args.runs)):
        rows: list[Row] = []
        for name in names:
            print(f"== {name} (run {n + 1}) ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                module = importlib.import_module(f"tests.bench.{name}")
                got: list[Row] = anyio.run(module.run)
                rows += got
                print(table(got), file=sys.stderr, flush=True)
            except Exception:
                failed[f"{name} (run {n + 1})"] = traceback.format_exc()
                print(traceback.format_exc(), file=sys.stderr, flush=True)
            timings[f"{name} (run {n + 1})"] = time.monotonic() - started
        runs.append(rows)
    rows = runs[0]
    print(table(rows))
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, runs) + "\n")
    for name, error in failed.items():
        print(f"\n{name} FAILED:\n{error}")
    Path(args.out).write_text(json.dumps({
        "at": datetime.now(UTC).isoformat(), "python": platform.python_version(),
        "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "quick": bool(args.quick), "seconds": timings, "rows": [r.as_dict() for r in rows],
        "runs": [[r.as_dict() for r in run] for run in runs],
        "failed": failed}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
