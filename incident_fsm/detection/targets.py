"""The probes of one target, as its settings describe them: health source, fallback, checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from incident_fsm.detection.dependencies import DependencyProbe, dependency_checks
from incident_fsm.detection.probe import HttpProbe, LocalProbe, Probe
from incident_fsm.settings import TargetSettings


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
