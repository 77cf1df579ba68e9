"""Shared helpers for the eBay tests: our spec-derived order examples (see tests/fixtures/ebay)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "ebay"
EXAMPLES = sorted(p.name for p in FIXTURES.glob("order.*.json"))


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


@pytest.fixture
def us_order() -> dict[str, Any]:
    return copy.deepcopy(load("order.us_not_started.json"))
