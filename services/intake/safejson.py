"""JSON from integrators, read within limits intake can answer for.

`json.loads` alone fails in ways that are not the caller's field errors: a
document nested 100,000 deep raises RecursionError, an integer of 5,000 digits
raises ValueError (CPython's int-conversion limit), and a lone surrogate
(`"\\ud800"`) is accepted as a Python string that cannot be encoded to UTF-8,
so it breaks hashing, the database and the error response further on. Each of
those was a 500. Here they are refused up front, with where and why:

| input | status | `loc` / `type` |
|---|---|---|
| not JSON, or `NaN` / `Infinity` | 400 | `body` / `json_invalid` |
| nested deeper than `MAX_DEPTH` | 400 | `body` / `json_too_deep` |
| an integer longer than `MAX_INT_DIGITS` digits | 422 | the field / `number_too_large` |
| a number that does not fit a float (`1e999`) | 422 | the field / `finite_number` |
| a string or member name that is not valid Unicode | 422 | the field / `string_unicode` |

`check_value` applies the same limits to a document already decoded elsewhere
(the `case.submitted` envelope, parsed by the shared consumer), so both
channels refuse the same inputs the same way. Errors never quote the value.
"""

from __future__ import annotations

import json
import math
from typing import Any

from shared.errors import InvalidInput, PermanentError
from shared.events import FieldError

# Deeper than any case or FHIR Bundle (Bundle.entry.resource.contained.extension...
# is about 10 levels), shallow enough for every recursive reader after this one.
MAX_DEPTH = 64
# No field of a case is a number; FHIR's largest integer type (integer64) has 19 digits.
MAX_INT_DIGITS = 40
TOO_LARGE = 10**MAX_INT_DIGITS


class MalformedInput(PermanentError):
    """The body is not JSON intake reads (400), as opposed to JSON whose values are
    invalid (422)."""

    title = "Malformed JSON"


class _LongInteger:
    """Stands in for an integer literal too long to convert, until it is located."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(text: str) -> int | _LongInteger:
    digits = len(text.lstrip("-"))
    return _LongInteger(digits) if digits > MAX_INT_DIGITS else int(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _malformed(msg: str, type_: str = "json_invalid", loc: str = "") -> MalformedInput:
    err = FieldError(loc=loc or "body", msg=msg, type=type_)
    return MalformedInput("the body is not valid JSON", errors=[err.model_dump()])


def decode(body: bytes) -> Any:
    """The JSON document in `body`, or MalformedInput / InvalidInput saying where."""
    try:
        value = json.loads(body, parse_int=_parse_int, parse_constant=_refuse_constant)
    except RecursionError:
        raise _malformed(f"nested deeper than {MAX_DEPTH} levels", "json_too_deep") from None
    except json.JSONDecodeError as exc:
        raise _malformed(f"not valid JSON (at byte {exc.pos})") from None
    except UnicodeDecodeError as exc:
        raise _malformed(f"not valid UTF-8 (at byte {exc.start})") from None
    except ValueError as exc:  # NaN / Infinity
        raise _malformed(str(exc)) from None
    check_value(value)
    return value


def check_value(value: Any, prefix: str = "") -> None:
    """Refuse a decoded document that is too deep or holds a value intake cannot
    carry (see the module table). `prefix` names where the document sits ("submission.")."""
    # Iterative, so that depth is measured rather than hit as a RecursionError.
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise _malformed(
                f"nested deeper than {MAX_DEPTH} levels", "json_too_deep", prefix.rstrip(".")
            )
        if isinstance(node, dict):
            for key, child in node.items():
                if not is_unicode(key):
                    raise _invalid(
                        prefix, path, "a member name is not valid Unicode", "string_unicode"
                    )
                stack.append((child, (*path, key)))
        elif isinstance(node, list):
            stack.extend((child, (*path, str(i))) for i, child in enumerate(node))
        elif isinstance(node, str):
            if not is_unicode(node):
                raise _invalid(
                    prefix, path, "not valid Unicode (a lone surrogate)", "string_unicode"
                )
        elif isinstance(node, _LongInteger):
            raise _invalid(
                prefix,
                path,
                f"a number of {node.digits} digits; at most {MAX_INT_DIGITS}",
                "number_too_large",
            )
        elif isinstance(node, int) and not isinstance(node, bool):
            # Decoded elsewhere (pydantic accepts up to ~4,300 digits): the same limit.
            if abs(node) >= TOO_LARGE:  # a comparison, not a (limited) str() conversion
                raise _invalid(prefix, path, f"at most {MAX_INT_DIGITS} digits", "number_too_large")
        elif isinstance(node, float) and not math.isfinite(node):
            raise _invalid(prefix, path, "not a finite number", "finite_number")


def is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid(prefix: str, path: tuple[str, ...], msg: str, type_: str) -> InvalidInput:
    # A member name on the path that is itself bad is never echoed: the error
    # points at its parent (an unencodable name would break the response too).
    safe = [p if is_unicode(p) else "<name>" for p in path]
    loc = prefix + ".".join(p[:64] for p in safe) if safe else prefix.rstrip(".") or "body"
    err = FieldError(loc=loc, msg=msg, type=type_)
    return InvalidInput("the case holds a value intake cannot read", errors=[err.model_dump()])
