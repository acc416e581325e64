"""SQL-looking, oversized and control-laden operator input in every CLI argument.

Each command either refuses with exit 2 and a one-line error, leaving the
database byte-for-byte as it was, or -- where the text is a legitimate value
(a reason, an actor, a filter) -- succeeds with the text stored or matched
literally and nothing else changed. Unknown ids, forbidden transitions and
over-long reasons are in `tests/test_cli.py::test_bad_operator_input_exits_2_and_changes_nothing`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..test_cli import _dump, _run, _seed

SQL = "1'; DROP TABLE incident; --"
OR = "x' OR '1'='1"


@pytest.mark.parametrize("args", [
    ["incidents", "--state", SQL],
    ["incidents", "--since", SQL],
    ["incidents", "--until", OR],
    ["incidents", "--limit", SQL],
    ["history", "--since", OR],
    ["history", "--limit", "1 OR 1=1"],
    ["stats", "--since", SQL],
    ["show", SQL],
    ["show", "1 OR 1=1"],
    ["force", "{c}", SQL, "--reason", "r"],
    ["force", "{c}", "acknowledge", "--reason", "r", "--config", SQL],
    ["force", "{c}", "acknowledge", "--reason", "r", "--actor", SQL * 100],
    ["force", "{c}", "acknowledge", "--reason", SQL * 400],
    ["force", "{c}", "resolve", "--reason", "r", "--action", SQL],
    ["graph", "--incident", SQL],
    ["graph", "--format", SQL],
])
def test_hostile_arguments_are_refused_with_exit_2_and_nothing_written(
    db_url: str, args: list[str]
) -> None:
    ids = _seed(db_url)
    before = _dump(db_url)
    result = _run(db_url, *[a.replace("{c}", str(ids["c"])) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert _dump(db_url) == before


@pytest.mark.parametrize("args", [
    ["incidents", "--kind", SQL, "--json"],
    ["incidents", "--target", OR, "--json"],
    ["history", "--target", SQL, "--kind", OR, "--json"],
])
def test_hostile_filters_match_nothing_and_change_nothing(db_url: str, args: list[str]) -> None:
    _seed(db_url)
    before = _dump(db_url)
    result = _run(db_url, *args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []  # matched literally: no such kind or target
    assert _dump(db_url) == before


def test_hostile_reason_and_actor_are_recorded_literally_and_only_them(
    db_url: str, tmp_path: Path
) -> None:
    ids = _seed(db_url)
    before = _dump(db_url)
    reason = SQL + " $(reboot) \r\nFORGED | CRITICAL \x1b[31m" + "r" * 3900
    actor = OR + " `id`"
    result = _run(db_url, "force", str(ids["c"]), "acknowledge", "--reason", reason,
                  "--actor", actor, "--json")
    assert result.exit_code == 0, result.output
    after = _dump(db_url)
    assert {t: rows for t, rows in after.items() if t != "transition" and t != "incident"} == {
        t: rows for t, rows in before.items() if t != "transition" and t != "incident"}
    added = [row for row in after["transition"] if row not in before["transition"]]
    assert len(added) == 1 and reason in added[0] and actor in added[0]
    assert len(after["incident"]) == len(before["incident"])  # no incident came or went
    shown = json.loads(_run(db_url, "show", str(ids["c"]), "--json").output)
    assert shown["transitions"][-1]["reason"] == reason
