"""Carriers: buy, recover and void shipping labels through a ShipEngine-style label API."""

from __future__ import annotations

from integrations.carriers.client import (
    DEFAULT_SERVICE,
    AddressRejected,
    CarrierClient,
    IdempotencyKeyReused,
)
from integrations.carriers.payloads import Parcel, PurchasedLabel

__all__ = [
    "DEFAULT_SERVICE",
    "AddressRejected",
    "CarrierClient",
    "IdempotencyKeyReused",
    "Parcel",
    "PurchasedLabel",
]
