"""One vocabulary: outcome and status names are the enums of `incident_fsm.vocabulary`, not text."""

from __future__ import annotations

import ast
from pathlib import Path

from incident_fsm import models
from incident_fsm.remediation.actions.base import OutcomeStatus
from incident_fsm.vocabulary import AttemptOutcome, NotificationStatus, State

PACKAGE = Path(__file__).resolve().parent.parent / "incident_fsm"
#: keyword arguments and attributes whose value is an attempt outcome or a notification status
NAMED = {"outcome", "status"}
WORDS = {o.value for o in AttemptOutcome} | {s.value for s in NotificationStatus}


def test_the_schema_allows_exactly_the_vocabulary() -> None:
    assert tuple(State) == models.STATES
    assert tuple(AttemptOutcome) == models.ACTION_OUTCOMES
    assert tuple(NotificationStatus) == models.NOTIFICATION_STATUSES


def test_what_an_action_reports_is_an_outcome_the_record_knows() -> None:
    assert {s.value for s in OutcomeStatus} <= {o.value for o in AttemptOutcome}


def _literal_uses(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in NAMED:
            values = [node.value]
        elif isinstance(node, ast.Compare) and any(
                (isinstance(side, ast.Attribute) and side.attr in NAMED)
                or (isinstance(side, ast.Name) and side.id in NAMED)
                for side in (node.left, *node.comparators)):
            values = [node.left, *node.comparators]
        else:
            continue
        for value in values:
            elements = value.elts if isinstance(value, ast.Tuple | ast.List | ast.Set) else [value]
            found += [(node.lineno if hasattr(node, "lineno") else e.lineno, e.value)
                      for e in elements
                      if isinstance(e, ast.Constant) and e.value in WORDS]
    return found


def test_no_module_spells_an_outcome_or_a_status_as_text() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, word in _literal_uses(ast.parse(path.read_text(encoding="utf-8"))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {word!r}")
    assert not offenders, "use the vocabulary's enums:\n" + "\n".join(offenders)


def test_the_scan_finds_a_literal() -> None:
    tree = ast.parse('run.outcome == "failed"\nsave(status="pending")\nx = "ok"')
    assert [w for _, w in _literal_uses(tree)] == ["failed", "pending"]
