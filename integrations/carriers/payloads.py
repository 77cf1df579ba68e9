"""Wire shapes of the carrier label API (ShipEngine's ``/v1/labels``) and our value types.

Source: ShipEngine (now "ShipStation API") create-label docs,
https://docs.shipstation.com/apis/shipengine/docs/labels/create-a-label and
https://help.shipengine.com/hc/en-us/articles/4406871574683-Label-Formats-and-Download-Types.

- Request: ``{"shipment": {"service_code", "external_shipment_id", "ship_to", "ship_from",
  "packages": [{"weight": {"value", "unit"}, "dimensions": {...}}]}, "label_format": "pdf",
  "label_layout": "4x6", "label_download_type": "inline"}``.
- Addresses: ``name``, ``company_name``, ``phone``, ``address_line1/2``, ``city_locality``,
  ``state_province``, ``postal_code``, ``country_code``, ``address_residential_indicator``.
- Response: ``label_id``, ``status``, ``tracking_number``, ``carrier_code``, ``service_code``,
  ``external_shipment_id``, ``voided`` and ``label_download``: with ``inline`` its ``href`` is
  the base64 PDF itself; with ``url`` (the default) ``pdf``/``href`` are download URLs.
- Errors: ``{"request_id", "errors": [{"error_source", "error_type", "error_code", "message",
  "field_name"?}]}``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from domain.canonical import Address
from domain.errors import PayloadError
from domain.parcel import Parcel

__all__ = [
    "PDF_MAGIC",
    "Parcel",
    "PurchasedLabel",
    "Tracking",
    "address_payload",
    "check_pdf",
    "error_code",
    "error_fields",
    "inline_pdf",
    "label_fields",
    "label_request",
    "parse_label",
    "parse_tracking",
]

PDF_MAGIC = b"%PDF-"

# canonical Address field → ShipEngine address field
_ADDRESS_FIELDS = (
    ("name", "name"),
    ("company", "company_name"),
    ("phone", "phone"),
    ("line1", "address_line1"),
    ("line2", "address_line2"),
    ("city", "city_locality"),
    ("region", "state_province"),
    ("postal_code", "postal_code"),
    ("country_code", "country_code"),
)


@dataclass(frozen=True)
class PurchasedLabel:
    """A bought label. ``replayed``: the carrier answered from an earlier purchase (same
    idempotency key, or found by shipment reference) instead of buying a new one."""

    label_id: str
    carrier: str
    service: str
    tracking_number: str
    pdf: bytes = field(repr=False)
    replayed: bool


def address_payload(address: Address, *, residential: bool | None = None) -> dict[str, Any]:
    """A canonical address in ShipEngine's field names; missing fields are left out so that the
    carrier names them in its 422 rather than being handed empty strings."""
    payload: dict[str, Any] = {}
    for ours, theirs in _ADDRESS_FIELDS:
        value = getattr(address, ours)
        if value is not None and str(value).strip():
            payload[theirs] = str(value).strip()
    payload["address_residential_indicator"] = (
        "unknown" if residential is None else ("yes" if residential else "no")
    )
    return payload


def _number(value: float) -> int | float:
    # 30.0 goes out as 30: the same parcel always serialises to the same bytes, and the
    # carrier's idempotency check compares request bodies
    return int(value) if float(value).is_integer() else round(float(value), 2)


def label_request(
    *,
    shipment_ref: str,
    service_code: str,
    ship_to: Address,
    ship_from: Address,
    parcel: Parcel,
) -> dict[str, Any]:
    """The ``POST /v1/labels`` body. Deterministic: a retry sends exactly the same JSON."""
    return {
        "shipment": {
            "service_code": service_code,
            "external_shipment_id": shipment_ref,
            "ship_to": address_payload(ship_to),
            "ship_from": address_payload(ship_from, residential=False),
            "packages": [
                {
                    "weight": {"value": parcel.weight_grams, "unit": "gram"},
                    "dimensions": {
                        "unit": "centimeter",
                        "length": _number(parcel.length_cm),
                        "width": _number(parcel.width_cm),
                        "height": _number(parcel.height_cm),
                    },
                }
            ],
        },
        "label_format": "pdf",
        "label_layout": "4x6",
        # inline: the PDF comes base64 in the create response, so buying and fetching the label
        # are one request and one idempotent replay (no second, non-idempotent step to lose)
        "label_download_type": "inline",
    }


def _str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"label response: missing {name}")
    return value


def label_fields(body: Any) -> tuple[str, str, str, str]:
    """(label_id, carrier_code, service_code, tracking_number) of a label object."""
    if not isinstance(body, dict):
        raise PayloadError("label response: not a JSON object")
    return (
        _str(body, "label_id"),
        _str(body, "carrier_code"),
        _str(body, "service_code"),
        _str(body, "tracking_number"),
    )


def inline_pdf(body: dict[str, Any]) -> bytes:
    """The PDF of an ``inline`` label response (base64 in ``label_download.href``)."""
    download = body.get("label_download")
    encoded = download.get("href") if isinstance(download, dict) else None
    if not isinstance(encoded, str) or not encoded:
        raise PayloadError("label response: no inline label data")
    try:
        pdf = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError("label response: label data is not base64") from None
    check_pdf(pdf)
    return pdf


def check_pdf(pdf: bytes) -> None:
    if not pdf.startswith(PDF_MAGIC):
        raise PayloadError("label response: label is not a PDF")


def parse_label(body: Any, *, replayed: bool) -> PurchasedLabel:
    """A create-label response (``inline``) as a ``PurchasedLabel``."""
    label_id, carrier, service, tracking = label_fields(body)
    return PurchasedLabel(
        label_id=label_id,
        carrier=carrier,
        service=service,
        tracking_number=tracking,
        pdf=inline_pdf(body),
        replayed=replayed,
    )


def _errors(body: Any) -> list[dict[str, Any]]:
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def error_code(body: Any) -> str | None:
    """The first ``error_code`` of an error body (safe to log: no customer data)."""
    for error in _errors(body):
        code = error.get("error_code")
        if isinstance(code, str):
            return code[:64]
    return None


def error_fields(body: Any) -> tuple[str, ...]:
    """The ``field_name`` of every error, e.g. ``("ship_to.postal_code",)``; never values."""
    names = (e.get("field_name") for e in _errors(body))
    return tuple(dict.fromkeys(n[:64] for n in names if isinstance(n, str) and n))


#: ShipEngine's tracking status codes
TRACKING_CODES = frozenset({"UN", "AC", "IT", "DE", "EX", "AT", "NY"})


@dataclass(frozen=True)
class Tracking:
    """Where a parcel is, as the carrier says (``GET /v1/labels/{label_id}/track``):
    ``status_code`` AC accepted, IT in transit, DE delivered, EX exception (lost, returned to
    sender), AT delivery attempted, UN unknown, NY not yet in system; ``events`` newest first,
    each (occurred_at, status_code, description)."""

    status_code: str
    description: str
    exception: str | None
    delivered_at: str | None
    events: tuple[tuple[str, str, str], ...]


def parse_tracking(body: Any) -> Tracking:
    if not isinstance(body, dict):
        raise PayloadError("labels.track: response is not a JSON object")
    code = str(body.get("status_code") or "").upper()
    if code not in TRACKING_CODES:
        raise PayloadError(f"labels.track: unknown status_code {code[:10]!r}")
    events = []
    for event in body.get("events") or []:
        if isinstance(event, dict):
            events.append((str(event.get("occurred_at") or ""),
                           str(event.get("status_code") or "").upper(),
                           str(event.get("description") or "")[:200]))  # fmt: skip
    exception = body.get("exception_description")
    delivered = body.get("actual_delivery_date")
    return Tracking(
        status_code=code,
        description=str(body.get("status_description") or "")[:200],
        exception=str(exception)[:500] if exception else None,
        delivered_at=str(delivered) if delivered else None,
        events=tuple(events),
    )
