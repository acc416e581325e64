"""The command line: migrations, the graph, error handling, and self-documentation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from incident_fsm import cli, database

README = Path(__file__).resolve().parent.parent / "README.md"


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        found[path] = command
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{path} "))
    return found


def test_db_upgrade_then_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    before = runner.invoke(cli.cli, ["db", "current", "--database-url", url])
    assert before.exit_code == 0 and "current: empty" in before.output
    result = runner.invoke(cli.cli, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert database.head_revision() in result.output
    after = runner.invoke(cli.cli, ["db", "current"], env={database.ENV_DATABASE_URL: url})
    assert "(up to date)" in after.output


def test_graph_prints_mermaid() -> None:
    result = CliRunner().invoke(cli.cli, ["graph"])
    assert result.exit_code == 0
    assert "stateDiagram-v2" in result.output
    assert "verifying --> escalated: still_failing" in result.output


def test_bad_database_url_is_one_line_exit_2_and_hides_the_password() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from incident_fsm.cli import main; main()",
         "db", "current", "--database-url", "mysql://ops:hunter2@db/x"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: database URL must be") and proc.stderr.count("\n") == 1
    assert "hunter2" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_unreachable_database_is_exit_1_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from incident_fsm.cli import main; main()",
         "db", "current", "--database-url", "postgresql+psycopg://ops:hunter2@127.0.0.1:9/x"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "hunter2" not in proc.stderr


@pytest.mark.parametrize("path", sorted(_commands(cli.cli)))
def test_every_command_documents_itself_and_is_in_the_readme(path: str) -> None:
    command = _commands(cli.cli)[path]
    assert command.help and command.get_short_help_str().strip(), f"{path} has no help"
    assert "Example: incident-fsm" in command.help, f"{path} has no example"
    assert re.search(rf"incident-fsm {re.escape(path)}\b", README.read_text()), (
        f"`incident-fsm {path}` is not in the README"
    )


def test_readme_edge_table_is_generated_from_the_machine() -> None:
    from incident_fsm.machine import markdown_table

    text = README.read_text()
    section = text.split("<!-- edges:start -->\n", 1)[1].split("\n<!-- edges:end -->", 1)[0]
    assert section == markdown_table(), "README is stale: paste `incident-fsm graph --format table`"
