"""The agents under soak: real `incident-fsm run` processes, their configuration and their RSS.

Every interval, deadline and window of the configuration is the default
divided by the speed-up, with a floor where a real process on a real
machine needs one (a lease must outlive a scheduling hiccup, a request
needs time to cross loopback): `FLOORS` names them, and the report says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .world import OPERATOR, RELAY_SECRET, RENDER_KEY, Peers, RenderHub, Target

#: setting -> the least it is scaled down to (seconds)
FLOORS = {"leader_ttl": 3.0, "leader_renew": 0.75, "probe_timeout": 1.0, "render_timeout": 2.0,
          "webhook_timeout": 2.0, "verify_window": 1.0, "detect_deadline": 3.0,
          "action_deadline": 6.0, "failover_timeout": 2.0}


def scaled(seconds: float, speedup: float, floor: str | None = None) -> float:
    value = seconds / speedup
    return max(value, FLOORS[floor]) if floor else value


def config_text(*, db_url: str, speedup: float, targets: list[Target], hub: RenderHub,
                peers: Peers, journal: Path, sqlite: bool) -> str:
    s = speedup
    agent = [
        "[agent]", f'database_url = "{db_url}"',
        f"poll_interval = {scaled(30, s)}", f"fast_poll_interval = {scaled(10, s)}",
        f"verify_window = {scaled(90, s, 'verify_window')}",
        f"detect_deadline = {scaled(120, s, 'detect_deadline')}",
        f"action_deadline = {scaled(300, s, 'action_deadline')}",
        f"reopen_window = {scaled(3600, s)}", f"escalation_repeat = {scaled(1800, s)}",
        f"action_budget_window = {scaled(1800, s)}", f"flap_window = {scaled(3600, s)}",
        f"health_retention = {scaled(7 * 86400, s)}",
        f'journal_path = "{journal}"',
    ]
    if not sqlite:
        agent += [f"leader_ttl = {scaled(15, s, 'leader_ttl')}",
                  f"leader_renew = {scaled(5, s, 'leader_renew')}"]
    else:
        agent += ["leader_election = false"]
    blocks = agent
    for t in targets:
        blocks += [
            "[[targets]]", f'name = "{t.name}"', f'base_url = "{t.sim.base_url}"',
            f'render_service_id = "{t.sim.state.web_service_id}"',
            f'worker_service_id = "{t.sim.state.worker_service_id}"',
            "fallback_local = false", f"probe_timeout = {scaled(5, s, 'probe_timeout')}",
            "max_requests_per_minute = 100000",
            "dependencies = [{ name = \"celery\", kind = \"http\", path = \"/health/workers\", "
            f"timeout = {scaled(5, s, 'probe_timeout')} }}]",
        ]
    roots = ", ".join(f'"{t.logs}"' for t in targets)
    blocks += [
        "[actions.disk_cleanup]", f"roots = [{roots}]", "max_age_days = 7",
        f"litter_min_age = {scaled(3600, s)}",
        "[actions.render]", f'api_url = "{hub.render_api_url}"',
        f"timeout = {scaled(30, s, 'render_timeout')}", "max_instances = 2",
        "[actions.failover]", f'url = "{peers.url}/failover"', 'tier = "approval"',
        f"timeout = {scaled(60, s, 'failover_timeout')}", 'kinds = ["health_endpoint_down"]',
        "[policy]", 'memory_high = ["render_restart", "render_scale"]',
        'disk_high = ["disk_cleanup"]', '"service_down:celery" = ["restart_celery_workers"]',
        'health_endpoint_down = ["render_restart", "failover"]',
        "[channels]", f"retry_initial = {scaled(5, s)}", f"retry_max = {scaled(600, s)}",
        "[channels.pam_relay]", f'url = "{peers.url}/incident-fsm/pam/"',
        f'user_ids = ["{OPERATOR}"]', f"timeout = {scaled(10, s, 'webhook_timeout')}",
        "[channels.webhook]", f'url = "{peers.url}/webhook"',
        f"timeout = {scaled(10, s, 'webhook_timeout')}",
    ]
    return "\n".join(blocks) + "\n"


@dataclass
class Life:
    """One process of one replica: when it ran, how it ended, its RSS samples."""

    replica: int
    pid: int
    started: float
    ended: float | None = None
    how: str = "running"
    rss: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Replica:
    """One replica: its configuration and log, and the process running it now."""

    index: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    lives: list[Life] = field(default_factory=list)
    #: environment the next start adds (e.g. AUTO_REMEDIATION_ENABLED=false)
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        env = {**os.environ, "RENDER_API_KEY": RENDER_KEY, "PYTHONUNBUFFERED": "1",
               "INCIDENT_FSM_PAM_RELAY_SECRET": RELAY_SECRET, **self.extra_env}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from incident_fsm.cli.main import main; main()", "run",
                 "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.lives.append(Life(self.index, self.proc.pid, time.time()))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, how: str, *, timeout: float = 30.0) -> None:
        """End the process: `kill9` (SIGKILL) or `sigterm` (and wait for it)."""
        if not self.alive:
            return
        assert self.proc is not None
        if how == "kill9":
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            how += " (then SIGKILL: did not exit in time)"
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        life = self.lives[-1]
        life.ended, life.how = time.time(), f"{how}, exit {self.proc.returncode}"

    def sample(self) -> None:
        if not self.alive or not self.lives:
            return
        try:
            rss = psutil.Process(self.lives[-1].pid).memory_info().rss / 2**20
        except psutil.Error:
            return
        self.lives[-1].rss.append((time.time(), rss))

    def check_exit(self) -> None:
        """Note a process that ended on its own."""
        if self.proc is not None and self.proc.poll() is not None and self.lives[-1].ended is None:
            life = self.lives[-1]
            life.ended, life.how = time.time(), f"exited by itself, {self.proc.returncode}"
