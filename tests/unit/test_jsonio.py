"""core.jsonio.dumps writes what json.dumps writes (read back), and refuses what it refuses;
core.jsonio.loads reads what json.loads reads from the bytes decoded with replacement."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.jsonio import dumps, loads

_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)  # fmt: skip
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                           max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(_values)
def test_any_json_value_reads_back_as_json_dumps_writes_it(value: Any) -> None:
    assert json.loads(dumps(value)) == json.loads(json.dumps(value))


@pytest.mark.parametrize(
    "value",
    [{"title": "half a pair \ud83d"}, {1: "int key"}, [2**64, -(2**63) - 1], {"é": "ü\u2028"}],
    ids=["lone surrogate", "int key", "past 64 bits", "non-ascii"],
)
def test_what_orjson_refuses_is_written_by_json_as_before(value: Any) -> None:
    assert json.loads(dumps(value)) == json.loads(json.dumps(value))


class Tag(str):
    pass


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [{"at": dt.datetime(2026, 12, 7, tzinfo=dt.UTC)}, {"p": Point(1)}, {"amount": Decimal("1.5")},
     {"d": dt.date(2026, 12, 7)}, {"s": {1, 2}}],
    ids=["datetime", "dataclass", "decimal", "date", "set"],
)
def test_what_json_refuses_is_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        dumps(value)


def test_a_str_subclass_is_written_as_json_writes_it() -> None:
    assert dumps({"k": Tag("v")}) == '{"k":"v"}'


def test_a_nan_is_written_null_where_json_wrote_invalid_json() -> None:
    assert json.dumps(math.nan) == "NaN"
    assert dumps([math.nan]) == "[null]"


def _as_json_reads(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8", "replace"))


def _same(a: Any, b: Any) -> bool:
    # written again to compare: NaN is not equal to itself, and 1 and 1.0 are equal
    return json.dumps(a) == json.dumps(b) and type(a) is type(b)


_read_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(_read_values, st.booleans())
def test_any_json_text_is_read_as_json_reads_it(value: Any, ascii_only: bool) -> None:
    # ensure_ascii=False with a lone surrogate: bytes that are not UTF-8 (surrogatepass)
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert _same(loads(raw), _as_json_reads(raw))


@given(st.binary(max_size=40))
def test_any_bytes_are_read_or_refused_as_json_does(raw: bytes) -> None:
    try:
        expected = _as_json_reads(raw)
    except json.JSONDecodeError:
        with pytest.raises(json.JSONDecodeError):
            loads(raw)
    else:
        assert _same(loads(raw), expected)


@pytest.mark.parametrize(
    "raw",
    [b"[18446744073709551616]", b"[-9223372036854775809]", b"[1234567890123456789012345]",
     b'{"t":"\\ud800"}', b'{"t":"\\ud83d\\ude00"}', b'{"t":"\xff\xfe"}', b"[NaN, -Infinity]",
     b"[1e400]", b'{"a":1,"a":2}'],
    ids=["2**64", "below -2**63", "30 digits", "lone surrogate", "pair", "not utf-8", "nan",
         "past float", "duplicate key"],
)  # fmt: skip
def test_what_orjson_reads_otherwise_is_read_by_json(raw: bytes) -> None:
    assert _same(loads(raw), _as_json_reads(raw))


def test_a_line_that_is_not_json_is_refused_as_json_refuses_it() -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(b'{"a": ')
