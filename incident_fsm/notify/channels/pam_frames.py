"""What the PAM channel puts on PAM's socket: frames within PAM's limits on their size and rate.

A frame is `{"type": frame_type, "message": text (at most 2,000 characters,
cut with "…"), "metadata": {incident_id, state, target, kind, action,
outcome, dedupe_key, ...}, "timestamp": ...}`. PAM allows 60 frames a
minute per user and closes with 4008 after five excess hits; every frame
counts (probes and pongs too), `PONG_RESERVE` of them are kept for pongs,
and each notification frame costs two with its probe. When a batch is
larger than what is left, several notifications share one frame (texts one
per line, metadata `{"batched": n, "notifications": [...]}`), within the
2,000 characters.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from incident_fsm.clock import Clock
from incident_fsm.notify.channels.base import Outgoing

#: At most this many notifications share one batched message.
MAX_PER_MESSAGE: Final = 25
#: PAM's limit on a message's text.
MAX_TEXT: Final = 2000
ELLIPSIS: Final = "…"
#: Frames a minute kept for pongs: PAM pings every 25 s and every 20 s (5.4 a minute).
PONG_RESERVE: Final = 6
#: A notification frame and its probe.
FRAMES_PER_MESSAGE: Final = 2
WINDOW: Final = timedelta(seconds=60)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[:limit - len(ELLIPSIS)] + ELLIPSIS


def frame(group: Sequence[Outgoing], *, frame_type: str, timestamp: str) -> dict[str, Any]:
    """The one frame that carries `group`: its text alone, or the texts one per line."""
    if len(group) == 1:
        text, metadata = group[0].text, group[0].metadata()
    else:
        text = "\n".join(item.text for item in group)
        metadata = {"batched": len(group), "notifications": [i.metadata() for i in group]}
    return {"type": frame_type, "message": clip(text), "metadata": metadata,
            "timestamp": timestamp}


class FrameBudget:
    """The frames sent in the last minute, against the share of PAM's limit notifications get.

    The limit is passed on each call: `reconfigure` may change it.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._sent: deque[datetime] = deque()

    def count(self) -> None:
        """One frame went out: a notification, a probe or a pong."""
        self._sent.append(self._clock.now())

    def notifications_left(self, per_minute: int) -> int:
        """How many notification frames, each with its probe, may go out now."""
        self._forget_old()
        return (per_minute - PONG_RESERVE - len(self._sent)) // FRAMES_PER_MESSAGE

    def wait(self, per_minute: int) -> float:
        """Seconds until one more notification frame fits; 0 when it fits now."""
        self._forget_old()
        excess = len(self._sent) - (per_minute - PONG_RESERVE - FRAMES_PER_MESSAGE)
        if excess > 0:
            wait = (self._sent[excess - 1] + WINDOW - self._clock.now()).total_seconds()
            return max(0.1, wait)
        return 0.0

    def _forget_old(self) -> None:
        cutoff = self._clock.now() - WINDOW
        while self._sent and self._sent[0] <= cutoff:
            self._sent.popleft()


def pack(batch: Sequence[Outgoing], *, budget: int, per_message: int = MAX_PER_MESSAGE,
         max_chars: int = MAX_TEXT) -> list[Sequence[Outgoing]]:
    """Split `batch` into at most `budget` messages, in order; one each while the budget allows.

    A shared message holds at most `per_message` notifications and, while
    more than one, at most `max_chars` characters of text (a single long
    text is cut when sent). Rows that do not fit are left out: they were not
    attempted and go out with the next batch.
    """
    if budget < 1 or not batch:
        return []
    size = min(per_message, max(1, math.ceil(len(batch) / budget)))
    groups: list[Sequence[Outgoing]] = []
    current: list[Outgoing] = []
    chars = 0
    for item in batch:
        extra = len(item.text) + (1 if current else 0)  # the joining newline
        if current and (len(current) >= size or chars + extra > max_chars):
            groups.append(current)
            if len(groups) == budget:
                return groups
            current, extra = [], len(item.text)
            chars = 0
        current.append(item)
        chars += extra
    groups.append(current)
    return groups
