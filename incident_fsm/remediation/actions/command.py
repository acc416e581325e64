"""Allow-listed commands: a fixed argv from configuration, run without a shell, with a time limit.

Only argv lists written in the configuration ever run; nothing read from a
health payload or an incident reaches them. The process starts in its own
session so that a timeout kills it together with anything it spawned.
Output (stdout and stderr, interleaved) is kept up to a bound, redacted, and
reported with the exit code.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import anyio
from anyio.abc import Process

from incident_fsm.clock import Clock
from incident_fsm.errors import InvalidInput
from incident_fsm.remediation.actions.base import ActionContext, Outcome, Tier, parse_tier
from incident_fsm.remediation.actions.redaction import excerpt, redact
from incident_fsm.settings import CommandSettings
from incident_fsm.timebox import within

#: Bytes of output kept (the tail): enough for an error message, bounded for memory.
OUTPUT_LIMIT: Final = 64 * 1024


def checked_argv(argv: object, *, what: str) -> tuple[str, ...]:
    """`argv` as a tuple of strings, or `InvalidInput` if it could be a shell string."""
    if isinstance(argv, str | bytes):
        raise InvalidInput(f"{what}: argv must be a list of arguments, never a shell string")
    if not isinstance(argv, Sequence) or not argv:
        raise InvalidInput(f"{what}: argv must be a non-empty list of arguments")
    out = tuple(argv)
    if not all(isinstance(a, str) for a in out):
        raise InvalidInput(f"{what}: every argument must be a string")
    if not out[0].strip() or any(c.isspace() for c in out[0]):
        raise InvalidInput(
            f"{what}: the program {out[0]!r} looks like a command line; split it into arguments"
        )
    if any("\0" in a for a in out):
        raise InvalidInput(f"{what}: arguments must not contain NUL characters")
    return out


async def run_argv(argv: Sequence[str], *, clock: Clock, limit: float,
                   secrets: Iterable[str] = ()) -> Outcome:
    """Run `argv` (no shell), killing its whole process group after `limit` seconds.

    The limit is measured on `clock` (not the event loop's own time), so it
    holds in virtual time too.
    """
    shown = redact(shlex.join(argv), secrets)
    evidence = {"argv": shown}
    try:
        process = await anyio.open_process(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    except OSError as exc:
        return Outcome.failed(f"could not start {argv[0]}: {exc.strerror or type(exc).__name__}",
                              evidence=evidence)
    tail = bytearray()

    async def collect() -> int:
        assert process.stdout is not None
        async for chunk in process.stdout:
            tail.extend(chunk)
            del tail[:-OUTPUT_LIMIT]
        return await process.wait()

    try:
        code = await within(clock, limit, collect)
    except TimeoutError:
        await _kill(process)
        return Outcome.timed_out(
            f"{shown} still running after {limit:g} s: killed",
            evidence={**evidence, "pid": process.pid}, output_excerpt=excerpt(bytes(tail), secrets),
        )
    except BaseException:
        await _kill(process)
        raise
    await process.aclose()
    output = excerpt(bytes(tail), secrets)
    fields = {"evidence": {**evidence, "pid": process.pid}, "output_excerpt": output,
              "exit_code": code}
    if code == 0:
        return Outcome.ok(f"{shown} exited 0", **fields)
    return Outcome.failed(f"{shown} exited {code}", **fields)


async def _kill(process: Process) -> None:
    # Shielded: the process must be gone (and reaped) even when we are being cancelled.
    with anyio.CancelScope(shield=True):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is gone already
        except PermissionError:
            if process.returncode is None:
                process.kill()
        await process.aclose()


class CommandAction:
    """An allow-listed command from `[actions.commands.<name>]`."""

    def __init__(self, settings: CommandSettings, *,
                 secrets: Callable[[], Iterable[str]] = tuple) -> None:
        what = f"actions.commands.{settings.name}"
        self.argv = checked_argv(settings.argv, what=what)
        if settings.timeout <= 0:
            raise InvalidInput(f"{what}: timeout must be greater than 0")
        self.name = settings.name
        self.kinds = frozenset(settings.kinds)
        self.tier: Tier = parse_tier(settings.tier, what=what)
        self.timeout = settings.timeout
        self._secrets = secrets

    async def run(self, ctx: ActionContext) -> Outcome:
        secrets = tuple(self._secrets())
        if ctx.dry_run:
            shown = redact(shlex.join(self.argv), secrets)
            return Outcome.ok(f"would run {shown}", evidence={"dry_run": True, "argv": shown})
        return await run_argv(self.argv, clock=ctx.clock,
                              limit=min(self.timeout, ctx.remaining()), secrets=secrets)
