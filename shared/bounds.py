"""Length bounds for the contract's fields, so that every event is bounded by
construction (docs/security.md, "Events are bounded").

Two kinds of bound:

* `TextN` and `Annotated[list[T], Field(max_length=n)]`: what a caller sends (an
  integrator's case, a reviewer's opinion). Over the bound is a validation
  error: the caller is told which field.
* `ClippedN` and `Annotated[list[T], clip_items(n), MaxLen(n)]`: what a service
  writes itself from data of unbounded size (a reason naming every excluded
  reviewer, every field error of a rejected case). Over the bound is cut (a
  string ends with a marker), so producing the event never fails on its size.

`max_json_bytes` computes an upper bound of an event's serialised size from the
model alone; a unit test checks every topic's bound against the relay's
`MAX_EVENT_BYTES` and fails on any field left unbounded.
"""

from __future__ import annotations

import types
import typing
from datetime import date, datetime
from enum import Enum
from typing import Annotated, Any

from annotated_types import MaxLen
from pydantic import BaseModel, BeforeValidator, Field

CLIP_MARKER = "…"


def clip_text(max_length: int) -> BeforeValidator:
    """A validator cutting a string to `max_length` characters (marker included)."""

    def clip(value: Any) -> Any:
        if isinstance(value, str) and len(value) > max_length:
            return value[: max_length - len(CLIP_MARKER)] + CLIP_MARKER
        return value

    return BeforeValidator(clip)


def clip_items(max_items: int) -> BeforeValidator:
    """A validator keeping the first `max_items` items of a list or mapping."""

    def clip(value: Any) -> Any:
        if isinstance(value, list) and len(value) > max_items:
            return value[:max_items]
        if isinstance(value, dict) and len(value) > max_items:
            return dict(list(value.items())[:max_items])
        return value

    return BeforeValidator(clip)


# What callers send: refused over the bound.
Text10 = Annotated[str, Field(max_length=10)]
Text32 = Annotated[str, Field(max_length=32)]
Text64 = Annotated[str, Field(max_length=64)]
NonEmpty64 = Annotated[str, Field(min_length=1, max_length=64)]
Text128 = Annotated[str, Field(max_length=128)]
Text200 = Annotated[str, Field(max_length=200)]
Text2000 = Annotated[str, Field(max_length=2000)]
# What services write: cut to the bound.
Clipped64 = Annotated[str, clip_text(64), Field(max_length=64)]
Clipped128 = Annotated[str, clip_text(128), Field(max_length=128)]
Clipped200 = Annotated[str, clip_text(200), Field(max_length=200)]
Clipped300 = Annotated[str, clip_text(300), Field(max_length=300)]
Clipped500 = Annotated[str, clip_text(500), Field(max_length=500)]
Clipped1000 = Annotated[str, clip_text(1000), Field(max_length=1000)]


# ---------------------------------------------------------------- the size bound

# The most bytes one character can take in the relay's JSON (a control character
# escaped as \u0000: 6 bytes; any other is at most 4 bytes of UTF-8).
BYTES_PER_CHAR = 6
# A datetime, date, number or boolean in JSON: generously.
SCALAR_BYTES = 40


class Unbounded(TypeError):
    """A field whose size the contract does not bound."""


def _max_len(metadata: list[Any]) -> int | None:
    for m in metadata:
        if isinstance(m, MaxLen):
            return int(m.max_length)
        for attr in ("max_length",):
            if getattr(m, attr, None) is not None:
                return int(getattr(m, attr))
        inner = getattr(m, "metadata", None)
        if inner:
            found = _max_len(list(inner))
            if found is not None:
                return found
    return None


def _split(tp: Any) -> tuple[Any, list[Any]]:
    """The bare type and its Annotated metadata."""
    metadata: list[Any] = []
    while typing.get_origin(tp) is Annotated:
        tp, *extra = typing.get_args(tp)
        metadata.extend(extra)
    return tp, metadata


def _type_bytes(tp: Any, metadata: list[Any], where: str) -> int:
    tp, more = _split(tp)
    metadata = [*metadata, *more]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return max(_type_bytes(a, metadata, where) for a in typing.get_args(tp))
    if tp is type(None):
        return 4
    if isinstance(tp, type) and issubclass(tp, Enum):
        return max(len(str(m.value)) for m in tp) * BYTES_PER_CHAR + 2
    if tp is str:
        n = _max_len(metadata)
        if n is None:
            raise Unbounded(f"{where}: a string without max_length")
        return n * BYTES_PER_CHAR + 2
    if tp in (int, float, bool, datetime, date):
        return SCALAR_BYTES
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return max_json_bytes(tp, where)
    if origin in (list, tuple, set, frozenset):
        n = _max_len(metadata)
        if n is None:
            raise Unbounded(f"{where}: a list without max_length")
        (item,) = typing.get_args(tp)[:1]
        return n * (_type_bytes(item, [], f"{where}[]") + 2) + 2
    if origin is dict:
        n = _max_len(metadata)
        if n is None:
            raise Unbounded(f"{where}: a mapping without max_length")
        key, value = typing.get_args(tp)
        per = _type_bytes(key, [], f"{where}.key") + _type_bytes(value, [], f"{where}.value")
        return n * (per + 4) + 2
    raise Unbounded(f"{where}: type {tp!r} has no known bound")


def max_json_bytes(model: type[BaseModel], where: str = "") -> int:
    """An upper bound of the JSON size of any valid instance of `model`; raises
    `Unbounded` naming the first field the contract leaves unbounded."""
    total = 2
    for name, info in model.model_fields.items():
        path = f"{where or model.__name__}.{name}"
        total += len(name) + 6 + _type_bytes(info.annotation, list(info.metadata), path)
    return total
