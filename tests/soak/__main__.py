"""`python -m tests.soak [--hours 24] [--speedup 60] [--seed 1] [--targets 3] [--replicas 2]`.

Runs real `incident-fsm run` processes against the simulated world for the
equivalent of `--hours` of operation, every interval, deadline and window
divided by `--speedup`, under a seeded chaos schedule (printed first), then
judges every invariant and writes `report.md`, `soak.svg` and `soak.json`
to `--out`. Exit 1 if any invariant broke.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import anyio
from loguru import logger

from .report import write
from .run import Options, Soak


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak")
    parser.add_argument("--hours", type=float, default=24.0, help="virtual hours to run")
    parser.add_argument("--speedup", type=float, default=60.0,
                        help="how much faster than real time (default 60: a day in 24 min)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the chaos schedule")
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2, help="agents (Postgres only; 1 on "
                        "SQLite)")
    parser.add_argument("--sqlite", action="store_true", help="one agent on SQLite instead")
    parser.add_argument("--out", type=Path, default=Path("soak-report"))
    args = parser.parse_args()
    if args.hours <= 0 or args.speedup <= 0 or args.targets < 1 or args.replicas < 1:
        parser.error("--hours, --speedup, --targets and --replicas must be positive")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    # The peers run in this process; their log lines (the relay's) are not the report.
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    options = Options(hours=args.hours, speedup=args.speedup, seed=args.seed,
                      targets=args.targets, replicas=1 if args.sqlite else args.replicas,
                      sqlite=args.sqlite, out=args.out.resolve())
    run = anyio.run(Soak(options).main)
    report = write(run, options.out)
    failed = [v for v in run.verdicts if not v.held] + [
        v for _, found in run.checkpoints for v in found if not v.held]
    for verdict in run.verdicts:
        print(f"{'ok    ' if verdict.held else 'BROKEN'}  {verdict.name}: {verdict.evidence}")
    print(f"report: {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
