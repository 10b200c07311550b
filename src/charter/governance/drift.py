"""Runtime drift: payloads that still validate but no longer look like their schema says.

Three kinds are counted per (system, event type, field[, value]):

- ``unknown_field``: a payload property the event schema does not declare
  under ``properties`` (checked recursively through declared objects and list
  items; an object whose schema admits more through ``additionalProperties``,
  ``patternProperties``, ``$ref`` or a combinator is not checked);
- ``unmapped_value``: a pick-list value an ingress mapping's ``values`` map does
  not list, for rules that read a path (``from``), also inside ``each``. Under
  ``on_unmapped: error`` the event is still refused; it is counted anyway;
- ``stopped_field``: a declared field seen before and not in the last
  ``stopped_after`` seconds while events of its type keep arriving; found from
  the ``seen`` counts when a report is made.

The ingest path only fills a :class:`DriftTally` per request (pure, no I/O);
the :class:`DriftRecorder` adds tallies up in memory and writes them to the
store about once a second, so counting never adds a write to an ingest.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from charter.catalog import Project
from charter.catalog.model import parse_duration
from charter.governance.ownership import InvalidOperation
from charter.mapping import CompiledMapping, FieldRule
from charter.mapping.paths import MISSING, Path, lookup, parse_path
from charter.store import DriftCount, FieldWrite, Store

log = logging.getLogger("charter.drift")

UNKNOWN_FIELD = "unknown_field"
UNMAPPED_VALUE = "unmapped_value"
STOPPED_FIELD = "stopped_field"
SEEN = "seen"
REPORTED = (UNKNOWN_FIELD, UNMAPPED_VALUE)
MAX_VALUE = 200
STOPPED_AFTER_ENV = "CHARTER_DRIFT_STOPPED_AFTER"
DEFAULT_STOPPED_AFTER = 600.0
# Keywords that let an object hold properties its ``properties`` does not name.
_OPEN = ("patternProperties", "allOf", "anyOf", "oneOf", "$ref", "$dynamicRef", "if")


def stopped_after_setting() -> float:
    """Seconds without a field before it counts as stopped: ``CHARTER_DRIFT_STOPPED_AFTER``
    (a duration such as ``10m``), 10 minutes by default."""
    value = os.environ.get(STOPPED_AFTER_ENV)
    return parse_duration(value) if value else DEFAULT_STOPPED_AFTER


def shown_value(value: Any) -> str:
    """A pick-list value as the drift table keeps it: text as is, anything else as JSON."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


class PayloadShape:
    """The declared properties of an event schema, as a tree walked once per payload."""

    __slots__ = ("fields", "items", "open", "prefix")

    def __init__(self, schema: Any, prefix: str = "") -> None:
        self.prefix = prefix
        self.fields: dict[str, tuple[str, PayloadShape | None]] | None = None
        self.items: PayloadShape | None = None
        self.open = True
        if not isinstance(schema, dict):
            return
        properties = schema.get("properties")
        if isinstance(properties, dict):
            extra = schema.get("additionalProperties", True)
            unevaluated = schema.get("unevaluatedProperties", True)
            self.open = (
                any(k in schema for k in _OPEN)
                or not isinstance(extra, bool)
                or not isinstance(unevaluated, bool)
            )
            self.fields = {}
            for name, sub in properties.items():
                path = prefix + name
                child = PayloadShape(sub, path + ".")
                keep = child if child.fields is not None or child.items is not None else None
                self.fields[name] = (path, keep)
        items = schema.get("items")
        if isinstance(items, dict):
            shape = PayloadShape(items, prefix[:-1] + "[]." if prefix else "[].")
            if shape.fields is not None or shape.items is not None:
                self.items = shape

    def walk(self, value: Any, unknown: list[str], seen: dict[str, int]) -> None:
        """Add undeclared property paths to ``unknown`` and count declared ones in ``seen``."""
        fields = self.fields
        if fields is not None and type(value) is dict:
            for key, item in value.items():
                known = fields.get(key)
                if known is None:
                    if not self.open:
                        unknown.append(self.prefix + key)
                    continue
                path, child = known
                seen[path] = seen.get(path, 0) + 1
                if child is not None:
                    child.walk(item, unknown, seen)
        elif self.items is not None and type(value) is list:
            for item in value:
                self.items.walk(item, unknown, seen)


@dataclass(frozen=True)
class PickList:
    """A value-map rule of a mapping that reads a source path (``from``)."""

    label: str  # the source field as a report shows it: "stage", "lines[].status"
    path: Path
    text_keys: frozenset[str]
    int_keys: frozenset[int]
    each: tuple[PickList, ...] = ()

    def unmapped(self, payload: Any, found: list[tuple[str, str]]) -> None:
        """Add (field, value) for every value at the path the map does not list."""
        value = lookup(payload, self.path)
        if value is MISSING or value is None:
            return
        if self.each:
            if type(value) is list:
                for item in value:
                    for rule in self.each:
                        rule.unmapped(item, found)
            return
        for one in value if type(value) is list else (value,):
            if isinstance(one, str):
                if one in self.text_keys:
                    continue
            elif type(one) is int and one in self.int_keys:
                continue
            found.append((self.label, shown_value(one)))


def _pick_lists(fields: dict[str, FieldRule], prefix: str) -> tuple[PickList, ...]:
    found: list[PickList] = []
    for rule in fields.values():
        if rule.from_ is None or rule.from_ == "$":
            continue
        label = prefix + rule.from_
        if rule.values is not None:
            keys = frozenset(rule.values)
            ints = frozenset(int(k) for k in keys if k.lstrip("-").isdigit() and k == str(int(k)))
            found.append(PickList(label, parse_path(rule.from_), keys, ints))
        elif rule.each is not None:
            nested = _pick_lists(rule.each, label + "[].")
            if nested:
                found.append(
                    PickList(label, parse_path(rule.from_), frozenset(), frozenset(), nested)
                )
    return tuple(found)


def pick_lists(mapping: CompiledMapping) -> tuple[PickList, ...]:
    """The value maps of ``mapping`` that drift counting checks (``expr`` rules are not)."""
    return _pick_lists(mapping.spec.fields, "")


@dataclass
class DriftTally:
    """What one request's payloads showed; handed to a :class:`DriftRecorder` once."""

    # (system, event type, kind, field, value) -> count
    counts: dict[tuple[str, str, str, str, str], int] = field(default_factory=dict)
    # (system, event type) -> {declared field path: times present}; "" counts the events
    seen: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    # writes refused at ingest (their events are not stored, so not counted on append)
    refused: list[FieldWrite] = field(default_factory=list)

    def observe(
        self,
        system: str,
        event_type: str,
        shape: PayloadShape,
        checks: tuple[PickList, ...],
        payload: Any,
    ) -> None:
        """Count one payload that validated against its event schema."""
        seen = self.seen.get((system, event_type))
        if seen is None:
            seen = self.seen[(system, event_type)] = {}
        seen[""] = seen.get("", 0) + 1
        unknown: list[str] = []
        shape.walk(payload, unknown, seen)
        counts = self.counts
        for path in dict.fromkeys(unknown):
            key = (system, event_type, UNKNOWN_FIELD, path, "")
            counts[key] = counts.get(key, 0) + 1
        if checks:
            unmapped: list[tuple[str, str]] = []
            for check in checks:
                check.unmapped(payload, unmapped)
            for path, value in dict.fromkeys(unmapped):
                key = (system, event_type, UNMAPPED_VALUE, path, value)
                counts[key] = counts.get(key, 0) + 1

    def __bool__(self) -> bool:
        return bool(self.counts or self.seen or self.refused)


class DriftRecorder:
    """Adds tallies up in memory and writes them to the store every ``interval`` seconds.

    Contract: ``add`` never touches the store; a background thread flushes, and
    ``close`` flushes what is left. Every ``check_every`` seconds it also looks
    for stopped fields and writes a ``stopped_field`` row for each new one, which
    sends its owner a notice. Counts of a process that dies unflushed are lost
    (at most ``interval`` seconds of them): drift counts are evidence, not records.
    """

    def __init__(
        self,
        store: Store,
        project: Project,
        *,
        interval: float = 1.0,
        stopped_after: float | None = None,
        check_every: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.teams = {name: s.owner for name, s in project.systems.items()}
        self.interval = interval
        self.stopped_after = stopped_after_setting() if stopped_after is None else stopped_after
        self.check_every = check_every
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._counts: dict[tuple[str, ...], list[float]] = {}
        self._refused: list[FieldWrite] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._checked_at = 0.0

    def add(self, tally: DriftTally) -> None:
        if not tally:
            return
        now = self.clock()
        with self._lock:
            counts = self._counts
            for key, n in tally.counts.items():
                self._bump(counts, key, n, now)
            for (system, event_type), seen in tally.seen.items():
                for path, n in seen.items():
                    self._bump(counts, (system, event_type, SEEN, path, ""), n, now)
            self._refused.extend(tally.refused)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="charter-drift", daemon=True)
                self._thread.start()

    @staticmethod
    def _bump(
        counts: dict[tuple[str, ...], list[float]], key: tuple[str, ...], n: int, now: float
    ) -> None:
        found = counts.get(key)
        if found is None:
            counts[key] = [n, now, now]
        else:
            found[0] += n
            found[2] = now

    def flush(self) -> None:
        """Write what was added since the last flush; on failure keep it for the next one."""
        with self._lock:
            counts, self._counts = self._counts, {}
            refused, self._refused = self._refused, []
        try:
            self._write(counts, refused)
        except Exception:
            with self._lock:
                self._refused[:0] = refused
                for key, (n, first, last) in counts.items():
                    self._bump(self._counts, key, int(n), last)
                    self._counts[key][1] = min(self._counts[key][1], first)
            raise

    def _write(self, counts: dict[tuple[str, ...], list[float]], refused: list[FieldWrite]) -> None:
        if refused:
            self.store.count_writes(refused)
            refused.clear()  # written: a failure of the drift write must not count them twice
        if counts:
            self.store.record_drift(
                [
                    DriftCount(
                        system=system,
                        event_type=event_type,
                        kind=kind,
                        field=path,
                        value=value,
                        count=int(n),
                        first_seen=first,
                        last_seen=last,
                        team=self.teams.get(system, ""),
                    )
                    for (system, event_type, kind, path, value), (n, first, last) in counts.items()
                ]
            )

    def check_stopped(self) -> int:
        """Record newly stopped fields (each once, with a notice); returns how many."""
        now = self.clock()
        rows = self.store.drift_counts(kinds=(SEEN, STOPPED_FIELD))
        told = {
            (r["system"], r["event_type"], r["field"]) for r in rows if r["kind"] == STOPPED_FIELD
        }
        stopped = [
            r
            for r in stopped_fields(rows, now, self.stopped_after)
            if (r["system"], r["event_type"], r["field"]) not in told
        ]
        self.store.record_drift(
            [
                DriftCount(
                    system=r["system"],
                    event_type=r["event_type"],
                    kind=STOPPED_FIELD,
                    field=r["field"],
                    value="",
                    count=1,
                    first_seen=now,
                    last_seen=now,
                    team=self.teams.get(r["system"], ""),
                )
                for r in stopped
            ]
        )
        return len(stopped)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._closed:
                    self._wake.wait(self.interval)
                closed = self._closed
            try:
                self.flush()
                if self.clock() - self._checked_at >= self.check_every:
                    self._checked_at = self.clock()
                    self.check_stopped()
            except Exception as exc:  # a store hiccup must not end counting; the next flush retries
                log.warning(
                    "drift counts not written yet (%s); retrying in %gs", exc, self.interval
                )
            if closed:
                return

    def close(self) -> None:
        """Flush what is left and stop the flushing thread."""
        with self._lock:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        else:
            self.flush()


def stopped_fields(rows: list[dict[str, Any]], now: float, after: float) -> list[dict[str, Any]]:
    """The ``seen`` rows of declared fields not seen for ``after`` seconds while their event
    type was (the row with field ``""`` says when it last arrived)."""
    latest = {
        (r["system"], r["event_type"]): r["last_seen"]
        for r in rows
        if r["kind"] == SEEN and r["field"] == ""
    }
    return [
        r
        for r in rows
        if r["kind"] == SEEN
        and r["field"]
        and r["last_seen"] < now - after
        and latest.get((r["system"], r["event_type"]), 0.0) >= now - after
    ]


def drift_report(
    project: Project,
    store: Store,
    *,
    system: str | None = None,
    since: float | None = None,
    now: float | None = None,
    stopped_after: float | None = None,
) -> list[dict[str, Any]]:
    """Drift rows for a report: unknown fields and unmapped values last seen since ``since``,
    and fields stopped now; each with ``team``, the owner of the system."""
    now = time.time() if now is None else now
    after = stopped_after_setting() if stopped_after is None else stopped_after
    rows = store.drift_counts(system, since, REPORTED)
    seen = store.drift_counts(system, None, (SEEN,))
    for r in stopped_fields(seen, now, after):
        rows.append(r | {"kind": STOPPED_FIELD})
    for row in rows:
        owner = project.systems.get(row["system"])
        row["team"] = owner.owner if owner is not None else None
    rows.sort(key=lambda r: (r["system"], r["event_type"], r["kind"], r["field"], r["value"]))
    return rows


def parse_since(value: str | float | None, now: float | None = None) -> float | None:
    """Seconds since the epoch from an ISO 8601 time (UTC without an offset), a number of
    seconds since the epoch, or an age with a unit (``90s``, ``10m``, ``1h``, ``2d``)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            age = parse_duration(value)
        except ValueError as exc:
            raise InvalidOperation(
                f"since={value!r} is neither an ISO 8601 time nor an age",
                pointer="/since",
                fix="write e.g. since=2026-11-27T10:00:00Z or since=1h",
            ) from exc
        return (time.time() if now is None else now) - age
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
