"""`incident-fsm demo` end to end: every scenario ends as it should, and only on its own data.

The demo writes a fresh SQLite database of its own on every run. It never
takes a database from the environment, never writes into a database it did
not create, and its closing advice works as printed and leaves a second
demo run isolated from the first.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from incident_fsm.cli import main as cli
from incident_fsm.demo.scenarios import run_demo, summary_table
from incident_fsm.errors import InvalidInput
from incident_fsm.persistence import database
from incident_fsm.persistence.store import Store

AT = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
EXPECTED = {
    "1. memory pressure": "resolved after render_restart (ok)",
    "2. disk spike": "resolved after disk_cleanup (ok)",
    "3. worker failure": "resolved after restart_celery_workers (ok)",
    "4. PAM outage": "resolved after render_scale (ok)",
    "5. health endpoint down": "escalated after render_restart (ok)",
}


def check_summary(summary: str, received: int) -> None:
    """Every scenario ended as it should, and every delivered notification reached the socket."""
    for scenario, ending in EXPECTED.items():
        (line,) = [ln for ln in summary.splitlines() if ln.startswith(scenario)]
        assert ending in line, line
    pam_line = next(ln for ln in summary.splitlines() if ln.startswith("4. PAM outage"))
    # The operator's socket was closed during the spike: every notice waited, then arrived.
    counts = re.search(r"(\d+)/(\d+) to PAM", pam_line)
    assert counts is not None and counts.group(1) == counts.group(2) != "0", pam_line
    assert "waiting" not in pam_line
    # Every notification counted delivered reached the operator's socket, and no more.
    delivered = sum(int(re.search(r"(\d+)/\d+ to PAM", ln).group(1))  # type: ignore[union-attr]
                    for ln in summary.splitlines() if " to PAM" in ln)
    assert received == delivered > 0


def received_by_the_socket(output: str) -> int:
    found = re.search(r"socket received (\d+) proactive_alert", output)
    assert found is not None, output
    return int(found.group(1))


def demo(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli.cli, ["demo", *args], env=env)
    assert result.exit_code == 0, result.output
    return result


def printed_database(output: str) -> str:
    (url,) = re.findall(r"^database: (\S+)$", output, flags=re.MULTILINE)
    return url


def dump(path: Path) -> list[str]:
    """Everything in a SQLite file, as SQL text (to prove it did not change)."""
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def test_demo_plays_every_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    result = demo("--database", str(tmp_path / "demo.db"))
    with capsys.disabled():
        print(f"\n[demo took {time.monotonic() - started:.1f} s]")
    check_summary(result.output.split("SCENARIO", 1)[1], received_by_the_socket(result.output))
    assert printed_database(result.output) == f"sqlite:///{tmp_path / 'demo.db'}"
    # `incident-fsm check` passes on the demo's own configuration, before anything acts.
    assert re.search(r"preflight \(incident-fsm check\): \d+ ok, 1 warning\(s\), 0 failed",
                     result.output), result.output[:2000]
    assert "incident-fsm force 5 approve" in result.output
    # What the operator read: texts written for people, never the machine's reasons.
    assert "📱 PAM ▸ ⚠️ System Alert: " in result.output
    pam_lines = [ln for ln in result.output.splitlines() if "📱 PAM ▸" in ln]
    assert pam_lines and not any("score" in ln or "Tier" in ln for ln in pam_lines)


@pytest.mark.anyio
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_the_scenarios_play_on_postgres_too(db_url: str, tmp_path: Path) -> None:
    lines: list[str] = []
    results = await run_demo(db_url, workdir=tmp_path, echo=lines.append)
    check_summary(summary_table(results), received_by_the_socket("\n".join(lines)))


def test_the_demo_never_touches_the_database_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = tmp_path / "mine.db"
    database.upgrade(f"sqlite:///{mine}")

    async def open_one() -> None:  # an open incident of the user's own
        async with Store(f"sqlite:///{mine}") as store:
            await store.open_incident(target="api", kind="memory_high", severity="critical",
                                      at=AT, deadline_at=None, reason="the user's own")

    anyio.run(open_one)
    before = dump(mine)
    monkeypatch.chdir(tmp_path)
    result = demo(env={database.ENV_DATABASE_URL: f"sqlite:///{mine}"})
    assert dump(mine) == before
    assert printed_database(result.output) == f"sqlite:///{tmp_path / 'incident_fsm_demo.db'}"
    check_summary(result.output.split("SCENARIO", 1)[1], received_by_the_socket(result.output))


def test_the_closing_advice_works_and_a_second_demo_stays_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    first = demo()
    url = printed_database(first.output)
    advice = first.output.split("explore it", 1)[1].splitlines()[1:]
    env: dict[str, str] = {}
    ran: list[str] = []
    for line in (ln.split("#", 1)[0].strip() for ln in advice):
        if line.startswith("export "):  # the advice as a shell would take it
            name, value = line.removeprefix("export ").split("=", 1)
            env[name] = shlex.split(value)[0]
        elif line.startswith("incident-fsm "):
            argv = shlex.split(line)[1:]
            result = CliRunner().invoke(cli.cli, argv, env=env)
            assert result.exit_code == 0, f"{line}\n{result.output}"
            ran.append(argv[0])
    assert {"incidents", "show", "force"} <= set(ran)

    # The operator approved the first demo's held failover; nothing may ever run it now,
    # not even with the first demo's database in the environment.
    second = demo(env={database.ENV_DATABASE_URL: url, **env})
    assert printed_database(second.output) == url
    check_summary(second.output.split("SCENARIO", 1)[1], received_by_the_socket(second.output))

    async def failovers() -> tuple[int, list[str]]:
        async with Store(url) as store:
            incidents = await store.list_incidents(limit=100)
            runs = [r.action for i in incidents for r in await store.attempts(i.incident_id)]
        return len(incidents), runs

    count, runs = anyio.run(failovers)
    assert count == len(EXPECTED)
    assert "failover" not in runs


def test_the_demo_refuses_a_database_it_did_not_write(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.db"
    database.upgrade(f"sqlite:///{theirs}")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    before = dump(theirs)
    for path in (theirs, notes):
        result = CliRunner().invoke(cli.cli, ["demo", "--database", str(path)])
        assert result.exit_code == 2, result.output
        assert "not a database an earlier demo wrote" in result.output
    assert dump(theirs) == before
    assert notes.read_text() == "not a database\n"


def test_a_database_an_earlier_demo_wrote_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    path = tmp_path / "demo.db"
    demo("--database", str(path))
    second = demo("--database", str(path))
    incident_ids = re.findall(r"^\d\. .+?\s{2,}(\d+)\s{2,}", second.output.split("SCENARIO", 1)[1],
                              flags=re.MULTILINE)
    assert incident_ids == ["1", "2", "3", "4", "5"]


@pytest.mark.anyio
async def test_run_demo_refuses_a_database_that_has_incidents(
    store: Store, db_url: str, tmp_path: Path,
) -> None:
    opened = await store.open_incident(target="api", kind="memory_high", severity="critical",
                                       at=AT, deadline_at=None, reason="someone's")
    before = await store.timeline(opened.incident.incident_id)
    with pytest.raises(InvalidInput, match="only on a database of its own"):
        await run_demo(db_url, workdir=tmp_path, echo=lambda _line: None)
    after = await store.timeline(opened.incident.incident_id)
    assert (after.incident.version, len(after.transitions)) == (
        before.incident.version, len(before.transitions))



def test_the_advice_names_the_command_as_the_user_can_type_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from incident_fsm.cli.operate import typed_program

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    script = venv / "incident-fsm"
    script.write_text("#!/bin/sh\n")
    # Not on the PATH (the quick start does not activate the venv): the path as typed.
    assert typed_program(".venv/bin/incident-fsm") == ".venv/bin/incident-fsm"
    assert typed_program("/opt/my tools/incident-fsm") == "'/opt/my tools/incident-fsm'"
    assert typed_program("/usr/bin/python3") == "incident-fsm"  # python -m, a test runner
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{venv}:/usr/bin:/bin")  # activated: the plain name works
    assert typed_program(".venv/bin/incident-fsm") == "incident-fsm"
