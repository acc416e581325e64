"""The dispatcher: delivers outbox rows to their channels, late if need be, never lost.

One worker per channel, so a dead or slow channel never holds up another, and
nothing here ever blocks the engine or the controller: they only write rows
and call `nudge()`. A worker's pass:

1. ask the channel whether it can take messages now (`blocked_for`);
2. read the channel's due rows, oldest first, skipping any incident whose
   earlier row is still waiting (so an incident's notifications arrive in
   order);
3. claim them (the claim counts the attempt and leases the rows for `lease`
   seconds, so a second replica does not send them too);
4. hand them to the channel, then settle each row: delivered; failed →
   retried after exponential backoff with jitter (or the server's
   Retry-After), and marked `dead` once `max_attempts` attempts failed (the
   incident's timeline shows the dead row and its last error); unavailable
   or not attempted → back to the queue, the attempt not counted.

Between passes a worker waits through the injected clock until the next row
is due, the channel says it is ready again, `nudge()` is called, or
`poll_interval` (15 s) passes (rows written by another process, such as the
CLI; a minute while such writes wake the agent, see `persistence.wakeups`).
An idle pass is one indexed read of the next due time.

Delivery guarantee: **at least once**, per channel. A row is marked
delivered only after the channel took it; if the process dies between the
send and that commit, the lease runs out and the row is sent again, with the
same dedupe key (`incident-<id>-seq-<n>-<channel>`), which every channel
carries (PAM metadata, webhook header and body, log line), so a receiver can
make it *exactly once* by dropping repeats. We chose this over at most once
(commit first, then send) because a lost escalation is worse than a repeated
one. What each channel counts as "took it" is in its module.

Held channels (the PAM ones with `pam_integration = false`) are not delivered: their
rows stay `pending` and go out, oldest first and within the channel's rate,
once the channel is enabled again. Rows of channels that are neither
configured nor held are marked `skipped` at start, with the reason.
"""

from __future__ import annotations

import random as _random
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final, Protocol

import anyio
from loguru import logger

from incident_fsm.backoff import Backoff, keep_running
from incident_fsm.clock import Clock, sleep_or_wake
from incident_fsm.errors import StoreError
from incident_fsm.lazy import HttpClient
from incident_fsm.models import IncidentId, Notification
from incident_fsm.notify.channels.base import Channel, Delivery, DeliveryStatus, Outgoing
from incident_fsm.notify.channels.pam_inprocess import ConnectionManager
from incident_fsm.persistence.wakeups import SAFETY_LOOK
from incident_fsm.settings import Settings
from incident_fsm.vocabulary import NotificationStatus

#: Called after a channel returned, before the outcomes are committed (tests crash here).
AfterSend = Callable[[Sequence[Outgoing], Sequence[Delivery]], Awaitable[None]]

#: The channels `pam_integration = false` holds.
PAM_CHANNELS: Final = ("pam", "pam_inprocess", "pam_relay")
#: Shortest pause after a channel said it is unavailable, so a confused channel cannot spin us.
MIN_PAUSE: Final = 0.5
#: Seconds between two looks at an idle queue: what catches rows another process
#: wrote (the agent's own steps nudge at once).
POLL_INTERVAL: Final = 15.0
#: Seconds between two looks while due rows wait behind a row another sender leased.
LEASED_RECHECK: Final = 5.0


class OutboxQueue(Protocol):
    """What the dispatcher needs of a store: the outbox rows, claimed and settled."""

    async def claim_notifications(self, ids: Sequence[int], *, now: datetime,
                                  lease_until: datetime) -> list[Notification]: ...

    async def due_notifications(self, channel: str, *, now: datetime,
                                limit: int = 50) -> list[Notification]: ...

    async def mark_dead(self, notification_id: int, *, error: str) -> None: ...

    async def mark_delivered(self, ids: Sequence[int], *, at: datetime) -> None: ...

    async def next_notification_due(self, channel: str) -> datetime | None: ...

    async def release_notifications(self, ids: Sequence[int], *,
                                    next_attempt_at: datetime) -> None: ...

    async def reschedule_notification(self, notification_id: int, *, next_attempt_at: datetime,
                                      error: str) -> None: ...

    async def skip_notifications(self, *, keep_channels: Iterable[str], reason: str) -> int: ...


class Dispatcher:
    """Delivers outbox rows per channel. Run `run()` in a task group; `nudge()` after writes."""

    def __init__(
        self,
        store: OutboxQueue,
        channels: Sequence[Channel],
        *,
        clock: Clock,
        held: Collection[str] = (),
        max_attempts: int = 8,
        retry_initial: float = 5.0,
        retry_max: float = 600.0,
        lease: float = 120.0,
        poll_interval: float = POLL_INTERVAL,
        batch_size: int = 20,
        send_timeout: float = 60.0,
        random: Callable[[], float] = _random.random,
        after_send: AfterSend | None = None,
        on_delivery: Callable[[str, str], None] | None = None,
        heard: Callable[[], bool] = lambda: False,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if lease <= send_timeout:
            # A lease that ends while the send is still running lets another replica resend.
            raise ValueError("lease must be longer than send_timeout")
        if not poll_interval > 0:
            raise ValueError("poll_interval must be above 0")
        self._store = store
        self._channels = {c.name: c for c in channels if c.name not in held}
        self._held = frozenset(held)
        self._clock = clock
        self.max_attempts = max_attempts
        # Doubling from retry_initial, capped, jittered into [half, full] so replicas
        # and channels do not retry in lockstep.
        self._retry = Backoff(retry_initial, cap=retry_max, jitter=True, random=random)
        self._lease = timedelta(seconds=lease)
        self._poll = poll_interval
        self._batch = batch_size
        self._send_timeout = send_timeout
        self._after_send = after_send
        #: called with (channel, result) for every row sent: a `DeliveryStatus`, or `dead`
        self._on_delivery = on_delivery
        #: whether other processes' writes wake us now (`nudge`): see persistence.wakeups
        self._heard = heard
        self._wake: dict[str, anyio.Event] = {}

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    def nudge(self) -> None:
        """New rows were written: every worker looks now instead of at its next wake-up."""
        for event in self._wake.values():
            event.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        for name in self._channels:
            self._wake[name] = anyio.Event()
        try:
            skipped = await self._store.skip_notifications(
                keep_channels=self._channels.keys() | self._held,
                reason="channel not configured when the dispatcher started",
            )
            if skipped:
                logger.warning("{} queued notification(s) of unconfigured channels marked skipped",
                               skipped)
        except StoreError as exc:
            logger.warning("could not check for unconfigured channels: {}", exc)
        if self._held:
            logger.info("notification channel(s) {} held: their notifications stay queued",
                        ", ".join(sorted(self._held)))
        async with anyio.create_task_group() as tg:
            for channel in self._channels.values():
                tg.start_soon(self._keep_up, channel)
                tg.start_soon(self._work, channel)

    async def deliver_due(self, channel: Channel) -> float:
        """One pass for one channel; returns how long to wait before the next."""
        blocked = channel.blocked_for()
        if blocked > 0:
            return blocked
        now = self._clock.now()
        # The next due time first: an idle pass is this one indexed read, nothing more.
        due = await self._store.next_notification_due(channel.name)
        # Rows another process writes wake us while that is heard; the look is the net.
        look = SAFETY_LOOK if self._heard() else self._poll
        if due is None:
            return look
        if due > now:
            return min(look, (due - now).total_seconds())
        rows = await self._store.due_notifications(channel.name, now=now, limit=self._batch)
        if not rows:  # only rows behind one another sender leased: it may die any time
            return min(self._poll, LEASED_RECHECK)
        claimed = await self._store.claim_notifications(
            [_id(r) for r in rows], now=now, lease_until=now + self._lease)
        if not claimed:
            return 0.0  # another replica took them
        batch = [_outgoing(row) for row in claimed]
        try:
            with anyio.fail_after(self._send_timeout):
                outcomes = list(await channel.send(batch))
        except TimeoutError:
            outcomes = [Delivery.failed(f"{channel.name} send timed out")] * len(batch)
        except Exception as exc:  # a channel bug must not stop delivery on the others
            outcomes = [Delivery.failed(f"{channel.name} channel error ({type(exc).__name__})")]
        if self._after_send is not None:
            await self._after_send(batch, outcomes)
        return await self._settle(channel, batch, outcomes[:len(batch)])

    async def _settle(self, channel: Channel, batch: Sequence[Outgoing],
                      outcomes: Sequence[Delivery]) -> float:
        now = self._clock.now()
        # Deliveries first: if we die halfway, what was delivered is on record.
        await self._store.mark_delivered(
            [item.notification_id for item, o in zip(batch, outcomes, strict=False)
             if o.status is DeliveryStatus.DELIVERED], at=now)
        # A channel that answers nothing at all is not allowed to make us spin.
        pause = 0.0 if outcomes else MIN_PAUSE
        unsent: list[int] = [item.notification_id for item in batch[len(outcomes):]]
        for item, outcome in zip(batch, outcomes, strict=False):
            self._delivered(channel.name, outcome.status.value)
            if outcome.status is DeliveryStatus.FAILED:
                await self._failed(item, outcome, now)
            elif outcome.status is DeliveryStatus.UNAVAILABLE:
                unsent.append(item.notification_id)
                pause = max(pause, MIN_PAUSE, outcome.retry_after or channel.blocked_for())
        await self._store.release_notifications(unsent, next_attempt_at=now)
        return pause

    async def _failed(self, item: Outgoing, outcome: Delivery, now: datetime) -> None:
        log = logger.bind(incident_id=item.incident_id, dedupe_key=item.dedupe_key)
        if item.attempt >= self.max_attempts:
            error = f"gave up after {item.attempt} attempt(s): {outcome.error}"
            await self._store.mark_dead(item.notification_id, error=error)
            self._delivered(item.channel, NotificationStatus.DEAD.value)
            log.error("❌ Failed to notify via {}: {}", item.channel, error)
            return
        delay = outcome.retry_after if outcome.retry_after is not None else self.backoff(
            item.attempt)
        await self._store.reschedule_notification(
            item.notification_id, next_attempt_at=now + timedelta(seconds=delay),
            error=outcome.error)
        log.info("notification {} attempt {} failed ({}); next in {:.1f} s",
                 item.dedupe_key, item.attempt, outcome.error, delay)

    def _delivered(self, channel: str, result: str) -> None:
        if self._on_delivery is not None:
            self._on_delivery(channel, result)

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt `attempt`: doubling from `retry_initial`, capped, jittered
        into [half, full] so replicas and channels do not retry in lockstep."""
        return self._retry.delay(attempt)

    async def _work(self, channel: Channel) -> None:
        # 2, 4 ... 64 poll intervals, at most 5 minutes; the first pass that works resets it.
        backoff = Backoff(2 * self._poll, cap=min(64 * self._poll, 300.0))
        while True:
            # A fresh event before the pass: a nudge during the pass is not lost.
            wake = self._wake[channel.name] = anyio.Event()
            try:
                delay = await self.deliver_due(channel)
                backoff.reset()
            except Exception as exc:
                # The store is down, or something unforeseen: back off, never die, so the
                # other channels and the agent carry on. StoreError messages are safe to
                # show; of anything else only the class name.
                delay = backoff.next()
                why = str(exc) if isinstance(exc, StoreError) else type(exc).__name__
                logger.warning("{} notifications: {}; retrying in {:.0f} s",
                               channel.name, why, delay)
            await sleep_or_wake(self._clock, delay, wake)

    async def _keep_up(self, channel: Channel) -> None:
        """Run the channel's upkeep; if it crashes, restart it after a growing pause."""
        async def upkeep() -> None:
            await channel.run(lambda: self._poke(channel.name))

        # Of the error only its class: a channel's messages can carry its URL and token.
        await keep_running(f"{channel.name} channel", upkeep, clock=self._clock,
                           backoff=Backoff(2.0, cap=300.0),
                           describe=lambda exc: type(exc).__name__)

    def _poke(self, name: str) -> None:
        event = self._wake.get(name)
        if event is not None:
            event.set()


def dispatcher_from_settings(store: OutboxQueue, settings: Settings, *, clock: Clock,
                             http: HttpClient,
                             environ: Mapping[str, str] | None = None,
                             pam_manager: ConnectionManager | None = None,
                             on_delivery: Callable[[str, str], None] | None = None,
                             heard: Callable[[], bool] = lambda: False,
                             ) -> Dispatcher:
    """The configured channels (log always; the PAM channels and webhook when set), the
    PAM ones held when `pam_integration` is off."""
    from incident_fsm.notify.channels import channels_from_settings

    channels = channels_from_settings(settings.channels, clock=clock, http=http,
                                      environ=environ, pam_manager=pam_manager)
    held = () if settings.agent.pam_integration else PAM_CHANNELS
    c = settings.channels
    return Dispatcher(store, channels, clock=clock, held=held, max_attempts=c.max_attempts,
                      retry_initial=c.retry_initial, retry_max=c.retry_max,
                      on_delivery=on_delivery, heard=heard)


def _id(row: Notification) -> int:
    assert row.id is not None
    return row.id


def _outgoing(row: Notification) -> Outgoing:
    return Outgoing(notification_id=_id(row), incident_id=IncidentId(row.incident_id),
                    channel=row.channel, dedupe_key=row.dedupe_key, attempt=row.attempts,
                    payload=row.payload)
