"""The optional installs (extras): the module each one brings, and the line that installs it.

The base install is what the agent needs to run. Redis and Celery are
needed only by dependency checks of their kind, Graphviz only to draw the
state graph as SVG or PNG; `pyproject.toml` names them as the extras below.
Code that needs one checks here first, without importing it, and its
refusal names the exact command to run.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Final

#: extra -> the top-level module it makes importable
EXTRAS: Final = {"redis": "redis", "celery": "celery", "graph": "graphviz"}


def installed(module: str) -> bool:
    """Is the top-level `module` importable here (without importing it)?"""
    return find_spec(module) is not None


def install_line(extra: str) -> str:
    """The command that installs `extra`, e.g. `pip install 'incident-fsm[graph]'`."""
    if extra not in EXTRAS:
        raise KeyError(f"no extra named {extra!r}")
    # Quoted: unquoted brackets are a glob to zsh and some other shells.
    return f"pip install 'incident-fsm[{extra}]'"
