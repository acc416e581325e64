"""respx helpers shared by the HTTP tests."""

from __future__ import annotations

import httpx
import respx


def answer(route: respx.Route, reply: object) -> None:
    """Make `route` answer `reply`: an `httpx.Response`, or an exception to raise."""
    if isinstance(reply, Exception):
        route.mock(side_effect=reply)
    else:
        assert isinstance(reply, httpx.Response)
        route.mock(return_value=reply)
