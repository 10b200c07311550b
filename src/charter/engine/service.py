"""Process operations for the API and the CLI: start, search, show, and the operator's verbs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from charter.engine import machine
from charter.engine.endings import RECHECK_S, Endings
from charter.engine.messages import InvalidOperation
from charter.engine.persist import Planner
from charter.engine.registry import Definitions
from charter.engine.runner import RunnerSettings, inbox_event
from charter.errors import BadRequest, Conflict, NotFound
from charter.hub.commit import MAX_GROUP, GroupCommitter
from charter.store.processes import (
    ENDED_STATUSES,
    InboxItem,
    InstanceWrite,
    SqlProcessStore,
    WriteResult,
)

OPERATIONS = ("signal", "event", "approve", "cancel", "terminate", "retry", "skip")


class ProcessService:
    """What people and programs do with process instances.

    Operations are checked against the instance's current state right away
    (a refused one answers 409 with the reason) and then handed to the
    instance's inbox, where a worker applies them in order.
    """

    def __init__(self, store: SqlProcessStore, definitions: Definitions) -> None:
        self.store = store
        self.definitions = definitions
        self.planner = Planner(definitions)
        # The runner in this process, when there is one: instances started here with calls
        # to make are committed already leased to it and handed over without a claim.
        self.owner: str | None = None
        self._adopt: Callable[[list[InstanceWrite]], None] | None = None
        self._lease_seconds = RunnerSettings.lease_seconds
        self.starts: GroupCommitter[InstanceWrite, WriteResult] = GroupCommitter(
            lambda writes: store.write(self.owner, writes, self._lease_seconds)
        )
        # Requests waiting for instances to end, told by the runner of this process and,
        # on PostgreSQL, by the notices of the others.
        self.endings = Endings()

    def hand_starts_to(
        self,
        owner: str,
        adopt: Callable[[list[InstanceWrite]], None],
        lease_seconds: float = RunnerSettings.lease_seconds,
    ) -> None:
        """Give the instances started through the API to the runner ``owner`` of this process:
        ``adopt`` gets every instance created, those with work to do committed leased to it
        for ``lease_seconds`` (the runner's lease)."""
        self.owner, self._adopt, self._lease_seconds = owner, adopt, lease_seconds

    def start(self, process: str, business_key: str, input_: Any) -> tuple[str, bool]:
        """Start ``process`` for ``business_key``; an existing instance is returned, not doubled."""
        result = self.starts.append(self._new(process, business_key, input_))
        return result.id, result.outcome == "ok"

    async def start_async(self, process: str, business_key: str, input_: Any) -> tuple[str, bool]:
        """`start` for the API: the request waits for its group commit on the event loop."""
        write = self._new(process, business_key, input_, adopt=True)
        result = await self.starts.append_async(write)
        self._adopted([(write, result)])
        return result.id, result.outcome == "ok"

    async def start_many_async(
        self, process: str, items: list[tuple[str, Any]]
    ) -> list[tuple[str, bool]]:
        """Start one instance per (business key, input); they commit together."""
        writes = [self._new(process, key, input_, adopt=True) for key, input_ in items]
        results = await asyncio.gather(*(self.starts.append_async(w) for w in writes))
        self._adopted(list(zip(writes, results, strict=True)))
        return [(r.id, r.outcome == "ok") for r in results]

    def _adopted(self, started: list[tuple[InstanceWrite, WriteResult]]) -> None:
        created = [w for w, r in started if r.outcome == "ok"]
        if created and self._adopt is not None:
            self._adopt(created)

    def start_many(self, process: str, items: list[tuple[str, Any]]) -> list[tuple[str, bool]]:
        """`start_many_async` for the CLI: one transaction per chunk of instances."""
        writes = [self._new(process, key, input_) for key, input_ in items]
        found: list[tuple[str, bool]] = []
        for chunk in range(0, len(writes), MAX_GROUP):
            results = self.store.write(None, writes[chunk : chunk + MAX_GROUP])
            found += [(r.id, r.outcome == "ok") for r in results]
        return found

    def _new(
        self, process: str, business_key: str, input_: Any, adopt: bool = False
    ) -> InstanceWrite:
        if not business_key or len(business_key) > 255:
            raise BadRequest(
                f"business key {business_key!r} must be 1 to 255 characters",
                fix="send the order, deal or customer id that identifies this run",
            )
        write, _ = self.planner.new_instance(
            process,
            business_key,
            input_,
            time.time(),
            keep_lease=adopt and self._adopt is not None,
        )
        return write

    def get(self, instance: str) -> dict[str, Any]:
        record = self.store.get(instance)
        if record is None:
            raise NotFound(
                f"there is no process instance {instance!r}",
                fix="find it with 'charter process list' or GET /v1/processes/instances",
            )
        state = record.state
        return {
            "id": record.id,
            "process": record.process,
            "version": record.version,
            "business_key": record.business_key,
            "status": record.status,
            "reason": state.get("reason"),
            "parent_id": record.parent_id,
            "context": state["context"],
            "steps": state["steps"],
            "waits": state["waits"],
            "timers": state["timers"],
            "timeline": self.store.history(instance),
        }

    async def get_when_ended(
        self, instance: str, seconds: float, recheck: float = RECHECK_S
    ) -> dict[str, Any]:
        """`get`, once the instance has ended (see ``ENDED_STATUSES``) or ``seconds`` have
        passed, whichever comes first; an unknown instance raises at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        with self.endings.watch(instance) as news:
            while True:
                # Cleared before reading, so news that comes while we read is kept.
                news.clear()
                shown = await asyncio.to_thread(self.get, instance)
                left = deadline - loop.time()
                if shown["status"] in ENDED_STATUSES or left <= 0:
                    return shown
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(news.wait(), min(left, recheck))

    def search(self, **filters: Any) -> list[dict[str, Any]]:
        return self.store.search(**filters)

    def operate(self, instance: str, kind: str, body: dict[str, Any]) -> None:
        """Check an operation against the current state, then queue it for the instance."""
        if kind not in OPERATIONS:
            raise BadRequest(
                f"unknown operation {kind!r}", fix=f"use one of {', '.join(OPERATIONS)}"
            )
        record = self.store.get(instance)
        if record is None:
            raise NotFound(
                f"there is no process instance {instance!r}",
                fix="find it with 'charter process list'",
            )
        if kind == "event" and "step" not in body:
            body = {**body, "step": self._waiting_step(record.state, body)}
        try:
            event = inbox_event(InboxItem(0, instance, kind, body), time.time())
        except KeyError as exc:
            raise BadRequest(
                f"operation {kind!r} needs {exc.args[0]!r}", fix=f'send {{"{exc.args[0]}": ...}}'
            ) from exc
        assert event is not None
        definition = self.definitions.get(record.process, record.version)
        try:
            transition = machine.advance(definition, record.state, event)
        except InvalidOperation as exc:
            raise Conflict(
                str(exc), fix="look at the instance with 'charter process show'"
            ) from exc
        if kind in ("signal", "event") and any(h["what"] == "ignored" for h in transition.history):
            raise Conflict(
                f"instance {instance} is not waiting for this {kind}",
                fix="check its waits with 'charter process show'",
            )
        self.store.enqueue(instance, kind, body)

    @staticmethod
    def _waiting_step(state: dict[str, Any], body: dict[str, Any]) -> str:
        waiting = [s for s, w in state["waits"].items() if w.get("kind") == "event"]
        if not waiting:
            raise Conflict(
                "the instance is not waiting for any event",
                fix="check its waits with 'charter process show'",
            )
        if len(waiting) > 1:
            raise BadRequest(
                f"the instance waits for {len(waiting)} events ({', '.join(waiting)}); "
                "say which step this one is for",
                fix="name the step: 'step' in the API body, --step on the CLI",
            )
        return str(waiting[0])

    def close(self) -> None:
        self.starts.close()
