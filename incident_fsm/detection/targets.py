"""The probes of one target, as its settings describe them: health source, fallback, checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import httpx

from incident_fsm.detection.dependencies import DependencyProbe, dependency_checks
from incident_fsm.detection.probe import HttpProbe, LocalProbe, Probe
from incident_fsm.settings import AgentSettings, TargetSettings


@dataclass(frozen=True)
class TargetProbes:
    """How one target is read: its own probe, an optional fallback, its dependency checks."""

    health: Probe
    fallback: Probe | None = None
    dependencies: Sequence[DependencyProbe] = ()
    #: HTTP requests one poll sends to the target (endpoints + HTTP dependency checks)
    requests_per_poll: int = 1


def default_probes(target: TargetSettings, *, client: httpx.AsyncClient) -> TargetProbes:
    """The probes a target's settings describe, sharing one HTTP client."""
    dependencies = dependency_checks(target, client=client)
    return TargetProbes(
        health=HttpProbe(base_url=target.base_url, endpoints=target.endpoints, client=client,
                         timeout=target.probe_timeout, read_all=target.read_all_endpoints,
                         name=target.name),
        fallback=LocalProbe(mounts=target.local_mounts, timeout=target.probe_timeout)
        if target.fallback_local else None,
        dependencies=dependencies,
        requests_per_poll=(len(target.endpoints) if target.read_all_endpoints else 1)
        + sum(d.requests_per_check for d in dependencies),
    )


class Cadence(NamedTuple):
    """Seconds between polls: normally, and while anything on the target is suspect or open."""

    normal: float
    fast: float


def min_interval(target: TargetSettings, requests_per_poll: int) -> float:
    """The shortest gap between polls the target's rate limit allows (seconds)."""
    return requests_per_poll * 60.0 / target.max_requests_per_minute


def cadences(agent: AgentSettings, target: TargetSettings,
             requests_per_poll: int) -> tuple[Cadence, Cadence]:
    """The configured intervals and the effective ones the target's rate limit allows.

    Effective is before jitter (which only shortens, down to the rate limit)
    and before any `Retry-After` the target asks for. The monitor polls by
    it, and a backtest replays recorded polls by it.
    """
    floor = min_interval(target, requests_per_poll)
    configured = Cadence(agent.poll_interval, agent.fast_poll_interval)
    return configured, Cadence(max(configured.normal, floor), max(configured.fast, floor))
