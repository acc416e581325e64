"""Capturing loguru output (every level, with bound fields) inside a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from loguru import logger


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lines.append, level="TRACE", format="{level}|{message}|{extra}",
                      colorize=False, catch=False)
    try:
        yield lines
    finally:
        logger.remove(sink)


@contextmanager
def diagnosed_logs() -> Iterator[list[str]]:
    """Loguru output as a host on loguru's defaults shows it: every frame's variables too.

    `diagnose=True` prints the values of the variables on each traceback line
    of an exception handed to loguru; what the agent logs must not depend on
    the host turning that off.
    """
    lines: list[str] = []
    sink = logger.add(lines.append, level="TRACE", colorize=False, catch=False, diagnose=True,
                      backtrace=True)
    try:
        yield lines
    finally:
        logger.remove(sink)
