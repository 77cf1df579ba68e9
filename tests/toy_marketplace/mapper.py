"""A toy order (webhook body and API answer alike) → the canonical order."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from domain.canonical import CanonicalLine, CanonicalOrder
from domain.errors import PayloadError
from domain.states import OrderState

__all__ = ["map_order"]

_STATES = {"open": OrderState.NEW, "cancelled": OrderState.CANCELLED}


def map_order(payload: dict[str, Any], account: str) -> CanonicalOrder:
    try:
        lines = [
            CanonicalLine(
                external_id=line["id"],
                sku=line["sku"],
                title=line.get("title", ""),
                quantity=line["qty"],
                unit_price=line["price"],
                total=Decimal(str(line["price"])) * line["qty"],
            )
            for line in payload["lines"]
        ]
        return CanonicalOrder(
            channel="toy",
            account=account,
            external_id=payload["id"],
            external_number=payload.get("number"),
            status=_STATES[payload.get("status", "open")],
            marketplace_status=payload.get("status", "open"),
            currency=payload["currency"],
            subtotal=sum((line.total for line in lines), Decimal(0)),
            total=payload["total"],
            lines=lines,
            buyer_name=payload.get("buyer"),
            created_at=payload.get("created_at"),
            updated_at=payload["updated_at"],
            raw=payload,
        )
    except (KeyError, TypeError) as exc:
        raise PayloadError(f"toy order: missing or malformed {exc}") from exc
