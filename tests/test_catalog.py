"""The catalog: which actions each target gets from the settings."""

from __future__ import annotations

from types import MappingProxyType

import httpx
import pytest

from incident_fsm.errors import InvalidInput
from incident_fsm.remediation.actions.catalog import Catalog, secret_names
from incident_fsm.remediation.actions.command import CommandAction
from incident_fsm.remediation.actions.disk_cleanup import DiskCleanup
from incident_fsm.remediation.actions.failover import Failover
from incident_fsm.remediation.actions.render import RenderRestart, RenderScale
from incident_fsm.settings import (
    ActionsSettings,
    ChannelsSettings,
    CommandSettings,
    DiskCleanupSettings,
    FailoverSettings,
    PamSettings,
    Settings,
    TargetSettings,
)

pytestmark = pytest.mark.anyio


def settings(**actions: object) -> Settings:
    return Settings(
        targets=(
            TargetSettings(name="web", base_url="https://web.test", render_service_id="srv-web",
                           worker_service_id="srv-worker"),
            TargetSettings(name="bare", base_url="https://bare.test"),
        ),
        actions=ActionsSettings(**actions),  # type: ignore[arg-type]
        channels=ChannelsSettings(pam=PamSettings(url="wss://pam.test", user_id="ops")),
    )


async def test_each_target_gets_what_its_settings_enable() -> None:
    configured = settings(
        disk_cleanup=DiskCleanupSettings(roots=("/var/log/app",)),
        failover=FailoverSettings(url="https://hooks.test/failover"),
        commands=MappingProxyType({"flush_cache": CommandSettings(
            name="ignored", argv=("/usr/bin/redis-cli", "FLUSHALL"), kinds=("memory_high",))}),
    )
    async with httpx.AsyncClient() as http:
        catalog = Catalog.from_settings(configured, http=http, environ={})
    web = catalog.for_target("web")
    assert sorted(web) == ["disk_cleanup", "failover", "flush_cache", "render_restart",
                           "render_scale", "restart_celery_workers"]
    assert isinstance(web["disk_cleanup"], DiskCleanup)
    assert isinstance(web["render_scale"], RenderScale)
    workers = web["restart_celery_workers"]
    assert isinstance(workers, RenderRestart) and workers.service_id == "srv-worker"
    assert workers.kinds == {"memory_high", "service_down:celery"}
    assert isinstance(web["failover"], Failover)
    assert web["flush_cache"].name == "flush_cache"
    assert sorted(catalog.for_target("bare")) == ["disk_cleanup", "failover", "flush_cache"]
    assert catalog.for_target("unknown") == {}


async def test_a_command_named_like_a_built_in_replaces_it() -> None:
    configured = settings(commands=MappingProxyType({"restart_celery_workers": CommandSettings(
        name="restart_celery_workers", argv=("systemctl", "restart", "celery"))}))
    async with httpx.AsyncClient() as http:
        web = Catalog.from_settings(configured, http=http, environ={}).for_target("web")
    assert isinstance(web["restart_celery_workers"], CommandAction)


async def test_bad_settings_are_refused_with_the_key_named() -> None:
    configured = settings(commands=MappingProxyType({"bad": CommandSettings(
        name="bad", argv="rm -rf /tmp/x")}))  # type: ignore[arg-type]
    async with httpx.AsyncClient() as http:
        with pytest.raises(InvalidInput, match=r"actions\.commands\.bad: argv must be a list"):
            Catalog.from_settings(configured, http=http, environ={})


def test_secret_names_cover_every_configured_secret() -> None:
    configured = settings(failover=FailoverSettings(url="https://h.test", secret_env="HOOK_KEY"))
    assert secret_names(configured) == ("RENDER_API_KEY", "HOOK_KEY", "PAM_TOKEN")
