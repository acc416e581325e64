"""The invariant checker: judges a soak from outside, by the peers' counts, the CLI, the database.

Each check returns a `Verdict` (name, held or not, and the evidence in one
line, with up to five examples of what broke it). None of them trusts the
agent's word for what happened at a peer: executions are counted at the
Render hub and the failover hook, deliveries at the relay's manager and the
webhook receiver.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from incident_fsm.fsm.graph import OPEN_STATES, edge_destinations
from incident_fsm.persistence import database
from incident_fsm.vocabulary import OPEN_TRIGGER, State

from .agents import Replica
from .world import Peers, RenderHub

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \|")
LEADER = re.compile(r"replica (\S+) (is now the leader|is now a standby|released the leader lease)")
LAPSE = re.compile(r"leadership ends at (\S+)")


@dataclass(frozen=True)
class Verdict:
    name: str
    held: bool
    evidence: str


def _examples(items: list[Any]) -> str:
    return "; ".join(str(i) for i in items[:5]) + (" …" if len(items) > 5 else "")


def _rows(url: str, sql: str) -> list[Any]:
    engine = database.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)).all())
    finally:
        engine.dispose()


def graph_and_sequence(url: str) -> list[Verdict]:
    steps = _rows(url, "SELECT incident_id, seq, trigger, source, dest FROM transition "
                       "ORDER BY incident_id, seq")
    versions = dict(_rows(url, "SELECT id, version FROM incident"))
    off_graph, gaps = [], []
    seqs: dict[int, list[int]] = {}
    for incident_id, seq, trigger, source, dest in steps:
        seqs.setdefault(incident_id, []).append(seq)
        if trigger == OPEN_TRIGGER:
            if source is not None or dest != State.DETECTED:
                off_graph.append(f"#{incident_id} seq {seq}: open into {dest}")
        elif source is None or dest not in edge_destinations(trigger, source):
            off_graph.append(f"#{incident_id} seq {seq}: {source} -{trigger}-> {dest}")
    for incident_id, version in versions.items():
        if seqs.get(incident_id) != list(range(1, version + 1)):
            gaps.append(f"#{incident_id}: seqs {seqs.get(incident_id)} for version {version}")
    return [
        Verdict("every transition is an edge of the graph", not off_graph,
                f"{len(steps)} transitions checked" + (
                    f"; off the graph: {_examples(off_graph)}" if off_graph else "")),
        Verdict("no incident's history has a gap in sequence", not gaps,
                f"{len(versions)} incidents" + (f"; gaps: {_examples(gaps)}" if gaps else "")),
    ]


def none_stuck(url: str, now: datetime) -> Verdict:
    rows = _rows(url, "SELECT i.id, i.state, i.deadline_at, "
                      "EXISTS (SELECT 1 FROM transition t WHERE t.incident_id = i.id "
                      "AND t.trigger = 'acknowledge') FROM incident i")
    stuck = []
    for incident_id, state, deadline, acknowledged in rows:
        if state == State.RESOLVED or (state == State.ESCALATED and acknowledged):
            continue
        if isinstance(deadline, str):
            deadline = datetime.fromisoformat(deadline)
        if deadline is not None and deadline.tzinfo is None:
            deadline = deadline.replace(tzinfo=UTC)
        if deadline is None or deadline <= now:
            stuck.append(f"#{incident_id} {state} deadline {deadline}")
    states = Counter(r[1] for r in rows)
    return Verdict("every incident is resolved, escalated and acknowledged, or open with a "
                   "deadline in the future", not stuck,
                   f"{dict(states)}" + (f"; stuck: {_examples(stuck)}" if stuck else ""))


def executions(url: str, hub: RenderHub, peers: Peers) -> Verdict:
    runs = _rows(url, "SELECT r.idempotency_key, r.action, r.dry_run, r.executing_at IS NOT NULL "
                      "FROM action_run r")
    recorded = {key: (action, dry, claimed) for key, action, dry, claimed in runs}
    executed = Counter(hub.executed) + Counter(peers.failovers)
    twice = [f"{k} x{n}" for k, n in executed.items() if n > 1]
    unknown = [k for k in executed if k not in recorded]
    unclaimed = [k for k in executed if k in recorded and (recorded[k][1] or not recorded[k][2])]
    held = not (twice or unknown or unclaimed)
    return Verdict(
        "each recorded attempt was executed at most once at the simulator, and nothing "
        "executed unrecorded", held,
        f"{len(runs)} attempts recorded, {sum(executed.values())} executions counted at the "
        f"Render hub and the failover hook"
        + (f"; twice: {_examples(twice)}" if twice else "")
        + (f"; not recorded: {_examples(unknown)}" if unknown else "")
        + (f"; dry run or never claimed: {_examples(unclaimed)}" if unclaimed else ""))


def notifications(url: str, peers: Peers) -> Verdict:
    rows = _rows(url, "SELECT channel, dedupe_key, status FROM notification")
    received = {"pam_relay": peers.pam_deliveries(), "webhook": peers.webhooks}
    twice, missing = [], []
    for channel, counts in received.items():
        twice += [f"{channel} {k} x{n}" for k, n in counts.items() if n > 1]
    for channel, key, status in rows:
        if status == "delivered" and channel in received and received[channel][key] < 1:
            missing.append(f"{channel} {key}")
    statuses = Counter((r[0], r[2]) for r in rows)
    return Verdict(
        "each notification was received at most once per channel, and every row delivered "
        "was received", not (twice or missing),
        f"{dict(sorted(statuses.items()))}"
        + (f"; received twice: {_examples(twice)}" if twice else "")
        + (f"; delivered but not received: {_examples(missing)}" if missing else ""))


def _when(value: Any) -> datetime:
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _automatic_runs(url: str) -> list[tuple[int, str, datetime, str, int]]:
    """(incident, target, started, action, episode) of each real attempt no operator approved."""
    steps = _rows(url, "SELECT incident_id, trigger, at FROM transition "
                       "WHERE trigger IN ('open', 'reopen', 'approve') ORDER BY incident_id, seq")
    openings: dict[int, list[datetime]] = {}
    approvals: dict[int, list[datetime]] = {}
    for incident_id, trigger, at in steps:
        (approvals if trigger == "approve" else openings).setdefault(
            incident_id, []).append(_when(at))
    runs = _rows(url, "SELECT r.incident_id, i.target, r.started_at, r.action FROM action_run r "
                      "JOIN incident i ON i.id = r.incident_id WHERE NOT r.dry_run "
                      "ORDER BY r.started_at")
    out = []
    for incident_id, target, started, action in runs:
        at = _when(started)
        # The approve step records the attempt it starts, at the same moment.
        if any(abs((at - a).total_seconds()) < 2 for a in approvals.get(incident_id, [])):
            continue
        episode = sum(1 for o in openings.get(incident_id, []) if o <= at)
        out.append((incident_id, target, at, action, episode))
    return out


def strikes_and_budget(url: str, *, max_strikes: int, budget: int, window: float) -> Verdict:
    runs = _automatic_runs(url)
    broken: list[str] = []
    per_episode = Counter((incident_id, episode) for incident_id, _, _, _, episode in runs)
    broken += [f"#{i} (opening {e}): {n} automatic attempts"
               for (i, e), n in per_episode.items() if n > max_strikes]
    span = timedelta(seconds=window)
    by_target: dict[str, list[datetime]] = {}
    for _, target, at, _, _ in runs:
        by_target.setdefault(target, []).append(at)
    for target, times in by_target.items():
        for i, at in enumerate(times):
            inside = [t for t in times[: i + 1] if at - t < span]
            if len(inside) > budget:
                broken.append(f"{target}: {len(inside)} automatic actions within {window:g} s "
                              f"ending {at}")
                break
    return Verdict("the strike rule and the action budget were never exceeded", not broken,
                   f"{len(runs)} automatic attempts on {len(per_episode)} incident openings"
                   + (f"; broken: {_examples(broken)}" if broken else ""))


def silences_obeyed(url: str, windows: list[tuple[str, datetime, datetime]]) -> Verdict:
    ran = []
    for _, target, at, action, _ in _automatic_runs(url):
        for name, begin, end in windows:
            # Slack: the agent reads silences every 5 s, and one may end mid-step.
            if (name in (target, "*")
                    and begin + timedelta(seconds=6) <= at <= end - timedelta(seconds=1)):
                ran.append(f"{target} {action} at {at}")
    modes = Counter("monitor-only" if name == "*" else "silence" for name, _, _ in windows)
    return Verdict("nothing ran automatically during monitor-only or a silence", not ran,
                   f"{modes['silence']} silences, {modes['monitor-only']} monitor-only stretches"
                   + (f"; ran: {_examples(ran)}" if ran else ""))


def leadership(replicas: list[Replica]) -> Verdict:
    """From each replica's log: the stretches it led. No two may overlap."""
    terms: list[tuple[float, float, int]] = []
    for replica in replicas:
        if not replica.log.exists():
            continue
        start: float | None = None
        ends = [life.ended for life in replica.lives if life.ended]
        for line in replica.log.read_text(errors="replace").splitlines():
            stamp = STAMP.match(line)
            if not stamp:
                continue
            at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f").astimezone().timestamp()
            found = LEADER.search(line)
            lapse = LAPSE.search(line)
            if found and found.group(2) == "is now the leader":
                start = at
            elif start is not None and (found or lapse):
                end = at
                if lapse:
                    with_zone = datetime.fromisoformat(lapse.group(1))
                    end = min(end, with_zone.timestamp())
                terms.append((start, end, replica.index))
                start = None
            elif start is not None and any(start < e <= at for e in ends):
                died = min(e for e in ends if start < e <= at)
                terms.append((start, died, replica.index))
                start = None
        if start is not None:
            later = [e for e in ends if e > start]
            terms.append((start, min(later) if later else float("inf"), replica.index))
    terms.sort()
    overlaps = [f"r{a[2]} {a[0]:.1f}-{a[1]:.1f} and r{b[2]} from {b[0]:.1f}"
                for a, b in itertools.pairwise(terms) if b[0] < a[1] and a[2] != b[2]]
    return Verdict("two replicas never led (and so acted) at the same time", not overlaps,
                   f"{len(terms)} terms of leadership read from the logs"
                   + (f"; overlapping: {_examples(overlaps)}" if overlaps else ""))


def _first_lead(replicas: list[Replica]) -> dict[int, float]:
    """pid -> when that process first became the leader (from its replica's log)."""
    found: dict[int, float] = {}
    for replica in replicas:
        if not replica.log.exists():
            continue
        for line in replica.log.read_text(errors="replace").splitlines():
            stamp, lead = STAMP.match(line), LEADER.search(line)
            if stamp and lead and lead.group(2) == "is now the leader":
                pid = int(lead.group(1).split(":")[1])
                at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f")
                found.setdefault(pid, at.astimezone().timestamp())
    return found


def memory(replicas: list[Replica], *, limit_mb: float = 2.0, warm_up: float = 60.0,
           judged_at_least: float = 120.0) -> Verdict:
    """Per process: RSS at the end of its warm-up against its last samples.

    Warm-up is the first `warm_up` s after the process first led (a standby
    has not yet loaded what acting needs: the actions, the channels, their
    clients), or after its start if it never led. Processes judged over less
    than `judged_at_least` s are listed, not judged.
    """
    leads = _first_lead(replicas)
    grew, seen, short = [], [], 0
    for replica in replicas:
        for life in replica.lives:
            since = leads.get(life.pid, life.started) + warm_up
            samples = [(t, r) for t, r in life.rss if t >= since]
            if len(samples) < 6 or samples[-1][0] - samples[0][0] < judged_at_least:
                short += 1
                continue
            first = sorted(r for _, r in samples[:3])[1]
            last = sorted(r for _, r in samples[-3:])[1]
            role = "led" if life.pid in leads else "stood by"
            seen.append(f"r{replica.index} pid {life.pid} ({role}, judged over "
                        f"{samples[-1][0] - samples[0][0]:.0f} s): {first:.1f} -> {last:.1f} MB")
            if last - first >= limit_mb:
                grew.append(seen[-1])
    name = f"each agent's RSS after warm-up grew by less than {limit_mb:g} MB"
    tail = f"; {short} process(es) too short-lived to judge" if short else ""
    if not seen:
        return Verdict(name, True, f"not judged: no process lived {judged_at_least:g} s past "
                                   f"its warm-up{tail}")
    return Verdict(name, not grew,
                   (_examples(seen) if not grew else f"grew: {_examples(grew)}") + tail)


def database_growth(url: str, *, sqlite_path: Path | None, bound_mb: float) -> Verdict:
    if sqlite_path is not None:
        size = sqlite_path.stat().st_size / 2**20
    else:
        size = float(_rows(url, "SELECT pg_database_size(current_database())")[0][0]) / 2**20
    checks = int(_rows(url, "SELECT count(*) FROM health_check")[0][0])
    return Verdict(f"the database stayed within {bound_mb:g} MB", size <= bound_mb,
                   f"{size:.1f} MB, {checks:,} health_check rows kept")


def clean_logs(replicas: list[Replica]) -> Verdict:
    bad = []
    for replica in replicas:
        if not replica.log.exists():
            continue
        for number, line in enumerate(replica.log.read_text(errors="replace").splitlines(), 1):
            if "Traceback" in line or "unexpected error" in line or "Unhandled" in line:
                bad.append(f"r{replica.index} line {number}: {line[:160]}")
    return Verdict("no traceback or unhandled error in the agents' logs", not bad,
                   f"{len(replicas)} logs read" + (f"; found: {_examples(bad)}" if bad else ""))


def cli_json(url: str, *args: str) -> Any:
    """A read command's `--json`, as an operator's script would run it."""
    done = subprocess.run(
        [sys.executable, "-c", "from incident_fsm.cli.main import main; main()", *args,
         "--database-url", url, "--json"], capture_output=True, text=True, timeout=120,
        check=False)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{args}: exit {done.returncode}: {done.stderr[-500:]}")
    return json.loads(done.stdout)


def open_incidents_agree(url: str) -> Verdict:
    """The CLI's view and the table agree (the checker reads both)."""
    listed = cli_json(url, "incidents", "--open", "--limit", "10000")
    table = _rows(url, "SELECT count(*) FROM incident WHERE state IN ("
                       + ", ".join(f"'{s.value}'" for s in OPEN_STATES) + ")")[0][0]
    return Verdict("`incidents --open --json` lists every open incident", len(listed) == table,
                   f"CLI {len(listed)}, table {table}")


def agents_ran(url: str, replicas: list[Replica], *, target_faults: int) -> Verdict:
    """The run judged something: agents stayed up, polled, and opened incidents for faults.

    Without this every other invariant holds vacuously when the agents never start.
    """
    died = [f"r{r.index} pid {life.pid}: {life.how}" for r in replicas for life in r.lives
            if life.how.startswith("exited by itself")]
    polls = int(_rows(url, "SELECT count(*) FROM health_check")[0][0])
    opened = int(_rows(url, "SELECT count(*) FROM incident")[0][0])
    held = not died and polls > 0 and (opened > 0 or target_faults == 0)
    return Verdict("the agents ran: none exited by itself, they polled, faults opened incidents",
                   held, f"{sum(len(r.lives) for r in replicas)} processes, {polls:,} health "
                         f"checks, {opened} incidents for {target_faults} target faults"
                   + (f"; exited by themselves: {_examples(died)}" if died else ""))
