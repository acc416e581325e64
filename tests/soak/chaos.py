"""The chaos schedule: seeded, printed, reproducible; in virtual seconds from the start.

`KINDS` gives each fault its rate per virtual day and its duration; a run of
H hours draws `rate * H / 24` of each (at least one of each when H >= 1),
uniformly over the run after a warm-up, on a target that has no fault of the
same family at that moment, so what each incident answers to stays legible.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MINUTE = 60.0
#: kind -> (per day, duration in virtual seconds, family: faults of one family never overlap
#: on one target; "world" faults have no target)
KINDS: dict[str, tuple[int, float, str]] = {
    "memory_leak": (6, 20 * MINUTE, "memory"),  # a restart fixes it
    "memory_stubborn": (2, 40 * MINUTE, "memory"),  # nothing the agent has fixes it
    "disk_fill": (3, 20 * MINUTE, "disk"),  # old logs: cleanup fixes it
    "disk_stubborn": (2, 40 * MINUTE, "disk"),  # not logs: cleanup cannot
    "worker_death": (4, 20 * MINUTE, "worker"),
    "endpoint_500": (2, 15 * MINUTE, "endpoint"),
    "endpoint_hang": (2, 10 * MINUTE, "endpoint"),
    "endpoint_garbage": (2, 15 * MINUTE, "endpoint"),
    "endpoint_429": (2, 10 * MINUTE, "endpoint"),
    "silence": (2, 60 * MINUTE, "silence"),  # an operator's silence, a leak inside it
    "pam_outage": (3, 30 * MINUTE, "world"),
    "pam_token_expiry": (2, 20 * MINUTE, "world"),
    "render_outage": (2, 20 * MINUTE, "world"),
    "render_429": (2, 15 * MINUTE, "world"),
    "webhook_outage": (2, 20 * MINUTE, "world"),
    "pg_terminate": (4, 0.0, "world"),
    "db_cutoff": (2, 10 * MINUTE, "world"),  # longer than the action deadline (5 min)
    "monitor_only": (2, 40 * MINUTE, "world"),  # replicas restarted with remediation off
    "kill9": (3, 2 * MINUTE, "world"),  # the leader, restarted after the duration
    "sigterm": (3, 2 * MINUTE, "world"),
}
#: virtual seconds before the first fault, and kept calm at the end so the checker
#: judges a settled world
WARM_UP = 10 * MINUTE
COOL_DOWN = 15 * MINUTE
#: the operator looks at what waits for them this often
OPERATOR_EVERY = 30 * MINUTE


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    target: int | None
    duration: float

    def line(self) -> str:
        where = "" if self.target is None else f" on t{self.target}"
        lasting = f" for {self.duration / MINUTE:g} min" if self.duration else ""
        return f"{self.at / 3600:6.2f} h  {self.kind}{where}{lasting}"


def schedule(*, hours: float, targets: int, seed: int) -> list[Fault]:
    """The faults of a run, in time order."""
    rng = random.Random(seed)
    span = hours * 3600.0
    start, end = min(WARM_UP, span * 0.15), span - min(COOL_DOWN, span * 0.25)
    faults: list[Fault] = []
    busy: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for kind, (per_day, duration, family) in KINDS.items():
        count = per_day * hours / 24.0
        count_n = max(1, round(count)) if hours >= 1 else math.floor(count)
        lasting = min(duration, (end - start) / 4)
        for _ in range(count_n):
            for _try in range(50):
                at = rng.uniform(start, max(start, end - lasting))
                target = None if family == "world" else rng.randrange(targets)
                if target is None:
                    break
                spans = busy.setdefault((target, family), [])
                if all(at + lasting <= a or at >= b for a, b in spans):
                    spans.append((at, at + lasting))
                    break
            else:
                continue  # no room on any target: fewer of this kind
            faults.append(Fault(round(at, 1), kind, target, lasting))
    return sorted(faults, key=lambda f: (f.at, f.kind))
