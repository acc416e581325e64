"""Logging an unexpected failure with its traceback, but never the values of its variables.

`logger.exception(...)` hands the exception to loguru, and a sink with
loguru's defaults (`diagnose=True`, what a host embedding the agent may well
have) prints the local variables of every frame: API keys, tokens, database
passwords. `log_failure` is the one way the package logs an exception it
caught: at error level, the message, the exception's type and text, and a
plain traceback from `traceback.format_exception` (code and line numbers,
never a value), without passing the exception itself to loguru, whatever its
sinks are configured to show.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from loguru import Logger


def log_failure(message: str, *args: object, error: BaseException,
                log: Logger = logger) -> None:
    """Log `message` (formatted with `args`, like loguru) and `error` with a plain traceback.

    `log` is the logger to write to (one with bound fields, say); the record
    names the caller as where it was logged.
    """
    text = message.format(*args) if args else message
    plain = "".join(traceback.format_exception(error)).rstrip()
    # The whole text goes in as one argument, so braces in it are never taken
    # for loguru's formatting.
    log.opt(depth=1).error("{}", f"{text}: {type(error).__name__}: {error}\n{plain}")
