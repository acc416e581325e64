"""Loading the configuration: one TOML file, environment variables over it, CLI flags over both.

`load_settings` returns a validated `Settings` or raises `ConfigError` naming
the offending key (`targets[0].thresholds.memory.clear: must be below
critical (80)`). Unknown keys are errors, not ignored: a typo must not
silently fall back to a default. Secrets are never accepted as values: the
file names the environment variable that holds them (`api_key_env`,
`token_env`, `secret_env`, `url_env`).

Environment variables (each overrides the `[agent]` key beside it):

    INCIDENT_FSM_DATABASE_URL        agent.database_url
    AUTONOMOUS_MONITORING_ENABLED    agent.enabled
    AUTO_REMEDIATION_ENABLED         agent.auto_remediation
    PAM_INTEGRATION_ENABLED          agent.pam_integration
    INCIDENT_FSM_<KEY>               agent.<key> for every other [agent] key,
                                     e.g. INCIDENT_FSM_POLL_INTERVAL=5

This package: `values` (typed values and the rules of one value),
`sections` (each table of the file and the rules across its keys), and the
loading itself here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from incident_fsm.config.sections import check_agent, parse_sections
from incident_fsm.config.values import (
    RENAMED,
    ConfigError,
    coerce,
    field_names,
    field_type,
    from_env_text,
)
from incident_fsm.settings import AgentSettings, Settings

__all__ = ["ENV_FLAGS", "ConfigError", "load_settings"]

ENV_FLAGS = {
    "INCIDENT_FSM_DATABASE_URL": "database_url",
    "AUTONOMOUS_MONITORING_ENABLED": "enabled",
    "AUTO_REMEDIATION_ENABLED": "auto_remediation",
    "PAM_INTEGRATION_ENABLED": "pam_integration",
}


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from a TOML file (optional), the environment, and CLI overrides.

    `overrides` maps `[agent]` keys to values already typed by the CLI
    (None means "not given").
    """
    raw: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(str(file), "configuration file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file), f"not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(str(file), f"cannot be read: {exc.strerror}") from None
    env = os.environ if environ is None else environ
    settings = parse_sections(raw)
    agent = _agent_from_env(settings.agent, env)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in field_names(AgentSettings):
            raise ConfigError(f"--{key.replace('_', '-')}", "unknown setting")
        agent = replace(agent, **{key: coerce(f"agent.{key}", value, field_type(key))})
    check_agent(agent, "agent")
    return replace(settings, agent=agent)


def _agent_from_env(agent: AgentSettings, env: Mapping[str, str]) -> AgentSettings:
    changes: dict[str, Any] = {}
    for old, new in RENAMED.items():
        if env.get(f"INCIDENT_FSM_{old.upper()}", ""):
            raise ConfigError(f"INCIDENT_FSM_{old.upper()}",
                              f"renamed: set INCIDENT_FSM_{new.upper()} (same meaning)")
    for name in field_names(AgentSettings):
        variable = next((v for v, k in ENV_FLAGS.items() if k == name),
                        f"INCIDENT_FSM_{name.upper()}")
        if variable in env and env[variable] != "":
            changes[name] = from_env_text(variable, env[variable], field_type(name))
    return replace(agent, **changes)

