"""Typed client for a Stripe-compatible payment provider (API v1, ``/v1/payment_intents``).

One call captures an order's payment: a PaymentIntent created with ``confirm=true`` and
``capture_method=automatic`` charges the payment method at once
(https://docs.stripe.com/api/payment_intents/create). Every POST carries an ``Idempotency-Key``
(https://docs.stripe.com/api/idempotent_requests): the provider stores the status and body of
the first request that began executing under a key for at least 24 hours and answers retries
with that stored result plus ``Idempotent-Replayed: true``. So a retry after a timeout or a
dropped connection never charges twice, as long as it reuses the key and the same parameters.

A refund (https://docs.stripe.com/api/refunds/create) is a POST to ``/v1/refunds`` for the
PaymentIntent, under its own key and with the same guarantee: a retry never refunds twice.

Errors, on top of ``domain.errors``::

    PermanentError
    ├── IdempotencyMismatch     400 ``idempotency_error``: key reused with other parameters
    ├── PaymentDeclined         402 ``card_error`` (card_declined, expired_card, …)
    └── ValidationError         other 400s, e.g. a refund refused with ``amount_too_large``,
                                ``charge_already_refunded``, ``resource_missing``: ``status``
                                is set; nothing was applied and the key is still free
    Conflict (retryable)        409 ``idempotency_key_in_use``: the first request is in flight
    RateLimited (retryable)     429, including ``lock_timeout`` on a contended object

Auth is ``Authorization: Bearer sk_…``; the key never reaches a log line or an exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx

from domain.errors import (
    AuthorizationUnusable,
    IntegrationError,
    PayloadError,
    PermanentError,
    ValidationError,
)
from integrations.base import ConnectorSeams
from integrations.http import ApiClient
from integrations.payments.payloads import (
    THREE_DECIMAL_CURRENCIES,
    Capture,
    Refund,
    capture_from_intent,
    form_pairs,
    from_minor,
    refund_from_object,
    to_minor,
)
from integrations.ratelimit import Bucket

__all__ = [
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "REFUND_REASONS",
    "IdempotencyMismatch",
    "PaymentDeclined",
    "PaymentsClient",
]

MAX_IDEMPOTENCY_KEY_LENGTH = 255  # documented maximum
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
SEARCH_PAGE_LIMIT = 100  # documented maximum ``limit`` for search
MAX_SEARCH_PAGES = 10  # an order has a handful of intents; more pages means something is off
# Stripe's documented defaults: 25 write/read operations per second in test mode (100 live) and
# 20 per second for search; the lower numbers are safe in both modes.
_WRITES = Bucket(rate=25.0, burst=25.0)
_SEARCH = Bucket(rate=20.0, burst=20.0)
_SAFE_REF = re.compile(r"^[\w.:/#-]{1,500}$")


class IdempotencyMismatch(PermanentError):
    """The idempotency key was first used with other parameters: our key derivation is wrong."""


class PaymentDeclined(PermanentError):
    """The card or bank refused the payment; ``code`` is ``card_declined:<decline_code>``."""


class PaymentsClient(ApiClient):
    rate_limits = {
        "capture": _WRITES,
        "refund": _WRITES,
        "retrieve": _WRITES,
        "search": _SEARCH,
    }

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        seams: ConnectorSeams | None = None,
        account: str = "default",
        max_attempts: int = 3,
    ) -> None:
        if not api_key:
            raise ValueError("payments: api_key is required")
        seams = seams or ConnectorSeams()
        self.__authorization = f"Bearer {api_key}"
        super().__init__(
            base_url.rstrip("/"),
            account=account,
            transport=seams.transport,
            limiter=seams.limiter,
            sleep=seams.sleep,
            max_attempts=max_attempts,
        )

    def __repr__(self) -> str:
        return f"PaymentsClient(base_url={str(self.http.base_url)!r}, account={self.account!r})"

    # -- ApiClient hooks -------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": self.__authorization, "Accept": "application/json"}

    def error_code(self, response: httpx.Response) -> str | None:
        """Stripe's ``error.code`` (or ``error.type`` when there is none, as for
        ``idempotency_error``), plus ``:decline_code`` on card errors. Never the message,
        which can echo a masked key or a customer's card details."""
        try:
            body = response.json()
        except ValueError:
            return None
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return None
        code = error.get("code") or error.get("type")
        if not isinstance(code, str):
            return None
        decline = error.get("decline_code")
        if isinstance(decline, str) and decline:
            code = f"{code}:{decline}"
        return code[:80]

    # -- operations ------------------------------------------------------------------------

    def capture(
        self,
        *,
        order_ref: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        payment_method: str,
    ) -> Capture:
        """Create and confirm a PaymentIntent that captures at once; one call, one charge.

        Retry with the same ``idempotency_key`` and arguments after any RetryableError: the
        provider replays the first result (``Capture.replayed``) instead of charging again.
        Raises IdempotencyMismatch, PaymentDeclined, ValidationError (bad amount, before any
        request), Conflict (the key's first request still running; retry later).
        """
        _check_key("capture", idempotency_key)
        code = currency.upper()
        minor = _minor_amount("capture", amount, code)
        params: dict[str, Any] = {
            "amount": minor,
            "currency": code.lower(),  # Stripe wants lowercase ISO codes
            "confirm": True,
            "capture_method": "automatic",
            "payment_method": payment_method,
            # card only: a redirect-based method would need a return_url and a customer present
            "payment_method_types": ["card"],
            "metadata": {"order_ref": order_ref},
        }
        response, replayed = self._post("capture", "/v1/payment_intents", params, idempotency_key)
        return self._parse(response, replayed=replayed)

    def refund(
        self,
        *,
        payment_intent: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        order_ref: str | None = None,
        reason: str | None = None,
    ) -> Refund:
        """Refund ``amount`` (major units of ``currency``, which must be the intent's) of a
        succeeded PaymentIntent; one call, at most one refund.

        Retry with the same ``idempotency_key`` and arguments after any RetryableError: the
        provider replays the first result (``Refund.replayed``) instead of refunding again.
        Raises ValidationError (bad amount, before any request; or a 400 from the provider,
        ``status`` set, such as ``amount_too_large`` or ``charge_already_refunded``: nothing
        was refunded), IdempotencyMismatch, Conflict (the key's first request still running).
        ValueError for a bad key, intent id or reason.
        """
        _check_key("refund", idempotency_key)
        if not re.fullmatch(r"pi_\w+", payment_intent):
            raise ValueError("payments.refund: not a PaymentIntent id")
        if reason is not None and reason not in REFUND_REASONS:
            raise ValueError(f"payments.refund: reason must be one of {sorted(REFUND_REASONS)}")
        minor = _minor_amount("refund", amount, currency.upper())
        params: dict[str, Any] = {
            "payment_intent": payment_intent,
            "amount": minor,
            "reason": reason,
            "metadata": {"order_ref": order_ref} if order_ref is not None else None,
        }
        response, replayed = self._post("refund", "/v1/refunds", params, idempotency_key)
        try:
            return refund_from_object(self._json(response), replayed=replayed)
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError("payments.refund: response is not a refund") from exc

    # -- an authorization the shop's checkout made (``orders.payments.AuthorizationHolder``) --

    name = "payments"

    def capture_authorization(
        self, *, order_external_id: str, authorization_id: str | None, amount: Decimal,
        currency: str, idempotency_key: str,
    ) -> Capture:  # fmt: skip
        """Capture ``amount`` of the PaymentIntent ``authorization_id`` that the shop's checkout
        authorised (``requires_capture``): ``POST /v1/payment_intents/{id}/capture`` with
        ``amount_to_capture``, under ``idempotency_key``
        (https://docs.stripe.com/api/payment_intents/capture). An intent already captured
        answers itself (``replayed``); one cancelled (Stripe cancels uncaptured card
        payments after 7 days: ``cancellation_reason`` ``automatic``), in another state, or
        authorised for less than ``amount`` raises ``AuthorizationUnusable``."""
        _check_key("capture", idempotency_key)
        if not authorization_id or not re.fullmatch(r"pi_\w+", authorization_id):
            raise AuthorizationUnusable("the order names no PaymentIntent to capture")
        intent = self._json(
            self._call("retrieve", "GET", f"/v1/payment_intents/{authorization_id}")
        )
        status = str(intent.get("status"))
        code = str(intent.get("currency") or currency).upper()
        if status == "succeeded":
            return self._parse_intent(intent, replayed=True)
        if status == "canceled":
            if intent.get("cancellation_reason") == "automatic":
                raise AuthorizationUnusable(
                    "the card authorization expired (Stripe cancels an uncaptured payment after "
                    "7 days): ask the buyer to pay again"
                )
            raise AuthorizationUnusable("the payment authorization was voided at the provider")
        if status != "requires_capture":
            raise AuthorizationUnusable(f"the PaymentIntent is {status}, not authorised")
        capturable = from_minor(int(intent.get("amount_capturable") or 0), code)
        if capturable < amount:
            raise AuthorizationUnusable(
                f"partial authorization: {capturable} {code} authorised of {amount} {code}"
            )
        minor = _minor_amount("capture", amount, code)
        response, replayed = self._post(
            "capture", f"/v1/payment_intents/{authorization_id}/capture",
            {"amount_to_capture": minor}, idempotency_key,
        )  # fmt: skip
        return self._parse(response, replayed=replayed)

    def find_capture(
        self, *, order_external_id: str, authorization_id: str | None
    ) -> Capture | None:
        """The PaymentIntent if it was captured (retrieved by id: strongly consistent)."""
        if not authorization_id or not re.fullmatch(r"pi_\w+", authorization_id):
            return None
        found = self.retrieve(authorization_id)
        return found if found.succeeded else None

    def _parse_intent(self, intent: dict[str, Any], *, replayed: bool) -> Capture:
        try:
            return capture_from_intent(intent, replayed=replayed)
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError("payments: response is not a payment_intent") from exc

    def retrieve(self, intent_id: str) -> Capture:
        """One PaymentIntent by id (strongly consistent, unlike search)."""
        if not re.fullmatch(r"pi_\w+", intent_id):
            raise ValueError("payments.retrieve: not a PaymentIntent id")
        return self._parse(self._call("retrieve", "GET", f"/v1/payment_intents/{intent_id}"))

    def retrieve_by_order(self, order_ref: str) -> Capture | None:
        """The order's PaymentIntent found by ``metadata['order_ref']``: the succeeded one if
        any, else the newest attempt, else None.

        Stripe's search is eventually consistent ("data is searchable in under 1 minute",
        https://docs.stripe.com/search#data-freshness): None right after a crash does NOT prove
        there was no capture. Within the 24 h key window the authoritative check is to repeat
        ``capture`` with the same key; use this for reconciliation and for older attempts.
        """
        intents = [
            intent
            for intent in self._search(f"metadata['order_ref']:'{_quoted(order_ref)}'")
            if (intent.get("metadata") or {}).get("order_ref") == order_ref
        ]
        if not intents:
            return None
        succeeded = [i for i in intents if i.get("status") == "succeeded"]
        # search order is not documented: pick explicitly
        chosen = (
            succeeded[0] if succeeded else max(intents, key=lambda i: int(i.get("created") or 0))
        )
        try:
            return capture_from_intent(chosen)
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError("payments.search: result is not a payment_intent") from exc

    # -- plumbing --------------------------------------------------------------------------

    def _search(self, query: str) -> Iterator[dict[str, Any]]:
        params: dict[str, str | int] = {"query": query, "limit": SEARCH_PAGE_LIMIT}
        for _ in range(MAX_SEARCH_PAGES):
            body = self._json(
                self._call("search", "GET", "/v1/payment_intents/search", params=params)
            )
            data = body.get("data")
            if body.get("object") != "search_result" or not isinstance(data, list):
                raise PayloadError("payments.search: not a search_result")
            yield from (item for item in data if isinstance(item, dict))
            if not body.get("has_more") or not body.get("next_page"):
                return
            params = {**params, "page": str(body["next_page"])}
        raise PayloadError("payments.search: too many result pages")

    def _post(
        self, operation: str, url: str, params: dict[str, Any], idempotency_key: str
    ) -> tuple[httpx.Response, bool]:
        """A form-encoded POST under ``idempotency_key``; True with it when the provider
        answered from its idempotency cache (``Idempotent-Replayed``)."""
        response = self._call(
            operation,
            "POST",
            url,
            data=dict(form_pairs(params)),
            headers={"Idempotency-Key": idempotency_key},
        )
        return response, response.headers.get("Idempotent-Replayed", "").lower() == "true"

    def _call(self, operation: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """``ApiClient.request`` with Stripe's errors mapped onto our classes."""
        try:
            return self.request(operation, method, url, **kwargs)
        except IntegrationError as exc:
            raise _translate(operation, exc) from exc

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise PayloadError("payments: response is not JSON") from exc
        if not isinstance(body, dict):
            raise PayloadError("payments: response is not a JSON object")
        return body

    def _parse(self, response: httpx.Response, *, replayed: bool = False) -> Capture:
        try:
            return capture_from_intent(self._json(response), replayed=replayed)
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError("payments: response is not a payment_intent") from exc


def _translate(operation: str, exc: IntegrationError) -> IntegrationError:
    code = exc.code or ""
    if exc.status == 400 and code == "idempotency_error":
        return IdempotencyMismatch(
            f"payments.{operation}: idempotency key reused with different parameters",
            status=400,
            code=code,
        )
    if exc.status == 402:
        return PaymentDeclined(f"payments.{operation}: payment declined", status=402, code=code)
    return exc


def _check_key(operation: str, key: str) -> None:
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ValueError(f"payments.{operation}: idempotency_key must be 1..255 characters")


def _minor_amount(operation: str, amount: Decimal, code: str) -> int:
    """A positive amount in ``code``'s minor unit, exactly, or ValidationError."""
    try:
        minor = to_minor(amount, code)
    except ValueError as exc:
        raise ValidationError(f"payments.{operation}: {exc}") from exc
    if minor <= 0:
        raise ValidationError(f"payments.{operation}: amount must be positive")
    if code in THREE_DECIMAL_CURRENCIES and minor % 10:
        # Stripe refuses a non-zero last digit for these; rounding money is not ours to do
        raise ValidationError(f"payments.{operation}: {code} amounts must be multiples of 0.010")
    return minor


def _quoted(value: str) -> str:
    """A value safe inside a search query's single quotes."""
    if not _SAFE_REF.match(value):
        # our refs are ids like "order:123"; refuse anything that would need escaping
        raise ValueError("payments: order_ref has characters a search query cannot carry")
    return value
