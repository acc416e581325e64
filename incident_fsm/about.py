"""What this installation is: the package version, as the agent and the CLI report it."""

from __future__ import annotations

from importlib import metadata
from typing import Final


def _version() -> str:
    try:
        return metadata.version("incident-fsm")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


VERSION: Final = _version()
