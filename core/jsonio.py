"""JSON written on the hot path: orjson (Rust) where it writes what the standard library would,
the standard library where orjson refuses.

Used for the JSON columns (``db.session.make_engine``): every stored order's ``raw``, written
once per order of a page. Measured on Shopify orders of ~2.5 KB: 24 -> 6 us each.

What is accepted stays the standard library's:

- what orjson refuses and ``json`` takes (a lone surrogate in a string, a non-string key, an
  integer past 64 bits) goes to ``json``, which writes it as before;
- what orjson would take and ``json`` refuses (a datetime, a dataclass, a subclass of str, int,
  dict or list) passes through orjson (``OPT_PASSTHROUGH_*``) to ``json``, which raises as
  before. Left to orjson: an ``Enum`` or a ``UUID`` is written (by value), which ``json``
  refused, and a float NaN or infinity is written ``null``, where ``json`` wrote ``NaN``, which
  is not JSON (PostgreSQL refused it); nothing of ours stores either.

Reading (``loads``, a Shopify bulk export's lines: about 2 KB an order, 24 -> 16 us each) is
orjson's only where it reads what ``json`` would: orjson reads an integer past 64 bits as a float
(``json`` keeps it exact), so a line with a run of 19 digits or more is read by ``json``, and so is
whatever orjson refuses (a lone surrogate escape, bytes that are not UTF-8, ``NaN``, a number
past a float's range), with the bytes that are not UTF-8 replaced as before.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

_AS_JSON_DOES = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def dumps(value: Any) -> str:
    """``value`` as compact JSON text (non-ASCII as it is, not escaped)."""
    try:
        return orjson.dumps(value, option=_AS_JSON_DOES).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"))


#: every digit as "0": a run of 19 digits (the shortest past a 64-bit integer) becomes this
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


def loads(raw: bytes) -> Any:
    """The JSON value of ``raw`` (UTF-8), as ``json.loads(raw.decode("utf-8", "replace"))``
    reads it. Raises ``json.JSONDecodeError`` as that does."""
    if _NINETEEN_DIGITS not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json's answer, its value or its error
    return json.loads(raw.decode("utf-8", "replace"))
