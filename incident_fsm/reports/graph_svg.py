"""The state graph as SVG, with one incident's path on it: for the status page, no Graphviz.

The five states sit at fixed places; each pair of states the table joins
gets one curved edge (its triggers in a tooltip), bent to one side so the
two directions between a pair never lie on each other. An incident's path
marks the states it went through (`visited`), the one it is in (`current`)
and the edges it took (`taken`, labelled with their triggers). Every text
is escaped: the page shows this inline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Final

from incident_fsm.fsm.graph import state_pairs
from incident_fsm.vocabulary import State

WIDTH: Final = 760
HEIGHT: Final = 360
#: Half the width and height of a state's box, for where an edge meets it.
RX: Final = 64
RY: Final = 22
#: How far an edge bends from the straight line between its states.
BEND: Final = 28
PLACES: Final[dict[str, tuple[float, float]]] = {
    State.DETECTED.value: (100, 180),
    State.REMEDIATING.value: (330, 70),
    State.VERIFYING.value: (600, 70),
    State.ESCALATED.value: (330, 300),
    State.RESOLVED.value: (600, 300),
}


def state_svg(steps: Sequence[tuple[str | None, str]] = ()) -> str:
    """The graph; `steps` ((source, dest) of each step of one incident) drawn on it."""
    known = [(a, b) for a, b in steps if b in PLACES and (a is None or a in PLACES)]
    taken = {(a, b) for a, b in known if a is not None}
    current = known[-1][1] if known else None
    visited = {b for _, b in known}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
           f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="incident state graph">',
           "<defs>" + _marker("arrow", "#777", 11) + _marker("arrow-taken", "#b8860b", 14)
           + "</defs>"]
    for (a, b), edges in state_pairs().items():
        path, (lx, ly) = _loop(a) if a == b else _curve(a, b)
        cls = "edge taken" if (a, b) in taken else "edge"
        label = " | ".join(dict.fromkeys(e.trigger.value for e in edges))
        marker = "arrow-taken" if (a, b) in taken else "arrow"
        out.append(f'<path class="{cls}" data-edge="{escape(a)}-{escape(b)}" d="{path}" '
                   f'marker-end="url(#{marker})"><title>{escape(a)} → {escape(b)}: '
                   f"{escape(label)}</title></path>")
        if (a, b) in taken:
            out.append(f'<text class="edge-label" x="{lx:.0f}" y="{ly:.0f}" '
                       f'text-anchor="middle">{escape(label)}</text>')
    for state, (x, y) in PLACES.items():
        cls = "state current" if state == current else (
            "state visited" if state in visited else "state")
        out.append(f'<g class="{cls}" data-state="{escape(state)}">'
                   f'<rect x="{x - RX}" y="{y - RY}" width="{2 * RX}" height="{2 * RY}" '
                   f'rx="14"/><text x="{x}" y="{y + 5}" text-anchor="middle">'
                   f"{escape(state)}</text></g>")
    out.append("</svg>")
    return "".join(out)


def _marker(name: str, colour: str, size: int) -> str:
    return (f'<marker id="{name}" viewBox="0 0 10 10" refX="9" refY="5" '
            f'markerUnits="userSpaceOnUse" markerWidth="{size}" markerHeight="{size}" '
            f'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
            f'fill="{colour}"/></marker>')


def _curve(a: str, b: str) -> tuple[str, tuple[float, float]]:
    (x1, y1), (x2, y2) = PLACES[a], PLACES[b]
    dx, dy = x2 - x1, y2 - y1
    length = math.hypot(dx, dy) or 1.0
    # Bent to the right of its direction: the reverse edge bends the other way.
    cx, cy = (x1 + x2) / 2 - dy / length * BEND, (y1 + y2) / 2 + dx / length * BEND
    sx, sy = _rim(x1, y1, cx - x1, cy - y1)
    ex, ey = _rim(x2, y2, cx - x2, cy - y2)
    mid = (0.25 * sx + 0.5 * cx + 0.25 * ex, 0.25 * sy + 0.5 * cy + 0.25 * ey - 4)
    return f"M {sx:.1f} {sy:.1f} Q {cx:.1f} {cy:.1f} {ex:.1f} {ey:.1f}", mid


def _loop(state: str) -> tuple[str, tuple[float, float]]:
    x, y = PLACES[state]
    top = y - RY
    return (f"M {x - 18} {top} C {x - 45} {top - 48} {x + 45} {top - 48} {x + 18} {top}",
            (x, top - 40))


def _rim(x: float, y: float, dx: float, dy: float) -> tuple[float, float]:
    """Where a line from the centre of a state's box towards (dx, dy) leaves its ellipse."""
    scale = 1.0 / math.sqrt((dx / RX) ** 2 + (dy / RY) ** 2) if (dx or dy) else 0.0
    return x + dx * scale, y + dy * scale
