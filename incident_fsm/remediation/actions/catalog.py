"""The actions each target has, built from the settings.

A target gets `disk_cleanup` when cleanup roots are configured,
`render_restart` and `render_scale` when it names a Render service,
`restart_celery_workers` when it names a Render worker service, `failover`
when the hook is configured, and every allow-listed command under its own
name. A command named like a built-in action replaces it (e.g. a command
`restart_celery_workers` for workers that do not run on Render).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from types import MappingProxyType

from incident_fsm.lazy import HttpClient, httpx
from incident_fsm.remediation.actions.base import Action
from incident_fsm.remediation.actions.command import CommandAction
from incident_fsm.remediation.actions.disk_cleanup import DiskCleanup
from incident_fsm.remediation.actions.failover import Failover
from incident_fsm.remediation.actions.render import RenderApi, RenderRestart, RenderScale
from incident_fsm.remediation.policy import candidates, default_kinds
from incident_fsm.settings import Settings, TargetSettings


class Catalog:
    """Target name -> the actions available for it."""

    def __init__(self, by_target: Mapping[str, Mapping[str, Action]]) -> None:
        self._by_target = {t: MappingProxyType(dict(a)) for t, a in by_target.items()}

    def for_target(self, target: str) -> Mapping[str, Action]:
        return self._by_target.get(target, MappingProxyType({}))

    @classmethod
    def from_settings(cls, settings: Settings, *, http: HttpClient,
                      environ: Mapping[str, str] | None = None) -> Catalog:
        env = os.environ if environ is None else environ
        return cls({
            target.name: target_actions(settings, target, http=http, environ=env)
            for target in settings.targets
        })


@asynccontextmanager
async def offline_catalog(settings: Settings) -> AsyncIterator[Catalog]:
    """The catalog of `settings` for reading what it offers; none of its actions is run.

    The actions only keep the HTTP client for when they run, and it is closed on exit.
    """
    async with httpx.AsyncClient() as http:
        yield Catalog.from_settings(settings, http=http)


def policy_tiers(catalog: Catalog, settings: Settings, *, target: str,
                 kind: str) -> dict[str, str]:
    """Action name -> tier of what the agent may run for `kind` on `target`, best first.

    The agent's own choice: the target's actions under the configuration,
    narrowed by the policy for the kind (`[policy]` or the default list).
    """
    available = catalog.for_target(target)
    names = candidates(kind, available=available, override=settings.policy or None)
    return {name: str(available[name].tier) for name in names}


def secret_names(settings: Settings) -> tuple[str, ...]:
    """Every environment variable the settings name as holding a secret."""
    names: list[str | None] = [settings.actions.render.api_key_env]
    if settings.actions.failover is not None:
        names.append(settings.actions.failover.secret_env)
    if settings.channels.pam is not None:
        names.append(settings.channels.pam.token_env)
    if settings.channels.webhook is not None:
        names.append(settings.channels.webhook.secret_env)
    return tuple(n for n in names if n)


def target_actions(settings: Settings, target: TargetSettings, *, http: HttpClient,
                   environ: Mapping[str, str]) -> dict[str, Action]:
    """The actions `target` has under `settings` (see the module docstring)."""
    names = secret_names(settings)

    def secrets() -> Iterable[str]:
        # Read at the moment of use, like every secret.
        return [v for v in (environ.get(n, "") for n in names) if v]

    actions: dict[str, Action] = {}
    configured = settings.actions
    if configured.disk_cleanup.roots:
        actions["disk_cleanup"] = DiskCleanup(configured.disk_cleanup,
                                              kinds=default_kinds("disk_cleanup"))
    api = RenderApi(configured.render, http=http, environ=environ)
    if target.render_service_id:
        actions["render_restart"] = RenderRestart(
            api, service_id=target.render_service_id, kinds=default_kinds("render_restart"))
        actions["render_scale"] = RenderScale(
            api, service_id=target.render_service_id, kinds=default_kinds("render_scale"))
    if target.worker_service_id:
        actions["restart_celery_workers"] = RenderRestart(
            api, service_id=target.worker_service_id, name="restart_celery_workers",
            kinds=default_kinds("restart_celery_workers"))
    if configured.failover is not None:
        actions["failover"] = Failover(configured.failover, http=http, environ=environ,
                                       secrets=secrets)
    for name, command in configured.commands.items():
        # The table key is the action's name, whatever the entry itself says.
        actions[name] = CommandAction(replace(command, name=name), secrets=secrets)
    return actions
