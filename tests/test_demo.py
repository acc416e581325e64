"""`incident-fsm demo` end to end: every scenario ends as it should, on both databases."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from incident_fsm import cli


def test_demo_plays_every_scenario(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(cli.cli, ["demo", "--database-url", db_url])
    took = time.monotonic() - started
    with capsys.disabled():
        print(f"\n[demo took {took:.1f} s on {db_url.split(':')[0]}]")
    assert result.exit_code == 0, result.output
    summary = result.output.split("SCENARIO", 1)[1]
    expected = {
        "1. memory pressure": "resolved after render_restart (ok)",
        "2. disk spike": "resolved after disk_cleanup (ok)",
        "3. worker failure": "resolved after restart_celery_workers (ok)",
        "4. PAM outage": "resolved after render_scale (ok)",
        "5. health endpoint down": "escalated after render_restart (ok)",
    }
    for scenario, ending in expected.items():
        (line,) = [ln for ln in summary.splitlines() if ln.startswith(scenario)]
        assert ending in line, line
    pam_line = next(ln for ln in summary.splitlines() if ln.startswith("4. PAM outage"))
    # PAM's socket answers system_message with an error: nothing counts as delivered.
    assert "0/3 to PAM (3 given up, 0 still retried; PAM: Unknown message type: system_message)" \
        in pam_line
    assert "incident-fsm force 5 approve" in result.output
