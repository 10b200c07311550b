"""Cron triggers start one instance per fire time, keyed by that time."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from charter.engine.schedule import Schedule, Scheduler
from charter.engine.spec import ScheduleTrigger


class FakeDefinitions:
    def __init__(self, specs: list[Any]) -> None:
        self._specs = specs

    def specs(self) -> list[Any]:
        return self._specs

    def latest(self, name: str) -> Any:
        """Like ``Definitions.latest``: the newest version's compiled definition."""
        newest = max((s for s in self._specs if s.name == name), key=lambda s: s.version)
        return SimpleNamespace(spec=newest)


class FakeService:
    """Starts once per (process, key), as the real store's unique key does."""

    def __init__(self, specs: list[Any]) -> None:
        self.definitions = FakeDefinitions(specs)
        self.started: dict[tuple[str, str], dict[str, Any]] = {}

    def start(self, process: str, key: str, input_: dict[str, Any]) -> tuple[str, bool]:
        created = (process, key) not in self.started
        self.started.setdefault((process, key), input_)
        return f"{process}:{key}", created


class Spec:
    def __init__(self, name: str, version: int, cron: str) -> None:
        self.name, self.version = name, version
        trigger = ScheduleTrigger(cron=cron, key="sweep-{time}", input={"region": "eu"})
        self.triggers = [SimpleNamespace(schedule=trigger)]


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_one_instance_per_fire_time_keyed_by_the_time() -> None:
    service = FakeService([Spec("sweep", 1, "*/5 * * * *")])
    scheduler = Scheduler(service)  # type: ignore[arg-type]
    assert scheduler.tick(at("2026-11-27T10:07:00")) == ["sweep-2026-11-27T10:05:00Z"]
    assert scheduler.tick(at("2026-11-27T10:09:59")) == []
    assert scheduler.tick(at("2026-11-27T10:10:00")) == ["sweep-2026-11-27T10:10:00Z"]
    input_ = service.started[("sweep", "sweep-2026-11-27T10:10:00Z")]
    assert input_ == {"region": "eu", "scheduled_for": "2026-11-27T10:10:00+00:00"}


def test_two_workers_start_a_fire_time_once() -> None:
    service = FakeService([Spec("sweep", 1, "0 * * * *")])
    first, second = Scheduler(service), Scheduler(service)  # type: ignore[arg-type]
    now = at("2026-11-27T10:30:00")
    assert first.tick(now) == ["sweep-2026-11-27T10:00:00Z"]
    assert second.tick(now) == []
    assert len(service.started) == 1


def test_after_downtime_only_the_latest_missed_fire_time_starts() -> None:
    service = FakeService([Spec("sweep", 1, "*/5 * * * *")])
    scheduler = Scheduler(service)  # type: ignore[arg-type]
    scheduler.tick(at("2026-11-27T10:00:00"))
    assert scheduler.tick(at("2026-11-27T11:02:00")) == ["sweep-2026-11-27T11:00:00Z"]
    assert len(service.started) == 2


def test_only_the_latest_version_schedules() -> None:
    service = FakeService([Spec("sweep", 1, "* * * * *"), Spec("sweep", 2, "*/10 * * * *")])
    scheduler = Scheduler(service)  # type: ignore[arg-type]
    assert [s.trigger.cron for s in scheduler.schedules] == ["*/10 * * * *"]


def test_a_schedule_that_does_not_parse_is_refused() -> None:
    with pytest.raises(ValidationError, match="does not parse"):
        ScheduleTrigger(cron="every tuesday")


def test_schedule_due_is_the_latest_fire_time_at_or_before_now() -> None:
    schedule = Schedule("sweep", ScheduleTrigger(cron="0 9 * * *"))
    assert schedule.due(at("2026-11-27T08:00:00")) == at("2026-11-26T09:00:00")
