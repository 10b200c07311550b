"""The process state machine: (state, event) -> (new state, commands). Pure: no I/O, no clock.

The state is a JSON document, so the runner persists it as it is; every
event carries the time it happened, so replaying the same events gives the
same states. Effects leave as commands (call a system, run a task, start a
child, escalate); timers and waits stay in the state, where the runner finds
them after any restart.

Delivery of results is at-least-once: a result for an attempt that is not the
step's current one, or for a step that is not running, changes nothing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from charter.catalog.model import RetryPolicy
from charter.engine.definition import EFFECT_KINDS, CompiledStep, Definition
from charter.engine.messages import (
    Approved,
    Call,
    Cancel,
    ChildFinished,
    Command,
    Escalate,
    Event,
    EventReceived,
    Finished,
    InvalidOperation,
    Retry,
    RunTask,
    SignalReceived,
    Skip,
    StartChild,
    StepFailed,
    StepSucceeded,
    Terminate,
    TimerFired,
    Transition,
)
from charter.errors import MappingError
from charter.mapping import MISSING
from charter.mapping.paths import lookup

# Process statuses.
RUNNING = "running"
WAITING = "waiting"
COMPLETED = "completed"
FAILED = "failed"
COMPENSATING = "compensating"
COMPENSATED = "compensated"
CANCELLED = "cancelled"
TERMINATED = "terminated"
TERMINAL = frozenset({COMPLETED, COMPENSATED, CANCELLED, TERMINATED})

# Step statuses.
PENDING = "pending"
STEP_RUNNING = "running"
STEP_WAITING = "waiting"
RETRYING = "retrying"
TIMED_OUT = "timed_out"
DONE = "completed"
STEP_FAILED = "failed"
SKIPPED = "skipped"
UNDOING = "compensating"
UNDONE = "compensated"
SETTLED = frozenset({DONE, SKIPPED, UNDONE})

# Outcomes of driving a sequence.
_SEQ_DONE, _SEQ_BLOCKED, _SEQ_FAILED = "done", "blocked", "failed"


def jitter(instance: str, step: str, attempt: int) -> float:
    """A deterministic number in [0, 1) per (instance, step, attempt): full jitter, replayable."""
    digest = hashlib.sha256(f"{instance}\x00{step}\x00{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def backoff(policy: RetryPolicy, attempt: int, fraction: float) -> float:
    try:
        growth = policy.multiplier ** (attempt - 1)
    except OverflowError:
        growth = math.inf
    return fraction * min(policy.max_backoff, policy.initial_backoff * growth)


MAX_SHOWN = 2000


def _shown(command: Command) -> dict[str, Any]:
    """What a call or task sends, for the timeline (large bodies are cut)."""
    if isinstance(command, Call):
        shown: dict[str, Any] = {"call": f"{command.method} {command.system}{command.path}"}
        payload = command.body
    elif isinstance(command, RunTask):
        shown, payload = {"task": command.handler}, command.input
    else:
        return {}
    text = orjson.dumps(payload).decode()
    shown["body"] = payload if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."
    return shown


def _effect(step: CompiledStep, attempt: int, context: dict[str, Any], key: str) -> Call | RunTask:
    """The call or task of ``step``'s attempt ``attempt``, its body or input mapped from
    ``context``. Building it changes nothing, so the same attempt builds the same command
    again after a crash."""
    spec = step.spec
    if spec.call is not None:
        assert step.path is not None
        return Call(
            step=step.id,
            attempt=attempt,
            idempotency_key=key,
            system=spec.call.system,
            method=spec.call.method,
            path=step.path.fill(context, f"step {step.id}"),
            body=step.body.apply(context) if step.body else None,
            timeout=spec.timeout,
        )
    assert spec.task is not None
    return RunTask(
        step=step.id,
        attempt=attempt,
        idempotency_key=key,
        handler=spec.task.handler,
        input=step.task_input.apply(context) if step.task_input else {},
        timeout=spec.timeout,
    )


def new_state(instance: str, business_key: str, input_: Any) -> dict[str, Any]:
    """The state of an instance before its first step."""
    return {
        "status": RUNNING,
        "context": {
            "input": input_,
            "steps": {},
            "instance": {"id": instance, "key": business_key},
        },
        "steps": {},
        "completed": [],
        "timers": {},
        "waits": {},
        "reason": None,
        "compensation": None,
    }


class _Run:
    """One transition being computed on a private copy of the state."""

    def __init__(
        self, definition: Definition, state: dict[str, Any], now: float, *, copy: bool = True
    ) -> None:
        self.d = definition
        # ``copy=False`` takes a state the caller has already made private.
        self.s: dict[str, Any] = orjson.loads(orjson.dumps(state)) if copy else state
        self.now = now
        self.commands: list[Command] = []
        self.history: list[dict[str, Any]] = []
        # Off when only the commands are wanted (`outstanding`): no timeline to build.
        self.recording = True

    # bookkeeping

    @property
    def instance(self) -> str:
        return str(self.s["context"]["instance"]["id"])

    @property
    def context(self) -> dict[str, Any]:
        ctx: dict[str, Any] = self.s["context"]
        return ctx

    def log(self, step: str | None, what: str, **detail: Any) -> None:
        entry: dict[str, Any] = {"at": self.now, "what": what}
        if step is not None:
            entry["step"] = step
        for name, value in detail.items():
            if value is not None:
                entry[name] = value
        self.history.append(entry)

    def st(self, step: str) -> dict[str, Any]:
        found: dict[str, Any] = self.s["steps"].setdefault(step, {"status": PENDING, "attempt": 0})
        return found

    def status_of(self, step: str) -> str:
        entry = self.s["steps"].get(step)
        return str(entry["status"]) if entry else PENDING

    def key(self, step: str, compensation: bool = False) -> str:
        return f"{self.instance}:{step}" + (":compensate" if compensation else "")

    def done(self) -> Transition:
        return Transition(self.s, self.commands, self.history)

    # driving

    def drive(self) -> None:
        """Advance as far as the state allows, then settle the process status."""
        if self.s["status"] in (COMPENSATING,):
            self.drive_compensation()
            return
        if self.s["status"] not in (RUNNING, WAITING):
            return
        outcome = self.drive_sequence(self.d.sequence)
        if self.s["status"] not in (RUNNING, WAITING):
            return
        if outcome == _SEQ_DONE:
            self.finish(COMPLETED, None)
        else:
            steps = self.s["steps"]
            busy = False
            for sid in self.d.effect_steps:
                entry = steps.get(sid)
                if entry is not None and entry["status"] == STEP_RUNNING:
                    busy = True
                    break
            self.s["status"] = RUNNING if busy else WAITING

    def drive_sequence(self, ids: list[str]) -> str:
        for sid in ids:
            step = self.d.steps[sid]
            status = self.status_of(sid)
            if status == PENDING:
                self.start(step)
                if self.s["status"] not in (RUNNING, WAITING):
                    return _SEQ_FAILED
                status = self.status_of(sid)
            if step.composite and status in (STEP_RUNNING, TIMED_OUT):
                status = self.drive_composite(step)
            if status in SETTLED:
                continue
            if status == STEP_FAILED:
                return _SEQ_FAILED
            return _SEQ_BLOCKED
        return _SEQ_DONE

    def drive_composite(self, step: CompiledStep) -> str:
        spec, entry = step.spec, self.st(step.id)
        if spec.switch is not None:
            choice = entry.get("choice")
            if choice is None or choice < 0:
                self.complete(step, {"case": None})
                return DONE
            outcome = self.drive_sequence([s.id for s in spec.switch[choice].steps])
            if outcome == _SEQ_DONE:
                self.complete(step, {"case": choice})
        elif spec.parallel is not None:
            outcomes = [self.drive_sequence([s.id for s in b]) for b in spec.parallel.branches]
            if self.s["status"] not in (RUNNING, WAITING):
                return self.status_of(step.id)
            if spec.parallel.join == "all" and all(o == _SEQ_DONE for o in outcomes):
                self.complete(step, {"branches": len(outcomes)})
            elif spec.parallel.join == "any" and _SEQ_DONE in outcomes:
                winner = outcomes.index(_SEQ_DONE)
                for n, branch in enumerate(spec.parallel.branches):
                    if n != winner:
                        self.abandon([s.id for s in branch])
                self.complete(step, {"branch": winner})
        elif spec.wait is not None and entry["status"] == TIMED_OUT:
            outcome = self.drive_sequence([s.id for s in spec.wait.on_timeout])
            if outcome == _SEQ_DONE:
                self.after_timeout(step)
        return self.status_of(step.id)

    def abandon(self, ids: list[str]) -> None:
        """Skip what has not started in a branch another branch outran (join: any)."""
        for sid in ids:
            status = self.status_of(sid)
            self.s["timers"] = {
                k: v for k, v in self.s["timers"].items() if k.split(":", 1)[1] != sid
            }
            self.s["waits"].pop(sid, None)
            if status in (PENDING, STEP_WAITING, RETRYING):
                self.st(sid)["status"] = SKIPPED
                self.log(sid, "skipped", reason="another branch finished first")
            elif status == STEP_RUNNING:
                # Its call may still land: a success completes it (and compensation
                # covers it); a failure is dropped instead of failing the process.
                self.st(sid)["abandoned"] = True
            for nested in self.d.steps[sid].spec.children():
                self.abandon([s.id for s in nested])

    def start(self, step: CompiledStep) -> None:
        spec, entry = step.spec, self.st(step.id)
        entry.update({"status": STEP_RUNNING, "started": self.now})
        self.log(step.id, "started", kind=step.kind)
        try:
            if spec.call is not None or spec.task is not None:
                self.attempt(step)
            elif step.transform is not None:
                self.complete(step, step.transform.apply(self.context))
            elif spec.sleep is not None:
                at = self.now + spec.sleep.for_ if spec.sleep.for_ is not None else self.until(step)
                entry["status"] = STEP_WAITING
                self.s["timers"][f"sleep:{step.id}"] = at
            elif spec.wait is not None:
                self.subscribe(step)
                if spec.wait.timeout is not None:
                    self.s["timers"][f"timeout:{step.id}"] = self.now + spec.wait.timeout
            elif spec.approve is not None:
                entry["status"] = STEP_WAITING
                team = spec.approve.team or self.d.spec.owner
                self.s["waits"][step.id] = {"kind": "approval", "team": team}
                if spec.approve.timeout is not None:
                    self.s["timers"][f"timeout:{step.id}"] = self.now + spec.approve.timeout
            elif spec.subprocess is not None:
                assert step.child_key is not None
                key = step.child_key.apply(self.context).get("key")
                if key is None:
                    raise MappingError(
                        f"step {step.id}: the subprocess key is empty",
                        fix="map 'key' to a value of the context",
                    )
                entry["status"] = STEP_WAITING
                self.s["waits"][step.id] = {"kind": "child"}
                self.commands.append(
                    StartChild(
                        step=step.id,
                        process=spec.subprocess.process,
                        version=spec.subprocess.version,
                        business_key=f"{key}",
                        input=step.child_input.apply(self.context) if step.child_input else {},
                    )
                )
            elif spec.escalate is not None:
                team = spec.escalate.team or self.d.spec.owner
                self.commands.append(Escalate(step.id, team, spec.escalate.message))
                self.log(step.id, "escalated", team=team, message=spec.escalate.message)
                self.complete(step, {"team": team})
            elif spec.switch is not None:
                choice = -1
                for n, condition in enumerate(step.conditions):
                    if condition is None or condition.holds(self.context):
                        choice = n
                        break
                entry["choice"] = choice
                self.log(step.id, "chose", case=choice)
        except MappingError as exc:
            self.fail(step, str(exc), retryable=False, retry_after=None)

    def until(self, step: CompiledStep) -> float:
        assert step.until is not None
        value = lookup(self.context, step.until)
        try:
            when = datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise MappingError(
                f"step {step.id}: sleep until {value!r}, which is not an ISO 8601 time",
                fix="point 'until' at a time such as 2026-12-01T09:00:00Z",
            ) from exc
        # A time without an offset is UTC, whatever the worker's host thinks.
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()

    def subscribe(self, step: CompiledStep) -> None:
        wait = step.spec.wait
        assert wait is not None
        entry = self.st(step.id)
        entry["status"] = STEP_WAITING
        if wait.signal is not None:
            self.s["waits"][step.id] = {"kind": "signal", "signal": wait.signal}
            return
        assert wait.event is not None and step.correlation is not None
        value = lookup(self.context, step.correlation)
        if value is MISSING or value is None:
            raise MappingError(
                f"step {step.id}: the correlation value at "
                f"{wait.match.equals if wait.match else ''} is missing from the context",
                fix="correlate on a value the instance has by then",
            )
        self.s["waits"][step.id] = {
            "kind": "event",
            "system": wait.event.system,
            "type": wait.event.type,
            "field": wait.match.field if wait.match else "",
            "value": value,
        }

    def attempt(self, step: CompiledStep) -> None:
        """Issue the call or task of ``step`` once more."""
        entry = self.st(step.id)
        entry["attempt"] = int(entry.get("attempt", 0)) + 1
        entry["status"] = STEP_RUNNING
        command = _effect(step, entry["attempt"], self.context, self.key(step.id))
        self.commands.append(command)
        if self.recording:
            self.log(step.id, "attempt", attempt=command.attempt, request=_shown(command))

    def complete(self, step: CompiledStep, output: Any) -> None:
        entry = self.st(step.id)
        if step.output is not None:
            try:
                output = step.output.apply(output)
            except MappingError as exc:
                if step.kind in EFFECT_KINDS or step.kind == "subprocess":
                    # The effect happened at the target: compensation must undo it.
                    entry["effect_applied"] = True
                    self.s["completed"].append(step.id)
                self.fail(step, str(exc), retryable=False, retry_after=None)
                return
        entry.update({"status": DONE, "ended": self.now})
        entry.pop("error", None)
        self.context["steps"][step.id] = output
        self.s["completed"].append(step.id)
        self.s["waits"].pop(step.id, None)
        self.clear_timers(step.id)
        self.log(step.id, "completed")

    def clear_timers(self, step: str) -> None:
        timers = self.s["timers"]
        if timers:
            for prefix in ("retry", "sleep", "timeout"):
                timers.pop(f"{prefix}:{step}", None)

    def fail(
        self, step: CompiledStep, error: str, *, retryable: bool, retry_after: float | None
    ) -> None:
        entry = self.st(step.id)
        entry["error"] = error
        attempt = int(entry.get("attempt", 0))
        # Attempt numbers keep rising across operator retries; the policy counts
        # the attempts since the last one.
        tries = attempt - int(entry.get("base", 0))
        if retryable and tries < step.retry.max_attempts and self.s["status"] in (RUNNING, WAITING):
            delay = backoff(step.retry, tries, jitter(self.instance, step.id, attempt))
            if retry_after is not None:
                delay = max(delay, retry_after)
            entry["status"] = RETRYING
            self.s["timers"][f"retry:{step.id}"] = self.now + delay
            self.log(
                step.id, "retry scheduled", attempt=attempt, delay=round(delay, 3), error=error
            )
            return
        entry.update({"status": STEP_FAILED, "ended": self.now})
        self.s["waits"].pop(step.id, None)
        self.clear_timers(step.id)
        self.log(step.id, "failed", attempt=attempt, error=error)
        if self.s["status"] in (RUNNING, WAITING):
            self.fail_process(f"step {step.id} failed: {error}")

    def fail_process(self, reason: str) -> None:
        self.s["reason"] = reason
        if self.d.spec.on_failure == "hold":
            self.s["status"] = FAILED
            self.log(None, "held", reason=reason)
            return
        self.begin_compensation(COMPENSATED)

    def begin_compensation(self, then: str) -> None:
        self.s["status"] = COMPENSATING
        self.s["compensation"] = {"then": then, "queue": None, "reason": self.s["reason"]}
        # Nothing more will start: waits and timers of the forward path end here.
        self.s["waits"] = {}
        self.s["timers"] = {k: v for k, v in self.s["timers"].items() if k.startswith("undo:")}
        for entry in self.s["steps"].values():
            if entry["status"] in (STEP_WAITING, RETRYING, TIMED_OUT):
                entry["status"] = SKIPPED if entry["status"] != RETRYING else STEP_FAILED
        self.log(None, "compensating", reason=self.s["reason"])
        self.drive_compensation()

    def in_flight(self) -> list[str]:
        return [
            sid
            for sid, c in self.d.steps.items()
            if c.kind in EFFECT_KINDS and self.status_of(sid) == STEP_RUNNING
        ]

    def drive_compensation(self) -> None:
        comp = self.s["compensation"]
        if comp["queue"] is None:
            # Undo in exact reverse order of completion, so first let every call
            # already in flight settle: its effect may still land.
            if self.in_flight():
                return
            comp["queue"] = [
                sid
                for sid in reversed(self.s["completed"])
                if self.d.steps[sid].spec.compensate is not None
                and (self.status_of(sid) == DONE or self.s["steps"][sid].get("effect_applied"))
            ]
        queue: list[str] = comp["queue"]
        while queue:
            head = self.d.steps[queue[0]]
            entry = self.st(head.id)
            if entry["status"] == UNDONE:
                queue.pop(0)
                continue
            if entry["status"] == UNDOING or entry.get("undo_failed"):
                return
            entry["status"] = UNDOING
            entry["undo_attempt"] = 0
            self.undo(head)
            return
        self.finish(comp["then"], comp.get("reason", self.s["reason"]))

    def undo(self, step: CompiledStep) -> None:
        comp, entry = step.spec.compensate, self.st(step.id)
        assert comp is not None
        entry["undo_attempt"] = int(entry.get("undo_attempt", 0)) + 1
        attempt = entry["undo_attempt"]
        key = self.key(step.id, compensation=True)
        try:
            if comp.call is not None:
                assert step.compensation_path is not None
                self.commands.append(
                    Call(
                        step=step.id,
                        attempt=attempt,
                        idempotency_key=key,
                        system=comp.call.system,
                        method=comp.call.method,
                        path=step.compensation_path.fill(self.context, f"step {step.id}"),
                        body=step.compensation_body.apply(self.context)
                        if step.compensation_body
                        else None,
                        timeout=step.spec.timeout,
                        compensation=True,
                    )
                )
            else:
                assert comp.task is not None
                self.commands.append(
                    RunTask(
                        step=step.id,
                        attempt=attempt,
                        idempotency_key=key,
                        handler=comp.task.handler,
                        input=step.compensation_input.apply(self.context)
                        if step.compensation_input
                        else {},
                        timeout=step.spec.timeout,
                        compensation=True,
                    )
                )
        except MappingError as exc:
            self.undo_failed(step, str(exc))
            return
        self.log(
            step.id, "compensation attempt", attempt=attempt, request=_shown(self.commands[-1])
        )

    def undo_failed(self, step: CompiledStep, error: str) -> None:
        entry = self.st(step.id)
        entry["undo_failed"] = True
        entry["error"] = error
        self.s["status"] = FAILED
        self.s["reason"] = f"compensation of step {step.id} failed: {error}"
        self.log(step.id, "compensation failed", error=error)

    def finish(self, status: str, reason: str | None) -> None:
        self.s["status"] = status
        self.s["reason"] = reason
        self.s["compensation"] = None
        self.s["waits"] = {}
        self.s["timers"] = {}
        self.log(None, status, reason=reason)
        self.commands.append(Finished(status, reason, self.context["steps"]))

    def after_timeout(self, step: CompiledStep) -> None:
        wait = step.spec.wait
        assert wait is not None
        then = wait.timeout_then
        if then == "continue":
            self.complete(step, {"timed_out": True})
        elif then == "keep_waiting":
            self.subscribe(step)
            self.log(step.id, "waiting again")
        else:
            self.fail(
                step,
                f"no matching event within {wait.timeout:g}s",
                retryable=False,
                retry_after=None,
            )

    # events

    def apply(self, event: Event) -> None:
        handler = getattr(self, "on_" + type(event).__name__)
        handler(event)

    def ignore(self, step: str | None, why: str) -> None:
        self.log(step, "ignored", reason=why)

    def current(self, e: StepSucceeded | StepFailed) -> tuple[CompiledStep, dict[str, Any]] | None:
        """The step and its entry when ``e`` answers the attempt in flight, else None.

        Results are delivered at least once: a duplicate, a late result of an
        earlier attempt, or a compensation result after the instance ended is
        recorded as ignored and changes nothing.
        """
        step = self.d.steps.get(e.step)
        entry = self.s["steps"].get(e.step)
        if step is None or entry is None:
            self.ignore(e.step, "no such step in progress")
            return None
        if e.compensation:
            current = (
                self.s["status"] == COMPENSATING
                and entry["status"] == UNDOING
                and entry.get("undo_attempt") == e.attempt
            )
        else:
            current = entry["status"] == STEP_RUNNING and entry.get("attempt") == e.attempt
        if not current:
            what = "compensation result" if e.compensation else f"result of attempt {e.attempt}"
            self.ignore(e.step, f"stale {what}")
            return None
        return step, entry

    def on_StepSucceeded(self, e: StepSucceeded) -> None:
        found = self.current(e)
        if found is None:
            return
        step, entry = found
        if e.compensation:
            entry["status"] = UNDONE
            self.log(e.step, "compensated")
            self.drive_compensation()
            return
        self.complete(step, e.output)
        self.drive()

    def on_StepFailed(self, e: StepFailed) -> None:
        found = self.current(e)
        if found is None:
            return
        step, entry = found
        if e.compensation:
            policy = self.d.compensation_retry(step)
            tries = e.attempt - int(entry.get("undo_base", 0))
            if e.retryable and tries < policy.max_attempts:
                delay = backoff(
                    policy, e.attempt, jitter(self.instance, "undo:" + e.step, e.attempt)
                )
                if e.retry_after is not None:
                    delay = max(delay, e.retry_after)
                self.s["timers"][f"undo:{e.step}"] = self.now + delay
                self.log(e.step, "compensation retry scheduled", error=e.error)
            else:
                self.undo_failed(step, e.error)
            return
        if entry.get("abandoned"):
            # Another branch already won: this one's failure no longer matters.
            entry.update({"status": SKIPPED, "ended": self.now, "error": e.error})
            self.log(e.step, "skipped", reason="failed after another branch finished first")
            self.drive()
            return
        self.fail(step, e.error, retryable=e.retryable, retry_after=e.retry_after)
        self.drive()

    def on_TimerFired(self, e: TimerFired) -> None:
        at = self.s["timers"].pop(e.name, None)
        if at is None:
            return self.ignore(None, f"timer {e.name} is not set")
        kind, _, sid = e.name.partition(":")
        step = self.d.steps[sid]
        entry = self.st(sid)
        if kind == "retry" and entry["status"] == RETRYING:
            self.attempt(step)
        elif kind == "undo" and entry["status"] == UNDOING and self.s["status"] == COMPENSATING:
            self.undo(step)
            return
        elif kind == "sleep" and entry["status"] == STEP_WAITING:
            self.complete(step, {"slept_until": at})
        elif kind == "timeout" and entry["status"] == STEP_WAITING:
            self.s["waits"].pop(sid, None)
            self.log(sid, "timed out")
            if step.spec.approve is not None:
                self.fail(step, "no decision before the timeout", retryable=False, retry_after=None)
            elif step.spec.wait is not None and step.spec.wait.on_timeout:
                entry["status"] = TIMED_OUT
            else:
                self.after_timeout(step)
        else:
            return self.ignore(sid, f"timer {e.name} no longer applies")
        self.drive()

    def on_EventReceived(self, e: EventReceived) -> None:
        wait = self.s["waits"].get(e.step)
        if wait is None or wait.get("kind") != "event":
            return self.ignore(e.step, f"event {e.event_id} arrived but nothing waits for it")
        self.complete(self.d.steps[e.step], e.data)
        self.drive()

    def on_SignalReceived(self, e: SignalReceived) -> None:
        for sid, wait in list(self.s["waits"].items()):
            if wait.get("kind") == "signal" and wait.get("signal") == e.name:
                self.complete(self.d.steps[sid], e.data)
                self.drive()
                return
        self.ignore(None, f"signal {e.name!r} arrived but nothing waits for it")

    def on_Approved(self, e: Approved) -> None:
        wait = self.s["waits"].get(e.step)
        if wait is None or wait.get("kind") != "approval":
            raise InvalidOperation(f"step {e.step!r} is not waiting for a decision")
        step = self.d.steps[e.step]
        self.log(e.step, "approved" if e.approved else "rejected", by=e.by, comment=e.comment)
        if e.approved:
            self.complete(step, {"approved": True, "by": e.by, "comment": e.comment})
        else:
            self.s["waits"].pop(e.step, None)
            self.fail(
                step,
                f"rejected by {e.by}: {e.comment}".rstrip(": "),
                retryable=False,
                retry_after=None,
            )
        self.drive()

    def on_ChildFinished(self, e: ChildFinished) -> None:
        wait = self.s["waits"].get(e.step)
        if wait is None or wait.get("kind") != "child":
            return self.ignore(e.step, "child result for a step that is not waiting")
        step = self.d.steps[e.step]
        if e.status == COMPLETED:
            self.complete(step, e.output)
        else:
            self.s["waits"].pop(e.step, None)
            self.fail(step, f"subprocess ended {e.status}", retryable=False, retry_after=None)
        self.drive()

    def on_Cancel(self, e: Cancel) -> None:
        if self.s["status"] in TERMINAL:
            raise InvalidOperation(f"the instance has already ended ({self.s['status']})")
        if self.s["status"] == COMPENSATING:
            raise InvalidOperation("the instance is already compensating")
        self.s["reason"] = f"cancelled by {e.by}: {e.reason}".rstrip(": ")
        self.log(None, "cancel", by=e.by, reason=e.reason)
        comp = self.s["compensation"]
        if comp is not None and comp.get("queue"):
            # A compensation failed earlier: go on undoing from where it stopped.
            comp["then"] = CANCELLED
            comp["reason"] = self.s["reason"]
            self.resume_compensation()
            return
        self.begin_compensation(CANCELLED)

    def on_Terminate(self, e: Terminate) -> None:
        if self.s["status"] in TERMINAL:
            raise InvalidOperation(f"the instance has already ended ({self.s['status']})")
        self.log(None, "terminate", by=e.by, reason=e.reason)
        self.finish(TERMINATED, f"terminated by {e.by}: {e.reason}".rstrip(": "))

    def on_Retry(self, e: Retry) -> None:
        if self.s["status"] != FAILED:
            raise InvalidOperation(
                f"only a failed instance can be retried; this one is {self.s['status']}"
            )
        self.log(None, "retry", by=e.by)
        comp = self.s["compensation"]
        if comp is not None and comp.get("queue"):
            self.resume_compensation()
            return
        failed = [sid for sid, entry in self.s["steps"].items() if entry["status"] == STEP_FAILED]
        for sid in failed:
            attempt = int(self.s["steps"][sid].get("attempt", 0))
            self.s["steps"][sid] = {"status": PENDING, "attempt": attempt, "base": attempt}
            for nested in self.d.steps[sid].spec.children():
                for s in nested:
                    self.s["steps"].pop(s.id, None)
        self.s["status"] = RUNNING
        self.s["reason"] = None
        self.reopen_parents(failed)
        self.drive()

    def resume_compensation(self) -> None:
        """Issue the failed compensation at the head of the queue again."""
        comp = self.s["compensation"]
        head = self.d.steps[comp["queue"][0]]
        entry = self.st(head.id)
        entry.pop("undo_failed", None)
        entry["undo_base"] = int(entry.get("undo_attempt", 0))
        entry["status"] = UNDOING
        self.s["status"] = COMPENSATING
        self.undo(head)

    def reopen_parents(self, ids: list[str]) -> None:
        """Composite steps above a retried or skipped step run again."""
        for sid in ids:
            parent = self.d.steps[sid].parent
            while parent is not None:
                entry = self.st(parent)
                if entry["status"] == STEP_FAILED:
                    entry["status"] = STEP_RUNNING
                parent = self.d.steps[parent].parent

    def on_Skip(self, e: Skip) -> None:
        if e.step not in self.d.steps:
            raise InvalidOperation(f"process {self.d.key} has no step {e.step!r}")
        if self.s["compensation"] is not None:
            raise InvalidOperation(
                "the instance has begun compensating; retry the failed compensation, "
                "or cancel or terminate the instance"
            )
        status = self.status_of(e.step)
        held = self.s["status"] == FAILED and status == STEP_FAILED
        parked = self.s["status"] in (RUNNING, WAITING) and status in (STEP_WAITING, RETRYING)
        if not (held or parked):
            raise InvalidOperation(
                f"step {e.step!r} is {status} in a {self.s['status']} instance; only a failed "
                "step of a held instance, or a waiting or retrying step, can be skipped"
            )
        entry = self.st(e.step)
        entry.update({"status": SKIPPED, "ended": self.now})
        self.s["waits"].pop(e.step, None)
        self.clear_timers(e.step)
        self.context["steps"][e.step] = None
        self.log(e.step, "skipped", by=e.by)
        if held:
            self.s["status"] = RUNNING
            self.s["reason"] = None
            self.reopen_parents([e.step])
        self.drive()


def start(
    definition: Definition, instance: str, business_key: str, input_: Any, now: float
) -> Transition:
    """The first transition of a new instance."""
    # The state is new but for the input, which is copied: the caller may keep it.
    state = new_state(instance, business_key, orjson.loads(orjson.dumps(input_)))
    run = _Run(definition, state, now, copy=False)
    run.log(None, "started", process=definition.key, key=business_key)
    run.drive()
    return run.done()


# Events that are never refused: what they do not apply to, they ignore.
_NEVER_REFUSED = (
    StepSucceeded,
    StepFailed,
    TimerFired,
    EventReceived,
    SignalReceived,
    ChildFinished,
)


def advance(
    definition: Definition, state: dict[str, Any], event: Event, *, owned: bool = False
) -> Transition:
    """Apply one event; raises :class:`InvalidOperation` for an operation that does not apply.

    ``state`` is left as it is. With ``owned``, the caller hands ``state`` over and reads it
    no more: an event that is never refused (a result, a timer, a matched event or signal,
    a child's end) then changes it in place and returns it as the new state, which spares
    a copy of the whole state; an operation, which may be refused part way through, still
    works on a copy."""
    run = _Run(definition, state, event.now, copy=not (owned and isinstance(event, _NEVER_REFUSED)))
    run.apply(event)
    return run.done()


def due_timers(state: dict[str, Any], now: float) -> list[TimerFired]:
    """The timers of ``state`` due at ``now``, earliest first."""
    timers: dict[str, float] = state["timers"]
    if not timers:
        return []
    due = sorted((at, name) for name, at in timers.items() if at <= now)
    return [TimerFired(name, now) for _, name in due]


def next_wake(state: dict[str, Any]) -> float | None:
    """When the earliest timer of ``state`` fires, if any."""
    return min(state["timers"].values(), default=None)


def outstanding(definition: Definition, state: dict[str, Any]) -> list[Command]:
    """The calls and tasks in flight according to ``state``.

    After a crash the runner re-issues exactly these, with the same
    idempotency keys, so each takes effect once at the target.
    """
    if state["status"] in TERMINAL:
        return []
    running: list[tuple[str, dict[str, Any]]] = []
    for sid, entry in state["steps"].items():
        status = entry["status"]
        if status == STEP_RUNNING:
            running.append((sid, entry))
        elif status == UNDOING:
            return _outstanding_undoing(definition, state)
    if not running:
        return []
    # Calls and tasks only: each is built from its attempt and the context, as it was
    # issued. Bodies and inputs are copied, so that what a handler does with its input
    # cannot reach the state.
    context = state["context"]
    instance = str(context["instance"]["id"])
    commands: list[Command] = []
    for sid, entry in running:
        step = definition.steps.get(sid)
        if step is None or step.kind not in EFFECT_KINDS:
            continue
        command = _effect(step, int(entry["attempt"]), context, f"{instance}:{sid}")
        if isinstance(command, Call) and command.body is not None:
            command = replace(command, body=orjson.loads(orjson.dumps(command.body)))
        elif isinstance(command, RunTask) and step.task_input is not None:
            command = replace(command, input=orjson.loads(orjson.dumps(command.input)))
        commands.append(command)
    return commands


def _outstanding_undoing(definition: Definition, state: dict[str, Any]) -> list[Command]:
    """`outstanding` for a state with compensations under way, which are issued again
    through the same steps that issued them, on a private copy of the state."""
    steps: dict[str, Any] = state["steps"]
    # Re-issuing changes only step entries (and, for a compensation that cannot be built,
    # the status); the context is copied too, as commands may carry parts of it to handlers.
    private = {
        **state,
        "context": orjson.loads(orjson.dumps(state["context"])),
        "steps": {sid: dict(e) for sid, e in steps.items()},
        "timers": dict(state["timers"]),
        "waits": dict(state["waits"]),
        "completed": list(state["completed"]),
    }
    run = _Run(definition, private, 0.0, copy=False)
    run.recording = False
    commands: list[Command] = []
    for sid, entry in steps.items():
        step = definition.steps.get(sid)
        if step is None:
            continue
        if entry["status"] == STEP_RUNNING and step.kind in EFFECT_KINDS:
            commands.append(_effect(step, int(entry["attempt"]), run.context, run.key(sid)))
        elif (
            entry["status"] == UNDOING
            and not entry.get("undo_failed")
            and (f"undo:{sid}" not in state["timers"])
        ):
            run.s["steps"][sid]["undo_attempt"] = int(entry.get("undo_attempt", 1)) - 1
            run.commands = []
            run.undo(step)
            commands.extend(run.commands)
    return commands
