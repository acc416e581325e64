"""Disk cleanup: old logs deleted, big logs gzipped, build/test litter removed, in its roots only.

Modelled on the reference service's own cleanup script (REFERENCE.md), without
its weaknesses: it reports the bytes it freed, it never works outside the
configured roots, and it leaves alone files a process still holds open for
writing (deleting those frees nothing until the process lets go; see
`open_files`).

It plans first (`cleanup_plan.scan`, read-only: also the dry run), then
acts (`execute`), and before touching an entry it looks at it again
through its directory's descriptor: only if it is still the same regular
file (device, inode, size, mtime) does it go. A file swapped for a symlink
between scan and delete is skipped; `unlink` and `rmdir` never follow links,
so even a swap in the last microsecond can only remove the link itself,
never what it points to. Compression opens the log with `O_NOFOLLOW`, writes
`<name>.gz` with `O_CREAT | O_EXCL` (never over an existing file), and
removes the original only if it did not change meanwhile and the result is
smaller. Files with more than one hard link stay: removing one name frees
nothing. Roots resolving to `/` are refused.

The file work blocks, so `run` does it in a worker thread that checks
between files whether its time is up or its caller was cancelled, and stops
cleanly with what it has done so far.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.to_thread

from incident_fsm.errors import InvalidInput
from incident_fsm.remediation.actions.base import ActionContext, Outcome, Tier
from incident_fsm.remediation.actions.cleanup_plan import (
    MAX_DEPTH,
    EntryChanged,
    Identity,
    Plan,
    Step,
    StepKind,
    keep_reason,
    never,
    open_dir,
    open_parent,
    scan,
)
from incident_fsm.remediation.actions.open_files import Writers, files_open_for_writing
from incident_fsm.settings import DiskCleanupSettings

#: Paths listed per category in the evidence; the counts are always complete.
LIST_LIMIT: Final = 50
CHUNK: Final = 1024 * 1024
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Report:
    """What `execute` did."""

    bytes_freed: int = 0
    deleted: list[str] = field(default_factory=list)
    compressed: list[str] = field(default_factory=list)
    removed_dirs: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def files_touched(self) -> int:
        return len(self.deleted) + len(self.compressed)


class DiskCleanup:
    """The `disk_cleanup` action (tier `safe`)."""

    name = "disk_cleanup"
    tier = Tier.SAFE

    def __init__(
        self,
        settings: DiskCleanupSettings,
        *,
        kinds: Iterable[str],
        wall_time: Callable[[], float] = time.time,
        open_for_writing: Callable[[], Writers | None] = files_open_for_writing,
    ) -> None:
        if not settings.roots:
            raise InvalidInput("actions.disk_cleanup.roots: configure at least one root")
        if settings.max_age_days <= 0 or settings.compress_over_mb <= 0:
            raise InvalidInput(
                "actions.disk_cleanup: max_age_days and compress_over_mb must be greater than 0"
            )
        if settings.timeout <= 0 or settings.litter_min_age < 0:
            raise InvalidInput("actions.disk_cleanup: timeout must be > 0, litter_min_age >= 0")
        self.settings = settings
        self.kinds = frozenset(kinds)
        self.timeout = settings.timeout
        # File ages are measured against the filesystem's own (wall) clock, not the agent's.
        self._wall_time = wall_time
        self._open_for_writing = open_for_writing

    # --- the action ------------------------------------------------------------

    async def run(self, ctx: ActionContext) -> Outcome:
        budget = min(self.timeout, ctx.remaining())
        started = time.monotonic()
        cancelled = anyio.get_cancelled_exc_class()

        def stop() -> bool:
            if time.monotonic() - started > budget:
                return True
            try:
                anyio.from_thread.check_cancelled()
            except cancelled:
                return True
            return False

        def work() -> Outcome:
            plan = self.plan(stop=stop)
            if not plan.roots:
                refused = "; ".join(f"{path} ({why})" for path, why in plan.refused)
                return Outcome.failed(f"no usable cleanup root: {refused}",
                                      evidence={"refused": [list(r) for r in plan.refused]})
            if ctx.dry_run:
                return _preview(plan)
            before = _usage(plan.roots)
            report = self.execute(plan, stop=stop)
            return _result(plan, report, before, _usage(plan.roots))

        return await anyio.to_thread.run_sync(work)

    def plan(self, *, stop: Callable[[], bool] = never) -> Plan:
        """Scan every root and decide what to do; changes nothing."""
        return scan(self.settings, writers=self._open_for_writing(), now=self._wall_time(),
                    stop=stop)

    # --- doing ---------------------------------------------------------------------

    def execute(self, plan: Plan, *, stop: Callable[[], bool] = never) -> Report:
        """Carry out `plan`, re-checking each entry first; returns what was really done."""
        report = Report()
        writers = self._open_for_writing() or frozenset()
        now = self._wall_time()
        for step in plan.steps:
            if stop():
                report.stopped_early = True
                break
            try:
                parent = open_parent(step, plan.roots[step.root])
            except EntryChanged as exc:
                report.skipped.append((step.path, str(exc)))
                continue
            except OSError as exc:
                report.errors.append(f"{step.path}: {exc.strerror or type(exc).__name__}")
                continue
            try:
                if step.kind is StepKind.DELETE:
                    self._delete(parent, step, writers, report)
                elif step.kind is StepKind.COMPRESS:
                    self._compress(parent, step, writers, report, stop)
                else:
                    self._remove_dir(parent, step, writers, report, stop, now)
            except EntryChanged as exc:
                report.skipped.append((step.path, str(exc)))
            except OSError as exc:
                report.errors.append(f"{step.path}: {exc.strerror or type(exc).__name__}")
            finally:
                os.close(parent)
        return report

    def _delete(self, parent: int, step: Step, writers: Writers, report: Report) -> None:
        name = step.parts[-1]
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not step.identity.matches(st):
            raise EntryChanged("changed since the scan")
        if (st.st_dev, st.st_ino) in writers:
            raise EntryChanged("open for writing by a running process")
        os.unlink(name, dir_fd=parent)
        report.bytes_freed += st.st_size
        report.deleted.append(step.path)

    def _compress(self, parent: int, step: Step, writers: Writers, report: Report,
                  stop: Callable[[], bool]) -> None:
        name = step.parts[-1]
        target = name + ".gz"
        try:
            src = os.open(name, _READ_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise EntryChanged(f"cannot open it safely now ({exc.strerror})") from None
        with os.fdopen(src, "rb") as fin:
            st = os.fstat(fin.fileno())
            if not step.identity.matches(st):
                raise EntryChanged("changed since the scan")
            if (st.st_dev, st.st_ino) in writers:
                raise EntryChanged("open for writing by a running process")
            try:
                dst = os.open(target, _CREATE_FLAGS, stat.S_IMODE(st.st_mode), dir_fd=parent)
            except FileExistsError:
                raise EntryChanged(f"{target} exists already") from None
            try:
                with os.fdopen(dst, "wb") as fout:
                    with gzip.GzipFile(filename=name, mode="wb", fileobj=fout,
                                       mtime=int(st.st_mtime)) as gz:
                        while chunk := fin.read(CHUNK):
                            gz.write(chunk)
                            if stop():
                                raise EntryChanged("stopped at the time limit while compressing")
                    fout.flush()
                    os.fsync(fout.fileno())
                    os.utime(fout.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
                    packed = os.fstat(fout.fileno()).st_size
                if not step.identity.matches(os.fstat(fin.fileno())):
                    raise EntryChanged("written to while being compressed")
                if packed >= st.st_size:
                    raise EntryChanged("does not get smaller when compressed")
                if not step.identity.matches(os.stat(name, dir_fd=parent, follow_symlinks=False)):
                    raise EntryChanged("replaced while being compressed")
            except BaseException:
                _unlink_quietly(target, parent)
                raise
        os.unlink(name, dir_fd=parent)
        report.bytes_freed += st.st_size - packed
        report.compressed.append(step.path)

    def _remove_dir(self, parent: int, step: Step, writers: Writers, report: Report,
                    stop: Callable[[], bool], now: float) -> None:
        name = step.parts[-1]
        fd = open_dir(name, parent, step.identity)
        try:
            complete = self._empty(fd, step.path, writers, report, stop, now, depth=0)
        finally:
            os.close(fd)
        if not complete:
            raise EntryChanged("kept: some of its contents had to stay")
        os.rmdir(name, dir_fd=parent)
        report.removed_dirs.append(step.path)

    def _empty(self, fd: int, path: str, writers: Writers, report: Report,
               stop: Callable[[], bool], now: float, *, depth: int) -> bool:
        """Remove what may go from a litter directory; True if nothing is left in it."""
        if depth > MAX_DEPTH:
            return False
        complete = True
        with os.scandir(fd) as entries:
            listing = list(entries)
        for entry in listing:
            if stop():
                report.stopped_early = True
                return False
            inner = os.path.join(path, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    sub = open_dir(entry.name, fd, Identity.of(st))
                    try:
                        done = self._empty(sub, inner, writers, report, stop, now,
                                           depth=depth + 1)
                    finally:
                        os.close(sub)
                    if done:
                        os.rmdir(entry.name, dir_fd=fd)
                    complete = complete and done
                elif stat.S_ISLNK(st.st_mode):
                    # Removes the link itself; what it points to is never touched.
                    os.unlink(entry.name, dir_fd=fd)
                elif stat.S_ISREG(st.st_mode):
                    why = keep_reason(st, writers, now, self.settings.litter_min_age)
                    if why:
                        report.skipped.append((inner, why))
                        complete = False
                        continue
                    os.unlink(entry.name, dir_fd=fd)
                    report.bytes_freed += st.st_size
                    report.deleted.append(inner)
                else:
                    complete = False  # sockets, fifos, devices: not litter we understand
            except EntryChanged as exc:
                report.skipped.append((inner, str(exc)))
                complete = False
            except OSError as exc:
                report.errors.append(f"{inner}: {exc.strerror or type(exc).__name__}")
                complete = False
        return complete


def _unlink_quietly(name: str, parent: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=parent)


def _usage(roots: Iterable[str]) -> dict[str, float]:
    """Used percent of each root's filesystem (as `df` counts it)."""
    out: dict[str, float] = {}
    for root in roots:
        try:
            usage = shutil.disk_usage(root)
        except OSError:
            continue
        out[root] = round(100.0 * usage.used / usage.total, 2) if usage.total else 0.0
    return out


def _capped(items: list[str]) -> list[str]:
    return items[:LIST_LIMIT]


def _preview(plan: Plan) -> Outcome:
    by_kind = {kind: [s for s in plan.steps if s.kind is kind] for kind in StepKind}
    would_free = sum(s.size for s in plan.steps if s.kind is not StepKind.COMPRESS)
    lines = [f"{s.kind.value} {s.path} ({s.why})" for s in plan.steps]
    return Outcome.ok(
        f"would delete {len(by_kind[StepKind.DELETE])} files, remove "
        f"{len(by_kind[StepKind.REMOVE_DIR])} litter directories and compress "
        f"{len(by_kind[StepKind.COMPRESS])} logs, freeing at least {would_free} bytes",
        evidence={
            "dry_run": True,
            "would_free_bytes": would_free,
            "would_delete": _capped([s.path for s in by_kind[StepKind.DELETE]]),
            "would_remove_dirs": _capped([s.path for s in by_kind[StepKind.REMOVE_DIR]]),
            "would_compress": _capped([s.path for s in by_kind[StepKind.COMPRESS]]),
            "skipped": len(plan.skipped),
            "open_file_check": plan.open_check,
        },
        output_excerpt="\n".join(lines[:LIST_LIMIT]),
    )


def _result(plan: Plan, report: Report, before: dict[str, float],
            after: dict[str, float]) -> Outcome:
    skipped = [*plan.skipped, *report.skipped]
    stopped = plan.stopped_early or report.stopped_early
    summary = (
        f"freed {report.bytes_freed} bytes: deleted {len(report.deleted)} files, compressed "
        f"{len(report.compressed)} logs, removed {len(report.removed_dirs)} litter directories"
    )
    evidence: dict[str, Any] = {
        "bytes_freed": report.bytes_freed,
        "files_touched": report.files_touched,
        "deleted": _capped(report.deleted),
        "deleted_count": len(report.deleted),
        "compressed": _capped(report.compressed),
        "removed_dirs": _capped(report.removed_dirs),
        "skipped": [f"{path}: {why}" for path, why in skipped[:LIST_LIMIT]],
        "skipped_count": len(skipped),
        "errors": report.errors[:LIST_LIMIT],
        "disk_used_pct_before": before,
        "disk_used_pct_after": after,
        "open_file_check": plan.open_check,
        "stopped_early": stopped,
    }
    lines = [*(f"deleted {p}" for p in report.deleted),
             *(f"gzipped {p}" for p in report.compressed),
             *(f"removed {p}" for p in report.removed_dirs),
             *(f"error {e}" for e in report.errors)]
    excerpt = "\n".join(lines[:LIST_LIMIT])
    if stopped:
        return Outcome.timed_out(f"stopped at the time limit; {summary}", evidence=evidence,
                                 output_excerpt=excerpt)
    return Outcome.ok(summary, evidence=evidence, output_excerpt=excerpt)
