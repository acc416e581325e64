"""The read-only half of disk cleanup: scan the roots and plan what to delete, gzip or remove.

The walk goes from directory descriptor to directory descriptor (`openat`
with `O_NOFOLLOW`), never by path string, so no symlink is ever followed --
to anywhere, `..` included -- and a directory swapped for a symlink during
the walk is not entered. It stays on the root's filesystem. Each planned
step remembers what its entry looked like (`Identity`), so the doing half
(`disk_cleanup`) can refuse to touch anything that changed since.
"""

from __future__ import annotations

import enum
import fnmatch
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from incident_fsm.remediation.actions.open_files import Writers
from incident_fsm.settings import DiskCleanupSettings

MAX_DEPTH: Final = 32
COMPRESSED_SUFFIXES: Final = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4", ".br")
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class EntryChanged(Exception):
    """The entry is not what the scan saw any more: leave it alone."""


def never() -> bool:
    return False


class StepKind(enum.StrEnum):
    DELETE = "delete"
    COMPRESS = "compress"
    REMOVE_DIR = "remove_dir"


@dataclass(frozen=True)
class Identity:
    """What an entry looked like when it was scanned."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    is_dir: bool

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, stat.S_ISDIR(st.st_mode))

    def matches(self, st: os.stat_result) -> bool:
        """Still the same regular file (or the same directory, whose size may change)."""
        if self.is_dir:
            return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == (self.dev, self.ino)
        return stat.S_ISREG(st.st_mode) and Identity.of(st) == self


@dataclass(frozen=True)
class Step:
    """One planned change: delete a file, gzip a log, or remove a litter directory."""

    kind: StepKind
    root: str
    parts: tuple[str, ...]
    identity: Identity
    why: str
    #: bytes it would free (a directory: the regular files inside it when scanned)
    size: int

    @property
    def path(self) -> str:
        return os.path.join(self.root, *self.parts)


@dataclass(frozen=True)
class Plan:
    """What cleanup would do, from a scan that changed nothing."""

    #: resolved root -> (device, inode) when scanned
    roots: dict[str, tuple[int, int]]
    steps: tuple[Step, ...]
    skipped: tuple[tuple[str, str], ...]
    refused: tuple[tuple[str, str], ...]
    #: whether open-for-writing files could be detected at all
    open_check: bool
    stopped_early: bool


def scan(settings: DiskCleanupSettings, *, writers: Writers | None, now: float,
         stop: Callable[[], bool] = never) -> Plan:
    """Plan the cleanup of every configured root. `now` is wall-clock time (file ages)."""
    roots: dict[str, tuple[int, int]] = {}
    walk = _Walk(settings, writers=writers or frozenset(), now=now, stop=stop)
    refused: list[tuple[str, str]] = []
    for configured in settings.roots:
        root = os.path.realpath(configured)
        if root == os.path.dirname(root):
            refused.append((configured, "refusing to clean the filesystem root"))
            continue
        if root in roots:
            continue
        try:
            fd = os.open(root, DIR_FLAGS)
        except OSError as exc:
            refused.append((configured, exc.strerror or type(exc).__name__))
            continue
        try:
            st = os.fstat(fd)
            roots[root] = (st.st_dev, st.st_ino)
            walk.root(root, fd, st.st_dev)
        finally:
            os.close(fd)
        if walk.stopped:
            break
    return Plan(roots, tuple(walk.steps), tuple(walk.skipped), tuple(refused),
                open_check=writers is not None, stopped_early=walk.stopped)


def matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def keep_reason(st: os.stat_result, writers: Writers, now: float, min_age: float) -> str:
    """Why a matching regular file must stay, or "" if it may go."""
    if st.st_nlink > 1:
        return "has other hard links: removing this one frees nothing"
    if (st.st_dev, st.st_ino) in writers:
        return "open for writing by a running process"
    if now - st.st_mtime < min_age:
        return "too recent: may still be in use"
    return ""


def open_dir(name: str, parent: int, identity: Identity) -> int:
    """Open a subdirectory without following a link, and make sure it is the one we saw."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise EntryChanged(f"not the directory it was ({exc.strerror})") from None
    if not identity.matches(os.fstat(fd)):
        os.close(fd)
        raise EntryChanged("replaced by another directory")
    return fd


def open_parent(step: Step, root_id: tuple[int, int]) -> int:
    """The directory holding `step`'s entry, reached from its root one component at a time."""
    fd = os.open(step.root, DIR_FLAGS)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != root_id:
            raise EntryChanged("its root was replaced since the scan")
        for part in step.parts[:-1]:
            try:
                sub = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise EntryChanged(
                    f"a directory on the way is not one now ({exc.strerror})") from None
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


@dataclass
class _Walk:
    """The scan of the roots: descriptor to descriptor, never through a link."""

    settings: DiskCleanupSettings
    writers: Writers
    now: float
    stop: Callable[[], bool]
    steps: list[Step] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stopped: bool = False
    _root: str = ""
    _dev: int = 0

    def root(self, root: str, fd: int, dev: int) -> None:
        self._root, self._dev = root, dev
        self._walk(fd, (), 0)

    def _walk(self, fd: int, parts: tuple[str, ...], depth: int) -> None:
        if depth > MAX_DEPTH:
            self._skip(parts, "deeper than the walk goes")
            return
        with os.scandir(fd) as entries:
            listing = sorted(entries, key=lambda e: e.name)
        for entry in listing:
            if self.stop():
                self.stopped = True
                return
            here = (*parts, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished while we looked
            if stat.S_ISLNK(st.st_mode):
                if self._is_log(entry.name) or self._is_litter(entry.name):
                    self._skip(here, "a symlink: never followed")
            elif stat.S_ISDIR(st.st_mode):
                self._directory(fd, here, st, depth)
            elif stat.S_ISREG(st.st_mode):
                self._file(here, st)
            if self.stopped:
                return

    def _directory(self, fd: int, here: tuple[str, ...], st: os.stat_result, depth: int) -> None:
        if st.st_dev != self._dev:
            self._skip(here, "on another filesystem")
            return
        if self._is_litter(here[-1]):
            self._add(StepKind.REMOVE_DIR, here, st, "build/test litter",
                      _tree_size(fd, here[-1], st))
            return
        try:
            sub = open_dir(here[-1], fd, Identity.of(st))
        except (EntryChanged, OSError):
            return
        try:
            self._walk(sub, here, depth + 1)
        finally:
            os.close(sub)

    def _file(self, here: tuple[str, ...], st: os.stat_result) -> None:
        settings = self.settings
        name = here[-1]
        if self._is_log(name):
            old = self.now - st.st_mtime > settings.max_age_days * 86400
            big = (st.st_size > settings.compress_over_mb * 1024 * 1024
                   and not name.endswith(COMPRESSED_SUFFIXES))
            if not (old or big):
                return
            why = keep_reason(st, self.writers, self.now, 0)
            if why:
                self._skip(here, why)
            elif old:
                self._add(StepKind.DELETE, here, st,
                          f"log older than {settings.max_age_days:g} days", st.st_size)
            else:
                self._add(StepKind.COMPRESS, here, st,
                          f"log over {settings.compress_over_mb:g} MB", st.st_size)
        elif self._is_litter(name):
            why = keep_reason(st, self.writers, self.now, settings.litter_min_age)
            if why:
                self._skip(here, why)
            else:
                self._add(StepKind.DELETE, here, st, "build/test litter", st.st_size)

    def _is_log(self, name: str) -> bool:
        return matches_any(name, self.settings.log_patterns)

    def _is_litter(self, name: str) -> bool:
        return matches_any(name, self.settings.litter_patterns)

    def _add(self, kind: StepKind, here: tuple[str, ...], st: os.stat_result, why: str,
             size: int) -> None:
        self.steps.append(Step(kind, self._root, here, Identity.of(st), why, size))

    def _skip(self, here: tuple[str, ...], why: str) -> None:
        self.skipped.append((os.path.join(self._root, *here), why))


def _tree_size(parent: int, name: str, st: os.stat_result, depth: int = 0) -> int:
    """Bytes of the regular files under a directory, links not followed (for previews)."""
    try:
        fd = open_dir(name, parent, Identity.of(st))
    except (EntryChanged, OSError):
        return 0
    total = 0
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                inner = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(inner.st_mode):
                    total += inner.st_size
                elif stat.S_ISDIR(inner.st_mode) and depth < MAX_DEPTH:
                    total += _tree_size(fd, entry.name, inner, depth + 1)
    except OSError:
        pass  # a preview figure: what could not be read is not counted
    finally:
        os.close(fd)
    return total
