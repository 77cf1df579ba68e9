"""``PUT /api/stock/{sku}?location=`` and ``GET /api/stock/{sku}`` per location, through the
real app (its login gate included), on SQLite and PostgreSQL."""

from __future__ import annotations

from fastapi.testclient import TestClient

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
