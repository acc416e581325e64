"""Health-endpoint payloads exactly as REFERENCE.md describes them, built from three numbers.

`resources()` reproduces `/health/resources` with the service's own
thresholds (memory 65/80, disk 75/85, cpu 85/95, `>=`) and its quirk that one
critical component yields `"WARNING"` (two are needed for `"CRITICAL"`);
`system()` reproduces `/health/system` (strict `>`: cpu 75/90, memory
80/90, disk 85/95); `legacy_system()` the older `SUCCESS`/`data` variant.
"""

from __future__ import annotations

from typing import Any

#: (memory, disk, cpu) at the three levels the tests use
LEVELS: dict[str, tuple[float, float, float]] = {
    "normal": (50.0, 60.0, 12.5),
    "warning": (70.0, 78.0, 88.0),  # our disk cleanup level (75) is crossed, nothing critical
    "critical": (85.0, 90.0, 96.0),
}

ERROR_200: dict[str, Any] = {
    "status": "ERROR",
    "message": "Failed to get resource usage: psutil.AccessDenied",
    "timestamp": "2026-11-29T15:20:16.710037",
}

_RESOURCE_LIMITS = {"memory": (65.0, 80.0), "disk": (75.0, 85.0), "cpu": (85.0, 95.0)}
_SYSTEM_LIMITS = {"cpu": (75.0, 90.0), "memory": (80.0, 90.0), "disk": (85.0, 95.0)}


def resources(memory: float, disk: float, cpu: float) -> dict[str, Any]:
    values = {"memory": memory, "disk": disk, "cpu": cpu}
    alerts = []
    for component, (warn, crit) in _RESOURCE_LIMITS.items():
        value = values[component]
        if value >= crit:
            level, threshold = "CRITICAL", crit
        elif value >= warn:
            level, threshold = "WARNING", warn
        else:
            continue
        alerts.append({"component": component, "level": level,
                       "message": f"{level.title()} {component} usage: {value}%",
                       "value": value, "threshold": threshold})
    criticals = sum(1 for a in alerts if a["level"] == "CRITICAL")
    # The service's quirk: CRITICAL needs two critical components.
    status = "CRITICAL" if criticals >= 2 else "WARNING" if alerts else "HEALTHY"
    return {
        "status": status,
        "health_score": round(100.0 * (3 - len(alerts)) / 3, 2),
        "alerts": len(alerts),
        "alert_details": alerts,
        "stats": {"memory_pct": memory, "disk_pct": disk, "cpu_pct": cpu},
        "timestamp": "2026-11-29T15:20:16.710037",
    }


def system(memory: float, disk: float, cpu: float) -> dict[str, Any]:
    values = {"memory": memory, "disk": disk, "cpu": cpu}
    statuses = {}
    issues = []
    for name, (degraded, unhealthy) in _SYSTEM_LIMITS.items():
        value = values[name]
        statuses[name] = ("unhealthy" if value > unhealthy else
                          "degraded" if value > degraded else "healthy")
        if statuses[name] != "healthy":
            issues.append(f"High {name} usage: {value}%")
    overall = ("unhealthy" if "unhealthy" in statuses.values() else
               "degraded" if "degraded" in statuses.values() else "healthy")
    return {
        "status": overall,
        "checks": {
            "cpu": {"status": statuses["cpu"], "usage_percent": cpu, "cores": 2},
            "memory": {"status": statuses["memory"], "usage_percent": memory,
                       "available_gb": round(2.0 * (100 - memory) / 100, 2), "total_gb": 2.0},
            "disk": {"status": statuses["disk"], "usage_percent": disk,
                     "free_gb": round(10.0 * (100 - disk) / 100, 2), "total_gb": 10.0},
            "process": {"status": "healthy", "memory_mb": 310.2, "threads": 17,
                        "uptime_seconds": 86400},
        },
        "issues": issues,
        "timestamp": "2026-11-29T15:20:16Z",
    }


def legacy_system(memory: float, disk: float, cpu: float) -> dict[str, Any]:
    return {
        "status": "SUCCESS",
        "data": {"memory_percent": memory, "disk_percent": disk, "cpu_percent": cpu,
                 "memory_used_gb": 1.2, "disk_free_gb": 3.9},
        "timestamp": 1795965616.71,
    }
