"""An inbox item that arrives for an instance while a worker holds it is never stranded:
the worker's next write, even one that lets the instance go with nothing due, leaves it due
while its inbox holds anything it did not consume, so a claim picks the item up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from charter.engine import machine
from charter.engine.messages import SignalReceived
from charter.engine.persist import Planner
from charter.runtime import Hub
from charter.store.schema import process_inbox


@pytest.mark.parametrize("group", [True, False], ids=["group-write", "single-write"])
def test_an_item_that_arrives_while_the_instance_is_held_keeps_it_due(
    group: bool, two_signals: Path, db_url: str
) -> None:
    hub = Hub.open(two_signals, database=db_url)
    store = hub.processes.store
    try:
        ident, _ = hub.processes.start("two-signals", "S-1", {})
        store.enqueue(ident, "signal", {"name": "one"})
        claim = store.claim("worker-1", 10, 30.0)
        [record] = claim.instances
        [first] = claim.inbox[ident]
        # The second signal arrives after the worker read the inbox.
        store.enqueue(ident, "signal", {"name": "two"})

        definition = hub.processes.definitions.get("two-signals", 1)
        now = time.time()
        transition = machine.advance(definition, record.state, SignalReceived("one", None, now))
        write = Planner(hub.processes.definitions).write(
            record, transition, now, consumed=[first.id], keep_lease=False
        )
        # Waiting for a signal, with nothing to call and no timer: on its own, nothing due.
        assert write.next_wake_at is None
        # A worker's group write checks its lease; a write with no worker (an operation's)
        # takes the single-instance path.
        [outcome] = store.write("worker-1" if group else None, [write])
        assert outcome.outcome == "ok"

        again = store.claim("worker-2", 10, 30.0)
        assert [r.id for r in again.instances] == [ident]
        assert [item.body["name"] for item in again.inbox[ident]] == ["two"]
    finally:
        hub.close()


def test_on_postgresql_a_claim_takes_an_unleased_instance_with_an_unread_item(
    two_signals: Path, pg_url: str
) -> None:
    """A worker's write on PostgreSQL reads the inbox as it was when the write began; an item
    committed just after, by a writer that took the instance's row first, can leave the
    instance with nothing due. The claim takes such an instance all the same."""
    hub = Hub.open(two_signals, database=pg_url)
    store = hub.processes.store
    try:
        ident, _ = hub.processes.start("two-signals", "S-2", {})
        assert store.claim("worker-1", 10, 30.0).instances == []  # waiting, nothing due
        # What such a race leaves behind: an item in the inbox of an instance that is
        # neither due nor leased.
        with store.store.engine.begin() as conn:
            conn.execute(
                process_inbox.insert().values(
                    instance_id=ident,
                    kind="signal",
                    body='{"name": "one"}',
                    created_at=time.time(),
                )
            )
        claim = store.claim("worker-1", 10, 30.0)
        assert [r.id for r in claim.instances] == [ident]
        assert [item.body["name"] for item in claim.inbox[ident]] == ["one"]
        # Leased now: another worker gets nothing until the lease runs out.
        assert store.claim("worker-2", 10, 30.0).instances == []
    finally:
        hub.close()
