"""Scrubbing secrets out of text an action is about to report (output excerpts, error bodies).

Two layers: the exact values of the secrets the action knows about (an API
key read from the environment), and patterns that look like credentials
(`Bearer ...`, `token=...`, `password: ...`) for secrets it does not know.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

MASK: Final = "***"
#: Secrets shorter than this are not masked by value: masking "a" would mangle every text.
MIN_SECRET_LENGTH: Final = 4
#: The most text any excerpt keeps.
EXCERPT_LIMIT: Final = 2000

_PATTERNS: Final = (
    re.compile(r"(?i)(\bbearer\s+)[^\s'\"]+"),
    re.compile(
        r"(?i)(\b(?:api[_-]?key|key|token|secret|password|passwd|authorization|x_internal_secret)"
        r"\b[\"']?\s*[=:]\s*[\"']?)[^\s'\"&,;]+"
    ),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret value and every credential-looking token masked."""
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len,
                         reverse=True):
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def excerpt(data: bytes | str, secrets: Iterable[str] = (), *,
            limit: int = EXCERPT_LIMIT) -> str:
    """The end of some output (where errors usually are), decoded, redacted and bounded."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    # Redact before cutting, so a secret split by the cut cannot survive in halves.
    text = redact(text, secrets).strip()
    if len(text) > limit:
        text = "…" + text[-(limit - 1):]
    return text
