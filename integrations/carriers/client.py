"""Typed client for a ShipEngine-style carrier label API: buy, find and void shipping labels.

- Auth: an ``API-Key`` header (ShipEngine's scheme); JSON bodies.
- Buying is ``POST /v1/labels`` with an ``Idempotency-Key`` header (Stripe semantics, as the
  sandbox carrier implements them): the same key and body answer the stored label, marked
  ``Idempotent-Replayed: true``; the same key with another body is a 400
  (``IdempotencyKeyReused``); a key whose first request is still running is a 409 (``Conflict``,
  retryable). The label PDF comes inline, base64 in the create response
  (``label_download_type: inline``), so one idempotent request both buys and delivers it.
- Recovery: ``get_label_by_ref`` lists labels by our shipment reference
  (``external_shipment_id``) and downloads the PDF from the ``label_download.pdf`` URL, which
  must be on the API's own origin (the API key is never sent anywhere else).
- Errors map to ``domain.errors``; a 422 ``invalid_address`` becomes ``AddressRejected``
  carrying the offending field names (``ship_to.postal_code``), never the address itself.

No static rate bucket: ShipEngine's limit depends on the account's plan, so the client relies on
429 + ``Retry-After``, which ``ApiClient`` honours.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

import httpx

from domain.canonical import Address
from domain.errors import PayloadError, ValidationError
from integrations.base import ConnectorSeams
from integrations.carriers.payloads import (
    Parcel,
    PurchasedLabel,
    Tracking,
    check_pdf,
    error_code,
    error_fields,
    label_fields,
    label_request,
    parse_label,
    parse_tracking,
)
from integrations.http import DEFAULT_TIMEOUT, ApiClient

__all__ = [
    "DEFAULT_SERVICE",
    "AddressRejected",
    "CarrierClient",
    "IdempotencyKeyReused",
]

DEFAULT_SERVICE = "ups_ground"
MAX_KEY_LENGTH = 255  # Stripe's and Shippo's limit for Idempotency-Key values


class AddressRejected(ValidationError):
    """The carrier refused an address (422). ``fields`` names what is wrong
    (``("ship_to.postal_code",)``); staff fix the address, a retry cannot help."""

    def __init__(
        self,
        message: str,
        *,
        fields: tuple[str, ...],
        status: int | None = 422,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.fields = fields


class IdempotencyKeyReused(ValidationError):
    """The idempotency key was already used for a different request: a bug on our side (the
    key must be derived from the shipment, and the shipment's data must not change under it)."""


class CarrierClient(ApiClient):
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        seams: ConnectorSeams | None = None,
        service_code: str = DEFAULT_SERVICE,
        account: str = "default",
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = 3,
    ) -> None:
        if not api_key:
            raise ValueError("carrier: api_key is required")
        seams = seams or ConnectorSeams()
        self.__api_key = api_key
        self.service_code = service_code
        # error_code() sees the error body inside ApiClient; the field names of a 422 are kept
        # per thread until buy_label turns the error into AddressRejected (clients are shared
        # between threads, so an attribute would mix up two callers' errors)
        self._last_error = threading.local()
        super().__init__(
            base_url.rstrip("/"),
            account=account,
            transport=seams.transport,
            timeout=timeout,
            limiter=seams.limiter,
            max_attempts=max_attempts,
            sleep=seams.sleep,
        )

    def __repr__(self) -> str:
        return f"CarrierClient(base_url={str(self.http.base_url)!r}, account={self.account!r})"

    # -- ApiClient hooks -------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        return {"API-Key": self.__api_key, "Accept": "application/json"}

    def error_code(self, response: httpx.Response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            body = None
        self._last_error.fields = error_fields(body)
        return error_code(body)

    # -- operations --------------------------------------------------------------------------

    def buy_label(
        self,
        *,
        shipment_ref: str,
        ship_to: Address,
        ship_from: Address,
        parcel: Parcel,
        idempotency_key: str,
    ) -> PurchasedLabel:
        """Buy one label for ``shipment_ref``; safe to call again with the same key."""
        if not idempotency_key or len(idempotency_key) > MAX_KEY_LENGTH:
            raise ValueError("carrier: idempotency_key must be 1-255 characters")
        body = label_request(
            shipment_ref=shipment_ref,
            service_code=self.service_code,
            ship_to=ship_to,
            ship_from=ship_from,
            parcel=parcel,
        )
        self._last_error.fields = ()
        try:
            response = self.request(
                "labels.create",
                "POST",
                "/v1/labels",
                json=body,
                headers={"Idempotency-Key": idempotency_key},
            )
        except ValidationError as exc:
            raise self._refine(exc) from exc
        data = self._json(response)
        label = parse_label(
            data, replayed=response.headers.get("Idempotent-Replayed", "").lower() == "true"
        )
        if data.get("external_shipment_id") not in (None, shipment_ref):
            # a replay for another shipment means two shipments share a key: never print it
            raise PayloadError("labels.create: label belongs to another shipment")
        return label

    def get_label_by_ref(self, shipment_ref: str) -> PurchasedLabel | None:
        """The newest live (not voided) label bought for ``shipment_ref``, or None; for an
        attempt that crashed after buying and before recording the label."""
        response = self.request(
            "labels.list",
            "GET",
            "/v1/labels",
            params={
                "external_shipment_id": shipment_ref,
                "label_status": "completed",
                "sort_by": "created_at",
                "sort_dir": "desc",
            },
        )
        labels = self._json(response).get("labels")
        if not isinstance(labels, list):
            raise PayloadError("labels.list: no labels array")
        live = [
            item
            for item in labels
            if isinstance(item, dict)
            and item.get("external_shipment_id") == shipment_ref
            and not item.get("voided")
        ]
        if not live:
            return None
        item = live[0]
        label_id, carrier, service, tracking = label_fields(item)
        return PurchasedLabel(
            label_id=label_id,
            carrier=carrier,
            service=service,
            tracking_number=tracking,
            pdf=self._download(item),
            replayed=True,
        )

    def void_label(self, label_id: str) -> bool:
        """Void (refund) a label; True when the carrier approved it (also when already void)."""
        response = self.request("labels.void", "PUT", f"/v1/labels/{quote(label_id, safe='')}/void")
        approved = self._json(response).get("approved")
        if not isinstance(approved, bool):
            raise PayloadError("labels.void: no approved flag")
        return approved

    def track_label(self, label_id: str) -> Tracking:
        """Where the parcel of a label is (ShipEngine's track by label id)."""
        response = self.request(
            "labels.track", "GET", f"/v1/labels/{quote(label_id, safe='')}/track"
        )
        return parse_tracking(self._json(response))

    # -- helpers -----------------------------------------------------------------------------

    def _refine(self, exc: ValidationError) -> ValidationError:
        fields: tuple[str, ...] = getattr(self._last_error, "fields", ())
        if exc.status == 422 and exc.code == "invalid_address":
            named = ", ".join(fields) or "unspecified fields"
            return AddressRejected(
                f"labels.create: address rejected ({named})",
                fields=fields,
                status=exc.status,
                code=exc.code,
            )
        if exc.code == "idempotency_key_reused":
            return IdempotencyKeyReused(str(exc), status=exc.status, code=exc.code)
        return exc

    def _download(self, item: dict[str, Any]) -> bytes:
        download = item.get("label_download")
        url = None
        if isinstance(download, dict):
            url = download.get("pdf") or download.get("href")
        if not isinstance(url, str) or not url:
            raise PayloadError("labels.list: no label download URL")
        target = self.http.base_url.join(url)
        base = self.http.base_url
        if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
            raise PayloadError("labels.download: URL outside the carrier API")
        response = self.request("labels.download", "GET", str(target))
        check_pdf(response.content)
        return response.content

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise PayloadError("carrier: response is not JSON") from None
        if not isinstance(body, dict):
            raise PayloadError("carrier: response is not a JSON object")
        return body
