"""Cron triggers: start each scheduled instance once, however many workers run.

Every worker checks the schedules; the instance for a fire time has the
business key made from that time, and a process never starts two instances
for one key, so only one of them starts it. After downtime only the latest
missed fire time is started (no pile of catch-up runs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

from charter.engine.service import ProcessService
from charter.engine.spec import ScheduleTrigger
from charter.errors import DatabaseUnavailable

log = logging.getLogger("charter.engine")
CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Schedule:
    process: str
    trigger: ScheduleTrigger

    def due(self, now: float) -> float:
        """The latest fire time at or before ``now``."""
        # croniter's previous time is strictly before its start; a hair later makes
        # a fire time exactly at ``now`` count.
        return float(croniter(self.trigger.cron, now + 0.001).get_prev(float))

    def business_key(self, fire: float) -> str:
        stamp = datetime.fromtimestamp(fire, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self.trigger.key.replace("{time}", stamp)


class Scheduler:
    """Starts the instances cron triggers call for."""

    def __init__(self, service: ProcessService) -> None:
        self.service = service
        self.schedules = [
            Schedule(spec.name, trigger.schedule)
            for spec in service.definitions.specs()
            if spec.version == service.definitions.latest(spec.name).spec.version
            for trigger in spec.triggers
            if trigger.schedule is not None
        ]
        # The fire time each schedule last started, so a tick does not ask twice.
        self._done: dict[str, float] = {}

    def tick(self, now: float) -> list[str]:
        """Start what is due at ``now``; returns the business keys started here."""
        started = []
        for schedule in self.schedules:
            fire = schedule.due(now)
            if self._done.get(schedule.process + schedule.trigger.cron) == fire:
                continue
            key = schedule.business_key(fire)
            stamp = datetime.fromtimestamp(fire, UTC).isoformat()
            _, created = self.service.start(
                schedule.process, key, {**schedule.trigger.input, "scheduled_for": stamp}
            )
            self._done[schedule.process + schedule.trigger.cron] = fire
            if created:
                started.append(key)
        return started

    async def run(self, stop: asyncio.Event) -> None:
        if not self.schedules:
            return
        while not stop.is_set():
            try:
                started = await asyncio.to_thread(self.tick, time.time())
            except DatabaseUnavailable as exc:  # the next check starts what is due by then
                log.warning("scheduled instances cannot be started: %s", exc)
                started = []
            if started:
                log.info("scheduled instances started: %s", ", ".join(started))
            try:
                await asyncio.wait_for(stop.wait(), CHECK_INTERVAL_S)
            except TimeoutError:
                pass
