"""``PUT /api/stock/{sku}?location=``, ``PUT /api/stock`` (many counts at once) and ``GET
/api/stock/{sku}`` per location, through the real app (its login gate included), on SQLite and
PostgreSQL."""

from __future__ import annotations

from fastapi.testclient import TestClient
from httpx import Response

from db.models import AuditEntry, StockItem, StockLevel
from domain.states import OrderState
from orders import stock
from tests.integration.test_staff_access import BASE, Staffed, staffed  # noqa: F401 (fixture)
from tests.support.staff import bearer, staff_token


def test_stock_is_set_and_shown_per_location(staffed: Staffed) -> None:  # noqa: F811
    with staffed.shop.transaction() as session:
        stock.add_location(session, "east", "East depot")
    client = TestClient(staffed.app, base_url=BASE)
    operator = bearer(staff_token(staffed.maker, "operator"))

    main = client.put("/api/stock/SKU-9", params={"on_hand": 5}, headers=operator)
    east = client.put("/api/stock/SKU-9", params={"on_hand": 3, "location": "east"},
                      headers=operator)  # fmt: skip
    north = client.put("/api/stock/SKU-9", params={"on_hand": 1, "location": "north"},
                       headers=operator)  # fmt: skip

    assert main.status_code == east.status_code == 200, (main.text, east.text)
    assert (main.json()["location"], main.json()["available"]) == ("main", 5)
    assert (east.json()["location"], east.json()["on_hand"], east.json()["available"]) == (
        "east", 3, 8)  # fmt: skip
    assert north.status_code == 404
    assert "no stock location 'north' (known: main, east)" in north.json()["detail"]
    shown = client.get("/api/stock/SKU-9", headers=operator).json()
    assert (shown["on_hand"], shown["available"]) == (8, 8)
    assert [(loc["code"], loc["on_hand"], loc["available"]) for loc in shown["locations"]] == [
        ("main", 5, 5), ("east", 3, 3)]  # fmt: skip


def test_many_counts_are_set_at_once_all_or_none(staffed: Staffed) -> None:  # noqa: F811
    with staffed.shop.transaction() as session:
        stock.add_location(session, "east", "East depot")
        stock.set_on_hand(session, "SKU-R", 5)
    held = staffed.shop.order(OrderState.RESERVED, lines={"SKU-R": 3})
    waiting = staffed.shop.order(OrderState.ON_HOLD, lines={"SKU-B": 1})
    with staffed.shop.transaction() as session:
        assert stock.reserve(session, held).ok
    client = TestClient(staffed.app, base_url=BASE)
    operator = bearer(staff_token(staffed.maker, "operator", "stock-clerk"))

    def put(*counts: dict[str, object]) -> Response:
        response: Response = client.put("/api/stock", json={"counts": list(counts)},
                                        headers=operator)  # fmt: skip
        return response

    below = put({"sku": "SKU-A", "on_hand": 4}, {"sku": "SKU-R", "on_hand": 1})
    unknown = put({"sku": "SKU-A", "on_hand": 4}, {"sku": "SKU-A", "on_hand": 1,
                                                    "location": "north"})  # fmt: skip
    twice = put({"sku": "SKU-A", "on_hand": 4}, {"sku": "SKU-A", "on_hand": 2})
    empty = put()
    assert (below.status_code, unknown.status_code, twice.status_code, empty.status_code) == (
        409, 404, 409, 422)  # fmt: skip
    assert "SKU-R: 3 units at main are reserved" in below.json()["detail"]
    assert "no stock location 'north'" in unknown.json()["detail"]
    assert twice.json()["detail"] == "SKU-A: counted twice at main"
    assert staffed.shop.rows(StockItem, sku="SKU-A") == []  # the refused batches set nothing

    done = put({"sku": "SKU-A", "on_hand": 4}, {"sku": "SKU-A", "on_hand": 2, "location": "east"},
               {"sku": "SKU-B", "on_hand": 3}, {"sku": "SKU-R", "on_hand": 3})  # fmt: skip

    assert done.status_code == 200, done.text
    assert done.json() == {"set": 4, "available": {"SKU-A": 6, "SKU-B": 3, "SKU-R": 0},
                           "released": [waiting]}  # fmt: skip
    levels = {(lvl.sku, lvl.location_id, lvl.on_hand) for lvl in staffed.shop.rows(StockLevel)}
    with staffed.shop.transaction() as session:
        east = stock.location_id(session, "east")
    assert {("SKU-A", east, 2), ("SKU-B", 1, 3), ("SKU-R", 1, 3)} <= levels
    audited = staffed.shop.rows(AuditEntry, action="stock.set")
    assert sorted((a.target, a.detail["on_hand"], a.detail["location"]) for a in audited) == [
        ("SKU-A", 2, "east"), ("SKU-A", 4, "main"), ("SKU-B", 3, "main"), ("SKU-R", 3, "main")]
    assert {a.actor for a in audited} == {"stock-clerk (token tests)"}
