"""Configuration: the DESIGN shape loads; every bad key or value is refused by name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from incident_fsm.config import ConfigError, load_settings
from incident_fsm.settings import AgentSettings, Settings

from .logcapture import captured_logs

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
    assert api.fallback_local is True and api.same_host is False  # loopback: on this host
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


def test_the_removed_connects_per_minute_still_loads_with_a_warning(tmp_path: Path) -> None:
    with captured_logs() as logs:
        settings = _load(tmp_path, "[channels.pam]\nurl = 'wss://p'\nuser_id = 'ops'\n"
                                   "connects_per_minute = 5\ntoken_file = '/run/pam.token'\n"
                                   "frame_type = 'status_update'\n")
    pam = settings.channels.pam
    assert pam is not None and pam.token_file == "/run/pam.token"
    assert pam.frame_type == "status_update" and pam.messages_per_minute == 60
    (warning,) = [line for line in logs if "connects_per_minute" in line]
    assert warning.startswith("WARNING|") and "no longer used" in warning


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
        ("[channels.pam]\nurl = 'wss://pam'\nuser_id = 'ops'\nmessages_per_minute = 100\n",
         "channels.pam.messages_per_minute", "between 8 and 60"),
        ("[channels.pam]\nurl = 'wss://pam'\nuser_id = 'ops'\nframe_type = 'chat'\n",
         "channels.pam.frame_type", "not 'chat'"),
        ("[channels.pam]\nurl = 'wss://pam'\nuser_id = 'ops'\ntoken_file = 'pam.token'\n",
         "channels.pam.token_file", "absolute path"),
        ("[channels.pam]\nurl = 'wss://pam'\nuser_id = 'ops'\nreply_window = 30\n",
         "channels.pam.reply_window", "reply_window <= timeout"),
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


# --- what acts on the agent's own machine ---------------------------------------------------

REMOTE = "https://x.onrender.com"


def _target(base_url: str, extra: str = "") -> str:
    return f"[[targets]]\nname = 'web'\nbase_url = '{base_url}'\n{extra}"


def test_fallback_local_for_a_remote_target_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _target(REMOTE, "fallback_local = true\n"))
    assert info.value.key == "targets[0].fallback_local"
    message = str(info.value)
    assert "reads the host the agent runs on" in message
    assert f"targets[0].base_url {REMOTE} (target 'web') is not on this host" in message
    assert "same_host = true" in message


def test_cleanup_roots_with_a_remote_target_are_refused_at_load(tmp_path: Path) -> None:
    text = (_target("http://127.0.0.1:8000") + "[[targets]]\nname = 'web2'\n"
            f"base_url = '{REMOTE}'\n[actions.disk_cleanup]\nroots = ['/srv/app/logs']\n")
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert info.value.key == "actions.disk_cleanup.roots"
    message = str(info.value)
    assert "deletes files on the host the agent runs on" in message
    assert f"targets[1].base_url {REMOTE} (target 'web2') is not on this host" in message
    assert "same_host = true" in message


def test_a_remote_target_that_declares_same_host_may_use_both(tmp_path: Path) -> None:
    settings = _load(tmp_path, _target(REMOTE, "same_host = true\nfallback_local = true\n")
                     + "[actions.disk_cleanup]\nroots = ['/srv/app/logs']\n")
    (web,) = settings.targets
    assert web.same_host is True and web.fallback_local is True
    assert settings.actions.disk_cleanup.roots == ("/srv/app/logs",)


@pytest.mark.parametrize("base_url", [
    "http://127.0.0.1:8000", "http://127.8.9.10", "http://[::1]:8000", "http://localhost:8000",
    "http://LOCALHOST", "http://localhost.:8000", "http://[::ffff:127.0.0.1]:8000",
])
def test_a_loopback_target_may_use_both(tmp_path: Path, base_url: str) -> None:
    settings = _load(tmp_path, _target(base_url, "fallback_local = true\n")
                     + "[actions.disk_cleanup]\nroots = ['/srv/app/logs']\n")
    assert settings.targets[0].fallback_local is True
    assert settings.actions.disk_cleanup.roots == ("/srv/app/logs",)


@pytest.mark.parametrize("base_url", [
    # Names are never resolved: each of these may well point at 127.0.0.1.
    "http://127.0.0.1.nip.io", "http://localhost.example.com", "http://my-laptop",
    "http://10.0.0.5:8000", "http://[fe80::1]", "http://0.0.0.0:8000",
])
def test_anything_else_is_not_on_this_host(tmp_path: Path, base_url: str) -> None:
    with pytest.raises(ConfigError, match=r"targets\[0\]\.fallback_local"):
        _load(tmp_path, _target(base_url, "fallback_local = true\n"))
    with pytest.raises(ConfigError, match=r"actions\.disk_cleanup\.roots"):
        _load(tmp_path, _target(base_url) + "[actions.disk_cleanup]\nroots = ['/srv/app']\n")


def test_fallback_local_left_unset_follows_where_the_target_is(tmp_path: Path) -> None:
    settings = _load(tmp_path, _target(REMOTE) + "[[targets]]\nname = 'here'\n"
                               "base_url = 'http://127.0.0.1:9000'\n[[targets]]\n"
                               f"name = 'shared'\nbase_url = '{REMOTE}'\nsame_host = true\n")
    assert [t.fallback_local for t in settings.targets] == [False, True, True]
    off = _load(tmp_path, _target("http://127.0.0.1:9000", "fallback_local = false\n"))
    assert off.targets[0].fallback_local is False


def test_same_host_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _target(REMOTE, "same_host = 'yes'\n"))
    assert info.value.key == "targets[0].same_host"
    assert "true or false" in str(info.value)


def test_every_target_key_is_documented_in_the_readme() -> None:
    from dataclasses import fields

    from incident_fsm.settings import TargetSettings

    text = README.read_text()
    for field in fields(TargetSettings):
        # `name`, `thresholds.memory`, `[[targets.dependencies]]`
        documented = re.search(rf"`(\[\[targets\.)?{field.name}[`.\]]", text)
        assert documented, f"[[targets]] {field.name} is not documented"


def test_a_renamed_key_is_refused_with_its_new_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="renamed: write health_retention") as info:
        _load(tmp_path, "[agent]\nhealth_check_retention = 86400\n")
    assert info.value.key == "agent.health_check_retention"
    with pytest.raises(ConfigError, match="INCIDENT_FSM_HEALTH_RETENTION"):
        load_settings(None, environ={"INCIDENT_FSM_HEALTH_CHECK_RETENTION": "86400"})
    assert _load(tmp_path, "[agent]\nhealth_retention = 0\n").agent.health_retention == 0
    assert Settings().agent.health_retention == 14 * 86400
