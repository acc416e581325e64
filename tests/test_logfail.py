"""Failures are logged with a plain traceback: never the values of the variables in its frames."""

from __future__ import annotations

import ast
from pathlib import Path

from loguru import logger

import incident_fsm
from incident_fsm.logfail import log_failure

from .logcapture import diagnosed_logs

SECRET = "pg-Sup3rS3cretPassw0rd"


def connect(password: str) -> None:
    raise ConnectionError("the {database} refused the login")


def open_database() -> None:
    password = SECRET
    connect(password)


def test_a_failure_shows_its_type_message_and_traceback_but_no_variable() -> None:
    with diagnosed_logs() as lines:
        try:
            open_database()
        except ConnectionError as exc:
            log_failure("❌ Failed to open {} for {}", "the database", "api", error=exc,
                        log=logger.bind(target="api"))
    (line,) = lines
    assert SECRET not in line
    assert line.split(" | ")[1].strip() == "ERROR"
    assert "❌ Failed to open the database for api: ConnectionError: the {database} refused" \
        in line  # the exception's braces are text, not formatting
    assert "in open_database" in line and "connect(password)" in line  # the traceback
    assert "test_a_failure_shows_its_type" in line  # logged where it was called


def test_a_message_without_arguments_is_taken_as_it_is() -> None:
    with diagnosed_logs() as lines:
        try:
            raise ValueError("odd")
        except ValueError as exc:
            log_failure("a {literal} message", error=exc)
    assert "a {literal} message: ValueError: odd" in lines[0]


def test_the_package_never_hands_an_exception_to_loguru() -> None:
    """No `.exception(...)`, `.opt(exception=...)` or `.catch(...)`: `log_failure` instead."""
    found = []
    for path in sorted(Path(incident_fsm.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name in ("exception", "catch") or (
                    name == "opt" and any(k.arg == "exception" for k in node.keywords)):
                found.append(f"{path.name}:{node.lineno}: .{name}(...)")
    assert found == []
