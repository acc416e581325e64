"""Everything a fault test let out -- logs, errors, rows, CLI output -- scanned for secrets.

The fault suite runs the agent through crashes, outages and hostile input
with real secrets configured (Render key, PAM token, webhook secret, a
database password). `Exposure` collects what an operator or attacker could
read afterwards: every loguru and stdlib log record (with its traceback and
its variables, as loguru's default `diagnose` sink would print them), texts
a test hands it (process logs, CLI output, exception messages), and the rows
of every database it is told about, read back through `incident-fsm ... --json`
as well as directly. None of it may contain a secret value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner
from loguru import logger

from incident_fsm.cli import main as cli
from incident_fsm.persistence import database

from ..conftest import TABLES
from ..scenario import PAM_TOKEN, RENDER_KEY

WEBHOOK_SECRET = "whsec-fault-suite-7c1e"
DB_PASSWORD = "pg-pass-fault-suite-93b4"
SECRETS = {"Render key": RENDER_KEY, "PAM token": PAM_TOKEN,
           "webhook secret": WEBHOOK_SECRET, "database password": DB_PASSWORD}
# Loggers of the simulated far side (PAM's server end logs the request line it received,
# token included, as any server would): what PAM logs is not ours to keep clean.
FAR_SIDE = ("websockets.server",)
ENV = {"RENDER_API_KEY": RENDER_KEY, "PAM_TOKEN": PAM_TOKEN, "WEBHOOK_SECRET": WEBHOOK_SECRET}


class _Handler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(FAR_SIDE):
            return
        self.lines.append(self.format(record))  # the traceback too, when there is one


@dataclass
class Exposure:
    logs: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def everything(self) -> Iterator[tuple[str, str]]:
        for line in self.logs:
            yield "log", line
        for text in self.texts:
            yield "text", text
        for path in self.files:
            if path.exists():
                yield str(path), path.read_text(errors="replace")
        for url in self.databases:
            yield from database_texts(url)

    def leaks(self) -> list[str]:
        return [f"{name} in {where}: ...{_around(text, secret)}..."
                for where, text in self.everything()
                for name, secret in SECRETS.items() if secret in text]


def _around(text: str, secret: str) -> str:
    at = text.index(secret)
    return text[max(0, at - 80):at + len(secret) + 20].replace(secret, "<SECRET>")


def database_texts(url: str) -> Iterator[tuple[str, str]]:
    engine = database.create_engine(url)
    try:
        with engine.connect() as conn:
            for table in TABLES:
                for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                    yield f"table {table}", repr(tuple(row))
    finally:
        engine.dispose()
    runner = CliRunner()
    listed = runner.invoke(cli.cli, ["incidents", "--json", "--database-url", url])
    yield "incidents --json", listed.output
    for item in json.loads(listed.output or "[]"):
        shown = runner.invoke(cli.cli, ["show", str(item["id"]), "--json",
                                        "--database-url", url])
        assert shown.exit_code == 0, shown.output
        yield f"show {item['id']} --json", shown.output
    for command in (["history", "--since", "30d"], ["stats", "--since", "30d"]):
        result = runner.invoke(cli.cli, [*command, "--json", "--database-url", url])
        assert result.exit_code == 0, result.output
        yield f"{command[0]} --json", result.output


@contextmanager
def exposed() -> Iterator[Exposure]:
    found = Exposure()
    sink = logger.add(found.logs.append, level="TRACE", colorize=False, catch=False,
                      backtrace=True, diagnose=True,
                      format="{level}|{name}|{message}|{extra}\n{exception}")
    handler = _Handler(found.logs)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield found
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        logger.remove(sink)
