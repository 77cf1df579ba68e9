"""The toy marketplace itself, as the tests run it: a FastAPI app on a real port."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fastapi import FastAPI, Header, HTTPException

from tests.toy_marketplace.webhooks import sign

__all__ = ["API_KEY", "ToySimulator"]

API_KEY = "toy-key"


class ToySimulator:
    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.app = FastAPI()
        self.app.get("/orders")(self._list)
        self.app.get("/orders/{order_id}")(self._get)

    def add_order(self, number: int, *, qty: int = 2, price: str = "6.25") -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        order: dict[str, Any] = {
            "id": f"T-{number}",
            "number": str(number),
            "status": "open",
            "currency": "EUR",
            "total": f"{float(price) * qty:.2f}",
            "buyer": "Ada Lovelace",
            "created_at": now.isoformat(),
            "updated_at": now.isoformat(),
            "lines": [{"id": f"L-{number}", "sku": f"TOY-{number}", "qty": qty, "price": price}],
        }
        self.orders[order["id"]] = order
        return order

    def webhook(
        self, order: dict[str, Any], secret: str, delivery: str
    ) -> tuple[dict[str, str], bytes]:
        """A signed ``order.placed`` delivery of ``order``: (headers, body)."""
        body = json.dumps(order).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Toy-Topic": "order.placed",
            "X-Toy-Delivery": delivery,
            "X-Toy-Signature": sign(secret, body),
        }
        return headers, body

    def _authorized(self, key: str | None) -> None:
        if key != API_KEY:
            raise HTTPException(401, "bad key")

    def _list(
        self,
        updated_since: dt.datetime,
        updated_before: dt.datetime,
        offset: int = 0,
        limit: int = 50,
        x_toy_key: str | None = Header(None),
    ) -> dict[str, Any]:
        self._authorized(x_toy_key)
        matching = sorted(
            (
                o
                for o in self.orders.values()
                if updated_since <= dt.datetime.fromisoformat(o["updated_at"]) < updated_before
            ),
            key=lambda o: (o["updated_at"], o["id"]),
        )
        page = matching[offset : offset + limit]
        more = offset + limit < len(matching)
        return {"orders": page, "next_offset": offset + limit if more else None}

    def _get(self, order_id: str, x_toy_key: str | None = Header(None)) -> dict[str, Any]:
        self._authorized(x_toy_key)
        if order_id not in self.orders:
            raise HTTPException(404, "no such order")
        return self.orders[order_id]
