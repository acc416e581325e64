"""The command line: migrations, the graph, error handling, and self-documentation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from incident_fsm.cli import main as cli
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import IncidentId
from incident_fsm.persistence import database
from incident_fsm.persistence.store import Store
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

from .conftest import TABLES

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
    assert before.exit_code == 0 and "current: none (no database at" in before.output
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
        [sys.executable, "-c", "from incident_fsm.cli.main import main; main()",
         "db", "current", "--database-url", "mysql://ops:hunter2@db/x"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: database URL must be") and proc.stderr.count("\n") == 1
    assert "hunter2" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_unreachable_database_is_exit_1_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from incident_fsm.cli.main import main; main()",
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
    from incident_fsm.fsm.diagrams import markdown_table

    text = README.read_text()
    section = text.split("<!-- edges:start -->\n", 1)[1].split("\n<!-- edges:end -->", 1)[0]
    assert section == markdown_table(), "README is stale: paste `incident-fsm graph --format table`"


# --- operator commands against a seeded database (SQLite and Postgres) -------------------



def _seed(url: str) -> dict[str, int]:
    """A: disk cleaned and resolved. B: failover held in escalated. C: just detected."""

    async def work() -> dict[str, int]:
        clock = ManualClock(datetime(2026, 11, 28, 2, 0, tzinfo=UTC))
        async with Store(url) as store:
            engine = IncidentEngine(store, clock=clock)
            a = (await engine.open(target="api", kind="disk_high", severity="critical",
                                   reason="disk 91% on two samples")).incident
            await engine.fire(a.incident_id, "remediate", actor="agent", reason="cleanup first",
                              intent=ActionIntent("disk_cleanup", "safe", Verdict.AUTO, "safe"))
            run = (await store.timeline(a.incident_id)).actions[0]
            await store.finish_action(run.id or 0, outcome="ok", finished_at=clock.advance(3),
                                      evidence={"bytes_freed": 5_000_000})
            await engine.fire(a.incident_id, "action_finished", actor="agent", reason="returned")
            await store.judge_action(run.id or 0, verified=True)
            clock.advance(90)
            await engine.fire(a.incident_id, "recovered", actor="agent", reason="disk 60%")
            clock.advance(600)
            b = (await engine.open(target="worker", kind="memory_high", severity="critical",
                                   reason="memory 93%")).incident
            await engine.fire(b.incident_id, "hold", actor="agent",
                              reason="failover needs approval",
                              intent=ActionIntent("failover", "approval", Verdict.HOLD,
                                                  "approval tier"))
            clock.advance(600)
            c = (await engine.open(target="api", kind="memory_high", severity="warning",
                                   reason="memory 82%")).incident
            return {"a": a.id or 0, "b": b.id or 0, "c": c.id or 0}

    return anyio.run(work)


def _dump(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = database.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY 1"))]
                    for t in TABLES}
    finally:
        engine.dispose()


def _run(url: str, *args: str) -> Any:
    return CliRunner().invoke(cli.cli, [*args, "--database-url", url])


def test_incidents_lists_filters_and_json_matches_the_store(db_url: str) -> None:
    ids = _seed(db_url)
    result = _run(db_url, "incidents", "--since", "2026-11-01")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [ln.split()[0] for ln in lines[2:]] == [str(ids["c"]), str(ids["b"]), str(ids["a"])]
    opened = _run(db_url, "incidents", "--open")
    assert f"\n{ids['a']} " not in opened.output and "escalated" in opened.output
    as_json = json.loads(_run(db_url, "incidents", "--state", "resolved", "--json").output)
    assert [row["id"] for row in as_json] == [ids["a"]]
    assert as_json[0]["fingerprint"] == "api:disk_high" and as_json[0]["state"] == "resolved"
    assert "no incidents match" in _run(db_url, "incidents", "--target", "nope").output


def test_show_tells_what_happened_and_why(db_url: str) -> None:
    ids = _seed(db_url)
    text = _run(db_url, "show", str(ids["a"])).output
    assert "state: resolved" in text
    assert "remediate" in text and "by agent: cleanup first" in text
    assert "disk_cleanup [safe]  ok, verified  (bytes_freed=5000000)" in text
    data = json.loads(_run(db_url, "show", str(ids["a"]), "--json").output)
    assert [t["trigger"] for t in data["transitions"]] == [
        "open", "remediate", "action_finished", "recovered"]
    assert data["actions"][0]["verified"] is True


def test_history_covers_a_range_and_filters(db_url: str) -> None:
    ids = _seed(db_url)
    rows = json.loads(_run(db_url, "history", "--since", "2026-11-28T00:00", "--json").output)
    assert len(rows) == 4 + 2 + 1
    assert [r["transition"]["at"] for r in rows] == sorted(r["transition"]["at"] for r in rows)
    worker = json.loads(_run(db_url, "history", "--since", "2026-11-28", "--target", "worker",
                             "--json").output)
    assert {r["incident"]["id"] for r in worker} == {ids["b"]}
    assert "no transitions" in _run(db_url, "history", "--since", "1h").output
    bad = _run(db_url, "history", "--since", "yesterday-ish")
    assert bad.exit_code == 2 and "neither ISO 8601 nor an age" in bad.output


def test_stats_reports_per_kind_and_action(db_url: str) -> None:
    _seed(db_url)
    text = _run(db_url, "stats").output
    assert "incidents by state: detected 1, escalated 1, resolved 1" in text
    assert "disk_cleanup" in text and "100%" in text
    data = json.loads(_run(db_url, "stats", "--json").output)
    (cleanup,) = data["actions"]
    assert (cleanup["kind"], cleanup["action"], cleanup["success_rate"]) == (
        "disk_high", "disk_cleanup", 1.0)
    assert {k["kind"]: k["escalation_rate"] for k in data["kinds"]} == {
        "disk_high": 0.0, "memory_high": 0.5}


def test_force_approves_the_held_action_with_actor_and_reason(db_url: str) -> None:
    ids = _seed(db_url)
    result = _run(db_url, "force", str(ids["b"]), "approve", "--reason", "go ahead",
                  "--actor", "alice")
    assert result.exit_code == 0, result.output
    assert "is now remediating" in result.output
    data = json.loads(_run(db_url, "show", str(ids["b"]), "--json").output)
    last = data["transitions"][-1]
    assert (last["trigger"], last["actor"], last["reason"]) == ("approve", "alice", "go ahead")
    assert last["details"]["verdict"] == "approved"
    assert [(a["action"], a["tier"]) for a in data["actions"]] == [("failover", "approval")]
    ack = _run(db_url, "force", str(ids["c"]), "acknowledge", "--reason", "looking")
    assert ack.exit_code == 0 and "is now detected" in ack.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["force", "999", "resolve", "--reason", "x"], "no incident with id 999"),
        (["force", "{a}", "escalate", "--reason", "x"], "(operator triggers allowed: none)"),
        (["force", "{c}", "approve", "--reason", "x"],
         "(operator triggers allowed: acknowledge, escalate, resolve)"),
        (["force", "{c}", "resolve", "--reason", "   "], "needs a reason"),
        (["force", "{c}", "resolve", "--reason", "x" * 5000], "limit is 4000"),
        (["force", "{c}", "resolve"], "Missing option '--reason'"),
        (["force", "{c}", "timeout", "--reason", "x"], "'timeout' is not one of"),
        (["force", "{c}", "resolve", "--reason", "x", "--action", "failover"],
         "--action goes only with approve"),
        (["force", "{c}'; DROP TABLE incident; --", "resolve", "--reason", "x"],
         "Invalid value for 'ID'"),
        (["show", "0"], "Invalid value for 'ID'"),
        (["show", "424242"], "no incident with id 424242"),
        (["incidents", "--state", "sleeping"], "unknown state"),
    ],
)
def test_bad_operator_input_exits_2_and_changes_nothing(
    db_url: str, args: list[str], message: str
) -> None:
    ids = _seed(db_url)
    before = _dump(db_url)
    result = _run(db_url, *[a.format(**ids) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert _dump(db_url) == before


def test_forced_approval_notifies_the_configured_channels(db_url: str, tmp_path: Path) -> None:
    ids = _seed(db_url)
    config = tmp_path / "agent.toml"
    config.write_text("[channels.pam]\nurl = 'wss://pam.example'\nuser_id = 'ops'\n")
    result = _run(db_url, "force", str(ids["b"]), "approve", "--reason", "go",
                  "--actor", "alice", "--config", str(config))
    assert result.exit_code == 0, result.output
    data = json.loads(_run(db_url, "show", str(ids["b"]), "--json").output)
    approval = data["transitions"][-1]["seq"]
    sent = {(n["channel"], n["transition_seq"]) for n in data["notifications"]}
    assert {("pam", approval), ("log", approval)} <= sent


def test_graph_to_an_image_file(tmp_path: Path) -> None:
    import shutil
    from importlib.util import find_spec

    bad = CliRunner().invoke(cli.cli, ["graph", "--output", str(tmp_path / "g.gif")])
    assert bad.exit_code == 2 and "must end in .svg or .png" in bad.output
    result = CliRunner().invoke(cli.cli, ["graph", "--output", str(tmp_path / "g.svg")])
    if find_spec("graphviz") is None or shutil.which("dot") is None:
        assert result.exit_code == 2 and "needs Graphviz" in result.output
        return
    assert result.exit_code == 0, result.output
    svg = (tmp_path / "g.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "still_failing" in svg


def test_stats_shows_the_learned_ranking(db_url: str) -> None:
    _seed(db_url)
    text = _run(db_url, "stats").output
    assert "learned ranking" in text
    assert "disk_high: disk_cleanup 0.67 (1✓ 0✗)" in text
    data = json.loads(_run(db_url, "stats", "--json").output)
    memory = [r["action"] for r in data["ranking"]["memory_high"]]
    # failover has no record (held, never run): policy order for memory_high, then history.
    assert memory[:3] == ["restart_celery_workers", "render_restart", "render_scale"]


def test_a_reason_cannot_forge_lines_in_show_or_history(db_url: str) -> None:
    ids = _seed(db_url)
    forged = "ok\n2026-01-01 00:00:00  resolve  by root: forged\x1b[31m"
    assert _run(db_url, "force", str(ids["c"]), "acknowledge", "--reason", forged).exit_code == 0
    text = _run(db_url, "show", str(ids["c"])).output
    assert "\x1b" not in text and "\\x1b[31m" in text
    assert "forged" in text and "\nby root" not in text
    assert len([ln for ln in text.splitlines() if "acknowledge" in ln]) == 1
    stored = json.loads(_run(db_url, "show", str(ids["c"]), "--json").output)
    assert stored["transitions"][-1]["reason"] == forged  # kept verbatim as data


def test_forced_approval_uses_the_configured_action_deadline(db_url: str, tmp_path: Path) -> None:
    ids = _seed(db_url)
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\naction_deadline = 42\n")
    result = _run(db_url, "force", str(ids["b"]), "approve", "--reason", "go",
                  "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    incident = json.loads(result.stdout)
    approved_at = json.loads(_run(db_url, "show", str(ids["b"]), "--json").output)[
        "transitions"][-1]["at"]
    deadline = datetime.fromisoformat(incident["deadline_at"])
    assert (deadline - datetime.fromisoformat(approved_at)).total_seconds() == 42


# --- force: what an approval may name, what it applies, and who will run it ---------------

WORKER = """
[[targets]]
name = "worker"
base_url = "http://127.0.0.1:9"
render_service_id = "srv-web"
"""


def _invoke(url: str, *args: str, config: Path | None = None) -> Any:
    """The CLI with no configuration but the one given (INCIDENT_FSM_CONFIG unset)."""
    extra = [] if config is None else ["--config", str(config)]
    return CliRunner().invoke(cli.cli, [*args, *extra, "--database-url", url],
                              env={"INCIDENT_FSM_CONFIG": None})


def test_force_approve_with_an_action_needs_the_configuration(db_url: str) -> None:
    ids = _seed(db_url)
    before = _dump(db_url)
    result = _invoke(db_url, "force", str(ids["b"]), "approve", "--reason", "go",
                     "--action", "render_restart")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --action needs the agent's configuration")
    assert "INCIDENT_FSM_CONFIG" in result.stderr and result.stderr.count("\n") == 1
    assert _dump(db_url) == before


@pytest.mark.parametrize(
    ("name", "config", "allowed"),
    [
        ("render_restrat", WORKER, "render_restart, render_scale"),  # a typo
        # the target has it, but not for this problem kind
        ("disk_cleanup", WORKER + "[actions.disk_cleanup]\nroots = ['/tmp']\n",
         "render_restart, render_scale"),
        # the operator's policy leaves it out for this kind
        ("render_restart", WORKER + "[policy]\nmemory_high = ['render_scale']\n",
         "render_scale"),
        # the incident's target is not configured at all
        ("render_restart", WORKER.replace('"worker"', '"api"'), "none"),
    ],
)
def test_force_approve_refuses_an_action_not_configured_for_the_target_and_kind(
    db_url: str, tmp_path: Path, name: str, config: str, allowed: str
) -> None:
    ids = _seed(db_url)
    path = tmp_path / "agent.toml"
    path.write_text(config)
    before = _dump(db_url)
    result = _invoke(db_url, "force", str(ids["b"]), "approve", "--reason", "go",
                     "--action", name, config=path)
    assert result.exit_code == 2, result.output
    assert f"'{name}' is not an action the agent may run for memory_high on worker" in \
        result.stderr
    assert f"(configured: {allowed})" in result.stderr
    assert _dump(db_url) == before  # no step, no attempt, no outbox row, no strike


def test_force_approve_runs_a_configured_action_with_its_own_tier(
    db_url: str, tmp_path: Path
) -> None:
    ids = _seed(db_url)
    path = tmp_path / "agent.toml"
    path.write_text(WORKER)
    result = _invoke(db_url, "force", str(ids["b"]), "approve", "--reason", "restart instead",
                     "--action", "render_restart", config=path)
    assert result.exit_code == 0, result.output
    data = json.loads(_invoke(db_url, "show", str(ids["b"]), "--json").stdout)
    assert [(a["action"], a["tier"]) for a in data["actions"]] == [("render_restart", "major")]
    assert data["transitions"][-1]["details"]["action"] == "render_restart"


def test_force_without_configuration_says_which_defaults_it_applied(
    db_url: str, tmp_path: Path
) -> None:
    ids = _seed(db_url)
    result = _invoke(db_url, "force", str(ids["b"]), "approve", "--reason", "go")
    assert result.exit_code == 0, result.output
    [note] = [ln for ln in result.stderr.splitlines() if "default" in ln]
    assert "no configuration" in note
    assert "detected 120s, remediating 300s, verifying 150s, escalated 1800s" in note
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\naction_deadline = 42\n")
    configured = _invoke(db_url, "force", str(ids["b"]), "acknowledge", "--reason", "mine",
                         config=path)
    assert configured.exit_code == 0, configured.output
    assert "default" not in configured.stderr


def _beat(url: str, replica: str) -> None:
    async def work() -> None:
        async with Store(url) as store:
            await store.beat(replica, now=datetime.now(UTC), ttl=60)

    anyio.run(work)


def test_force_warns_when_no_agent_is_alive_to_act_on_it(db_url: str) -> None:
    ids = _seed(db_url)
    lonely = _invoke(db_url, "force", str(ids["b"]), "approve", "--reason", "go")
    assert lonely.exit_code == 0, lonely.output
    [warning] = [ln for ln in lonely.stderr.splitlines() if ln.startswith("warning:")]
    assert "no agent has been seen alive" in warning
    assert "failover waits until one runs" in warning
    _beat(db_url, "host-a:1")
    seen = _invoke(db_url, "force", str(ids["b"]), "acknowledge", "--reason", "watching it")
    assert seen.exit_code == 0, seen.output
    assert "warning:" not in seen.stderr


def test_show_tells_an_approved_attempt_waiting_for_an_agent_from_a_running_one(
    db_url: str
) -> None:
    ids = _seed(db_url)
    assert _invoke(db_url, "force", str(ids["b"]), "approve", "--reason", "go").exit_code == 0
    text = _invoke(db_url, "show", str(ids["b"])).stdout
    [line] = [ln for ln in text.splitlines() if "failover [approval]" in ln]
    assert "approved, waiting for an agent" in line and "running" not in line
    data = json.loads(_invoke(db_url, "show", str(ids["b"]), "--json").stdout)
    assert data["actions"][0]["status"] == "approved, waiting for an agent"

    async def claim() -> None:
        async with Store(db_url) as store:
            run = (await store.attempts(IncidentId(ids["b"])))[0]
            assert await store.claim_attempt(run.id or 0, at=datetime.now(UTC))

    anyio.run(claim)
    text = _invoke(db_url, "show", str(ids["b"])).stdout
    [line] = [ln for ln in text.splitlines() if "failover [approval]" in ln]
    assert "running" in line and "waiting" not in line
    data = json.loads(_invoke(db_url, "show", str(ids["b"]), "--json").stdout)
    assert data["actions"][0]["status"] == "running"


def test_show_says_when_a_problem_cleared_without_a_working_action(db_url: str) -> None:
    async def seed() -> int:
        clock = ManualClock(datetime(2026, 11, 28, 2, 0, tzinfo=UTC))
        async with Store(db_url) as store:
            engine = IncidentEngine(store, clock=clock)
            opened = (await engine.open(target="api", kind="health_endpoint_down",
                                        severity="critical", reason="5xx twice")).incident
            await engine.fire(opened.incident_id, "remediate", actor="agent", reason="restart",
                              intent=ActionIntent("render_restart", "major", Verdict.NOTIFY,
                                                  "major"))
            run = (await store.attempts(opened.incident_id))[0]
            await store.finish_action(run.id or 0, outcome="failed",
                                      finished_at=clock.advance(1),
                                      evidence={"http_status": 404})
            await store.judge_action(run.id or 0, verified=True)
            return opened.id or 0

    iid = anyio.run(seed)
    text = _invoke(db_url, "show", str(iid)).stdout
    [line] = [ln for ln in text.splitlines() if "render_restart [major]" in ln]
    assert "failed, cleared without a working action" in line and ", verified" not in line
    data = json.loads(_invoke(db_url, "show", str(iid), "--json").stdout)
    assert data["actions"][0]["status"] == "failed, cleared without a working action"
    stats = json.loads(_invoke(db_url, "stats", "--json").stdout)
    assert [(a["action"], a["success_rate"]) for a in stats["actions"]] == [
        ("render_restart", 0.0)]


def test_force_approve_of_a_held_action_the_configuration_does_not_allow_exits_2(
    db_url: str, tmp_path: Path
) -> None:
    ids = _seed(db_url)
    path = tmp_path / "agent.toml"
    path.write_text(WORKER)  # no failover hook configured: the held failover cannot run
    before = _dump(db_url)
    result = _invoke(db_url, "force", str(ids["b"]), "approve", "--reason", "go", config=path)
    assert result.exit_code == 2, result.output
    assert "the held action 'failover' is not one the configuration allows" in result.stderr
    assert _dump(db_url) == before


def test_force_acts_on_the_configurations_database_and_logs_no_line(
    db_url: str, tmp_path: Path
) -> None:
    ids = _seed(db_url)
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\ndatabase_url = "{db_url}"\n')
    # A process of its own: loguru writes to the real stderr, which CliRunner cannot see.
    env = {k: v for k, v in os.environ.items()
           if k not in ("INCIDENT_FSM_CONFIG", database.ENV_DATABASE_URL)}
    command = [sys.executable, "-c", "from incident_fsm.cli.main import main; main()"]
    args = ["force", str(ids["b"]), "acknowledge", "--reason", "on it", "--config", str(path)]
    done = subprocess.run([*command, *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f"incident {ids['b']} is now escalated" in done.stdout
    assert "incident_fsm.fsm.engine" not in done.stderr  # no log line without --debug
    debug = subprocess.run([*command, "--debug", *args[:2], "resolve", "--reason", "fixed",
                            "--config", str(path)], capture_output=True, text=True, env=env,
                           timeout=60, check=False)
    assert debug.returncode == 0, debug.stderr
    assert "incident_fsm.fsm.engine" in debug.stderr  # with --debug it is there


def test_graph_of_an_incident_highlights_its_path_in_the_mermaid_text(db_url: str) -> None:
    ids = _seed(db_url)
    result = _run(db_url, "graph", "--incident", str(ids["a"]))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"%% incident {ids['a']}: detected → remediating → verifying → resolved"
    assert lines[1] == "flowchart LR"
    assert "  class detected,remediating,verifying visited" in lines
    assert "  class resolved current" in lines
    links = [ln.strip() for ln in lines if "-->" in ln]
    [style] = [ln for ln in lines if ln.strip().startswith("linkStyle")]
    taken = [links[int(i)] for i in style.split()[1].split(",")]
    assert [t.split(" -->")[0] + " > " + t.rsplit(" ", 1)[-1] for t in taken] == [
        "start > detected", "detected > remediating", "remediating > verifying",
        "verifying > resolved"]
    held = _run(db_url, "graph", "--incident", str(ids["b"])).output.splitlines()
    assert "  class escalated current" in held and "  class detected visited" in held
    unknown = _run(db_url, "graph", "--incident", "999")
    assert unknown.exit_code == 2 and "no incident with id 999" in unknown.output


def test_incidents_show_age_acknowledgement_and_summary_and_filter_what_waits_for_approval(
    db_url: str
) -> None:
    ids = _seed(db_url)

    async def acknowledge() -> int:
        async with Store(db_url) as store:
            engine = IncidentEngine(store, clock=ManualClock(datetime(2026, 11, 28, 3, 0,
                                                                      tzinfo=UTC)))
            await engine.fire(IncidentId(ids["b"]), "acknowledge", actor="carol",
                              reason="looking")
            opened = await engine.open(target="db", kind="disk_high", severity="critical",
                                       reason="disk 97%", summary="disk 97% on /data")
            return opened.incident.id or 0

    summarized = anyio.run(acknowledge)
    text = _run(db_url, "incidents").output
    header, _, *rows = text.splitlines()
    assert header.split() == ["ID", "STATE", "TARGET", "KIND", "SEV", "STRIKES", "OPEN", "FOR",
                              "OPENED", "(UTC)", "DEADLINE", "(UTC)", "ACK", "BY", "SUMMARY"]
    by_id = {r.split()[0]: r for r in rows}
    assert "carol" in by_id[str(ids["b"])]
    assert by_id[str(summarized)].rstrip().endswith("disk 97% on /data")
    assert "carol" not in by_id[str(ids["a"])]
    assert " 93s " in by_id[str(ids['a'])]  # opened, resolved 93 s later
    waiting = _run(db_url, "incidents", "--waiting-approval")
    assert waiting.exit_code == 0, waiting.output
    listed = [ln.split()[0] for ln in waiting.output.splitlines()[2:] if ln[:1].isdigit()]
    assert listed == [str(ids["b"])]
    assert (f"{ids['b']}: failover is held; approve it: incident-fsm force {ids['b']} approve "
            "--reason TEXT") in waiting.output
    shown = _run(db_url, "show", str(ids["b"])).output
    assert (f"waiting for approval: failover; approve it: incident-fsm force {ids['b']} "
            "approve --reason TEXT") in shown
    assert "waiting for approval" not in _run(db_url, "show", str(ids["a"])).output
    as_json = json.loads(_run(db_url, "incidents", "--waiting-approval", "--json").output)
    assert [(r["id"], r["held_action"], r["acknowledged_by"]) for r in as_json] == [
        (ids["b"], "failover", "carol")]


def test_history_follow_prints_new_steps_as_they_happen(db_url: str) -> None:
    ids = _seed(db_url)
    with subprocess.Popen(
        [sys.executable, "-c", "from incident_fsm.cli.main import main; main()", "history",
         "--since", "2026-11-01", "--follow", "--json", "--database-url", db_url],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        _follow_one_step(proc, db_url, ids)
    assert _run(db_url, "history", "--follow", "--until", "1h").exit_code == 2


def _follow_one_step(proc: Any, db_url: str, ids: dict[str, int]) -> None:
    import signal
    import time

    try:
        assert proc.stdout is not None
        first = [json.loads(proc.stdout.readline()) for _ in range(7)]  # a: 4, b: 2, c: 1
        assert [f["transition"]["trigger"] for f in first][:4] == [
            "open", "remediate", "action_finished", "recovered"]

        async def step() -> None:
            async with Store(db_url) as store:
                await IncidentEngine(store, clock=ManualClock(datetime.now(UTC))).fire(
                    IncidentId(ids["c"]), "escalate", actor="dave", reason="taking it")

        started = time.monotonic()
        anyio.run(step)
        line = json.loads(proc.stdout.readline())
        assert (line["transition"]["trigger"], line["transition"]["actor"]) == (
            "escalate", "dave")
        assert time.monotonic() - started < 10
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_version_is_printed_by_the_cli() -> None:
    from incident_fsm.about import VERSION

    for flag in ("--version", "-V"):
        result = CliRunner().invoke(cli.cli, [flag])
        assert result.exit_code == 0 and result.output.strip() == f"incident-fsm {VERSION}"
