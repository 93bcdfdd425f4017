"""A finished run's events kept compactly: one tuple of plain values per event, rebuilt into the event when read.

A background run's log is kept for replay after the run ends (a handle, a
server's recent runs). As objects, every event is two containers the
garbage collector walks on each full collection, for as long as the log is
kept: with a few hundred finished runs of a few hundred tokens kept by a
server, its pauses reached 0.1-0.3 s and held up every stream. Packed, an
event is a tuple of strings and numbers, which the collector stops tracking
at its first look; the fields that hold an enum keep its value, and the
fields fixed by the event's class (``event``, a terminal ``status``) are
left out.

Reading rebuilds an equal event (a new object) with ``make_exact``, about a
microsecond each: replaying a finished run is the rare case.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Sequence
from typing import Any, overload

from ._fastevents import _FAST_MODELS, make_exact, template
from .events import BaseEvent

__all__ = ["PackedEvents"]


class _Codec:
    """How one event class is packed: its fields' order, the constant ones left out, the enum ones by value."""

    __slots__ = ("cls", "constant_at", "enum_at", "enums", "first", "index", "kept", "simple", "width")

    def __init__(self, index: int, cls: type[BaseEvent]) -> None:
        self.index = index
        self.cls = cls
        fields = list(cls.model_fields.items())
        self.width = len(fields)
        # Literal[member] fields hold the one value their class allows: position -> that member.
        members = {i: _literal(f.annotation) for i, (_, f) in enumerate(fields)}
        self.constant_at = {i: member for i, member in members.items() if member is not None}
        # Fields declared as an enum, packed as the member's value: (position, name, enum class).
        enums = [(i, name, f.annotation) for i, (name, f) in enumerate(fields) if _enum_class(f.annotation)]
        self.enum_at = {i for i, _, _ in enums}
        self.enums: list[tuple[str, type[enum.Enum]]] = [(name, enum_class) for _, name, enum_class in enums]
        self.kept = [name for i, (name, _) in enumerate(fields) if i not in self.constant_at]
        # The common shape: only the first field (``event``) is fixed, no enum: a slice packs it.
        self.simple = list(self.constant_at) == [0] and not self.enum_at
        self.first = self.constant_at.get(0)

    def pack(self, event: BaseEvent) -> tuple[Any, ...] | BaseEvent:
        values = tuple(event.__dict__.values())
        if self.simple and len(values) == self.width and values[0] is self.first:
            return (self.index, *values[1:])
        if len(values) != self.width or any(values[i] is not v for i, v in self.constant_at.items()):
            return event  # not the shape its class declares: kept as it is
        packed = [
            v.value if i in self.enum_at and isinstance(v, enum.Enum) else v
            for i, v in enumerate(values)
            if i not in self.constant_at
        ]
        return (self.index, *packed)

    def unpack(self, row: tuple[Any, ...]) -> BaseEvent:
        values = template(self.cls, dict(zip(self.kept, row[1:], strict=True)))
        for name, enum_class in self.enums:
            if values[name] is not None:
                values[name] = enum_class(values[name])
        return make_exact(self.cls, values)


def _literal(annotation: Any) -> enum.Enum | None:
    """The member a ``Literal[member]`` annotation allows, else None."""
    if typing.get_origin(annotation) is typing.Literal and len(typing.get_args(annotation)) == 1:
        value = typing.get_args(annotation)[0]
        return value if isinstance(value, enum.Enum) else None
    return None


def _enum_class(annotation: Any) -> typing.TypeGuard[type[enum.Enum]]:
    return isinstance(annotation, type) and issubclass(annotation, enum.Enum)


_CODECS: dict[type[BaseEvent], _Codec] = {}
_BY_INDEX: list[_Codec] = []
for _cls in _FAST_MODELS:
    if issubclass(_cls, BaseEvent):
        _codec = _Codec(len(_BY_INDEX), _cls)
        _CODECS[_cls] = _codec
        _BY_INDEX.append(_codec)


def _unpack(row: tuple[Any, ...] | BaseEvent) -> BaseEvent:
    return row if isinstance(row, BaseEvent) else _BY_INDEX[row[0]].unpack(row)


class PackedEvents(Sequence[BaseEvent]):
    """A complete log's events, packed; indexing and slicing rebuild them (equal events, new objects)."""

    __slots__ = ("_rows",)

    def __init__(self, events: Sequence[BaseEvent]) -> None:
        codecs = _CODECS
        rows: list[tuple[Any, ...] | BaseEvent] = []
        for event in events:
            codec = codecs.get(type(event))
            rows.append(event if codec is None else codec.pack(event))
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> BaseEvent: ...
    @overload
    def __getitem__(self, index: slice) -> list[BaseEvent]: ...
    def __getitem__(self, index: int | slice) -> BaseEvent | list[BaseEvent]:
        if isinstance(index, slice):
            return [_unpack(row) for row in self._rows[index]]
        return _unpack(self._rows[index])
