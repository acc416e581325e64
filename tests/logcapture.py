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
