"""Drawings of the state graph: a Markdown table, Mermaid text, and Graphviz images.

All derived from `EDGES`; for the CLI and the docs, never loaded by the
running agent.
"""

from __future__ import annotations

from collections.abc import Sequence

from incident_fsm import extras
from incident_fsm.errors import InvalidInput
from incident_fsm.fsm.graph import EDGES, GUARDS, state_pairs, transition_table
from incident_fsm.vocabulary import State


def markdown_table() -> str:
    """The table as Markdown, for the README (a test keeps the README in step with `EDGES`)."""
    rows = ["| trigger | from | to | guards | effect |", "|---|---|---|---|---|"]
    for e in EDGES:
        dest = "(stays)" if e.dest is None else e.dest.value
        guards = " and ".join(f"`{g}`" for g in e.guards) or ("otherwise" if any(
            o.trigger == e.trigger and o.sources == e.sources and o.guards
            for o in EDGES) else "")
        who = " (operator)" if e.operator else ""
        rows.append(
            f"| `{e.trigger.value}`{who} | {', '.join(s.value for s in e.sources)} | {dest} "
            f"| {guards} | {e.effect} |"
        )
    return "\n".join(rows)


def mermaid(*, visited: Sequence[str] = ()) -> str:
    """The state diagram as Mermaid text, drawn from `EDGES` by transitions' Mermaid backend.

    `visited` (e.g. the states of one incident's history) are marked with a
    `visited` class so a renderer shows that incident's path; the last of them
    is the one drawn as current.
    """
    # Imported here: the diagram code is for the CLI, not for the running agent.
    from transitions.extensions.diagrams import GraphMachine

    class _Drawing:
        pass

    drawing = _Drawing()
    for name in GUARDS:
        setattr(drawing, name, lambda: True)
    machine = GraphMachine(
        model=drawing,
        states=[s.value for s in State],
        transitions=transition_table(),
        initial=_current(visited),
        auto_transitions=False,
        graph_engine="mermaid",
        show_conditions=True,
        title="incident",
    )
    text = str(machine.get_graph().draw(None))
    states = [s for s in dict.fromkeys(visited) if s in set(State)]
    if states:
        text = text.rstrip("\n") + (
            "\n  classDef visited fill:#ffe08a,stroke:#b8860b\n"
            f"  class {','.join(states)} visited\n"
        )
    return text


#: One incident's path for `mermaid_path`: (source, dest) of each step, in order.
Step = tuple[str | None, str]


def mermaid_path(steps: Sequence[Step]) -> str:
    """The graph as a Mermaid flowchart with one incident's path drawn on it.

    The states it went through carry the class `visited`, the one it is in
    `current`; the edges it took are drawn thick (`linkStyle`), the entry
    edge too. A flowchart, because Mermaid's state diagrams have no link
    styles. Each edge between two states is drawn once, its triggers one per
    line, so no label runs over another.
    """
    states = [s.value for s in State]
    pairs = {pair: [e.trigger.value + (f" [{' and '.join(e.guards)}]" if e.guards else "")
                    for e in edges] for pair, edges in state_pairs().items()}
    lines = ["flowchart LR", "  start((start))"]
    lines += [f'  {s}(["{s}"])' for s in states]
    lines.append(f"  start --> {State.DETECTED.value}")
    order = list(pairs)
    lines += [f'  {a} -->|"{"<br/>".join(dict.fromkeys(pairs[(a, b)]))}"| {b}' for a, b in order]
    known = [(a, b) for a, b in steps if b in states and (a is None or a in states)]
    if not known:
        return "\n".join(lines) + "\n"
    taken = sorted({0} | {order.index((a, b)) + 1 for a, b in known
                          if a is not None and (a, b) in pairs})
    current = known[-1][1]
    visited = [s for s in dict.fromkeys(b for _, b in known) if s != current]
    lines += ["  classDef visited fill:#ffe08a,stroke:#b8860b,color:#000",
              "  classDef current fill:#f4a261,stroke:#7a3500,stroke-width:4px,color:#000"]
    if visited:
        lines.append(f"  class {','.join(visited)} visited")
    lines.append(f"  class {current} current")
    lines.append(f"  linkStyle {','.join(map(str, taken))} stroke:#b8860b,stroke-width:4px")
    return "\n".join(lines) + "\n"


def _current(visited: Sequence[str]) -> str:
    """The state a drawing marks as current: where the path ends (else the entry state)."""
    known = [s for s in visited if s in set(State)]
    return known[-1] if known else State.DETECTED.value


def render_image(path: str, *, visited: Sequence[str] = ()) -> None:
    """Draw the graph to an SVG or PNG file with Graphviz (`dot` and its Python package)."""
    import shutil
    from pathlib import Path

    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in ("svg", "png"):
        raise InvalidInput(f"--output must end in .svg or .png, not {path!r}")
    missing = []
    if not extras.installed("graphviz"):
        missing.append(f"the graphviz Python package ({extras.install_line('graph')})")
    if shutil.which("dot") is None:
        # A system program: no pip extra brings it.
        missing.append("the `dot` program (e.g. apt-get install graphviz)")
    if missing:
        raise InvalidInput(f"SVG/PNG needs Graphviz, missing here: {' and '.join(missing)}; "
                           "the Mermaid text (the default) needs neither")
    from transitions.extensions.diagrams import GraphMachine

    drawing = type("_Drawing", (), {name: (lambda self: True) for name in GUARDS})()
    machine = GraphMachine(model=drawing, states=[s.value for s in State],
                           transitions=transition_table(), initial=_current(visited),
                           auto_transitions=False, graph_engine="graphviz",
                           show_conditions=True, title="incident")
    styles = machine.model_graphs[id(drawing)]
    for state in dict.fromkeys(visited):
        if state in set(State):
            styles.set_node_style(state, "previous")
    machine.get_graph().draw(path, format=suffix, prog="dot")

