"""httpx and prometheus_client, imported when first used, and an httpx client built then too.

An agent whose targets are read with `http1.Http1Client` may never send a
request through httpx: httpx is needed for an action, a channel, a
dependency check or a target behind a proxy. Importing it anyway costs a
host about 2.5 MB (httpx, and its CLI's pygments where click is installed),
and each client built costs 1 to 2.5 MB more (httpcore, and certifi's CA
bundle parsed into a TLS context). prometheus_client is only needed when
something scrapes the metrics. Modules name them through this module:
`from incident_fsm.lazy import httpx` reads exactly like `import httpx`
(and is typed as it), but the import happens at the first attribute read,
such as the first `httpx.AsyncClient(...)` or the first `except
httpx.HTTPError` an exception actually reaches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

__all__ = ["HttpClient", "LazyClient", "LazyModule", "httpx", "prometheus_client",
           "prometheus_core"]


class LazyModule:
    """A module imported at its first attribute read; each attribute is looked up once."""

    def __init__(self, name: str) -> None:
        self.__name = name

    def __getattr__(self, attribute: str) -> Any:
        # Only reached for what is not cached yet: the import lock makes it thread-safe.
        value = getattr(importlib.import_module(self.__name), attribute)
        setattr(self, attribute, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self.__name!r}>"


if TYPE_CHECKING:
    import httpx as httpx
    import prometheus_client as prometheus_client
    import prometheus_client.core as prometheus_core
else:
    httpx = LazyModule("httpx")
    prometheus_client = LazyModule("prometheus_client")
    prometheus_core = LazyModule("prometheus_client.core")


class LazyClient:
    """An `httpx.AsyncClient` that `build` makes when a request first needs it.

    Reads every attribute through the client (building it first); `aclose`
    closes it only if it was built.
    """

    def __init__(self, build: Callable[[], httpx.AsyncClient]) -> None:
        #: None once the client is built, or closed unbuilt
        self._build: Callable[[], httpx.AsyncClient] | None = build
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The client, built on the first call."""
        if self._client is None:
            if self._build is None:
                raise RuntimeError("this HTTP client was closed")
            self._client, self._build = self._build(), None
        return self._client

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):  # not httpx's API: and no recursion before __init__ ran
            raise AttributeError(attribute)
        return getattr(self.client, attribute)

    async def aclose(self) -> None:
        self._build = None
        if self._client is not None:
            await self._client.aclose()


#: What may be given where the agent sends requests through httpx.
HttpClient: TypeAlias = "httpx.AsyncClient | LazyClient"
