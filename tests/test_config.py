"""Configuration: the DESIGN shape loads; every bad key or value is refused by name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from incident_fsm.config import ConfigError, load_settings
from incident_fsm.settings import AgentSettings, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_example() -> str:
    match = re.search(r"<!-- config-example -->\n```toml\n(.*?)```", README.read_text(), re.S)
    assert match, "README has no config example"
    return match.group(1)


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None,
          **overrides: Any) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_settings(path, environ=env or {}, overrides=overrides)


def test_the_readme_example_loads_with_every_section(tmp_path: Path) -> None:
    settings = _load(tmp_path, _readme_example())
    (api,) = settings.targets
    assert api.name == "api" and api.render_service_id == "srv-web"
    assert api.thresholds.memory.critical == 80 and api.thresholds.disk.cleanup == 75
    assert settings.actions.disk_cleanup.roots == ("/var/log/app",)
    assert settings.actions.render.max_instances == 3
    assert settings.actions.commands["restart_workers"].argv == (
        "systemctl", "restart", "celery-worker")
    assert settings.policy["disk_high"] == ("disk_cleanup",)
    assert settings.channels.pam is not None and settings.channels.pam.token_env == "PAM_TOKEN"
    assert settings.channels.webhook is not None
    assert settings.agent.verify_window == 90
    tuned = _load(tmp_path, "[channels]\nmax_attempts = 3\n[channels.pam]\nurl = 'wss://p'\n"
                            "user_id = 'ops'\nreconnect_max = 60\n")
    assert tuned.channels.max_attempts == 3
    assert tuned.channels.pam is not None and tuned.channels.pam.reconnect_max == 60


def test_no_file_gives_the_defaults() -> None:
    assert load_settings(None, environ={}) == Settings()


def test_environment_over_file_and_flags_over_both(tmp_path: Path) -> None:
    text = "[agent]\nauto_remediation = true\npoll_interval = 30\nfast_poll_interval = 10\n"
    env = {"AUTO_REMEDIATION_ENABLED": "false", "INCIDENT_FSM_POLL_INTERVAL": "12.5",
           "PAM_INTEGRATION_ENABLED": "off", "INCIDENT_FSM_DATABASE_URL": "sqlite:///x.db"}
    settings = _load(tmp_path, text, env)
    assert settings.agent.auto_remediation is False
    assert settings.agent.pam_integration is False
    assert settings.agent.poll_interval == 12.5
    assert settings.agent.database_url == "sqlite:///x.db"
    flagged = _load(tmp_path, text, env, poll_interval=20.0, auto_remediation=True,
                    fast_poll_interval=None)
    assert flagged.agent.poll_interval == 20.0 and flagged.agent.auto_remediation is True
    assert flagged.agent.fast_poll_interval == 10


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[agent]\npoll_intervall = 3\n", "agent.poll_intervall", "unknown key"),
        ("[agnet]\n", "agnet", "unknown key"),
        ("[agent]\npoll_interval = 0\n", "agent.poll_interval", "greater than 0"),
        ("[agent]\npoll_interval = 5\nfast_poll_interval = 10\n", "agent.fast_poll_interval",
         "must not exceed"),
        ("[agent]\nenabled = 'yes'\n", "agent.enabled", "true or false"),
        ("[agent]\nmax_strikes = 2.5\n", "agent.max_strikes", "whole number"),
        ("[agent]\nverify_window = true\n", "agent.verify_window", "must be a number"),
        ("[agent]\nverify_window = nan\n", "agent.verify_window", "finite"),
        ("[[targets]]\nbase_url = 'http://x'\n", "targets[0].name", "is required"),
        ("[[targets]]\nname = 'a'\nbase_url = 'ftp://x'\n", "targets[0].base_url", "http"),
        ("[[targets]]\nname = 'a'\nbase_url = 'http://u:pw@x'\n", "targets[0].base_url",
         "credentials"),
        ("[[targets]]\nname = 'a'\nbase_url = 'http://x'\nendpoints = ['health']\n",
         "targets[0].endpoints[0]", "absolute URL path"),
        ("[[targets]]\nname = 'a'\nbase_url = 'http://x'\n[[targets]]\nname = 'a'\n"
         "base_url = 'http://y'\n", "targets[1].name", "duplicate"),
        ("[[targets]]\nname = 'a'\nbase_url = 'http://x'\n[targets.thresholds]\n"
         "memory = { critical = 80, clear = 85 }\n", "targets[0].thresholds.memory.clear",
         "below critical"),
        ("[[targets]]\nname = 'a'\nbase_url = 'http://x'\n[targets.thresholds]\n"
         "disk = { critical = 120 }\n", "targets[0].thresholds.disk.critical", "percentage"),
        ("[[targets]]\nname = 'a'\nbase_url = 'http://x'\n[targets.thresholds]\n"
         "cpu = { cleanup = 50 }\n", "targets[0].thresholds.cpu.cleanup", "unknown key"),
        ("[[targets]]\nname = 'a'\nbase_url = 'http://x'\n[[targets.dependencies]]\n"
         "name = 'celery'\nkind = 'celery'\n", "targets[0].dependencies[0].url_env", "needs"),
        ("[[targets]]\nname = 'a'\nbase_url = 'http://x'\n[[targets.dependencies]]\n"
         "name = 'db'\nkind = 'mysql'\n", "targets[0].dependencies[0].kind", "one of"),
        ("[actions.commands.restart]\nargv = 'systemctl restart app'\n",
         "actions.commands.restart.argv", "never a shell string"),
        ("[actions.commands.restart]\nargv = ['systemctl restart app']\n",
         "actions.commands.restart.argv", "shell string"),
        ("[actions.commands.restart]\nargv = []\n", "actions.commands.restart.argv",
         "must name a program"),
        ("[actions.commands.restart]\nargv = ['true']\ntier = 'yolo'\n",
         "actions.commands.restart.tier", "safe, major, approval"),
        ("[actions.commands.restart]\nargv = ['true']\nkinds = ['space_low']\n",
         "actions.commands.restart.kinds[0]", "unknown problem kind"),
        ("[actions.commands.disk_cleanup]\nargv = ['rm']\n", "actions.commands.disk_cleanup",
         "built-in"),
        ("[actions.disk_cleanup]\nroots = ['/']\n", "actions.disk_cleanup.roots[0]",
         "below /"),
        ("[actions.disk_cleanup]\nroots = ['/var/log/../../etc']\n",
         "actions.disk_cleanup.roots[0]", "'..'"),
        ("[actions.disk_cleanup]\nroots = ['/etc']\n", "actions.disk_cleanup.roots[0]",
         "system folder"),
        ("[actions.disk_cleanup]\nroots = ['logs']\n", "actions.disk_cleanup.roots[0]",
         "absolute"),
        ("[actions.render]\napi_key = 'rnd_secret'\n", "actions.render.api_key", "unknown key"),
        ("[actions.render]\nmin_instances = 4\nmax_instances = 3\n",
         "actions.render.max_instances", "min_instances <= max_instances"),
        ("[actions.failover]\ntier = 'safe'\n", "actions.failover", "exactly one of url or argv"),
        ("[policy]\ndisk_high = ['rm_rf']\n", "policy.disk_high[0]", "unknown action"),
        ("[policy]\nspace_low = ['disk_cleanup']\n", "policy.space_low", "unknown problem kind"),
        ("[channels.pam]\nurl = 'wss://pam'\n", "channels.pam.user_id", "is required"),
        ("[channels.pam]\nurl = 'wss://pam?token=abc'\nuser_id = 'ops'\n", "channels.pam.url",
         "credentials or a query"),
        ("[channels.pam]\nurl = 'wss://pam'\nuser_id = 'ops'\nmessages_per_minute = 500\n",
         "channels.pam.messages_per_minute", "PAM's own limit"),
        ("[channels.slack]\nurl = 'https://x'\n", "channels.slack", "unknown key"),
        ("[channels]\nmax_attempts = 0\n", "channels.max_attempts", "at least 1"),
        ("[channels]\nretry_initial = 60\nretry_max = 5\n", "channels.retry_max",
         "retry_initial <= retry_max"),
        ("[channels.pam]\nurl = 'wss://pam'\nuser_id = 'ops'\nconnects_per_minute = 9\n",
         "channels.pam.connects_per_minute", "PAM's own limit"),
        ("[agent\n", "config.toml", "not valid TOML"),
    ],
)
def test_bad_configuration_is_refused_with_the_key_named(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert info.value.key.endswith(key), info.value
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("env", "key"),
    [({"AUTO_REMEDIATION_ENABLED": "maybe"}, "AUTO_REMEDIATION_ENABLED"),
     ({"INCIDENT_FSM_POLL_INTERVAL": "soon"}, "INCIDENT_FSM_POLL_INTERVAL"),
     ({"INCIDENT_FSM_POLL_INTERVAL": "0"}, "agent.poll_interval"),
     ({"INCIDENT_FSM_MAX_STRIKES": "1.5"}, "INCIDENT_FSM_MAX_STRIKES")],
)
def test_bad_environment_values_are_refused_by_variable(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ=env)
    assert info.value.key == key


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_every_agent_key_is_documented_in_the_readme() -> None:
    from dataclasses import fields

    text = README.read_text()
    for field in fields(AgentSettings):
        assert f"`{field.name}`" in text, f"[agent] {field.name} is not documented"
