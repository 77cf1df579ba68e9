"""core.jsonio.dumps writes what json.dumps writes (read back), and refuses what it refuses."""

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

from core.jsonio import dumps

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
