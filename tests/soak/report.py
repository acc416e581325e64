"""The soak's report: the schedule, the counts, every invariant, and an SVG picture of the run."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .agents import FLOORS
from .run import Run

LANE = 14


def write(run: Run, out: Path) -> Path:
    """`report.md`, `soak.svg` and `soak.json` in `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.svg").write_text(picture(run))
    o = run.options
    held = all(v.held for v in run.verdicts) and all(
        v.held for _, found in run.checkpoints for v in found)
    lines = [
        f"# Soak: {o.hours:g} hours at {o.speedup:g}x, seed {o.seed}",
        "",
        f"{o.targets} targets, {o.replicas} replica(s) on {'SQLite' if o.sqlite else 'Postgres'}"
        f", {(run.ended - run.started) / 60:.1f} min of wall time. Result: "
        f"**{'every invariant held' if held else 'INVARIANTS BROKEN'}**.",
        "",
        f"Command: `.venv/bin/python -m tests.soak --hours {o.hours:g} --speedup {o.speedup:g} "
        f"--seed {o.seed} --targets {o.targets} --replicas {o.replicas}"
        f"{' --sqlite' if o.sqlite else ''}`",
        "",
        "Intervals and deadlines are the defaults divided by the speed-up, with these floors "
        "(seconds): " + ", ".join(f"{k} {v:g}" for k, v in FLOORS.items()) + ".",
        "",
        "## Invariants", "",
        "| invariant | held | evidence |", "|---|---|---|",
        *[f"| {v.name} | {'yes' if v.held else '**NO**'} | {_cell(v.evidence)} |"
          for v in run.verdicts],
        "",
    ]
    if run.checkpoints:
        def said(found: list[Any]) -> str:
            broken = [v.name for v in found if not v.held]
            return "all held" if not broken else "broken: " + ", ".join(broken)
        lines += ["Checkpoints during the run: " + "; ".join(
            f"{(at - run.started) * o.speedup / 3600:.0f} h {said(found)}"
            for at, found in run.checkpoints) + ".", ""]
    c = run.counts
    lines += ["## Counts", "",
              "Faults: " + ", ".join(f"{k} {n}" for k, n in c.get("faults", {}).items()) + ".",
              "",
              "| incidents: kind | state | count |", "|---|---|---|",
              *[f"| {k} | {s} | {n} |" for k, s, n in c.get("incidents", [])], "",
              "| actions: action | dry run | outcome | count |", "|---|---|---|---|",
              *[f"| {a} | {d} | {oc} | {n} |" for a, d, oc, n in c.get("actions", [])], "",
              "| notifications: channel | status | count |", "|---|---|---|",
              *[f"| {ch} | {s} | {n} |" for ch, s, n in c.get("notifications", [])], "",
              "Executions counted at the peers: " + json.dumps(c.get("executions", {})) + ".",
              f"Operator commands: {c.get('operator', 0)}.", "",
              "![the run](soak.svg)", "",
              "## Schedule", "", "```text", *[f.line() for f in run.faults], "```", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    (out / "soak.json").write_text(json.dumps({
        "options": {k: str(v) for k, v in vars(o).items()},
        "verdicts": [vars(v) for v in run.verdicts],
        "counts": {k: v for k, v in c.items() if k != "opened"},
        "faults": [vars(f) for f in run.faults],
        "processes": [{"replica": life.replica, "pid": life.pid, "how": life.how,
                       "lived_s": round((life.ended or run.ended) - life.started, 1),
                       "rss_mb": [[round(t - run.started, 1), round(r, 2)] for t, r in life.rss]}
                      for rep in run.replicas for life in rep.lives]},
        indent=2, default=str) + "\n")
    return report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def picture(run: Run) -> str:
    """Faults (one lane per kind), incidents opened, open incidents and RSS over virtual hours."""
    o = run.options
    width, left = 900, 130
    span = max(1e-9, run.ended - run.started)
    kinds = sorted({f.kind for f in run.faults})
    fault_h = LANE * len(kinds)
    chart_top, chart_h = fault_h + 40, 120
    rss_top = chart_top + chart_h + 40
    height = rss_top + chart_h + 40

    def x(wall: float) -> float:
        return left + (wall - run.started) / span * (width - left - 10)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="10">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, kind in enumerate(kinds):
        y = 10 + i * LANE
        parts.append(f'<text x="4" y="{y + 10}">{html.escape(kind)}</text>')
        for begin, end, fault in run.applied:
            if fault.kind == kind:
                parts.append(f'<rect x="{x(begin):.1f}" y="{y + 2}" '
                             f'width="{max(1.5, x(end) - x(begin)):.1f}" height="{LANE - 4}" '
                             'fill="#d9534f"/>')
    for label, top in (("open incidents", chart_top), ("agent RSS (MB)", rss_top)):
        parts.append(f'<text x="4" y="{top + 10}">{label}</text>')
        parts.append(f'<line x1="{left}" y1="{top + chart_h}" x2="{width - 10}" '
                     f'y2="{top + chart_h}" stroke="#999"/>')
    peak = max([n for _, n in run.open_series] or [1]) or 1
    points = " ".join(f"{x(t):.1f},{chart_top + chart_h - n / peak * chart_h:.1f}"
                      for t, n in run.open_series)
    parts.append(f'<polyline points="{points}" fill="none" stroke="#337ab7"/>')
    parts.append(f'<text x="{left - 30}" y="{chart_top + 10}">{peak}</text>')
    for opened in run.counts.get("opened", []):
        when = _epoch(opened)
        if when is not None:
            parts.append(f'<line x1="{x(when):.1f}" y1="{chart_top + chart_h}" '
                         f'x2="{x(when):.1f}" y2="{chart_top + chart_h + 6}" stroke="#5cb85c"/>')
    samples = [r for rep in run.replicas for life in rep.lives for _, r in life.rss]
    low, high = (min(samples), max(samples)) if samples else (0.0, 1.0)
    high = max(high, low + 1)
    colours = ("#f0ad4e", "#5bc0de", "#777", "#a94442")
    for rep in run.replicas:
        for life in rep.lives:
            pts = " ".join(
                f"{x(t):.1f},{rss_top + chart_h - (r - low) / (high - low) * chart_h:.1f}"
                for t, r in life.rss)
            parts.append(f'<polyline points="{pts}" fill="none" '
                         f'stroke="{colours[rep.index % len(colours)]}"/>')
    parts.append(f'<text x="{left - 40}" y="{rss_top + 10}">{high:.0f}</text>')
    parts.append(f'<text x="{left - 40}" y="{rss_top + chart_h}">{low:.0f}</text>')
    for hour in range(int(o.hours) + 1):
        wall = run.started + hour * 3600 / o.speedup
        if wall <= run.ended:
            parts.append(f'<text x="{x(wall):.1f}" y="{height - 12}">{hour} h</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _epoch(value: Any) -> float | None:
    """A stored time as epoch seconds; the database's naive times are UTC."""
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
