"""The values of a configuration: typed from TOML or the environment, each checked by its rule.

`ConfigError` names the key it is about. `simple` builds a settings
dataclass from one table, refusing unknown keys and values of the wrong
type; the `check_*` rules are those a single value must follow wherever it
appears (a name, a URL, a path, an argv, a tier, a problem kind).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from incident_fsm.errors import InvalidInput
from incident_fsm.settings import STATIC_KINDS, AgentSettings, service_down

T = TypeVar("T")

TIERS = ("safe", "major", "approval")
#: the sub-tables of [channels], one per channel
CHANNEL_TABLES = ("pam", "webhook", "pam_inprocess", "pam_relay")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(InvalidInput):
    """The configuration is invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"{key}: {problem}")



def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def field_type(name: str, cls: type = AgentSettings) -> str:
    return str(next(f.type for f in fields(cls) if f.name == name))


def simple(cls: type[T], raw: Mapping[str, Any], key: str,
            required: tuple[str, ...] = ()) -> T:
    """A dataclass of scalar / list fields from a TOML table, every value type-checked."""
    names = {f.name: str(f.type) for f in fields(cls)}  # type: ignore[arg-type]
    # Nested tables are parsed by their own functions before this is called.
    nested = {"thresholds", "dependencies", *CHANNEL_TABLES}
    known(raw, key, tuple(n for n in names if n not in nested))
    for name in required:
        if name not in raw:
            raise ConfigError(f"{key}.{name}", "is required")
    values = {name: coerce(f"{key}.{name}", value, names[name]) for name, value in raw.items()}
    return cls(**values)


def coerce(key: str, value: Any, type_name: str) -> Any:
    optional = type_name.endswith("| None")
    base = type_name.removesuffix(" | None")
    if value is None:
        if optional:
            return None
        raise ConfigError(key, "must be set")
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {_show(value)}")
        return value
    if base in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {_show(value)}")
        if not math.isfinite(value):
            raise ConfigError(key, "must be a finite number")
        if base == "int":
            if value != int(value):
                raise ConfigError(key, f"must be a whole number, got {value}")
            return int(value)
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {_show(value)}")
        return value
    if base == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"must be a list of strings, got {_show(value)}")
        return tuple(value)
    raise ConfigError(key, f"cannot be set here (type {type_name})")  # pragma: no cover


def from_env_text(variable: str, text: str, type_name: str) -> Any:
    base = type_name.removesuffix(" | None")
    if base == "bool":
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ConfigError(variable, f"must be one of {'/'.join(_TRUE + _FALSE)}")
    if base in ("float", "int"):
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(variable, "must be a number") from None
        return coerce(variable, number, base)
    return text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: Keys that were renamed: old name -> new name (same meaning).
RENAMED: Final = {"health_check_retention": "health_retention"}


def known(raw: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    for name in raw:
        if name in RENAMED and RENAMED[name] in allowed:
            where = f"{key}.{name}" if key else name
            raise ConfigError(where, f"renamed: write {RENAMED[name]} (same meaning)")
        if name not in allowed:
            where = f"{key}.{name}" if key else name
            raise ConfigError(where, f"unknown key (known here: {', '.join(sorted(allowed))})")


def table(raw: Mapping[str, Any], name: str, key: str) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a table")
    return value


def list_of_tables(raw: Mapping[str, Any], name: str, key: str) -> list[Mapping[str, Any]]:
    value = raw.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(key, f"must be an array of tables ([[{key}]])")
    return value


def check_name(name: str, key: str) -> None:
    if not name or len(name) > 100 or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(key, "must be 1-100 characters of letters, digits, '-', '_' or '.'")


def check_url(url: str, key: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(key, f"must be a {'/'.join(schemes)} URL with a host")
    if parts.password or parts.query:
        raise ConfigError(key, "must not carry credentials or a query: name an *_env variable")


def check_path(path: str, key: str) -> None:
    if not path.startswith("/") or ".." in path.split("/") or "?" in path:
        raise ConfigError(key, "must be an absolute URL path like /health/resources")


def check_cleanup_root(root: str, key: str) -> None:
    if not os.path.isabs(root):
        raise ConfigError(key, "must be an absolute path")
    normal = os.path.normpath(root)
    if normal == "/" or ".." in Path(root).parts:
        raise ConfigError(key, "must be a folder below / without '..' (cleanup never leaves it)")
    if normal in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys",
                  "/usr", "/var", "/home", "/root"):
        raise ConfigError(key, f"{normal} is a system folder; name the application's own folder")


def check_argv(argv: tuple[str, ...], key: str) -> None:
    if not argv or not argv[0]:
        raise ConfigError(key, "must name a program")
    if len(argv) == 1 and " " in argv[0]:
        raise ConfigError(key, "looks like a shell string; split it into a list of arguments")


def check_tier(tier: str, key: str) -> None:
    if tier not in TIERS:
        raise ConfigError(key, f"must be one of {', '.join(TIERS)}")


def check_kind(kind: str, key: str) -> None:
    if kind in STATIC_KINDS:
        return
    prefix = service_down("")
    if kind.startswith(prefix) and kind[len(prefix):]:
        check_name(kind[len(prefix):], key)
        return
    raise ConfigError(key, f"unknown problem kind {kind!r}; kinds are "
                           f"{', '.join(STATIC_KINDS)} and service_down:<dependency>")
