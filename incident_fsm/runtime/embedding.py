"""The agent embedded in a web app: a lifespan that runs it, and its status endpoints.

    agent = incident_fsm.lifespan("/etc/incident-fsm/agent.toml")
    app = FastAPI(lifespan=agent)
    app.mount("/agent", agent.status_app())

The status endpoints are mounted when the app is built: they answer 503
until the host's lifespan has started the agent, then the agent's own
endpoints answer (with its token, if configured), and 503 again once it
stopped. The configuration is loaded when the host starts, so an invalid one
stops the host's startup with the key named.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from incident_fsm.config import load_settings
from incident_fsm.reports.status_app import ASGIApp, until_running
from incident_fsm.runtime.agent import Agent
from incident_fsm.settings import Settings


class EmbeddedAgent:
    """A FastAPI / Starlette lifespan that runs one agent while the host runs.

    Pass it as the app's `lifespan`; `status_app()` gives the endpoints to
    mount. The running agent is `agent` (None while it is not running), and
    is put on `app.state.incident_agent` too when the app has a `state`.
    """

    def __init__(self, settings: Settings | str | Path | None = None,
                 **agent_options: Any) -> None:
        self._settings = settings
        self._options = agent_options
        self.agent: Agent | None = None
        self._mounted = False

    def __call__(self, app: Any) -> AbstractAsyncContextManager[None]:
        return self._run(app)

    @asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[None]:
        settings = self._settings
        loaded = settings if isinstance(settings, Settings) else load_settings(settings)
        async with Agent(loaded, **self._options) as agent:
            if self._mounted:
                agent.status_app()  # built now: a missing token is said at start
            state = getattr(app, "state", None)
            if state is not None:
                state.incident_agent = agent
            self.agent = agent
            try:
                yield
            finally:
                self.agent = None

    def status_app(self) -> ASGIApp:
        """The status endpoints, mountable before the agent runs (503 until it does)."""
        self._mounted = True
        return until_running(self._running_app)

    def _running_app(self) -> ASGIApp | None:
        agent = self.agent
        return None if agent is None or not agent.running else agent.status_app()


def lifespan(settings: Settings | str | Path | None = None,
             **agent_options: Any) -> EmbeddedAgent:
    """A lifespan for FastAPI / Starlette: `FastAPI(lifespan=incident_fsm.lifespan("agent.toml"))`.

    Options go to `Agent`, e.g. `lifespan("agent.toml", pam_manager=manager)`;
    see `EmbeddedAgent` for mounting the status endpoints.
    """
    return EmbeddedAgent(settings, **agent_options)
