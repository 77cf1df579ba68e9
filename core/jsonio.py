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

Only writing: orjson reads an integer past 64 bits as a float, where ``json`` keeps it exact.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps"]

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
