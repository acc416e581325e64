"""Text from outside (health payloads, operator reasons) made safe for one log or table line."""

from __future__ import annotations


def one_line(text: str, limit: int = 500) -> str:
    """Whitespace runs (newlines too) become one space; other control and format
    characters (ANSI escapes, bidi overrides, NUL) are shown escaped; long text is cut.

    So such text can neither forge nor recolour a log line or a terminal table.
    """
    text = " ".join(text.split())
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
