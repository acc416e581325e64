"""The httpx client built on first use: once, only when a request needs it, never after closing."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from incident_fsm.lazy import LazyClient, LazyModule
from incident_fsm.remediation.actions.render import shared_gates

pytestmark = pytest.mark.anyio


def _answering(built: list[httpx.AsyncClient]) -> LazyClient:
    def build() -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.MockTransport(
            lambda request: httpx.Response(200, json={"path": request.url.path})))
        built.append(client)
        return client

    return LazyClient(build)


async def test_the_client_is_built_at_the_first_request_and_only_once() -> None:
    built: list[httpx.AsyncClient] = []
    lazy = _answering(built)
    # Sharing the client (the Render gates are keyed by it) builds nothing.
    assert shared_gates(lazy) is shared_gates(lazy)
    assert built == []

    first = await lazy.get("http://svc.test/a")
    async with lazy.stream("GET", "http://svc.test/b") as response:
        second = await response.aread()

    assert first.json() == {"path": "/a"} and b'"/b"' in second
    assert len(built) == 1 and lazy.client is built[0]
    await lazy.aclose()
    assert built[0].is_closed


async def test_closing_an_unbuilt_client_builds_nothing_and_later_use_is_refused() -> None:
    built: list[httpx.AsyncClient] = []
    lazy = _answering(built)
    await lazy.aclose()
    assert built == []
    with pytest.raises(RuntimeError, match="closed"):
        await lazy.get("http://svc.test/")
    assert built == []


def test_a_lazy_module_imports_at_the_first_read_and_keeps_what_it_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_probe_module.py").write_text("ANSWER = 42\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_probe_module", raising=False)
    module = LazyModule("lazy_probe_module")
    assert "lazy_probe_module" not in sys.modules

    assert module.ANSWER == 42
    assert "lazy_probe_module" in sys.modules and vars(module)["ANSWER"] == 42
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018 - the read is what is tested
