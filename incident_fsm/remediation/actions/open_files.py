"""Which files are open for writing right now, as far as this process can tell.

On Linux every process lists its descriptors in `/proc/<pid>/fd`, with their
open flags in `/proc/<pid>/fdinfo`. Deleting or rewriting a file some
process still writes to frees nothing (the process keeps the inode alive)
and loses what it writes next, so cleanup leaves such files alone.

Best effort, by nature: an unprivileged agent sees only its own user's
processes, and a file can be opened a moment after we looked. Where there is
no `/proc` the answer is None ("cannot tell") rather than "nothing is open".
"""

from __future__ import annotations

import os
import stat

Writers = frozenset[tuple[int, int]]


def files_open_for_writing(proc: str = "/proc") -> Writers | None:
    """(device, inode) of every regular file some visible process has open for writing.

    None when the system has no `/proc` to ask (the check is then skipped).
    """
    if not os.path.isdir(os.path.join(proc, "self", "fdinfo")):
        return None
    found: set[tuple[int, int]] = set()
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                with open(os.path.join(proc, pid, "fdinfo", fd), encoding="ascii") as info:
                    flags = _fd_flags(info.read(1024))
                if flags is None or flags & os.O_ACCMODE == os.O_RDONLY:
                    continue
                st = os.stat(os.path.join(fd_dir, fd))  # the magic link: the open file itself
            except (OSError, ValueError):
                continue
            if stat.S_ISREG(st.st_mode):
                found.add((st.st_dev, st.st_ino))
    return frozenset(found)


def _fd_flags(fdinfo: str) -> int | None:
    for line in fdinfo.splitlines():
        if line.startswith("flags:"):
            return int(line.split(":", 1)[1].strip(), 8)
    return None
