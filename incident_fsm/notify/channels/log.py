"""The log channel: always on, writes every notification to the agent's log.

"Delivered" means the line was handed to loguru. A crash between logging and
the commit of the delivery logs the line again on restart (at least once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from loguru import logger

from incident_fsm.notify.channels.base import Delivery, Outgoing

_LEVELS = {"info": "INFO", "warning": "WARNING", "critical": "WARNING"}


class LogChannel:
    name = "log"

    async def run(self, ready: Callable[[], None]) -> None:
        return  # nothing to keep up

    def blocked_for(self) -> float:
        return 0.0

    async def send(self, batch: Sequence[Outgoing]) -> Sequence[Delivery]:
        for item in batch:
            meta = item.metadata()
            level = _LEVELS.get(str(meta.get("level")), "INFO")
            logger.bind(incident_id=item.incident_id, state=meta.get("state"),
                        target=meta.get("target"), dedupe_key=item.dedupe_key).log(
                level, "🔔 Notification for incident {}: {}", item.incident_id, item.text)
        return [Delivery.delivered() for _ in batch]
