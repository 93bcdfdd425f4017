"""How ``SqliteStore`` buffers a run's events and lays them out in the ``events`` table.

A row of ``events`` holds a stretch of one run's events, ``first_seq`` to
``last_seq`` without gaps, in one of two forms:

- ``header IS NULL``: ``data`` is the events' ``model_dump_json()``, one per
  line (JSON never contains a raw newline);
- otherwise the stretch is ``run_content`` events of one step — nearly all of
  a stream — stored by column: ``header`` is the JSON of the fields they share,
  ``times`` their ``created_at`` as little-endian float64s, and ``data`` a
  JSON array of their ``content`` strings.

The column form exists for speed. Formatting a float as JSON costs Python
about as much as the runner spends producing an event, so a token is kept as
it came (a float appended to an ``array``, a str appended to a list) and the
writer thread encodes a whole stretch with one ``json.dumps`` and one
``tobytes()``. Both forms read back, through ``parse_event``, as events equal
to the ones the run emitted.

Buffering strings and floats instead of event objects also keeps the hot path
cheap: the event object dies as soon as the consumer drops it, where keeping
thousands alive for the writer made the garbage collector walk them again and
again.

**Nothing taken is lost.** The writer takes a run's rows out of its buffer to
write them; if the write fails (the file is locked longer than the busy
timeout, the disk is full) it puts them back in front (``put_back``), so the
next batch writes them again, in order. A row that did commit before the
failure is written again identically and ignored.

**Text SQLite cannot hold.** A lone surrogate (``os.fsdecode`` of a file name
that is not UTF-8, say) cannot be encoded as UTF-8, so it can neither be
bound as an SQLite parameter nor be dumped by pydantic. ``clean_text`` replaces
each one with ``?`` — in records, cancel requests and events' text fields
alike, so lookups by such a run id still match. Streamed tokens are the
exception: they are stored exactly (as JSON ``\\u`` escapes).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from array import array
from collections.abc import Iterator
from typing import Any, Final, NamedTuple

from ...events import BaseEvent, Event, RunContentEvent, StepStartedEvent, WorkflowStartedEvent, parse_event
from .._text import clean_text

__all__ = ["Chunk", "Lines", "RunBuffer", "Taken", "Tokens", "decode_chunk", "dump_event"]

logger = logging.getLogger("threadflow")

#: A row of the events table: ``(run_key, first_seq, last_seq, data, header, times)``.
Chunk = tuple[int, int, int, str, str | None, bytes | None]

_TOKEN_FIELDS_OWN: Final = {"seq", "created_at", "content"}
_LITTLE_ENDIAN: Final = sys.byteorder == "little"


class Lines:
    """Consecutive events as JSON lines."""

    __slots__ = ("first", "lines")

    def __init__(self, first: int, line: str) -> None:
        self.first = first
        self.lines = [line]

    @property
    def next_seq(self) -> int:
        return self.first + len(self.lines)

    def chunk(self, key: int) -> Chunk:
        return (key, self.first, self.next_seq - 1, "\n".join(self.lines), None, None)


class Tokens:
    """Consecutive ``run_content`` events of one step, by column.

    The run's thread only appends (to ``times`` first, then ``contents``);
    the writer only removes a prefix both columns already have. Each list and
    array operation is atomic under the GIL, so the two need no lock here.

    ``path`` is the head's ``step_path`` object: the runner builds every token
    of one step's stream from one template, so a token whose ``step_path`` is
    another object belongs to another stretch (a parallel branch's tokens
    interleave with its sibling's). ``check_at``: the length of ``contents``
    at which the run's thread next looks up from appending (``SqliteStore``'s
    checkpoint); the writer sets it to 0 when it takes tokens, so a look is
    never put off by more than the tokens appended since.
    """

    __slots__ = ("check_at", "contents", "first", "head", "path", "times")

    def __init__(self, head: RunContentEvent) -> None:
        self.head = head
        self.path = head.step_path
        self.first = head.seq
        self.check_at = 0
        self.times = array("d")
        self.contents: list[str] = []

    def chunk(self, key: int) -> Chunk | None:
        """The tokens buffered so far as a row, removed from the buffer; None if there are none."""
        count = min(len(self.times), len(self.contents))
        if not count:
            return None
        header = _dump(self.head, exclude=_TOKEN_FIELDS_OWN)  # first: nothing is removed if it raised
        times, contents = self.times[:count], self.contents[:count]
        del self.times[:count], self.contents[:count]
        self.check_at = 0
        first, self.first = self.first, self.first + count
        if not _LITTLE_ENDIAN:
            times.byteswap()
        return (key, first, first + count - 1, json.dumps(contents, ensure_ascii=False), header, times.tobytes())


class RunBuffer:
    """One active run's events not yet written: filled by the run's thread, emptied by the writer thread.

    The store's ``append`` adds a token to ``tokens`` itself (the hot path,
    lock-free: see ``Tokens``); every other event goes through ``add_line``.
    """

    __slots__ = (
        "events_lost",
        "key",
        "lock",
        "retry",
        "retry_events",
        "run_id",
        "sealed",
        "started_at",
        "step_name",
        "tokens",
    )

    def __init__(self, run_id: str = "") -> None:
        self.run_id = run_id
        self.key = -1  # the run's rowid in ``runs``, once its record is written
        self.lock = threading.Lock()  # guards retry, sealed, tokens (the reference), started_at, step_name
        self.retry: list[Chunk] = []  # rows taken by a write that failed: the first to be written next
        self.retry_events = 0  # how many events those rows hold
        self.events_lost = 0  # events dropped because writes kept failing (then none of its later ones are kept)
        self.sealed: list[Lines | Tokens] = []
        self.tokens: Tokens | None = None
        self.started_at: float | None = None
        self.step_name: str | None = None

    def open_tokens(self, head: RunContentEvent) -> Tokens:
        """The stretch ``head`` belongs to: the open one if ``head`` shares its fields, else a new one (sealing it).

        The run's thread calls this when ``head`` is not plainly of the open
        stretch (see ``Tokens``): the first token, a sibling branch's, or one
        built elsewhere with equal fields (kept in the open stretch).
        """
        with self.lock:
            if self.tokens is not None:
                if _shares_fields(self.tokens.head, head):
                    return self.tokens
                self.sealed.append(self.tokens)
            tokens = self.tokens = Tokens(head)
        return tokens

    def add_line(self, event: BaseEvent) -> None:
        """Buffer an event other than ``run_content``; it ends the open stretch of tokens."""
        if self.events_lost:
            return  # no longer recorded
        line = dump_event(event)
        with self.lock:
            if self.tokens is not None:
                self.sealed.append(self.tokens)
                self.tokens = None
            last = self.sealed[-1] if self.sealed else None
            if line is None:
                pass  # it could not be stored: the events after it start a new row
            elif isinstance(last, Lines) and last.next_seq == event.seq:
                last.lines.append(line)
            else:
                self.sealed.append(Lines(event.seq, line))
            if isinstance(event, WorkflowStartedEvent):
                self.started_at = event.created_at
            elif isinstance(event, StepStartedEvent):
                self.step_name = event.step_name

    def take(self) -> tuple[list[Chunk], float | None, str | None]:
        """Rows for everything buffered so far (``key`` set), and the run's progress since the last take.

        The caller owns them until they are committed: ``put_back`` if the write fails.
        """
        with self.lock:
            rows, self.retry, self.retry_events = self.retry, [], 0
            stretches, self.sealed = self.sealed, []
            if self.tokens is not None:
                stretches.append(self.tokens)  # left open: the run keeps appending to it
            progress = self.started_at, self.step_name
            self.started_at = self.step_name = None
        for stretch in stretches:
            row = stretch.chunk(self.key)
            if row is not None:
                rows.append(row)
        if self.events_lost:
            rows = []  # what the run still emits is not recorded: only its progress and its end
        return rows, *progress

    def put_back(self, rows: list[Chunk], started_at: float | None, step_name: str | None, *, bound: int) -> None:
        """Return what ``take`` gave (a write failed): written first by the next batch; newer progress wins.

        If that makes more than ``bound`` unwritten events, they are dropped
        instead, and the run is no longer recorded (``events_lost``): memory
        stays bounded however long the writes fail.
        """
        count = sum(last - first + 1 for _, first, last, *_ in rows)
        with self.lock:
            if self.started_at is None:
                self.started_at = started_at
            if self.step_name is None:
                self.step_name = step_name
            if self.events_lost or self.retry_events + count > bound:
                self._drop(count)
                return
            self.retry[:0] = rows
            self.retry_events += count

    def _drop(self, count: int) -> None:
        """Stop recording this run's events (with ``lock`` held): what is buffered goes, and so will the rest."""
        lost = count + self.retry_events + sum(_size(stretch) for stretch in self.sealed)
        if not self.events_lost:
            logger.error(
                "threadflow: run %s: its events cannot be written and exceed the store's buffer: %d dropped, and "
                "its later events are not recorded (its end still is, once the store can take it)",
                self.run_id,
                lost,
            )
        self.events_lost += lost
        self.retry, self.retry_events, self.sealed = [], 0, []
        self.tokens = None

    def buffered_events(self) -> int:
        """Events taken in and not yet written (or dropped)."""
        with self.lock:
            tokens = 0 if self.tokens is None else len(self.tokens.contents)
            return self.retry_events + sum(_size(stretch) for stretch in self.sealed) + tokens


def _shares_fields(head: RunContentEvent, event: RunContentEvent) -> bool:
    """Whether ``event`` has every field of ``head`` but its own (``seq``, ``created_at``, ``content``)."""
    theirs = event.__dict__
    return all(theirs.get(name) == value for name, value in head.__dict__.items() if name not in _TOKEN_FIELDS_OWN)


def _size(stretch: Lines | Tokens) -> int:
    return len(stretch.lines) if isinstance(stretch, Lines) else len(stretch.contents)


class Taken(NamedTuple):
    """What one run's buffer held: its rows and progress, owned by the batch until it commits."""

    buffer: RunBuffer
    rows: list[Chunk]
    started_at: float | None
    step_name: str | None

    @property
    def quiet(self) -> bool:
        return not self.rows and self.started_at is None and self.step_name is None


def dump_event(event: BaseEvent) -> str | None:
    """The event's JSON. Content pydantic cannot serialise is stored as ``str(value)``; None if even that fails."""
    try:
        return _dump(event)
    except Exception:
        logger.exception("threadflow: event %s of run %s cannot be stored", event.seq, event.run_id)
        return None


def _dump(event: BaseEvent, exclude: set[str] | None = None) -> str:
    """``model_dump_json``; failing that, with ``content`` as text and every lone surrogate in text as ``?``."""
    try:
        return event.model_dump_json(fallback=_as_text, exclude=exclude)
    except Exception:  # noqa: BLE001 — any failure here has the fallback below
        pass
    # e.g. a lone surrogate in a reason or an error message, or content that contains itself
    fields = {
        name: _as_text(value) if name == "content" else clean_text(value)
        for name, value in event
        if name == "content" or isinstance(value, str)
    }
    return event.model_copy(update=fields).model_dump_json(fallback=_as_text, exclude=exclude)


def _as_text(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 — a __str__ that raises still gets a description
        text = f"<unprintable {type(value).__name__}>"
    return clean_text(text)


def decode_chunk(first: int, data: str, header: str | None, times: bytes | None) -> Iterator[Event]:
    """The events of one row of the events table, in ``seq`` order."""
    if header is None or times is None:
        yield from (parse_event(line) for line in data.split("\n"))
        return
    shared = json.loads(header)
    stamps = array("d")
    stamps.frombytes(times)
    if not _LITTLE_ENDIAN:
        stamps.byteswap()
    for offset, (at, content) in enumerate(zip(stamps, json.loads(data), strict=True)):
        yield parse_event({**shared, "seq": first + offset, "created_at": at, "content": content})
