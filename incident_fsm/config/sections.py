"""The sections of a configuration file: each table parsed into its settings, with its rules.

`parse_sections` reads `[agent]`, `[[targets]]`, `[actions]`, `[policy]` and
`[channels]`; a rule that relates keys (a clear level below its critical
one, cleanup only on this host, a policy naming known actions) lives with
its section. The loader applies `check_agent` only once the environment
and the flags have had their say, since either may change `[agent]`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from loguru import logger

from incident_fsm.config.values import (
    CHANNEL_TABLES,
    ConfigError,
    check_argv,
    check_cleanup_root,
    check_kind,
    check_name,
    check_path,
    check_tier,
    check_url,
    coerce,
    known,
    list_of_tables,
    simple,
    table,
)
from incident_fsm.settings import (
    ActionsSettings,
    AgentSettings,
    ChannelsSettings,
    CommandSettings,
    DependencyCheck,
    DiskCleanupSettings,
    FailoverSettings,
    PamInProcessSettings,
    PamRelaySettings,
    PamSettings,
    RenderSettings,
    Settings,
    TargetSettings,
    Threshold,
    Thresholds,
    WebhookSettings,
)

BUILTIN_ACTIONS = (
    "disk_cleanup", "restart_celery_workers", "render_restart", "render_scale", "failover",
)
DEPENDENCY_KINDS = ("redis", "celery", "http")
#: the PAM channel keeps 6 frames a minute for pongs and needs 2 per notification
#: (the frame and its probe): below this nothing could ever go out
PAM_MIN_MESSAGES = 8


def parse_sections(raw: Mapping[str, Any]) -> Settings:
    known(raw, "", ("agent", "targets", "actions", "policy", "channels"))
    agent = simple(AgentSettings, table(raw, "agent", "agent"), "agent")
    targets = tuple(
        _target(item, f"targets[{i}]")
        for i, item in enumerate(list_of_tables(raw, "targets", "targets"))
    )
    names = [t.name for t in targets]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"targets[{i}].name", f"duplicate target name {name!r}")
    actions = _actions(table(raw, "actions", "actions"))
    _check_cleanup_targets(actions.disk_cleanup, targets)
    policy = _policy(table(raw, "policy", "policy"), actions)
    channels = _channels(table(raw, "channels", "channels"))
    return Settings(agent=agent, targets=targets, actions=actions, policy=policy,
                    channels=channels)



def check_agent(agent: AgentSettings, key: str) -> None:
    for name in ("poll_interval", "fast_poll_interval", "verify_window", "detect_deadline",
                 "action_deadline", "reopen_window", "escalation_repeat",
                 "action_budget_window", "flap_window"):
        if getattr(agent, name) <= 0:
            raise ConfigError(f"{key}.{name}", "must be greater than 0")
    if agent.fast_poll_interval > agent.poll_interval:
        raise ConfigError(f"{key}.fast_poll_interval",
                          f"must not exceed poll_interval ({agent.poll_interval})")
    if not 0 < agent.leader_renew < agent.leader_ttl / 2:
        raise ConfigError(f"{key}.leader_renew",
                          f"must be above 0 and below half of leader_ttl ({agent.leader_ttl})")
    for name in ("max_strikes", "action_budget", "flap_threshold"):
        if getattr(agent, name) < 1:
            raise ConfigError(f"{key}.{name}", "must be at least 1")
    if agent.status_token_env is not None and not agent.status_token_env.strip():
        raise ConfigError(f"{key}.status_token_env",
                          "must name the variable holding the token (or be left out)")


def _target(raw: Mapping[str, Any], key: str) -> TargetSettings:
    thresholds_raw = table(raw, "thresholds", f"{key}.thresholds")
    dependencies_raw = list_of_tables(raw, "dependencies", f"{key}.dependencies")
    scalars = {k: v for k, v in raw.items() if k not in ("thresholds", "dependencies")}
    target = simple(TargetSettings, scalars, key, required=("name", "base_url"))
    check_name(target.name, f"{key}.name")
    check_url(target.base_url, f"{key}.base_url", ("http", "https"))
    if not target.endpoints:
        raise ConfigError(f"{key}.endpoints", "needs at least one endpoint")
    for i, endpoint in enumerate(target.endpoints):
        check_path(endpoint, f"{key}.endpoints[{i}]")
    if target.ready_endpoint is not None:
        check_path(target.ready_endpoint, f"{key}.ready_endpoint")
    for i, mount in enumerate(target.local_mounts):
        if not os.path.isabs(mount):
            raise ConfigError(f"{key}.local_mounts[{i}]", "must be an absolute path")
    if target.probe_timeout <= 0:
        raise ConfigError(f"{key}.probe_timeout", "must be greater than 0")
    if target.failures_before_down < 1:
        raise ConfigError(f"{key}.failures_before_down", "must be at least 1")
    if target.max_requests_per_minute < 1:
        raise ConfigError(f"{key}.max_requests_per_minute", "must be at least 1")
    on_host = _on_this_host(target)
    if "fallback_local" not in raw:
        # Unset: on where it means the target's own machine, off where it would read ours.
        target = replace(target, fallback_local=on_host)
    elif target.fallback_local and not on_host:
        raise ConfigError(f"{key}.fallback_local",
                          f"fallback_local reads the host the agent runs on, but "
                          f"{_not_here(target, key)}")
    dependencies = tuple(
        _dependency(item, f"{key}.dependencies[{i}]") for i, item in enumerate(dependencies_raw)
    )
    return replace(target, thresholds=_thresholds(thresholds_raw, f"{key}.thresholds"),
                   dependencies=dependencies)


def _on_this_host(target: TargetSettings) -> bool:
    """Whether `target` runs on the machine the agent runs on (shares its filesystem).

    True for a loopback `base_url` (127.0.0.0/8, ::1, localhost) or when the
    target declares `same_host`. Names are never resolved: DNS may say
    anything, and an answer that changes must not change what the agent may do.
    """
    if target.same_host:
        return True
    host = (urlsplit(target.base_url).hostname or "").rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _not_here(target: TargetSettings, key: str) -> str:
    return (f"{key}.base_url {target.base_url} (target {target.name!r}) is not on this host; "
            "set same_host = true on the target if it shares this machine and filesystem")


def _check_cleanup_targets(cleanup: DiskCleanupSettings,
                           targets: tuple[TargetSettings, ...]) -> None:
    # Every target is offered disk_cleanup once roots are set (actions.catalog),
    # so one remote target is enough for the agent to delete its own files
    # in answer to someone else's full disk.
    if not cleanup.roots:
        return
    for i, target in enumerate(targets):
        if not _on_this_host(target):
            where = _not_here(target, f"targets[{i}]")
            raise ConfigError("actions.disk_cleanup.roots",
                              "disk cleanup deletes files on the host the agent runs on and "
                              f"every target is offered it, but {where} (or remove the roots)")


def _thresholds(raw: Mapping[str, Any], key: str) -> Thresholds:
    known(raw, key, ("memory", "disk", "cpu"))
    defaults = Thresholds()
    result: dict[str, Threshold] = {}
    for name in ("memory", "disk", "cpu"):
        sub = table(raw, name, f"{key}.{name}")
        allowed = ("critical", "clear", "warning", "cleanup") if name == "disk" else (
            "critical", "clear", "warning")
        known(sub, f"{key}.{name}", allowed)
        base: Threshold = getattr(defaults, name)
        level = replace(base, **{
            k: coerce(f"{key}.{name}.{k}", v, "float") for k, v in sub.items()
        })
        _check_threshold(level, f"{key}.{name}")
        result[name] = level
    return Thresholds(**result)


def _check_threshold(level: Threshold, key: str) -> None:
    for name in ("critical", "clear", "warning", "cleanup"):
        value = getattr(level, name)
        if value is not None and not 0 < value <= 100:
            raise ConfigError(f"{key}.{name}", f"must be a percentage in (0, 100], got {value}")
    if level.clear >= level.critical:
        raise ConfigError(f"{key}.clear", f"must be below critical ({level.critical})")
    if level.cleanup is not None and not level.clear < level.cleanup <= level.critical:
        raise ConfigError(f"{key}.cleanup",
                          f"must be above clear ({level.clear}) and at most critical "
                          f"({level.critical})")


def _dependency(raw: Mapping[str, Any], key: str) -> DependencyCheck:
    check = simple(DependencyCheck, raw, key, required=("name", "kind"))
    check_name(check.name, f"{key}.name")
    if check.kind not in DEPENDENCY_KINDS:
        raise ConfigError(f"{key}.kind", f"must be one of {', '.join(DEPENDENCY_KINDS)}")
    if check.kind in ("redis", "celery") and not check.url_env:
        raise ConfigError(f"{key}.url_env",
                          f"a {check.kind} check needs the environment variable holding its URL")
    if check.kind == "http":
        if check.path is None:
            raise ConfigError(f"{key}.path", "an http check needs a path, e.g. /health/ready")
        check_path(check.path, f"{key}.path")
    if check.timeout <= 0:
        raise ConfigError(f"{key}.timeout", "must be greater than 0")
    return check


def _actions(raw: Mapping[str, Any]) -> ActionsSettings:
    known(raw, "actions", ("disk_cleanup", "render", "commands", "failover"))
    cleanup = simple(DiskCleanupSettings, table(raw, "disk_cleanup", "actions.disk_cleanup"),
                      "actions.disk_cleanup")
    for i, root in enumerate(cleanup.roots):
        check_cleanup_root(root, f"actions.disk_cleanup.roots[{i}]")
    if cleanup.max_age_days < 0:
        raise ConfigError("actions.disk_cleanup.max_age_days", "must not be negative")
    if cleanup.litter_min_age < 0:
        raise ConfigError("actions.disk_cleanup.litter_min_age", "must not be negative")
    if cleanup.compress_over_mb <= 0:
        raise ConfigError("actions.disk_cleanup.compress_over_mb", "must be greater than 0")
    render = simple(RenderSettings, table(raw, "render", "actions.render"), "actions.render")
    check_url(render.api_url, "actions.render.api_url", ("http", "https"))
    if not 0 <= render.min_instances <= render.max_instances:
        raise ConfigError("actions.render.max_instances",
                          "need 0 <= min_instances <= max_instances")
    commands: dict[str, CommandSettings] = {}
    for name, sub in table(raw, "commands", "actions.commands").items():
        key = f"actions.commands.{name}"
        if not isinstance(sub, Mapping):
            raise ConfigError(key, "must be a table with argv, tier, timeout, kinds")
        check_name(name, key)
        if name in BUILTIN_ACTIONS:
            raise ConfigError(key, "a command may not reuse a built-in action's name")
        if isinstance(sub.get("argv"), str):
            raise ConfigError(f"{key}.argv",
                              "must be a list of arguments (argv), never a shell string")
        command = simple(CommandSettings, {**sub, "name": name}, key, required=("argv",))
        check_argv(command.argv, f"{key}.argv")
        check_tier(command.tier, f"{key}.tier")
        for i, kind in enumerate(command.kinds):
            check_kind(kind, f"{key}.kinds[{i}]")
        if command.timeout <= 0:
            raise ConfigError(f"{key}.timeout", "must be greater than 0")
        commands[name] = command
    failover = None
    if "failover" in raw:
        fraw = table(raw, "failover", "actions.failover")
        if isinstance(fraw.get("argv"), str):
            raise ConfigError("actions.failover.argv",
                              "must be a list of arguments (argv), never a shell string")
        failover = simple(FailoverSettings, fraw, "actions.failover")
        if (failover.url is None) == (failover.argv is None):
            raise ConfigError("actions.failover", "set exactly one of url or argv")
        if failover.url is not None:
            check_url(failover.url, "actions.failover.url", ("http", "https"))
        if failover.argv is not None:
            check_argv(failover.argv, "actions.failover.argv")
        check_tier(failover.tier, "actions.failover.tier")
        for i, kind in enumerate(failover.kinds):
            check_kind(kind, f"actions.failover.kinds[{i}]")
    return ActionsSettings(disk_cleanup=cleanup, render=render,
                           commands=MappingProxyType(commands), failover=failover)


def _policy(raw: Mapping[str, Any], actions: ActionsSettings) -> Mapping[str, tuple[str, ...]]:
    known_actions = set(BUILTIN_ACTIONS) | set(actions.commands)
    policy: dict[str, tuple[str, ...]] = {}
    for kind, names in raw.items():
        key = f"policy.{kind}"
        check_kind(kind, key)
        candidates = coerce(key, names, "tuple[str, ...]")
        for i, name in enumerate(candidates):
            if name not in known_actions:
                listed = ", ".join(sorted(known_actions))
                raise ConfigError(f"{key}[{i}]", f"unknown action {name!r}; known: {listed}")
        policy[kind] = candidates
    return MappingProxyType(policy)


def _channels(raw: Mapping[str, Any]) -> ChannelsSettings:
    scalars = {k: v for k, v in raw.items() if k not in CHANNEL_TABLES}
    base = simple(ChannelsSettings, scalars, "channels")
    if base.max_attempts < 1:
        raise ConfigError("channels.max_attempts", "must be at least 1")
    if not 0 < base.retry_initial <= base.retry_max:
        raise ConfigError("channels.retry_max", "need 0 < retry_initial <= retry_max")
    pam = webhook = None
    if "pam" in raw:
        pam_raw = dict(table(raw, "pam", "channels.pam"))
        if pam_raw.pop("connects_per_minute", None) is not None:
            # Removed: PAM does not limit connects. An old file keeps loading.
            logger.warning("channels.pam.connects_per_minute is no longer used (PAM does not "
                           "limit connects); remove it from the configuration")
        pam = simple(PamSettings, pam_raw, "channels.pam", required=("url", "user_id"))
        check_url(pam.url, "channels.pam.url", ("ws", "wss", "http", "https"))
        check_name(pam.user_id, "channels.pam.user_id")
        if not PAM_MIN_MESSAGES <= pam.messages_per_minute <= 60:
            raise ConfigError("channels.pam.messages_per_minute",
                              f"must be between {PAM_MIN_MESSAGES} and 60 (PAM's own limit is 60 "
                              "frames a minute, pongs and delivery probes included)")
        if not pam.frame_type or pam.frame_type == "chat":
            raise ConfigError("channels.pam.frame_type",
                              "must be set and not 'chat' (chat makes PAM's assistant answer)")
        if pam.token_file is not None and not os.path.isabs(pam.token_file):
            raise ConfigError("channels.pam.token_file", "must be an absolute path")
        if not 0 < pam.reply_window <= pam.timeout:
            raise ConfigError("channels.pam.reply_window", "need 0 < reply_window <= timeout")
        if not 0 < pam.reconnect_initial <= pam.reconnect_max:
            raise ConfigError("channels.pam.reconnect_max",
                              "need 0 < reconnect_initial <= reconnect_max")
    if "webhook" in raw:
        webhook = simple(WebhookSettings, table(raw, "webhook", "channels.webhook"),
                          "channels.webhook", required=("url",))
        check_url(webhook.url, "channels.webhook.url", ("http", "https"))
    inprocess = relay = None
    if "pam_inprocess" in raw:
        key = "channels.pam_inprocess"
        inprocess = simple(PamInProcessSettings, table(raw, "pam_inprocess", key), key,
                            required=("user_ids",))
        if inprocess.manager is not None:
            _check_import_path(inprocess.manager, f"{key}.manager")
        _check_pam_users(inprocess.user_ids, inprocess.category, inprocess.timeout, key)
        if inprocess.watch_interval <= 0:
            raise ConfigError(f"{key}.watch_interval", "must be greater than 0")
    if "pam_relay" in raw:
        key = "channels.pam_relay"
        relay = simple(PamRelaySettings, table(raw, "pam_relay", key), key,
                        required=("url", "user_ids"))
        check_url(relay.url, f"{key}.url", ("http", "https"))
        _check_pam_users(relay.user_ids, relay.category, relay.timeout, key)
        if not relay.secret_env:
            raise ConfigError(f"{key}.secret_env", "must name the variable holding the secret")
    return replace(base, pam=pam, webhook=webhook, pam_inprocess=inprocess, pam_relay=relay)


def _check_pam_users(user_ids: tuple[str, ...], category: str, timeout: float, key: str) -> None:
    if not user_ids:
        raise ConfigError(f"{key}.user_ids", "needs at least one PAM user id")
    for i, user in enumerate(user_ids):
        check_name(user, f"{key}.user_ids[{i}]")
    if len(set(user_ids)) != len(user_ids):
        raise ConfigError(f"{key}.user_ids", "lists a user twice")
    if not category:
        raise ConfigError(f"{key}.category", "must not be empty")
    if timeout <= 0:
        raise ConfigError(f"{key}.timeout", "must be greater than 0")


def _check_import_path(path: str, key: str) -> None:
    module, _, attribute = path.partition(":")
    if not (module and attribute and all(p.isidentifier() for p in module.split("."))
            and all(p.isidentifier() for p in attribute.split("."))):
        raise ConfigError(key, "must be 'package.module:attribute', e.g. "
                               "'app.core.websocket_manager:manager'")
