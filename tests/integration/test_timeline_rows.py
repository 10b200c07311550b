"""An instance's timeline is stored a row per transition, and rows written before that
(one entry each) read as they always did, in order with the new ones."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from charter.runtime import Hub
from charter.store.schema import process_history


def test_a_transition_is_one_row_and_older_single_entry_rows_still_read(
    two_signals: Path, db_url: str
) -> None:
    hub = Hub.open(two_signals, database=db_url)
    try:
        ident, _ = hub.processes.start("two-signals", "T-1", {})
        timeline = hub.processes.store.history(ident)
        # The start's entries: the instance started, its first step started and waiting.
        assert [e["what"] for e in timeline][:2] == ["started", "started"]
        assert timeline[0]["key"] == "T-1" and timeline[1]["step"] == "first"
        with hub.store.engine.begin() as conn:
            rows = conn.execute(
                select(func.count()).where(process_history.c.instance_id == ident)
            ).scalar_one()
            assert rows == 1
            # A row as written before timelines were stored a row per transition.
            conn.execute(
                process_history.insert().values(
                    instance_id=ident,
                    at=timeline[-1]["at"] + 1,
                    step="first",
                    what="note",
                    detail='{"by": "ops"}',
                )
            )
        after = hub.processes.store.history(ident)
        assert after[: len(timeline)] == timeline
        assert after[len(timeline) :] == [
            {"at": timeline[-1]["at"] + 1, "what": "note", "step": "first", "by": "ops"}
        ]
    finally:
        hub.close()
