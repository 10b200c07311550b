"""The process runner: claims due instances, applies events, commits transitions in groups,
then carries out the calls and tasks those transitions asked for.

Every transition is committed before anything it asks for is done. A worker
holds an instance (a lease on the database clock) while its calls are in
flight and lets it go when it only waits; after a crash, whoever takes the
lease over issues the calls still outstanding again, with the same
idempotency keys, so each takes effect once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from charter.catalog.model import Tier
from charter.connectors import Connector, TargetRequest
from charter.delivery.guard import Deferred
from charter.engine import machine
from charter.engine.definition import Definition
from charter.engine.messages import (
    Approved,
    Call,
    Cancel,
    ChildFinished,
    Command,
    Event,
    EventReceived,
    InvalidOperation,
    Retry,
    RunTask,
    SignalReceived,
    Skip,
    StepFailed,
    StepSucceeded,
    Terminate,
    Transition,
)
from charter.engine.persist import Planner, wait_rows
from charter.engine.registry import Definitions, TaskHandler, is_async
from charter.errors import (
    CharterError,
    ConnectorError,
    DatabaseUnavailable,
    RateLimited,
    StoreError,
    WriteRolledBack,
)
from charter.store.processes import (
    ENDED_STATUSES,
    Claim,
    InboxItem,
    InstanceRecord,
    InstanceWrite,
    SqlProcessStore,
)
from charter.store.sql_base import Reconnect

log = logging.getLogger("charter.engine")

# The longest a call held back by quota or breaker waits before it asks again.
MAX_DEFER_S = 5.0


@dataclass(frozen=True)
class RunnerSettings:
    batch_size: int = 256
    lease_seconds: float = 30.0
    idle_poll: float = 0.05
    max_idle: float = 2.0
    max_in_flight: int = 512
    # Group writes committing at once, each for other instances: the next group is
    # applied while earlier ones commit, so a commit's round trips and sync do not
    # leave the runner idle. None: 2 on PostgreSQL; 1 on SQLite, whose one writer would
    # only queue a second, and where fewer, larger groups cost less CPU.
    writes_in_flight: int | None = None


@dataclass
class TaskContext:
    """What a task handler learns about the step it runs for."""

    instance_id: str
    step: str
    attempt: int
    idempotency_key: str
    compensation: bool


@dataclass
class _Held:
    record: InstanceRecord
    definition: Definition
    in_flight: set[tuple[str, int, bool]] = field(default_factory=set)


def inbox_event(item: InboxItem, now: float) -> Event | None:
    """The machine event of an inbox item (None for kinds the runner handles itself)."""
    b = item.body
    kind = item.kind
    if kind == "event":
        return EventReceived(b["step"], b.get("event_id", ""), b.get("data"), now)
    if kind == "signal":
        return SignalReceived(b["name"], b.get("data"), now)
    if kind == "approve":
        return Approved(b["step"], bool(b["approved"]), b["by"], now, b.get("comment", ""))
    if kind == "child_finished":
        return ChildFinished(b["step"], b["status"], b.get("output"), now)
    if kind == "cancel":
        return Cancel(b["by"], b.get("reason", ""), now)
    if kind == "terminate":
        return Terminate(b["by"], b.get("reason", ""), now)
    if kind == "retry":
        return Retry(b["by"], now)
    if kind == "skip":
        return Skip(b["step"], b["by"], now)
    return None


class ProcessRunner:
    """Advances process instances until stopped; run one per worker process."""

    def __init__(
        self,
        store: SqlProcessStore,
        definitions: Definitions,
        connectors: Mapping[str, Connector],
        tasks: Mapping[str, TaskHandler],
        name: str,
        settings: RunnerSettings | None = None,
        on_ended: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``on_ended`` hears the ids of instances whose end this runner committed."""
        self.store = store
        self.definitions = definitions
        self.planner = Planner(definitions)
        self.connectors = connectors
        self.tasks = tasks
        # Whether each handler is a coroutine function, asked once (inspect's answer costs).
        self._asynchronous: dict[TaskHandler, bool] = {}
        self.name = name
        self.settings = settings or RunnerSettings()
        self._writes_in_flight = self.settings.writes_in_flight or (
            2 if store.store.is_postgres else 1
        )
        self.on_ended = on_ended
        self.listening = False
        self._held: dict[str, _Held] = {}
        # Results of calls and tasks, with the in-flight token each one settles.
        self._results: list[tuple[str, tuple[str, int, bool], Event]] = []
        self._wake = asyncio.Event()
        # Set when new work is waiting in the store (an operation, a notification); a tick
        # caused only by results of our own calls claims nothing.
        self._poked = True
        # Set when the store should be looked at for work nobody told us of (the idle poll).
        self._look = False
        self._claimed_at = 0.0
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Group writes being committed, and how many of them each instance is in: whatever
        # else happens to an instance waits until they are committed. (An instance is in
        # two only when a write let go of it and a claim took it back before the runner
        # heard that the write was in.)
        self._writes: set[asyncio.Task[None]] = set()
        self._writing: Counter[str] = Counter()
        # An inbox item was left for an instance being written: claim again after.
        self._reread_inbox = False
        # Set when the store may lease instances to this runner that it does not hold: those
        # it let go of after a write that did not (or may not) commit, and those of a claim
        # whose answer was lost with the connection. They are taken up at the next turn
        # (`_reclaim`) rather than when their leases run out.
        self._lost_track = False
        self._reclaimed: list[InstanceRecord] = []
        self.transitions = 0

    def wake(self) -> None:
        self._poked = True
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def adopt(self, started: list[InstanceWrite]) -> None:
        """Take over the instances this process just started. Those committed leased to us
        have their first calls go out at once, with no claim in between; any other (one
        that starts with a timer, or a wait with a timeout) is left in the store, due when
        its timer is, for a tick to claim."""
        for write in started:
            if not write.keep_lease:
                if write.next_wake_at is not None:
                    self.wake()
                continue
            if write.instance.id in self._held:
                continue
            held = self._hold(write.instance)
            if held is not None:
                self._dispatch(held, write.effects)

    def _hold(self, record: InstanceRecord) -> _Held | None:
        """Hold ``record`` with its definition; None (and an error in the log naming the
        instance, the version and the fix) when that version can be found nowhere."""
        try:
            definition = self.definitions.get(record.process, record.version)
        except (CharterError, ValueError) as exc:
            log.error(
                "instance %s stays leased until its lease runs out: process %s@%d cannot "
                "be loaded: %s",
                record.id,
                record.process,
                record.version,
                exc,
            )
            return None
        held = self._held[record.id] = _Held(record, definition)
        return held

    async def run(self) -> None:
        """Advance instances until stopped. While the database cannot be reached (a restart,
        a failover), wait and try again, longer each time, instead of stopping."""
        heartbeat = asyncio.create_task(self._heartbeat())
        reconnect = Reconnect(log)
        try:
            while not self._stopping.is_set():
                try:
                    if self._lost_track:
                        await self._reclaim()
                    worked = await self._tick()
                    if not worked:
                        await self._idle()
                except DatabaseUnavailable as exc:
                    await reconnect.pause(exc, self._stopping)
                    self._poked = True  # what arrived meanwhile is in the store
                    continue
                reconnect.reached()
        finally:
            heartbeat.cancel()
            await self._shutdown()

    async def _shutdown(self) -> None:
        # Calls in flight may finish; their results are committed, the rest released.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        for task in self._tasks:
            task.cancel()
        await self._written()
        while self._results:
            await self._tick(claim=False)
            await self._written()
        try:
            await asyncio.to_thread(self.store.release, self.name)
        except DatabaseUnavailable as exc:
            log.warning(
                "stopped without letting go of %d instances; their leases run out in %.0fs: %s",
                len(self._held),
                self.settings.lease_seconds,
                exc,
            )

    async def _reclaim(self) -> None:
        """Take up the instances the store leases to this runner that it neither holds nor
        is writing (see `_lost_track`), from their stored state. They are held at the next
        tick, as claimed; one held meanwhile (started here and handed over) stays as it is."""
        known = self._held.keys() | self._writing.keys()
        found = await asyncio.to_thread(
            self.store.reclaim, self.name, self.settings.lease_seconds, known
        )
        self._lost_track = False
        if found:
            log.info("took up %d instances leased to this worker that it had let go of", len(found))
            self._reclaimed.extend(found)
            self._wake.set()

    async def _written(self) -> None:
        """Wait until every group write in flight is committed (raising what one raised)."""
        while self._writes:
            done, _ = await asyncio.wait(self._writes)
            self._reap(done)

    def _reap(self, done: set[asyncio.Task[None]]) -> None:
        for task in done:
            self._writes.discard(task)
            task.result()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            if not self._held:
                continue
            try:
                await asyncio.to_thread(
                    self.store.extend_leases,
                    self.name,
                    list(self._held),
                    self.settings.lease_seconds,
                )
            except DatabaseUnavailable as exc:
                # Leases that run out meanwhile are taken over; this runner's writes of
                # those instances are then refused, and it lets go of them.
                log.warning("could not renew %d leases: %s", len(self._held), exc)

    async def _idle(self) -> None:
        self._wake.clear()
        if self._stopping.is_set() or self._poked:
            return
        if any(instance not in self._writing for instance, _, _ in self._results):
            return
        timeout = self.settings.idle_poll
        if not self._held:
            due = await asyncio.to_thread(self.store.next_due_at)
            ceiling = self.settings.max_idle if self.listening else self.settings.idle_poll
            timeout = ceiling if due is None else min(ceiling, max(0.0, due - time.time()))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            self._look = True

    async def _tick(self, claim: bool = True) -> bool:
        """Claim, apply, and hand a group write to be committed (its calls go out once it
        is); False when there was nothing to do."""
        self._reap({task for task in self._writes if task.done()})
        if len(self._writes) >= self._writes_in_flight:
            done, _ = await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)
            self._reap(done)
        now = time.time()
        claimed = Claim()
        # Instances being written as the claim reads their inbox: what it reads for them
        # may already be consumed by that write once it commits, so it is left for later.
        # (Writes start only here, so none starts while the claim runs.)
        writing = set(self._writing)
        if claim and (
            self._poked or self._look or now - self._claimed_at >= self.settings.idle_poll
        ):
            told, self._poked, self._look = self._poked, False, False
            self._claimed_at = now
            # A claim takes the store's write lock, ahead of the results waiting to be
            # committed. Unless told of new work, first look (read-only, beside the writer)
            # whether there is anything to claim: the periodic look is the fallback for news
            # nobody told us of, and mostly finds none.
            if told or await asyncio.to_thread(self.store.anything_to_claim):
                capacity = self.settings.max_in_flight - len(self._held)
                limit = min(self.settings.batch_size, capacity)
                try:
                    claimed = await asyncio.to_thread(
                        self.store.claim, self.name, limit, self.settings.lease_seconds, writing
                    )
                except DatabaseUnavailable:
                    self._lost_track = True  # the claim may have committed all the same
                    raise
                now = time.time()
        # Results for instances being written wait for that write; the rest are applied.
        results = [r for r in self._results if r[0] not in self._writing]
        self._results = [r for r in self._results if r[0] in self._writing]
        touched: dict[str, tuple[list[Event], list[int]]] = {}
        unread: set[str] = set()
        reclaimed, self._reclaimed = self._reclaimed, []
        for record in reclaimed:
            if record.id in self._held or record.id in self._writing:
                continue  # held since: handed over by a start in this process
            if self._hold(record) is not None:
                touched[record.id] = ([], [])
        for record in claimed.instances:
            if self._hold(record) is None:
                continue
            touched[record.id] = ([], [])
        for instance, items in claimed.inbox.items():
            if instance not in self._held:
                continue
            if instance in writing:
                # Left in the inbox, and read again by a claim once that write is in.
                unread.add(instance)
                if instance in self._writing:
                    self._reread_inbox = True
                else:
                    self._poked = True
                continue
            events, consumed = touched.setdefault(instance, ([], []))
            for item in items:
                consumed.append(item.id)
                event = inbox_event(item, now)
                if event is not None:
                    events.append(event)
        for instance, token, event in results:
            held = self._held.get(instance)
            if held is not None:
                # Only now, with its result about to enter the state, is the call no
                # longer in flight; until then the state still shows it running.
                held.in_flight.discard(token)
                touched.setdefault(instance, ([], []))[0].append(event)
        for instance, held in self._held.items():
            if not held.record.state["timers"] or instance in self._writing:
                continue
            due = machine.due_timers(held.record.state, now)
            if due:
                touched.setdefault(instance, ([], []))[0].extend(due)
        if not touched:
            return False
        writes: list[InstanceWrite] = []
        holds: list[_Held] = []
        for instance, (events, consumed) in touched.items():
            held = self._held[instance]
            if not events and not consumed:
                effects = machine.outstanding(held.definition, held.record.state)
                if effects:
                    # Freshly claimed with calls outstanding and nothing new: the claim
                    # already holds it and keeps it due, so nothing to commit before them.
                    self._dispatch(held, effects)
                    continue
                if instance in unread:
                    continue  # held, until a claim reads its inbox
            waits = wait_rows(held.record.state)  # before `_apply` changes the state in place
            transition = self._apply(held, events, now)
            writes.append(
                self.planner.write(
                    held.record,
                    transition,
                    now,
                    consumed=consumed,
                    keep_lease=True,
                    waits_before=waits,
                )
            )
            holds.append(held)
        if not writes:
            return True
        self.transitions += len(writes)
        self._writing.update(w.instance.id for w in writes)
        task = asyncio.create_task(self._commit(writes, holds))
        self._writes.add(task)
        return True

    async def _commit(self, writes: list[InstanceWrite], holds: list[_Held]) -> None:
        """Commit one group write, then send the calls and tasks its transitions ask for.

        ``holds`` are the instances as held when the write was made. One the write let go
        of may be claimed again before this runs; claims leave out the instances being
        written (see `SqlProcessStore.claim`), so that claim read it as committed, and what
        it holds now is newer than the write."""
        rolled_back: StoreError | None = None
        try:
            outcomes = await asyncio.to_thread(
                self.store.write, self.name, writes, self.settings.lease_seconds
            )
        # Rolled back again and again (another worker has these too), or the database was
        # lost, when the write may or may not have been committed.
        except (WriteRolledBack, DatabaseUnavailable) as exc:
            rolled_back = exc
        finally:
            self._writing.subtract(w.instance.id for w in writes)
            for write in writes:
                if self._writing[write.instance.id] <= 0:
                    del self._writing[write.instance.id]
            if self._reread_inbox:
                self._reread_inbox = False
                self._poked = True
            self._wake.set()
        if rolled_back is not None:
            # Nothing of the write is known to be stored: let go of its instances, as of a
            # lost lease, and take up those still leased to this runner at the next turn
            # (`_reclaim`), from what is stored.
            log.warning(
                "let go of %d instances whose transitions %s committed: %s",
                len(writes),
                "could not be" if isinstance(rolled_back, WriteRolledBack) else "may not have been",
                rolled_back,
            )
            for write, held in zip(writes, holds, strict=True):
                if self._held.get(write.instance.id) is held:
                    self._held.pop(write.instance.id)
                    self._lost_track = True
            return
        ended: list[str] = []
        for write, held, outcome in zip(writes, holds, outcomes, strict=True):
            instance = write.instance.id
            current = self._held.get(instance) is held
            if outcome.outcome != "ok":
                log.warning("lost the lease of %s; another worker goes on with it", instance)
                if current:
                    self._held.pop(instance)
                continue
            if write.instance.status in ENDED_STATUSES:
                ended.append(instance)
            if not current:
                continue
            held.record = write.instance
            if not write.keep_lease:
                self._held.pop(instance, None)
                continue
            self._dispatch(held, write.effects)
        if ended and self.on_ended is not None:
            self.on_ended(ended)

    def _apply(self, held: _Held, events: list[Event], now: float) -> Transition:
        """Apply ``events`` to the held state, which they may change in place: the runner
        reads it no more until the write commits (the instance is being written meanwhile:
        no tick looks at it), and a write that does not commit lets go of the instance."""
        state = held.record.state
        combined = Transition(state)
        for event in events:
            try:
                step = machine.advance(held.definition, state, event, owned=True)
            except InvalidOperation as exc:
                combined.history.append({"at": now, "what": "refused", "reason": str(exc)})
                continue
            state = step.state
            combined.commands.extend(step.commands)
            combined.history.extend(step.history)
        combined.state = state
        return combined

    def _dispatch(self, held: _Held, effects: list[Any]) -> None:
        """Start the calls and tasks the state has outstanding (``effects``, as
        `machine.outstanding` gives them) and not already in flight."""
        for command in effects:
            assert isinstance(command, Call | RunTask)
            token = (command.step, command.attempt, command.compensation)
            if token in held.in_flight:
                continue
            held.in_flight.add(token)
            task = asyncio.create_task(self._effect(held.record.id, command, token))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _effect(self, instance: str, command: Command, token: tuple[str, int, bool]) -> None:
        assert isinstance(command, Call | RunTask)
        try:
            output = await self._perform_when_admitted(instance, command)
            result: Event = StepSucceeded(
                command.step, command.attempt, output, time.time(), command.compensation
            )
        except ConnectorError as exc:
            result = StepFailed(
                command.step,
                command.attempt,
                exc.detail,
                exc.retryable,
                time.time(),
                retry_after=exc.retry_after if isinstance(exc, RateLimited) else None,
                compensation=command.compensation,
            )
        except Exception as exc:  # a task handler's own failure becomes the step's failure
            result = StepFailed(
                command.step,
                command.attempt,
                f"{type(exc).__name__}: {exc}",
                retryable=not isinstance(exc, ValueError | TypeError | KeyError),
                now=time.time(),
                compensation=command.compensation,
            )
        if instance in self._held:
            self._results.append((instance, token, result))
            self._wake.set()

    async def _perform_when_admitted(self, instance: str, command: Call | RunTask) -> Any:
        """`_perform`, waiting out the system's quota or open breaker: a call that was held
        back never went out, so it costs the step no attempt."""
        while True:
            try:
                return await self._perform(instance, command)
            except Deferred as held:
                wait = min(max(held.until - time.time(), 0.05), MAX_DEFER_S)
                log.debug("%s step %s held back %.2fs: %s", instance, command.step, wait, held)
                try:
                    await asyncio.wait_for(self._stopping.wait(), wait)
                except TimeoutError:
                    continue
                raise

    async def _perform(self, instance: str, command: Call | RunTask) -> Any:
        if isinstance(command, Call):
            connector = self.connectors.get(command.system)
            if connector is None:
                raise ValueError(f"system {command.system!r} has no connector")
            held = self._held.get(instance)
            request = TargetRequest(
                method=command.method,
                path=command.path,
                body=orjson.dumps(command.body) if command.body is not None else b"",
                idempotency_key=command.idempotency_key,
                headers={"x-charter-instance-id": instance, "x-charter-step": command.step},
                tier=held.definition.spec.tier if held is not None else Tier.OPERATIONAL,
                flow=f"process:{held.record.process}" if held is not None else "process",
            )
            call = connector.call(request)
            response = await (asyncio.wait_for(call, command.timeout) if command.timeout else call)
            if not response.body:
                return {}
            try:
                return orjson.loads(response.body)
            except orjson.JSONDecodeError:
                return {"body": response.body.decode("utf-8", "replace")}
        handler = self.tasks.get(command.handler)
        if handler is None:
            raise KeyError(f"no task handler {command.handler!r} in the project's tasks.py")
        context = TaskContext(
            instance, command.step, command.attempt, command.idempotency_key, command.compensation
        )
        asynchronous = self._asynchronous.get(handler)
        if asynchronous is None:
            asynchronous = self._asynchronous[handler] = is_async(handler)
        if asynchronous:
            run = handler(command.input, context)
            return await (asyncio.wait_for(run, command.timeout) if command.timeout else run)
        return await asyncio.to_thread(handler, command.input, context)
