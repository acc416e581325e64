"""The status page: what a person sees in a real browser, and hostile text shown as text."""

from __future__ import annotations

import os
import re
import shutil
import socket
from datetime import timedelta
from html import unescape

import anyio
import pytest
import uvicorn

from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.persistence.store import Store
from incident_fsm.reports.figures import AgentStatus, TargetStatus
from incident_fsm.reports.status_app import status_app
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

pytestmark = pytest.mark.anyio
#: What a health endpoint or a reason could carry to attack the page.
HOSTILE = '<script>alert("owned")</script><img src=x onerror=alert(1)>'
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


class _Source:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock

    def status(self) -> AgentStatus:
        now = self.clock.now()
        return AgentStatus(
            running=True, role="single", replica="host-a:1", started_at=now,
            targets=(
                TargetStatus("api", now, True, reading_source="/health/system", read_at=now,
                             memory_pct=81.5, disk_pct=40.0, cpu_pct=12.25),
                TargetStatus("web", now, False, last_error=HOSTILE, last_cause="unusable"),
            ))


async def _seed(store: Store, clock: ManualClock) -> tuple[int, int]:
    engine = IncidentEngine(store, clock=clock)
    held = (await engine.open(target="api", kind="memory_high", severity="critical",
                              reason="memory 92%", summary="memory 92% on api")).incident
    await engine.fire(held.incident_id, "hold", actor="agent", reason=f"approval: {HOSTILE}",
                      intent=ActionIntent("failover", "approval", Verdict.HOLD,
                                          "failover is approval tier"))
    clock.advance(120)
    other = (await engine.open(target="web", kind="disk_high", severity="critical",
                               reason=HOSTILE)).incident
    now = clock.now()
    await store.add_silence(target="web", kind=None, starts_at=now,
                            ends_at=now + timedelta(hours=1), actor="bob",
                            reason="deploy of the web tier", at=now)
    return held.id or 0, other.id or 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _dom(url: str) -> str:
    """The page as the browser built it (its DOM after load), scripts or not."""
    assert BROWSER is not None
    done = await anyio.run_process(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--dump-dom", url], check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def _text(dom: str) -> str:
    """Roughly what a person reads: the text of the DOM, tags dropped."""
    no_style = re.sub(r"<style>.*?</style>", "", dom, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", no_style)))


@pytest.mark.skipif(BROWSER is None and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium (apt-get install -y chromium); CI has it")
async def test_a_browser_shows_the_status_page_and_an_incident_page(
    store: Store, clock: ManualClock
) -> None:
    assert BROWSER is not None, "chromium is missing: .ci/run installs it"
    held, other = await _seed(store, clock)
    app = status_app(_Source(clock), store, clock=clock)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - waiting for uvicorn to bind
                await anyio.sleep(0.02)
        overview = await _dom(f"http://127.0.0.1:{port}/")
        page = await _dom(f"http://127.0.0.1:{port}/incidents/{held}")
        server.should_exit = True

    seen = _text(overview)
    assert "incident-fsm on host-a:1" in seen and "running, acting" in seen
    assert re.search(r"api 81\.5% 40\.0% 12\.2% /health/system", seen)
    assert f"incident-fsm force {held} approve --reason TEXT" in seen
    assert "failover" in seen and "deploy of the web tier" in seen
    assert f'href="/incidents/{held}"' in overview and f'href="/incidents/{other}"' in overview
    # The hostile text is shown as text, and nothing of it became an element.
    assert HOSTILE in seen
    assert "<script" not in overview and "<img" not in overview

    told = _text(page)
    assert f"Incident {held}: api:memory_high" in told
    assert "memory 92% on api" in told and "hold" in told and "escalated" in told
    assert f"approval: {HOSTILE}" in told
    assert "<script" not in page and "<img" not in page
    # The graph: the states it went through, the one it is in, the edge it took.
    assert re.search(r'<g class="state visited" data-state="detected">', page)
    assert re.search(r'<g class="state current" data-state="escalated">', page)
    assert re.search(r'<path class="edge taken" data-edge="detected-escalated"', page)
    assert page.count('class="edge taken"') == 1


async def test_the_page_is_served_with_a_policy_that_runs_no_script(
    store: Store, clock: ManualClock
) -> None:
    import httpx

    held, _ = await _seed(store, clock)
    app = status_app(_Source(clock), store, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://agent") as client:
        html = await client.get("/", headers={"accept": "text/html"})
        data = await client.get("/")
        one = await client.get(f"/incidents/{held}")
        missing = await client.get("/incidents/999", headers={"accept": "text/html"})
        bad = await client.get("/incidents/abc")
    assert html.headers["content-type"].startswith("text/html")
    assert "script-src" not in html.headers["content-security-policy"]
    assert html.headers["content-security-policy"].startswith("default-src 'none'")
    assert data.headers["content-type"] == "application/json"
    assert one.json()["incident"]["id"] == held
    assert (missing.status_code, bad.status_code) == (404, 404)
