"""disk_cleanup on real temporary trees: what goes, what stays, and nothing outside its roots."""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from pathlib import Path

import pytest

from incident_fsm.errors import InvalidInput
from incident_fsm.remediation.actions.base import OutcomeStatus
from incident_fsm.remediation.actions.cleanup_plan import StepKind
from incident_fsm.remediation.actions.disk_cleanup import DiskCleanup
from incident_fsm.remediation.actions.open_files import files_open_for_writing
from incident_fsm.settings import DiskCleanupSettings
from incident_fsm.testing import ManualClock

from .support import NOW, context

pytestmark = pytest.mark.anyio

DAY = 86400.0
LOG_LINE = b"2026-11-29 03:00:00 INFO request handled in 12 ms path=/api/v1/items\n"


def write(path: Path, data: bytes = b"x" * 1000, *, age_days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    age(path, age_days)
    return path


def age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then), follow_symlinks=False)


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under `root`, links not followed (what cleanup frees)."""
    total = 0
    for folder, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if not os.path.islink(os.path.join(folder, name)):
                total += st.st_size
    return total


def fingerprint(root: Path) -> str:
    """A hash of every name, type, size, mtime and content under `root`."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root, followlinks=False)):
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            st = os.lstat(path)
            digest.update(f"{os.path.relpath(path, root)}|{st.st_mode}|{st.st_size}|"
                          f"{st.st_mtime_ns}".encode())
            if os.path.islink(path):
                digest.update(os.readlink(path).encode())
            elif os.path.isfile(path):
                digest.update(Path(path).read_bytes())
    return digest.hexdigest()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A sentinel tree next to the root that cleanup must never touch."""
    base = tmp_path / "outside"
    write(base / "old.log", age_days=30)
    write(base / "victim.log", age_days=30)
    write(base / "big.log", LOG_LINE * 5000, age_days=1)
    write(base / "__pycache__" / "mod.cpython-311.pyc", age_days=30)
    write(base / "keep" / "deep.log", age_days=30)
    write(base / "hardtarget.log", age_days=30)
    return base


@pytest.fixture
def root(tmp_path: Path, outside: Path) -> Path:
    base = tmp_path / "root"
    write(base / "app" / "old.log", age_days=10)
    write(base / "app" / "young.log", age_days=1)
    write(base / "app" / "rotated.log.3", age_days=9)
    write(base / "app" / "worker.err", age_days=8)
    write(base / "app" / "archive.log.2.gz", age_days=12)
    write(base / "app" / "big.log", LOG_LINE * 5000, age_days=1)
    write(base / "app" / "notes.txt", age_days=100)
    write(base / "src" / "__pycache__" / "m.cpython-311.pyc", age_days=2)
    write(base / "src" / "__pycache__" / "nested" / "n.pyc", age_days=2)
    write(base / "src" / "stale.tmp", age_days=2)
    write(base / "src" / "fresh.tmp", age_days=0)
    write(base / ".pytest_cache" / "v" / "cache" / "lastfailed", age_days=3)
    write(base / "build" / "htmlcov" / "index.html", age_days=3)
    # Links out of the root, some with names cleanup would otherwise act on.
    (base / "escape").symlink_to("../outside")
    (base / "up").symlink_to("..")
    (base / "linked.log").symlink_to(outside / "old.log")
    age(base / "linked.log", 30)
    (base / "__pycache__").symlink_to(outside / "__pycache__")
    (base / "build" / "htmlcov" / "out").symlink_to(outside / "keep")
    (base / "app" / "big-link.log").symlink_to(outside / "big.log")
    os.link(outside / "hardtarget.log", base / "app" / "hard.log")
    return base


def cleanup(root: Path, **overrides: object) -> DiskCleanup:
    fields: dict[str, object] = dict(roots=(str(root),), max_age_days=7, compress_over_mb=0.1,
                                     litter_min_age=3600)
    fields.update(overrides)
    return DiskCleanup(DiskCleanupSettings(**fields), kinds={"disk_high"})  # type: ignore[arg-type]


async def test_cleanup_deletes_old_logs_gzips_big_ones_and_removes_litter_only_inside_root(
    root: Path, outside: Path
) -> None:
    outside_before = fingerprint(outside)
    big_original = (root / "app" / "big.log").read_bytes()
    with (root / "app" / "open.log").open("ab") as held:
        held.write(b"still being written\n")
        held.flush()
        age(root / "app" / "open.log", 20)
        bytes_before = tree_bytes(root)

        outcome = await cleanup(root).run(context(ManualClock(NOW)))

    assert outcome.status is OutcomeStatus.OK, outcome.summary
    app = root / "app"
    for gone in ("old.log", "rotated.log.3", "worker.err", "archive.log.2.gz", "big.log"):
        assert not (app / gone).exists(), gone
    for kept in ("young.log", "notes.txt", "open.log", "hard.log"):
        assert (app / kept).exists(), kept
    with gzip.open(app / "big.log.gz") as packed:
        assert packed.read() == big_original
    assert not (root / "src" / "__pycache__").exists()
    assert not (root / "src" / "stale.tmp").exists()
    assert (root / "src" / "fresh.tmp").exists()
    assert not (root / ".pytest_cache").exists()
    assert not (root / "build" / "htmlcov").exists()
    # Links are neither followed nor removed (outside litter dirs), and nothing outside changed.
    for link in ("escape", "up", "linked.log", "__pycache__", "app/big-link.log"):
        assert (root / link).is_symlink(), link
    assert fingerprint(outside) == outside_before
    # The figure is the real difference.
    evidence = outcome.evidence
    assert evidence["bytes_freed"] == bytes_before - tree_bytes(root) > 0
    assert evidence["files_touched"] == len(evidence["deleted"]) + len(evidence["compressed"])
    assert evidence["compressed"] == [str(app / "big.log")]
    skipped = "\n".join(evidence["skipped"])
    assert "open.log: open for writing" in skipped
    assert "hard.log: has other hard links" in skipped
    assert "fresh.tmp: too recent" in skipped
    assert "linked.log: a symlink: never followed" in skipped
    assert evidence["open_file_check"] is True
    assert f"freed {evidence['bytes_freed']} bytes" in outcome.summary


async def test_dry_run_lists_what_it_would_do_and_touches_nothing(
    root: Path, outside: Path
) -> None:
    before = fingerprint(root.parent)
    outcome = await cleanup(root).run(context(ManualClock(NOW), dry_run=True))
    assert fingerprint(root.parent) == before
    assert outcome.status is OutcomeStatus.OK
    assert outcome.evidence["dry_run"] is True
    assert str(root / "app" / "old.log") in outcome.evidence["would_delete"]
    assert str(root / "app" / "young.log") not in outcome.evidence["would_delete"]
    assert outcome.evidence["would_compress"] == [str(root / "app" / "big.log")]
    assert str(root / "src" / "__pycache__") in outcome.evidence["would_remove_dirs"]
    assert outcome.evidence["would_free_bytes"] >= 5 * 1000


async def test_a_file_swapped_for_a_symlink_after_the_scan_is_not_followed(
    root: Path, outside: Path
) -> None:
    action = cleanup(root)
    plan = action.plan()
    planned = {s.path: s.kind for s in plan.steps}
    assert planned[str(root / "app" / "old.log")] is StepKind.DELETE
    assert planned[str(root / "app" / "big.log")] is StepKind.COMPRESS
    outside_before = fingerprint(outside)

    # Between scan and delete an attacker swaps both files for links to files outside.
    (root / "app" / "old.log").unlink()
    (root / "app" / "old.log").symlink_to(outside / "victim.log")
    (root / "app" / "big.log").unlink()
    (root / "app" / "big.log").symlink_to(outside / "big.log")
    report = action.execute(plan)

    assert fingerprint(outside) == outside_before
    assert (root / "app" / "old.log").is_symlink()
    assert (root / "app" / "big.log").is_symlink()
    assert not (root / "app" / "big.log.gz").exists()
    reasons = dict(report.skipped)
    assert reasons[str(root / "app" / "old.log")] == "changed since the scan"
    assert "cannot open it safely" in reasons[str(root / "app" / "big.log")]
    assert str(root / "app" / "rotated.log.3") in report.deleted  # the rest went on


async def test_a_directory_swapped_for_a_symlink_after_the_scan_is_not_entered(
    root: Path, outside: Path, tmp_path: Path
) -> None:
    action = cleanup(root)
    plan = action.plan()
    decoy = tmp_path / "outside" / "keep"
    write(decoy / "old.log", age_days=30)
    outside_before = fingerprint(outside)

    (root / "app").rename(tmp_path / "app-moved")
    (root / "app").symlink_to(decoy)
    report = action.execute(plan)

    assert fingerprint(outside) == outside_before
    assert (decoy / "old.log").exists()
    assert "a directory on the way" in dict(report.skipped)[str(root / "app" / "old.log")]


async def test_a_root_reached_through_dot_dot_is_resolved_and_slash_is_refused(
    root: Path, tmp_path: Path
) -> None:
    clock = ManualClock(NOW)
    dotted = await cleanup(root, roots=(f"{root}/app/../app/..",)).run(context(clock))
    assert dotted.status is OutcomeStatus.OK
    assert not (root / "app" / "old.log").exists()

    up_to_slash = str(tmp_path) + "/.." * (len(tmp_path.parts) + 2)
    refused = await cleanup(root, roots=("/", up_to_slash)).run(context(clock))
    assert refused.status is OutcomeStatus.FAILED
    assert "refusing to clean the filesystem root" in refused.summary
    missing = await cleanup(root, roots=(str(tmp_path / "nope"),)).run(context(clock))
    assert missing.status is OutcomeStatus.FAILED
    assert "No such file or directory" in missing.summary


async def test_an_existing_gz_is_never_overwritten(root: Path) -> None:
    (root / "app" / "big.log.gz").write_bytes(b"someone else's archive")
    outcome = await cleanup(root).run(context(ManualClock(NOW)))
    assert (root / "app" / "big.log").exists()
    assert (root / "app" / "big.log.gz").read_bytes() == b"someone else's archive"
    assert any("big.log: big.log.gz exists already" in s for s in outcome.evidence["skipped"])


async def test_out_of_time_stops_cleanly_with_what_was_done(root: Path) -> None:
    outcome = await cleanup(root).run(context(ManualClock(NOW), seconds=0))
    assert outcome.status is OutcomeStatus.TIMED_OUT
    assert outcome.evidence["stopped_early"] is True
    assert (root / "app" / "old.log").exists()


def test_files_open_for_writing_are_seen_and_read_only_ones_are_not(tmp_path: Path) -> None:
    written = write(tmp_path / "w.log")
    read = write(tmp_path / "r.log")
    with written.open("ab"), read.open("rb"):
        found = files_open_for_writing()
        assert found is not None
        st_w, st_r = written.stat(), read.stat()
        assert (st_w.st_dev, st_w.st_ino) in found
        assert (st_r.st_dev, st_r.st_ino) not in found
    assert files_open_for_writing(str(tmp_path / "no-proc")) is None


def test_settings_without_roots_are_refused() -> None:
    with pytest.raises(InvalidInput, match="roots"):
        DiskCleanup(DiskCleanupSettings(), kinds=())
