"""The loopback world the benchmarks run in: many targets on one simulator, and agent configs.

`Tenants` is one `Simulator` serving many independent `ServiceState`s: target
`k` lives under `/t/k/...`, and its Render service `srv-web-k` is restarted
through the shared `/v1` API. Requests are still counted per full route, so
`requests["POST /v1/services/srv-web-k/restart"]` counts the executions of
an action at the service, outside our tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from incident_fsm.demo.simulator import ServiceState, Simulator

HEALTH = "GET /health/resources"


class Tenants(Simulator):
    """One loopback server, one `ServiceState` per key (see the module docstring)."""

    def __init__(self, keys: Sequence[str], *, keep_alive: float = 5.0) -> None:
        # One key restarts a thousand services at once here: Render's limit of about 30
        # POSTs a minute would measure the quota, not the agent.
        super().__init__(ServiceState(render_post_limit=1_000_000, render_get_limit=1_000_000,
                                      keep_alive=keep_alive))
        self.states = {k: ServiceState(web_service_id=f"srv-web-{k}",
                                       worker_service_id=f"srv-worker-{k}") for k in keys}
        self._by_service = {s.web_service_id: s for s in self.states.values()}

    def url(self, key: str) -> str:
        return f"{self.base_url}/t/{key}"

    def _respond(self, method: str, route: str, headers: dict[str, str], body: bytes,
                 fault: str | None, *, disk_pct: float | None = None) -> tuple[int, Any]:
        state = self.state
        if route.startswith("/t/"):
            _, _, key, rest = route.split("/", 3)
            state, route = self.states[key], "/" + rest
        elif route.startswith("/v1/services/"):
            state = self._by_service.get(route.split("/")[3], state)
        saved, self.state = self.state, state
        try:
            return super()._respond(method, route, headers, body, fault, disk_pct=disk_pct)
        finally:
            self.state = saved

    def polls(self, prefix: str = "") -> int:
        """Health polls of the tenants whose key starts with `prefix` (one request each)."""
        return sum(n for route, n in self.state.requests.items()
                   if route.startswith(f"GET /t/{prefix}")
                   and route.endswith("/health/resources"))


def agent_config(path: Path, *, db_url: str, targets: Sequence[tuple[str, str, str]],
                 poll: float, fast: float, render_api: str | None = None,
                 policy: Sequence[str] = ("render_restart",), extra: Sequence[str] = (),
                 channels: Sequence[str] = (), jitter: float = 0.0) -> Path:
    """A TOML config: `targets` are (name, base_url, render_service_id)."""
    lines = ["[agent]", f'database_url = "{db_url}"', f"poll_interval = {poll}",
             f"fast_poll_interval = {fast}", f"poll_jitter = {jitter}", *extra]
    for name, url, service in targets:
        lines += ["[[targets]]", f'name = "{name}"', f'base_url = "{url}"',
                  f'render_service_id = "{service}"', "fallback_local = false",
                  "probe_timeout = 5", "max_requests_per_minute = 1000000"]
    if render_api:
        lines += ["[actions.render]", f'api_url = "{render_api}"', "timeout = 5"]
    lines += ["[policy]", "memory_high = [" + ", ".join(f'"{p}"' for p in policy) + "]",
              *channels]
    path.write_text("\n".join(lines) + "\n")
    return path
