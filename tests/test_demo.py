"""`incident-fsm demo` end to end: every scenario ends as it should, on both databases."""

from __future__ import annotations

import re
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
    # The operator's socket was closed during the spike: all three waited, then arrived.
    assert "3/3 to PAM" in pam_line and "waiting" not in pam_line
    # Every notification counted delivered reached the operator's socket, and no more.
    delivered = sum(int(re.search(r"(\d+)/\d+ to PAM", ln).group(1))  # type: ignore[union-attr]
                    for ln in summary.splitlines() if " to PAM" in ln)
    received = re.search(r"socket received (\d+) proactive_alert", result.output)
    assert received is not None and int(received.group(1)) == delivered > 0
    assert "incident-fsm force 5 approve" in result.output
