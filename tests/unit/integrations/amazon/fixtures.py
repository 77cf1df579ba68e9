"""The official Amazon sample payloads (``tests/fixtures/official/amazon``)."""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.fixtures.official import OFFICIAL

FIXTURES = OFFICIAL / "amazon"


def load(name: str) -> Any:
    return copy.deepcopy(json.loads((FIXTURES / name).read_text(encoding="utf-8")))


def v0_orders() -> list[tuple[str, dict[str, Any]]]:
    """(label, order) for every order in the v0 getOrders / getOrder fixtures."""
    found = []
    for path in sorted(FIXTURES.glob("getOrders.200.*.json")):
        for i, order in enumerate(load(path.name)["payload"]["Orders"]):
            found.append((f"{path.name}[{i}]", order))
    for path in sorted(FIXTURES.glob("getOrder.200.*.json")):
        found.append((path.name, load(path.name)["payload"]))
    return found


def new_orders() -> list[tuple[str, dict[str, Any]]]:
    """(label, order) for every order in the 2026-01-01 searchOrders / getOrder fixtures."""
    found = []
    for path in sorted(FIXTURES.glob("2026-01-01.searchOrders.200.*.json")):
        for i, order in enumerate(load(path.name)["orders"]):
            found.append((f"{path.name}[{i}]", order))
    for path in sorted(FIXTURES.glob("2026-01-01.getOrder.200.*.json")):
        found.append((path.name, load(path.name)["order"]))
    return found


def order_items(name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = load(name)["payload"]["OrderItems"]
    return items
