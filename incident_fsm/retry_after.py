"""`Retry-After`: how long an HTTP peer asked us to wait, read one way for every client.

Health probes, the Render API and webhooks all honour it. The header is
delta-seconds or an HTTP date; anything else (a word, NaN, a date without a
zone) is unusable and gives None, a past date gives 0, and every wait is
capped, so a broken or hostile answer cannot stop a client for long.
"""

from __future__ import annotations

import math
from datetime import datetime
from email.utils import parsedate_to_datetime


def retry_after_seconds(value: str | None, now: datetime, *, cap: float) -> float | None:
    """Seconds from `now` that `value` asks for, within 0..`cap`, or None if unusable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None or now.tzinfo is None:
            return None
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), cap)
