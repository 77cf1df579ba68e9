"""Paths to and loaders of the official Shopify fixtures (``tests/fixtures/official/shopify``)."""

from __future__ import annotations

import json
from typing import Any

from tests.fixtures.official import OFFICIAL

SHOPIFY = OFFICIAL / "shopify"


def load(name: str) -> Any:
    return json.loads((SHOPIFY / name).read_text(encoding="utf-8"))


def order(name: str) -> dict[str, Any]:
    """The single order of a ``{"order": {...}}`` fixture."""
    return load(name)["order"]  # type: ignore[no-any-return]


def all_orders() -> list[tuple[str, dict[str, Any]]]:
    """(label, REST order) for every order in every Shopify order fixture."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name in (
        "order.json",
        "ruby-order.json",
        "ruby-order_with_properties.json",
        "rest-2026-07/order.get.json",
        "rest-2026-07/order.close.json",
    ):
        found.append((name, order(name)))
    for name in ("orders.json", "rest-2026-07/orders.list.json"):
        for i, item in enumerate(load(name)["orders"]):
            found.append((f"{name}[{i}]", item))
    return found
