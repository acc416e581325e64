"""Allow-listed commands: real processes, exit codes, output, killing timeouts, no shell strings."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from incident_fsm.errors import InvalidInput
from incident_fsm.remediation.actions.base import Outcome, OutcomeStatus, Tier
from incident_fsm.remediation.actions.command import CommandAction
from incident_fsm.settings import CommandSettings
from incident_fsm.testing import ManualClock

from .support import NOW, alive, context, wait_until

pytestmark = pytest.mark.anyio


def command(*argv: str, timeout: float = 60.0, secrets: tuple[str, ...] = ()) -> CommandAction:
    return CommandAction(CommandSettings(name="restart_workers", argv=argv, timeout=timeout,
                                         kinds=("service_down:celery",)),
                         secrets=lambda: secrets)


async def test_a_command_runs_and_reports_exit_code_and_output() -> None:
    action = command("/bin/echo", "workers", "restarted")
    assert (action.name, action.tier, action.kinds) == (
        "restart_workers", Tier.SAFE, frozenset({"service_down:celery"}))
    outcome = await action.run(context(ManualClock(NOW)))
    assert outcome.status is OutcomeStatus.OK
    assert outcome.exit_code == 0
    assert outcome.output_excerpt == "workers restarted"
    assert outcome.record()["argv"] == "/bin/echo workers restarted"


async def test_a_failing_command_is_a_failed_outcome_with_its_output() -> None:
    outcome = await command(sys.executable, "-c",
                            "import sys; print('no such unit', file=sys.stderr); sys.exit(5)"
                            ).run(context(ManualClock(NOW)))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.exit_code == 5
    assert "no such unit" in outcome.output_excerpt


async def test_a_missing_program_is_a_failed_outcome_not_a_crash(tmp_path: Path) -> None:
    outcome = await command(str(tmp_path / "nope")).run(context(ManualClock(NOW)))
    assert outcome.status is OutcomeStatus.FAILED
    assert "could not start" in outcome.summary


async def test_secrets_in_the_output_are_redacted() -> None:
    outcome = await command("/bin/echo", "key is hunter2-very-secret and token=abc123",
                            secrets=("hunter2-very-secret",)).run(context(ManualClock(NOW)))
    assert "hunter2-very-secret" not in repr(outcome)
    assert "abc123" not in outcome.output_excerpt
    assert outcome.output_excerpt == "key is *** and token=***"


async def test_a_command_past_its_timeout_is_killed_with_everything_it_started(
    tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = (
        "import subprocess, sys, time, os\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('working', flush=True)\n"
        "time.sleep(120)\n"
    )
    clock = ManualClock(NOW)
    outcomes: list[Outcome] = []

    async def run() -> None:
        outcomes.append(await command(sys.executable, "-c", script, timeout=30).run(
            context(clock)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_until(lambda: pids.exists() and " " in pids.read_text())
        parent, child = (int(p) for p in pids.read_text().split())
        assert alive(parent) and alive(child)
        clock.advance(29)
        await anyio.sleep(0.05)
        assert not outcomes and alive(parent)
        clock.advance(1)
    outcome = outcomes[0]
    assert outcome.status is OutcomeStatus.TIMED_OUT
    assert "killed" in outcome.summary
    assert "working" in outcome.output_excerpt
    await wait_until(lambda: not alive(child))
    assert not alive(parent)


async def test_dry_run_starts_no_process(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    outcome = await command("/usr/bin/touch", str(marker)).run(
        context(ManualClock(NOW), dry_run=True))
    assert not marker.exists()
    assert outcome.summary == f"would run /usr/bin/touch {marker}"
    assert outcome.evidence["dry_run"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("systemctl restart celery-worker", "never a shell string"),
        (b"systemctl", "never a shell string"),
        ((), "non-empty"),
        (("systemctl restart celery-worker",), "split it into arguments"),
        (("", "x"), "split it into arguments"),
        (("systemctl", 3), "must be a string"),
    ],
)
def test_shell_strings_and_empty_argv_are_refused(argv: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        CommandAction(CommandSettings(name="bad", argv=argv))  # type: ignore[arg-type]


def test_an_unknown_tier_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown tier 'yolo'"):
        CommandAction(CommandSettings(name="bad", argv=("/bin/true",), tier="yolo"))
