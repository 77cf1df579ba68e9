"""A local carrier label API in ShipEngine's shapes (``/v1/labels``), simulating UPS labels.

Served (mount with ``app.include_router(sim.build_router(), prefix="/carrier")``):

- ``POST /v1/labels`` — buy a label. ``Idempotency-Key`` header required (the real ShipEngine
  makes it optional; the sandbox insists so that a forgotten key fails loudly). Stripe's rules:
  same key + same body (compared as canonical JSON) → the stored response again, with
  ``Idempotent-Replayed: true``; same key + another body → 400 ``idempotency_key_reused``;
  same key while its first request still runs → 409 ``idempotency_key_in_use``. Requests that
  fail validation or a fault knob are not stored, as with Stripe.
- ``GET /v1/labels`` (``external_shipment_id``, ``label_status``, ``tracking_number``,
  ``sort_dir``), ``GET /v1/labels/{label_id}``, ``PUT /v1/labels/{label_id}/void``,
  ``GET /v1/downloads/labels/{label_id}.pdf``, ``GET /v1/labels/{label_id}/track``.
- Tracking webhooks, as ShipEngine sends them: ``POST /v1/environments/webhooks``
  (``{"event": "track", "url": …}``) registers the URL (``GET`` lists them); ``post_track_event``
  posts a ``track`` event (``{"resource_url", "resource_type": "API_TRACK", "data": …}``)
  there, signed RSA-SHA256 over ``{timestamp}.{body}`` with the simulator's own key pair
  (``x-shipengine-rsa-sha256-key-id`` / ``-signature``, ``x-shipengine-timestamp``), whose
  public half ``GET /jwks`` serves (``jwks()``), as ``https://api.shipengine.com/jwks`` does;
  ``replay_webhook`` sends one again (a retry: the same body, signed anew).

Auth: ``API-Key`` header, every route (downloads too). Addresses are checked for required
fields, country and postal-code formats; the postal code ``00000`` is always undeliverable (a
magic value, like Stripe's test cards). An address error is a 422 ``invalid_address`` naming
the fields; other validation errors are 400s.

Effects are counted in ``labels`` (idempotency key → label), the ledger the tests and the demo
read. ``apply_latency_s``: how long a purchase takes (the key stays in flight meanwhile).
``drop_after_apply_rate``: the fraction of new purchases that are recorded and then have
their connection cut mid-response, the "did it happen?" case idempotency keys exist for.
The label PDF is 4x6 inches, uncompressed (so its text can be searched), with a Code 128
barcode of the tracking number; tracking numbers are UPS-style ``1Z`` numbers with a valid
check digit, unique per simulator.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import io
import itertools
import json
import random
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from reportlab.graphics.barcode import code128
from reportlab.lib.units import inch
from reportlab.pdfgen import canvas
from starlette.concurrency import run_in_threadpool

from sandbox.knobs import DroppedConnection, Knobs
from sandbox.rsa_keys import KeyPair, new_key_pair

__all__ = ["SANDBOX_API_KEY", "SERVICES", "CarrierSimulator", "LabelRecord", "ups_check_digit"]

# public, fixed sandbox key (ShipEngine sandbox keys start with TEST_); valid nowhere else
SANDBOX_API_KEY = "TEST_ordersync_sandbox_carrier_key"
CARRIER_CODE = "ups"
#: service code → (UPS service digits inside the 1Z number, label title, price in USD)
SERVICES: Mapping[str, tuple[str, str, Decimal]] = {
    "ups_next_day_air": ("01", "UPS NEXT DAY AIR", Decimal("32.40")),
    "ups_2nd_day_air": ("02", "UPS 2ND DAY AIR", Decimal("18.75")),
    "ups_ground": ("03", "UPS GROUND", Decimal("9.85")),
}
_WEIGHT_UNITS = {"gram", "kilogram", "ounce", "pound"}
_POSTAL = {
    "US": r"\d{5}(-\d{4})?",
    "CA": r"[A-Z]\d[A-Z] ?\d[A-Z]\d",
    "GB": r"[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}",
    "NL": r"\d{4} ?[A-Z]{2}",
    "DE": r"\d{5}",
    "FR": r"\d{5}",
    "ES": r"\d{5}",
    "IT": r"\d{5}",
}
_NEEDS_STATE = {"US", "CA"}
_UNDELIVERABLE = "00000"
PAGE = (4 * inch, 6 * inch)


def ups_check_digit(body: str) -> str:
    """UPS check digit over the 15 characters after ``1Z``: letters count as
    ``(ord - 63) % 10``, characters at odd 0-based positions count double, mod 10."""
    total = 0
    for i, char in enumerate(body):
        value = int(char) if char.isdigit() else (ord(char) - 63) % 10
        total += value * 2 if i % 2 else value
    return str((10 - total % 10) % 10)


@dataclass
class LabelRecord:
    label_id: str
    idempotency_key: str
    shipment_id: str
    external_shipment_id: str | None
    service_code: str
    tracking_number: str
    created_at: dt.datetime
    cost: Decimal
    request: dict[str, Any] = field(repr=False)
    pdf: bytes = field(repr=False, default=b"")
    voided: bool = False
    #: tracking: when the carrier first saw the parcel (its first track request: the parcel is
    #: picked up once the merchant shipped it), and an exception that befell it
    first_scan: dt.datetime | None = None
    exception: str | None = None


@dataclass
class _Key:
    """One idempotency key: the request it was first used with and, once done, the answer."""

    request_hash: str
    body: dict[str, Any] | None = None  # None while the first request is still running


def _failure(status: int, errors: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"request_id": f"sbx-{status}", "errors": errors}, status_code=status)


def _error(
    status: int, code: str, message: str, *, error_type: str = "validation", **extra: Any
) -> JSONResponse:
    error = {"error_source": "shipengine", "error_type": error_type, "error_code": code}
    return _failure(status, [{**error, "message": message, **extra}])


def _address_errors(prefix: str, address: Any) -> list[str]:
    """Field names (``ship_to.postal_code``) of what is missing or malformed."""
    if not isinstance(address, dict):
        return [prefix]
    bad = [
        f"{prefix}.{name}"
        for name in ("name", "address_line1", "city_locality", "postal_code", "country_code")
        if not isinstance(address.get(name), str) or not address[name].strip()
    ]
    country = str(address.get("country_code") or "").strip()
    if country and not re.fullmatch(r"[A-Z]{2}", country):
        bad.append(f"{prefix}.country_code")
    if country in _NEEDS_STATE and not str(address.get("state_province") or "").strip():
        bad.append(f"{prefix}.state_province")
    postal = str(address.get("postal_code") or "").strip().upper()
    pattern = _POSTAL.get(country)
    if postal and (postal == _UNDELIVERABLE or (pattern and not re.fullmatch(pattern, postal))):
        bad.append(f"{prefix}.postal_code")
    return list(dict.fromkeys(bad))


def _package_error(packages: Any) -> str | None:
    if not isinstance(packages, list) or not packages:
        return "shipment.packages"
    for i, package in enumerate(packages):
        weight = package.get("weight") if isinstance(package, dict) else None
        value = weight.get("value") if isinstance(weight, dict) else None
        if (
            not isinstance(weight, dict)
            or isinstance(value, bool)
            or not isinstance(value, int | float)
            or value <= 0
            or weight.get("unit") not in _WEIGHT_UNITS
        ):
            return f"shipment.packages[{i}].weight"
    return None


def _lines(address: Mapping[str, Any]) -> list[str]:
    city = " ".join(
        str(address.get(k) or "") for k in ("city_locality", "state_province", "postal_code")
    )
    lines = [
        address.get("name"),
        address.get("company_name"),
        address.get("address_line1"),
        address.get("address_line2"),
        " ".join(city.split()),
        address.get("country_code"),
    ]
    return [str(line) for line in lines if line]


def render_label(record: LabelRecord) -> bytes:
    """A 4x6 inch PDF label. Uncompressed and ``invariant`` (no timestamp or random id in
    the file), so the same label renders to the same bytes and its text is searchable."""
    shipment = record.request["shipment"]
    width, height = PAGE
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=PAGE, pageCompression=0, invariant=1)
    pdf.setTitle(f"Shipping label {record.tracking_number}")
    pdf.setFont("Helvetica", 7)
    pdf.drawString(12, height - 16, "SANDBOX SAMPLE - DO NOT SHIP")
    pdf.drawRightString(width - 12, height - 16, record.created_at.strftime("%Y-%m-%d"))
    y = height - 30
    pdf.setFont("Helvetica-Bold", 7)
    pdf.drawString(12, y, "FROM")
    pdf.setFont("Helvetica", 8)
    for line in _lines(shipment["ship_from"]):
        y -= 10
        pdf.drawString(12, y, line[:60])
    pdf.line(8, y - 8, width - 8, y - 8)
    y -= 24
    pdf.setFont("Helvetica-Bold", 8)
    pdf.drawString(12, y, "SHIP TO")
    pdf.setFont("Helvetica-Bold", 12)
    for line in _lines(shipment["ship_to"]):
        y -= 15
        pdf.drawString(20, y, line[:40])
    pdf.line(8, y - 10, width - 8, y - 10)
    title = SERVICES[record.service_code][1]
    pdf.setFont("Helvetica-Bold", 16)
    pdf.drawString(12, y - 32, title)
    package = shipment["packages"][0]
    pdf.setFont("Helvetica", 8)
    pdf.drawString(
        12, y - 46, f"WT {package['weight']['value']} {package['weight']['unit'].upper()}"
    )
    pdf.drawRightString(width - 12, y - 46, f"REF {record.external_shipment_id or '-'}"[:40])
    pdf.setFont("Helvetica-Bold", 9)
    pdf.drawString(12, y - 62, f"TRACKING #: {_spaced(record.tracking_number)}")
    # fit the barcode to the page: bar width from the symbol's module count (UPS prints
    # its 1Z barcode about 3 inches wide), quiet zones of 10 modules on each side
    probe = code128.Code128(record.tracking_number, barWidth=1.0, quiet=0)
    bar_width = min(1.2, (width - 40) / probe.width)
    barcode = code128.Code128(
        record.tracking_number,
        barWidth=bar_width,
        barHeight=1.1 * inch,
        humanReadable=True,
        lquiet=10 * bar_width,
        rquiet=10 * bar_width,
    )
    barcode.drawOn(pdf, (width - barcode.width) / 2, 24)
    pdf.showPage()
    pdf.save()
    return buf.getvalue()


def _spaced(tracking: str) -> str:
    """``1Z 999 AA1 01 2345 678 4``: how UPS prints a tracking number for people."""
    parts = (
        tracking[:2],
        tracking[2:5],
        tracking[5:8],
        tracking[8:10],
        tracking[10:14],
        tracking[14:17],
        tracking[17:],
    )
    return " ".join(p for p in parts if p)


class CarrierSimulator:
    def __init__(
        self,
        knobs: Knobs | None = None,
        *,
        seed: int = 0,
        api_key: str = SANDBOX_API_KEY,
        drop_after_apply_rate: float = 0.0,
        apply_latency_s: float = 0.0,
        deliver_after_s: float = 0.0,
        exception_rate: float = 0.0,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.knobs = knobs or Knobs(seed=seed)
        self.api_key = api_key
        self.drop_after_apply_rate = drop_after_apply_rate
        # how long buying takes at the carrier (real ones: 0.5-2 s), during which the key is
        # in flight and a concurrent request with it gets a 409
        self.apply_latency_s = apply_latency_s
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        #: tracking: a parcel is delivered this long after its first scan; this share of
        #: parcels get lost instead (decided at the first scan, seeded)
        self.deliver_after_s = deliver_after_s
        self.exception_rate = exception_rate
        self._tracking_rng = random.Random(seed ^ 0x7EAC)
        rng = random.Random(seed)
        self._drop_rng = random.Random(seed ^ 0x5EED)
        alphabet = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
        self.shipper_number = "".join(rng.choice(alphabet) for _ in range(6))
        # sequential package numbers from a seeded start: unique within this simulator
        self._package_numbers = itertools.count(rng.randrange(1_000_000, 5_000_000))
        self._ids = itertools.count(rng.randrange(10_000_000, 50_000_000))
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        #: the ledger: idempotency key → label bought with it (voided labels stay, flagged)
        self.labels: dict[str, LabelRecord] = {}
        self._by_id: dict[str, LabelRecord] = {}
        #: answers given from the key store: 409s while in flight, replays once done
        self.conflicts = 0
        self.replays = 0
        #: webhooks: event → the URL registered for it; what was posted (body, answer status)
        self.webhook_urls: dict[str, str] = {}
        self.sent_webhooks: list[tuple[bytes, int]] = []
        self._key_pair: KeyPair | None = None

    # -- ledger ------------------------------------------------------------------------------

    def label_count(self, *, include_voided: bool = True) -> int:
        with self._lock:
            return sum(1 for r in self.labels.values() if include_voided or not r.voided)

    def ledger(self) -> dict[str, int]:
        with self._lock:
            voided = sum(1 for r in self.labels.values() if r.voided)
            return {"labels": len(self.labels), "voided": voided}

    def lose(self, tracking_number: str, description: str = "Lost in transit") -> None:
        """The parcel with this tracking number meets an exception (lost, returned to
        sender): its tracking says ``EX`` from now on."""
        with self._lock:
            (record,) = [r for r in self.labels.values() if r.tracking_number == tracking_number]
            record.exception = description

    def tracking_counts(self) -> dict[str, int]:
        """Parcels by their tracking status as the carrier would answer now."""
        counts: dict[str, int] = {}
        with self._lock:
            for record in self.labels.values():
                if record.first_scan is not None:
                    code = self._tracking(record, self._clock())["status_code"]
                    counts[code] = counts.get(code, 0) + 1
        return counts

    def _tracking(self, record: LabelRecord, now: dt.datetime) -> dict[str, Any]:
        """ShipEngine's tracking information of a label (``GET /v1/labels/{id}/track``)."""
        events: list[dict[str, Any]] = []

        def event(at: dt.datetime, code: str, carrier_code: str, description: str) -> None:
            events.append({
                "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "carrier_occurred_at": at.strftime("%Y-%m-%dT%H:%M:%S"),
                "description": description, "city_locality": "LOUISVILLE",
                "state_province": "KY", "postal_code": "40202", "country_code": "US",
                "company_name": "", "signer": "", "event_code": carrier_code,
                "status_code": code, "carrier_status_code": carrier_code,
            })  # fmt: skip

        status, description, delivered, exception = "UN", "Unknown", None, None
        if record.voided:
            status, description = "UN", "Label voided"
        elif record.first_scan is not None:
            first = record.first_scan
            event(first, "AC", "OR", "Origin scan")
            status, description = "AC", "Accepted"
            due = first + dt.timedelta(seconds=self.deliver_after_s)
            if record.exception:
                event(now, "EX", "X", record.exception)
                status, description, exception = "EX", "Exception", record.exception
            elif now >= due:
                event(due, "IT", "I", "Departed facility")
                event(due, "DE", "D", "Delivered")
                status, description, delivered = "DE", "Delivered", due
            else:
                event(first, "IT", "I", "Departed facility")
                status, description = "IT", "In Transit"
        return {
            "tracking_number": record.tracking_number,
            "status_code": status,
            "status_description": description,
            "carrier_status_code": {"DE": "D", "EX": "X", "IT": "I", "AC": "OR"}.get(status, "U"),
            "carrier_status_description": description.upper(),
            "shipped_date": record.first_scan.isoformat() if record.first_scan else None,
            "estimated_delivery_date": None,
            "actual_delivery_date": delivered.strftime("%Y-%m-%dT%H:%M:%SZ") if delivered else None,
            "exception_description": exception,
            "events": list(reversed(events)),  # newest first, as ShipEngine lists them
        }

    # -- tracking webhooks -------------------------------------------------------------------

    @property
    def key_pair(self) -> KeyPair:
        """The key the simulator signs its webhooks with (made on first use: ~1 s)."""
        with self._lock:
            if self._key_pair is None:
                self._key_pair = new_key_pair(f"sandbox-{self.shipper_number.lower()}")
            return self._key_pair

    def jwks(self) -> dict[str, Any]:
        """The public keys webhooks are signed with, as a JWKS document."""
        return {"keys": [self.key_pair.jwk()]}

    def track_event(self, tracking_number: str, status_code: str | None = None) -> bytes:
        """The body of a ``track`` webhook for the parcel: its tracking now (the first one is
        its first scan), or as ``status_code`` says (``IT``, ``DE``, ``EX``)."""
        now = self._clock()
        with self._lock:
            (record,) = [r for r in self.labels.values() if r.tracking_number == tracking_number]
            if record.first_scan is None and not record.voided:
                record.first_scan = now
            data = self._tracking(record, now)
        if status_code is not None and status_code != data["status_code"]:
            description = {"IT": "In Transit", "DE": "Delivered", "EX": "Exception",
                           "AC": "Accepted"}.get(status_code, "Unknown")  # fmt: skip
            stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
            data["status_code"], data["status_description"] = status_code, description
            data["actual_delivery_date"] = stamp if status_code == "DE" else None
            data["exception_description"] = "Lost in transit" if status_code == "EX" else None
            data["events"] = [{"occurred_at": stamp, "description": description,
                               "status_code": status_code}, *data["events"]]  # fmt: skip
        resource = (f"https://api.shipengine.com/v1/tracking?carrier_code={CARRIER_CODE}"
                    f"&tracking_number={tracking_number}")  # fmt: skip
        body = {"resource_url": resource, "resource_type": "API_TRACK",
                "data": {"label_url": None, **data}}  # fmt: skip
        return json.dumps(body).encode()

    def sign(self, body: bytes, at: dt.datetime | None = None) -> dict[str, str]:
        """ShipEngine's signature headers for a webhook body sent at ``at`` (default now)."""
        stamp = (at or self._clock()).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        key = self.key_pair
        signature = key.sign(stamp.encode() + b"." + body)
        return {"x-shipengine-rsa-sha256-key-id": key.kid,
                "x-shipengine-rsa-sha256-signature": base64.b64encode(signature).decode(),
                "x-shipengine-timestamp": stamp}  # fmt: skip

    def _post(self, body: bytes) -> int:
        url = self.webhook_urls.get("track")
        if url is None:
            raise LookupError("no URL is registered for the track event")
        headers = {"content-type": "application/json", **self.sign(body)}
        status = httpx.post(url, content=body, headers=headers, timeout=10).status_code
        self.sent_webhooks.append((body, status))
        return status

    def post_track_event(self, tracking_number: str, status_code: str | None = None) -> int:
        """Post a ``track`` webhook of the parcel to the registered URL; the answer's status."""
        return self._post(self.track_event(tracking_number, status_code))

    def replay_webhook(self, index: int) -> int:
        """Send the ``index``-th webhook sent again (its body, a new signature and time)."""
        return self._post(self.sent_webhooks[index][0])

    async def register_webhook(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request", "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "invalid_request", "body is not an object")
        event, url = body.get("event"), body.get("url")
        if event != "track" or not isinstance(url, str) or not url.startswith("http"):
            return _error(400, "invalid_request", "event must be track and url a URL")
        self.webhook_urls[event] = url
        webhook_id = f"wh_{hashlib.sha256(url.encode()).hexdigest()[:8]}"
        return JSONResponse({"webhook_id": webhook_id, "event": event, "url": url},
                            status_code=201)  # fmt: skip

    async def list_webhooks(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        return JSONResponse([{"event": e, "url": u} for e, u in self.webhook_urls.items()])

    async def get_jwks(self) -> Response:
        return JSONResponse(await run_in_threadpool(self.jwks))

    # -- helpers -----------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("API-Key", "")
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def _unauthorized(self) -> JSONResponse:
        return _error(401, "unauthorized", "The API key is invalid.", error_type="security")

    def _tracking_number(self, service_code: str) -> str:
        body = f"{self.shipper_number}{SERVICES[service_code][0]}{next(self._package_numbers):07d}"
        return f"1Z{body}{ups_check_digit(body)}"

    def _label_json(self, record: LabelRecord, download: dict[str, str]) -> dict[str, Any]:
        shipment = record.request["shipment"]
        return {
            "label_id": record.label_id,
            "status": "voided" if record.voided else "completed",
            "shipment_id": record.shipment_id,
            "external_shipment_id": record.external_shipment_id,
            "ship_date": record.created_at.strftime("%Y-%m-%dT00:00:00Z"),
            "created_at": record.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            # ShipEngine sends amounts as JSON numbers; the value is exact to the cent
            "shipment_cost": {"currency": "usd", "amount": float(record.cost)},
            "insurance_cost": {"currency": "usd", "amount": 0.0},
            "tracking_number": record.tracking_number,
            "is_return_label": False,
            "is_international": shipment["ship_to"]["country_code"]
            != shipment["ship_from"]["country_code"],
            "carrier_id": "se-sandbox-ups",
            "carrier_code": CARRIER_CODE,
            "service_code": record.service_code,
            "package_code": "package",
            "voided": record.voided,
            "label_format": "pdf",
            "label_layout": "4x6",
            "trackable": True,
            "tracking_status": "in_transit",
            "label_download": download,
        }

    def _url_download(self, request: Request, record: LabelRecord) -> dict[str, str]:
        url = str(request.url_for("carrier_download_label", label_id=record.label_id))
        return {"pdf": url, "href": url}

    def _validate(self, body: Any) -> JSONResponse | None:
        shipment = body.get("shipment") if isinstance(body, dict) else None
        if not isinstance(shipment, dict):
            return _error(400, "invalid_request", "shipment is required", field_name="shipment")
        if shipment.get("service_code") not in SERVICES:
            return _error(
                400, "invalid_service_code", "unknown service", field_name="shipment.service_code"
            )
        ref = shipment.get("external_shipment_id")
        if ref is not None and (not isinstance(ref, str) or not 0 < len(ref) <= 100):
            return _error(
                400,
                "invalid_request",
                "bad external_shipment_id",
                field_name="shipment.external_shipment_id",
            )
        bad = _address_errors("ship_to", shipment.get("ship_to"))
        bad += _address_errors("ship_from", shipment.get("ship_from"))
        if bad:
            return _failure(
                422,
                [
                    {
                        "error_source": "carrier",
                        "error_type": "validation",
                        "error_code": "invalid_address",
                        "message": "invalid or undeliverable",
                        "field_name": name,
                    }
                    for name in bad
                ],
            )
        package = _package_error(shipment.get("packages"))
        if package:
            return _error(400, "invalid_package", "bad package", field_name=package)
        if body.get("label_format", "pdf") != "pdf" or body.get("label_layout", "4x6") != "4x6":
            return _error(400, "unsupported_label_format", "the sandbox renders 4x6 PDF only")
        if body.get("label_download_type", "url") not in ("url", "inline"):
            return _error(
                400, "invalid_request", "bad label_download_type", field_name="label_download_type"
            )
        return None

    # -- handlers ----------------------------------------------------------------------------

    async def create_label(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        if (disturbed := await self.knobs.disturb()) is not None:
            return disturbed
        key = request.headers.get("Idempotency-Key", "")
        if not key or len(key) > 255:
            return _error(400, "idempotency_key_required", "Idempotency-Key header (1-255)")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid_request", "body is not JSON")
        request_hash = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        with self._lock:
            known = self._keys.get(key)
            if known is not None:
                if known.request_hash != request_hash:
                    return _error(
                        400,
                        "idempotency_key_reused",
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with.",
                    )
                if known.body is None:
                    self.conflicts += 1
                    return _error(
                        409,
                        "idempotency_key_in_use",
                        "A request with this key is still in progress.",
                        error_type="conflict",
                    )
                self.replays += 1
                return JSONResponse(known.body, headers={"Idempotent-Replayed": "true"})
            invalid = self._validate(body)
            if invalid is not None:
                return invalid  # not stored: a corrected request may reuse the key
            self._keys[key] = _Key(request_hash)
            shipment = body["shipment"]
            record = LabelRecord(
                label_id=f"se-{next(self._ids)}",
                idempotency_key=key,
                shipment_id=f"se-{next(self._ids)}",
                external_shipment_id=shipment.get("external_shipment_id"),
                service_code=shipment["service_code"],
                tracking_number=self._tracking_number(shipment["service_code"]),
                created_at=self._clock(),
                cost=SERVICES[shipment["service_code"]][2],
                request=body,
            )
        try:
            # reportlab is CPU work: off the event loop, so concurrent requests really overlap
            record.pdf = await run_in_threadpool(render_label, record)
            if self.apply_latency_s:
                await asyncio.sleep(self.apply_latency_s)
        except BaseException:  # also a cancelled request: a key must never stay in flight
            with self._lock:
                del self._keys[key]  # never executed as far as the caller can tell
            raise
        if body.get("label_download_type", "url") == "inline":
            download = {"href": base64.b64encode(record.pdf).decode()}
        else:
            download = self._url_download(request, record)
        answer = self._label_json(record, download)
        with self._lock:
            self.labels[key] = record
            self._by_id[record.label_id] = record
            self._keys[key].body = answer
            drop = self._drop_rng.random() < self.drop_after_apply_rate
        if drop:
            return DroppedConnection(json.dumps(answer).encode())
        return JSONResponse(answer)

    async def list_labels(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        if (disturbed := await self.knobs.disturb()) is not None:
            return disturbed
        query = request.query_params
        with self._lock:
            records = list(self._by_id.values())
        wanted_status = query.get("label_status")
        records = [
            r
            for r in records
            if query.get("external_shipment_id") in (None, r.external_shipment_id)
            and query.get("tracking_number") in (None, r.tracking_number)
            and wanted_status in (None, "voided" if r.voided else "completed")
        ]
        records.sort(key=lambda r: r.created_at, reverse=query.get("sort_dir") != "asc")
        labels = [self._label_json(r, self._url_download(request, r)) for r in records]
        return JSONResponse(
            {"labels": labels, "total": len(labels), "page": 1, "pages": 1, "links": {}}
        )

    async def get_label(self, request: Request, label_id: str) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        record = self._by_id.get(label_id)
        if record is None:
            return _error(404, "not_found", "label not found", error_type="system")
        return JSONResponse(self._label_json(record, self._url_download(request, record)))

    async def void_label(self, request: Request, label_id: str) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        if (disturbed := await self.knobs.disturb()) is not None:
            return disturbed
        with self._lock:
            record = self._by_id.get(label_id)
            if record is None:
                return _error(404, "not_found", "label not found", error_type="system")
            already, record.voided = record.voided, True
        message = (
            "This label has already been voided." if already else "Request for refund submitted."
        )
        return JSONResponse({"approved": True, "message": message})

    async def track_label(self, request: Request, label_id: str) -> Response:
        """Tracking by label id. The first request is the parcel's first scan (the carrier
        picks it up once it has shipped: ordersync only tracks shipped parcels)."""
        if not self._authorized(request):
            return self._unauthorized()
        if (disturbed := await self.knobs.disturb()) is not None:
            return disturbed
        now = self._clock()
        with self._lock:
            record = self._by_id.get(label_id)
            if record is None:
                return _error(404, "not_found", "label not found", error_type="system")
            if record.first_scan is None and not record.voided:
                record.first_scan = now
                if self._tracking_rng.random() < self.exception_rate:
                    record.exception = "Returned to sender: address unknown"
            body = self._tracking(record, now)
        return JSONResponse(body)

    async def download_label(self, request: Request, label_id: str) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        record = self._by_id.get(label_id)
        if record is None:
            return _error(404, "not_found", "label not found", error_type="system")
        return Response(record.pdf, media_type="application/pdf")

    def build_router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/v1/labels", self.create_label, methods=["POST"])
        router.add_api_route("/v1/labels", self.list_labels, methods=["GET"])
        router.add_api_route("/v1/labels/{label_id}", self.get_label, methods=["GET"])
        router.add_api_route("/v1/labels/{label_id}/void", self.void_label, methods=["PUT"])
        router.add_api_route("/v1/labels/{label_id}/track", self.track_label, methods=["GET"])
        router.add_api_route("/v1/environments/webhooks", self.register_webhook,
                             methods=["POST"])  # fmt: skip
        router.add_api_route("/v1/environments/webhooks", self.list_webhooks, methods=["GET"])
        router.add_api_route("/jwks", self.get_jwks, methods=["GET"])
        router.add_api_route(
            "/v1/downloads/labels/{label_id}.pdf",
            self.download_label,
            methods=["GET"],
            name="carrier_download_label",
        )
        return router
