"""Turn a transition into the write that commits it, with everything that must commit with it.

Waits, escalations, child instances and the message to a parent are written in
the same transaction as the new state, so each happens exactly once; only
calls and tasks happen after the commit, and those carry idempotency keys.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import orjson

from charter.engine import machine
from charter.engine.messages import Escalate, Finished, StartChild, Transition
from charter.engine.registry import Definitions
from charter.store.processes import InstanceRecord, InstanceWrite, WaitRow

# Instance ids derive from (process, business key): a retried start finds the same id.
INSTANCE_NAMESPACE = uuid.UUID("a9d3c1f0-4b7e-4f6a-8c2d-1e5b9f3a7c64")


def instance_id(process: str, business_key: str) -> str:
    """``uuid5(INSTANCE_NAMESPACE, process NUL business key)``, as text, without building the
    intermediate UUID objects (every start asks for one)."""
    hashed = _NAMESPACE_HASH.copy()
    hashed.update(f"{process}\x00{business_key}".encode())
    digest = bytearray(hashed.digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# The namespace hashed once; each id continues from a copy.
_NAMESPACE_HASH = hashlib.sha1(INSTANCE_NAMESPACE.bytes, usedforsecurity=False)


def correlation_value(value: Any) -> str:
    """How a correlation value is stored and matched: text as is, anything else as JSON;
    long values by their SHA-256."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    if len(text) > 200:
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def wait_rows(state: dict[str, Any]) -> list[WaitRow]:
    if not state["waits"]:
        return []
    return [
        WaitRow(
            step=step,
            system=w["system"],
            type=w["type"],
            field=w["field"],
            value=correlation_value(w["value"]),
        )
        for step, w in state["waits"].items()
        if w.get("kind") == "event"
    ]


class Planner:
    """Builds :class:`InstanceWrite` objects from transitions."""

    def __init__(self, definitions: Definitions) -> None:
        self.definitions = definitions

    def new_instance(
        self,
        process: str,
        business_key: str,
        input_: Any,
        now: float,
        *,
        version: int | None = None,
        parent: tuple[str, str] | None = None,
        keep_lease: bool = False,
    ) -> tuple[InstanceWrite, Transition]:
        """The write that creates an instance; with ``keep_lease``, the worker that commits it
        holds it from the start (when it has calls to make)."""
        definition = (
            self.definitions.get(process, version)
            if version is not None
            else self.definitions.latest(process)
        )
        self.definitions.remember(definition)
        ident = instance_id(process, business_key)
        transition = machine.start(definition, ident, business_key, input_, now)
        record = InstanceRecord(
            id=ident,
            process=process,
            version=definition.spec.version,
            business_key=business_key,
            status=transition.state["status"],
            state=transition.state,
            parent_id=parent[0] if parent else None,
            parent_step=parent[1] if parent else None,
        )
        write = self.write(record, transition, now, new=True, keep_lease=keep_lease)
        return write, transition

    def write(
        self,
        record: InstanceRecord,
        transition: Transition,
        now: float,
        *,
        new: bool = False,
        consumed: list[int] | None = None,
        keep_lease: bool = False,
        waits_before: list[WaitRow] | None = None,
    ) -> InstanceWrite:
        """The write of ``transition`` of ``record``. ``waits_before`` are the waits of the
        state before the transition, when that state was handed to it (``machine.advance``
        with ``owned``) and ``record.state`` is already the new one."""
        state = transition.state
        definition = self.definitions.get(record.process, record.version)
        effects = machine.outstanding(definition, state)
        updated = record
        if record.state is not state or record.status != state["status"]:
            updated = InstanceRecord(
                id=record.id,
                process=record.process,
                version=record.version,
                business_key=record.business_key,
                status=state["status"],
                state=state,
                parent_id=record.parent_id,
                parent_step=record.parent_step,
            )
        # With effects in flight the instance is due at once: if this worker dies,
        # whoever takes the lease over issues them again.
        wake = now if effects else machine.next_wake(state)
        waits = wait_rows(state)
        if waits_before is None:
            waits_before = [] if new else wait_rows(record.state)
        before = set(waits_before) if waits and waits_before else ()
        write = InstanceWrite(
            instance=updated,
            new=new,
            next_wake_at=wake,
            keep_lease=keep_lease and bool(effects),
            history=transition.history,
            waits=waits,
            new_waits=[w for w in waits if w not in before],
            had_waits=bool(waits_before),
            consumed=consumed or [],
            effects=effects,
        )
        for command in transition.commands:
            if isinstance(command, Escalate):
                write.escalations.append((command.team, command.step, command.message))
            elif isinstance(command, StartChild):
                child, _ = self.new_instance(
                    command.process,
                    command.business_key,
                    command.input,
                    now,
                    version=command.version,
                    parent=(record.id, command.step),
                )
                write.children.append(child)
            elif isinstance(command, Finished) and record.parent_id and record.parent_step:
                write.parent_message = (
                    record.parent_id,
                    "child_finished",
                    {
                        "step": record.parent_step,
                        "status": command.status,
                        "output": command.output,
                    },
                )
        return write
