"""A local Stripe-like payment provider (API v1 PaymentIntents and Refunds) with a ledger of
captures and refunds.

Served (mount with ``app.include_router(sim.build_router(), prefix="/payments")``):

- ``POST /v1/payment_intents`` — form-encoded; with ``confirm=true`` the intent is charged at
  once (``succeeded``), or declined: 402 ``card_error``/``card_declined`` for
  ``payment_method=pm_card_chargeDeclined`` (Stripe's test card) or at ``decline_rate``;
- ``GET /v1/payment_intents/search?query=metadata['order_ref']:'X'`` — a ``search_result``;
- ``GET /v1/payment_intents/{id}``;
- ``POST /v1/payment_intents/{id}/capture`` (https://docs.stripe.com/api/payment_intents/capture)
  — ``amount_to_capture`` (minor units; default all that is capturable) of an intent in
  ``requires_capture``; the rest is released. Intents authorised by a shop's checkout
  (``authorize``: the WooCommerce sandbox's Stripe gateway) wait in ``requires_capture`` and
  are cancelled (``cancellation_reason: automatic``) 7 days after they were created, as
  Stripe's uncaptured card payments are; capturing one then, or one that was cancelled, is
  refused with 400 ``payment_intent_unexpected_state``;
- ``POST /v1/refunds`` (https://docs.stripe.com/api/refunds/create) — form-encoded
  ``payment_intent`` (required), ``amount`` (minor units; default: all that is left unrefunded),
  ``reason`` (``duplicate``, ``fraudulent``, ``requested_by_customer``), ``metadata[...]``;
  answers a ``refund`` object, ``succeeded`` at once;
- ``GET /v1/refunds/{id}``.

Refunds are refused with 400 ``invalid_request_error`` and these ``code`` values, all in Stripe's
list of error codes (https://docs.stripe.com/error-codes): ``resource_missing`` (no or unknown
``payment_intent``), ``charge_not_refundable`` (the intent has not succeeded: nothing captured),
``charge_already_refunded`` (nothing left to refund), ``parameter_invalid_integer`` (``amount``
not a positive integer), ``amount_too_large`` (more than is left unrefunded). A bad ``reason``
is a 400 with ``param: reason`` and no code. The state checks run under the lock when the
request executes, but a refusal stores nothing: the key stays free, as at Stripe.

Idempotency as Stripe documents it (https://docs.stripe.com/api/idempotent_requests), the same
for both POST endpoints: the status and body of the first request that began executing under a
key are stored and replayed, with ``Idempotent-Replayed: true``, for every later request with
that key and the same parameters (including a 402); other parameters or another endpoint → 400
``idempotency_error``; a request arriving while the first is still executing → 409
``idempotency_key_in_use``; keys are pruned after 24 h, then the key executes anew. Requests
refused before execution (auth, validation, injected 429/5xx) store nothing. Keys are scoped per
API key, as per account at Stripe.

Faults: the shared ``Knobs`` (latency, 429, 5xx, timeouts) hit before execution;
``processing_s`` keeps a request "in flight" (the card network) so concurrent duplicates see
409; ``reply_delay_s`` holds the answer after the effect was applied;
``drop_after_apply_rate`` records the capture or refund and stores the response, then breaks
the connection mid-response, so the client sees a transport error and only a retry with the
same key learns the outcome (from the replay).

The ledger ``captures`` lists every successful charge as the outside world counts it;
``capture_count()`` is what tests and the demo compare with the orders we marked paid.
``refunds`` lists every refund (``refund_count()``, ``refunds_for(order_ref)``) and
``refunded_amount(intent)`` is what has gone back of a capture; ``refund_outside`` plays a
refund made in the provider's dashboard (it moves the refunded amount, not the ledger).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import re
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from sandbox.knobs import DroppedConnection, Knobs

__all__ = ["IDEMPOTENCY_TTL_S", "SANDBOX_API_KEY", "PaymentsSimulator"]

# public, fixed sandbox credential (never valid anywhere else)
SANDBOX_API_KEY = "sk_test_ordersync_sandbox_000000000000000000"
IDEMPOTENCY_TTL_S = 24 * 3600  # "at least 24 hours old" before Stripe prunes a key
MAX_KEY_LENGTH = 255
MAX_AMOUNT = 99_999_999  # "supports up to eight digits"
MIN_AMOUNT = {"usd": 50}  # $0.50; other currencies: any positive amount here
THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}
DECLINING_METHODS = {"pm_card_chargeDeclined": "generic_decline"}
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
INTENTS = "POST /v1/payment_intents"  # the endpoint is part of a key's stored record
REFUNDS = "POST /v1/refunds"
#: Stripe cancels an uncaptured card PaymentIntent 7 days after it was authorised
#: (https://docs.stripe.com/payments/place-a-hold-on-a-payment-method)
AUTHORIZATION_VALID_S = 7 * 24 * 3600
_CLAUSE = re.compile(r"\s*(?:metadata\['([^'\]]+)'\]|(status|currency)):'([^'\\]*)'\s*")
_ALNUM = string.ascii_letters + string.digits


class _Refused(Exception):
    """Raised by an executor (under the lock) to refuse the request: nothing is applied and
    nothing is stored against its idempotency key."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


# (params, idempotency key) → (status, body); called with the lock held; may raise _Refused
_Executor = Callable[[dict[str, str], str | None], tuple[int, bytes]]
_Validator = Callable[[dict[str, str]], JSONResponse | None]


def _error(status: int, type_: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message, **extra}}, status_code=status)


@dataclass
class _KeyRecord:
    method_path: str
    params: tuple[tuple[str, str], ...]
    created: float
    request_id: str
    done: bool = False
    status: int = 0
    body: bytes = b""


class PaymentsSimulator:
    def __init__(
        self,
        knobs: Knobs | None = None,
        *,
        seed: int = 0,
        api_key: str = SANDBOX_API_KEY,
        decline_rate: float = 0.0,
        drop_after_apply_rate: float = 0.0,
        processing_s: float = 0.0,
        reply_delay_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.knobs = knobs or Knobs(seed=seed)
        self.api_key = api_key
        self.decline_rate = decline_rate
        self.drop_after_apply_rate = drop_after_apply_rate
        self.processing_s = processing_s
        # applied, then the answer waits: a window in which the caller can crash after the
        # capture happened but before it learnt so (the chaos tests kill a worker there)
        self.reply_delay_s = reply_delay_s
        self._clock = clock
        self._lock = threading.Lock()
        # separate streams: a decline roll must not shift the drop rolls and vice versa
        self._ids = random.Random(seed)
        self._declines = random.Random(seed + 1)
        self._drops = random.Random(seed + 2)
        self.intents: dict[str, dict[str, Any]] = {}
        self._keys: dict[tuple[str, str], _KeyRecord] = {}  # (api key, idempotency key)
        #: every successful charge: id, order_ref, amount (minor units), currency, key, created
        self.captures: list[dict[str, Any]] = []
        self.declines: list[dict[str, Any]] = []
        #: every refund: id, payment_intent, order_ref, amount (minor units), captured_amount,
        #: currency, idempotency_key, created
        self.refunds: list[dict[str, Any]] = []
        self._refunded: dict[str, int] = {}  # payment intent → minor units refunded so far
        self._refund_objects: dict[str, dict[str, Any]] = {}
        self.stats = {"executed": 0, "replayed": 0, "conflicts": 0, "mismatches": 0, "dropped": 0}

    # -- ledger ----------------------------------------------------------------------------

    def capture_count(self) -> int:
        """Distinct successful captures (what "at most one capture per order" is checked on)."""
        with self._lock:
            return len({c["id"] for c in self.captures})

    def captures_for(self, order_ref: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self.captures if c["order_ref"] == order_ref]

    def refund_count(self) -> int:
        """Distinct refunds (what "at most one refund per cancelled order" is checked on)."""
        with self._lock:
            return len({r["id"] for r in self.refunds})

    def refunds_for(self, order_ref: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.refunds if r["order_ref"] == order_ref]

    def refunded_amount(self, payment_intent: str) -> int:
        """Minor units refunded of the intent so far (API and dashboard refunds)."""
        with self._lock:
            return self._refunded.get(payment_intent, 0)

    def refund_outside(self, payment_intent: str, amount: int) -> None:
        """A refund made outside the API (the provider's dashboard): moves the intent's
        refunded amount by ``amount`` minor units (negative takes it back) without a ledger
        entry, so later API refunds see less (or more) left to refund."""
        with self._lock:
            intent = self.intents[payment_intent]
            refunded = self._refunded.get(payment_intent, 0) + amount
            if not 0 <= refunded <= intent["amount_received"]:
                raise ValueError("refund_outside: refunded amount out of range")
            self._refunded[payment_intent] = refunded

    # -- helpers ---------------------------------------------------------------------------

    def authorize(self, order_ref: str, amount: int, currency: str) -> str:
        """A PaymentIntent authorised at a shop's checkout (``capture_method=manual``), waiting
        in ``requires_capture``: what a WooCommerce order paid through Stripe carries."""
        with self._lock:
            intent_id = self._new_id("pi_")
            self.intents[intent_id] = {
                "id": intent_id, "object": "payment_intent", "amount": amount,
                "amount_capturable": amount, "amount_received": 0, "capture_method": "manual",
                "cancellation_reason": None, "canceled_at": None,
                "client_secret": f"{intent_id}_secret_{self._new_id('')}",
                "confirmation_method": "automatic", "created": int(self._clock()),
                "currency": currency.lower(), "customer": None, "description": None,
                "last_payment_error": None, "latest_charge": self._new_id("ch_"),
                "livemode": False, "metadata": {"order_ref": order_ref}, "next_action": None,
                "payment_method": "pm_card_visa", "payment_method_types": ["card"],
                "status": "requires_capture",
            }  # fmt: skip
            return intent_id

    def age_authorization(self, intent_id: str, seconds: float) -> None:
        """Move an authorization's creation ``seconds`` into the past (8 days: expired)."""
        with self._lock:
            self.intents[intent_id]["created"] -= int(seconds)

    def cancel_authorization(self, intent_id: str) -> None:
        """The shop voided the authorization (``POST /v1/payment_intents/{id}/cancel``)."""
        with self._lock:
            intent = self.intents[intent_id]
            intent.update(status="canceled", cancellation_reason="requested_by_customer",
                          amount_capturable=0, canceled_at=int(self._clock()))  # fmt: skip

    def _expire_if_due(self, intent: dict[str, Any]) -> None:
        """Stripe's automatic cancellation of an authorization not captured within 7 days."""
        now = int(self._clock())
        if (
            intent["status"] == "requires_capture"
            and now > intent["created"] + AUTHORIZATION_VALID_S
        ):
            intent.update(status="canceled", cancellation_reason="automatic", amount_capturable=0,
                          canceled_at=intent["created"] + AUTHORIZATION_VALID_S)  # fmt: skip

    def _capture_executor(self, intent_id: str) -> _Executor:
        def execute(params: dict[str, str], idempotency_key: str | None) -> tuple[int, bytes]:
            intent = self.intents.get(intent_id)
            if intent is None:
                raise _Refused(
                    _error(
                        404,
                        "invalid_request_error",
                        f"No such payment_intent: '{intent_id}'",
                        code="resource_missing",
                        param="intent",
                    )
                )
            self._expire_if_due(intent)
            if intent["status"] != "requires_capture":
                raise _Refused(
                    _error(
                        400,
                        "invalid_request_error",
                        "This PaymentIntent could not be captured because it has a status of "
                        f"{intent['status']}. Only a PaymentIntent with one of the following "
                        "statuses may be captured: requires_capture.",
                        code="payment_intent_unexpected_state",
                    )
                )
            capturable = int(intent["amount_capturable"])
            raw = params.get("amount_to_capture")
            amount = int(raw) if raw is not None and raw.isdigit() else capturable
            if not 0 < amount <= capturable:
                raise _Refused(
                    _error(
                        400,
                        "invalid_request_error",
                        "The amount to capture must be at most the capturable amount.",
                        code="amount_too_large",
                        param="amount_to_capture",
                    )
                )
            now = int(self._clock())
            intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
            self.stats["executed"] += 1
            self.captures.append(
                {
                    "id": intent_id,
                    "order_ref": intent["metadata"].get("order_ref"),
                    "amount": amount,
                    "currency": intent["currency"],
                    "idempotency_key": idempotency_key,
                    "created": now,
                }
            )
            return 200, json.dumps(intent).encode()

        return execute

    def _new_id(self, prefix: str) -> str:
        return prefix + "".join(self._ids.choice(_ALNUM) for _ in range(24))

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "basic":  # curl -u sk_…: works too
            try:
                token = base64.b64decode(token).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return token == self.api_key

    @staticmethod
    def _unauthorized(request: Request) -> JSONResponse:
        if not request.headers.get("Authorization"):
            message = "You did not provide an API key."
        else:
            # Stripe echoes a masked key; the sandbox echoes nothing of it
            message = "Invalid API Key provided."
        return _error(401, "invalid_request_error", message)

    def _prune(self, now: float) -> None:
        expired = [
            k for k, r in self._keys.items() if r.done and now - r.created > IDEMPOTENCY_TTL_S
        ]
        for key in expired:
            del self._keys[key]

    @staticmethod
    def _validate_intent(params: dict[str, str]) -> JSONResponse | None:
        """Parameter checks that refuse a request before it executes (nothing is stored)."""
        currency = params.get("currency", "")
        if not re.fullmatch(r"[a-z]{3}", currency):
            return _error(
                400,
                "invalid_request_error",
                "Invalid currency.",
                param="currency",
                code="parameter_invalid_string",
            )
        try:
            amount = int(params.get("amount", ""))
        except ValueError:
            return _error(
                400,
                "invalid_request_error",
                "Invalid integer.",
                param="amount",
                code="parameter_invalid_integer",
            )
        if amount < MIN_AMOUNT.get(currency, 1):
            return _error(
                400,
                "invalid_request_error",
                "Amount must be at least the minimum.",
                param="amount",
                code="amount_too_small",
            )
        if amount > MAX_AMOUNT:
            return _error(
                400,
                "invalid_request_error",
                "Amount must be no more than 8 digits.",
                param="amount",
                code="amount_too_large",
            )
        if currency in THREE_DECIMAL and amount % 10:
            return _error(
                400,
                "invalid_request_error",
                "Amounts in three-decimal currencies must end in 0.",
                param="amount",
            )
        if params.get("confirm") == "true" and not params.get("payment_method"):
            return _error(
                400,
                "invalid_request_error",
                "A payment method is required to confirm.",
                param="payment_method",
                code="parameter_missing",
            )
        return None

    @staticmethod
    def _validate_refund(params: dict[str, str]) -> JSONResponse | None:
        """The refund's checks that need no state (the rest run in ``_execute_refund``)."""
        amount = params.get("amount")
        if amount is not None and not (re.fullmatch(r"[0-9]{1,12}", amount) and int(amount) > 0):
            return _error(
                400,
                "invalid_request_error",
                "Invalid positive integer.",
                param="amount",
                code="parameter_invalid_integer",
            )
        reason = params.get("reason")
        if reason is not None and reason not in REFUND_REASONS:
            return _error(
                400,
                "invalid_request_error",
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer.",
                param="reason",
            )
        return None

    def _execute_intent(
        self, params: dict[str, str], idempotency_key: str | None
    ) -> tuple[int, bytes]:
        """Create (and confirm) the intent; record the charge. Caller holds the lock."""
        now = int(self._clock())
        intent_id = self._new_id("pi_")
        amount, currency = int(params["amount"]), params["currency"]
        metadata = _metadata(params)
        methods = [v for k, v in sorted(params.items()) if k.startswith("payment_method_types[")]
        intent: dict[str, Any] = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "capture_method": params.get("capture_method", "automatic"),
            "client_secret": f"{intent_id}_secret_{self._new_id('')}",
            "confirmation_method": "automatic",
            "created": now,
            "currency": currency,
            "customer": None,
            "description": params.get("description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "next_action": None,
            "payment_method": params.get("payment_method"),
            "payment_method_types": methods or ["card"],
            "status": "requires_payment_method",
        }
        self.intents[intent_id] = intent
        self.stats["executed"] += 1
        if params.get("confirm") != "true":
            return 200, json.dumps(intent).encode()
        method = params.get("payment_method", "")
        decline_code = DECLINING_METHODS.get(method)
        if decline_code is None and self._declines.random() < self.decline_rate:
            decline_code = "generic_decline"
        charge_id = self._new_id("ch_")
        intent["latest_charge"] = charge_id
        if decline_code is not None:
            error = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": decline_code,
                "message": "Your card was declined.",
                "charge": charge_id,
                "doc_url": "https://docs.stripe.com/error-codes/card-declined",
            }
            intent["last_payment_error"] = {k: v for k, v in error.items() if k != "charge"}
            self.declines.append({"id": intent_id, "order_ref": metadata.get("order_ref")})
            return 402, json.dumps({"error": {**error, "payment_intent": intent}}).encode()
        if intent["capture_method"] == "manual":
            intent["status"], intent["amount_capturable"] = "requires_capture", amount
        else:
            intent["status"], intent["amount_received"] = "succeeded", amount
            self.captures.append(
                {
                    "id": intent_id,
                    "order_ref": metadata.get("order_ref"),
                    "amount": amount,
                    "currency": currency,
                    "idempotency_key": idempotency_key,
                    "created": now,
                }
            )
        return 200, json.dumps(intent).encode()

    def _execute_refund(
        self, params: dict[str, str], idempotency_key: str | None
    ) -> tuple[int, bytes]:
        """Check the refund against the intent's state, then apply and record it. Caller holds
        the lock. Raises _Refused (nothing applied, nothing stored) when it cannot be done."""
        intent_id = params.get("payment_intent", "")
        intent = self.intents.get(intent_id)
        if intent is None:
            raise _Refused(
                _error(
                    400,
                    "invalid_request_error",
                    f"No such payment_intent: '{intent_id}'",
                    param="payment_intent",
                    code="resource_missing",
                    doc_url="https://docs.stripe.com/error-codes/resource-missing",
                )
            )
        if intent["status"] != "succeeded":
            raise _Refused(
                _error(
                    400,
                    "invalid_request_error",
                    f"This PaymentIntent ({intent_id}) does not have a successful charge to "
                    "refund.",
                    param="payment_intent",
                    code="charge_not_refundable",
                )
            )
        currency = intent["currency"]
        received = int(intent["amount_received"])
        left = received - self._refunded.get(intent_id, 0)
        if left <= 0:
            raise _Refused(
                _error(
                    400,
                    "invalid_request_error",
                    f"Charge {intent['latest_charge']} has already been refunded.",
                    code="charge_already_refunded",
                    doc_url="https://docs.stripe.com/error-codes/charge-already-refunded",
                )
            )
        amount = int(params["amount"]) if "amount" in params else left
        if amount > left:
            raise _Refused(
                _error(
                    400,
                    "invalid_request_error",
                    f"Refund amount ({amount} {currency}) is greater than unrefunded amount on "
                    f"charge ({left} {currency}).",
                    param="amount",
                    code="amount_too_large",
                )
            )
        if currency in THREE_DECIMAL and amount % 10:
            raise _Refused(
                _error(
                    400,
                    "invalid_request_error",
                    "Amounts in three-decimal currencies must end in 0.",
                    param="amount",
                )
            )
        now = int(self._clock())
        refund_id = self._new_id("re_")
        refund: dict[str, Any] = {
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "balance_transaction": self._new_id("txn_"),
            "charge": intent["latest_charge"],
            "created": now,
            "currency": currency,
            "metadata": _metadata(params),
            "payment_intent": intent_id,
            "reason": params.get("reason"),
            "receipt_number": None,
            "status": "succeeded",
        }
        self._refunded[intent_id] = self._refunded.get(intent_id, 0) + amount
        self._refund_objects[refund_id] = refund
        self.stats["executed"] += 1
        self.refunds.append(
            {
                "id": refund_id,
                "payment_intent": intent_id,
                "order_ref": intent["metadata"].get("order_ref"),
                "amount": amount,
                "captured_amount": received,
                "currency": currency,
                "idempotency_key": idempotency_key,
                "created": now,
            }
        )
        return 200, json.dumps(refund).encode()

    async def _idempotent_post(
        self, request: Request, endpoint: str, validate: _Validator, execute: _Executor
    ) -> Response:
        """The machinery both POST endpoints share: auth, the knobs, static validation, then
        Stripe's idempotency around ``execute`` (with ``processing_s``, ``reply_delay_s`` and
        ``drop_after_apply_rate``). ``endpoint`` goes into the key's record, so a key first used
        on the other endpoint is an ``idempotency_error``."""
        if not self._authorized(request):
            return self._unauthorized(request)
        refused = await self.knobs.disturb(
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": "rate_limit",
                    "message": "Too many requests hit the API too quickly.",
                }
            }
        )
        if refused is not None:
            return refused
        raw = (await request.body()).decode("utf-8", "replace")
        pairs = tuple(sorted(parse_qsl(raw, keep_blank_values=True)))
        params = dict(pairs)
        invalid = validate(params)
        if invalid is not None:
            return invalid
        key = request.headers.get("Idempotency-Key")
        if key is None:  # Stripe executes it, unprotected
            with self._lock:
                try:
                    status, body = execute(params, None)
                except _Refused as refusal:
                    return refusal.response
            return Response(body, status_code=status, media_type="application/json")
        if len(key) > MAX_KEY_LENGTH:
            return _error(400, "invalid_request_error", "Idempotency key is too long.")
        slot = (self.api_key, key)
        with self._lock:
            self._prune(self._clock())
            record = self._keys.get(slot)
            if record is not None:
                return self._answer_repeat(record, endpoint, pairs, key)
            record = _KeyRecord(endpoint, pairs, self._clock(), self._new_id("req_"))
            self._keys[slot] = record
        drop = False
        try:
            if self.processing_s:
                await asyncio.sleep(self.processing_s)  # the card network: key in flight
            with self._lock:
                try:
                    record.status, record.body = execute(params, key)
                except _Refused as refusal:
                    return refusal.response  # not done: the finally frees the key
                record.done = True
                drop = self._drops.random() < self.drop_after_apply_rate
                if drop:
                    self.stats["dropped"] += 1
        finally:
            if not record.done:  # never executed: Stripe saves nothing, the key is free
                with self._lock:
                    self._keys.pop(slot, None)
        if self.reply_delay_s:
            await asyncio.sleep(self.reply_delay_s)
        headers = {"Idempotency-Key": key, "Request-Id": record.request_id}
        if drop:
            return DroppedConnection(record.body, record.status, headers)
        return Response(
            record.body,
            status_code=record.status,
            media_type="application/json",
            headers=headers,
        )

    # -- routes ----------------------------------------------------------------------------

    def build_router(self) -> APIRouter:
        router = APIRouter()

        @router.post("/v1/payment_intents")
        async def create_intent(request: Request) -> Response:
            return await self._idempotent_post(
                request, INTENTS, self._validate_intent, self._execute_intent
            )

        @router.post("/v1/payment_intents/{intent_id}/capture")
        async def capture_intent(intent_id: str, request: Request) -> Response:
            return await self._idempotent_post(
                request, f"POST /v1/payment_intents/{intent_id}/capture",
                lambda _params: None, self._capture_executor(intent_id),
            )  # fmt: skip

        @router.post("/v1/refunds")
        async def create_refund(request: Request) -> Response:
            return await self._idempotent_post(
                request, REFUNDS, self._validate_refund, self._execute_refund
            )

        @router.get("/v1/refunds/{refund_id}")
        async def retrieve_refund(refund_id: str, request: Request) -> Response:
            return await self._retrieve(request, self._refund_objects, "refund", refund_id, "id")

        @router.get("/v1/payment_intents/search")
        async def search_intents(request: Request) -> Response:
            if not self._authorized(request):
                return self._unauthorized(request)
            refused = await self.knobs.disturb()
            if refused is not None:
                return refused
            q = request.query_params
            clauses = _parse_query(q.get("query", ""))
            if clauses is None:
                return _error(400, "invalid_request_error", "Invalid search query.", param="query")
            try:
                limit, offset = int(q.get("limit", "10")), int(q.get("page") or 0)
            except ValueError:
                return _error(400, "invalid_request_error", "Invalid integer.", param="limit")
            if not 1 <= limit <= 100 or offset < 0:
                return _error(400, "invalid_request_error", "Invalid limit.", param="limit")
            with self._lock:
                hits = [i for i in self.intents.values() if _matches(i, clauses)]
                hits.sort(key=lambda i: (i["created"], i["id"]), reverse=True)
                page = json.loads(json.dumps(hits[offset : offset + limit]))
            more = offset + limit < len(hits)
            return JSONResponse(
                {
                    "object": "search_result",
                    "url": "/v1/payment_intents/search",
                    "has_more": more,
                    "data": page,
                    "next_page": str(offset + limit) if more else None,
                }
            )

        @router.get("/v1/payment_intents/{intent_id}")
        async def retrieve_intent(intent_id: str, request: Request) -> Response:
            return await self._retrieve(
                request, self.intents, "payment_intent", intent_id, "intent"
            )

        return router

    async def _retrieve(
        self, request: Request, store: dict[str, Any], kind: str, object_id: str, param: str
    ) -> Response:
        """``GET /v1/<objects>/{id}``: a copy of the stored object, or Stripe's 404."""
        if not self._authorized(request):
            return self._unauthorized(request)
        refused = await self.knobs.disturb()
        if refused is not None:
            return refused
        with self._lock:
            found = store.get(object_id)
            if found is not None and kind == "payment_intent":
                self._expire_if_due(found)
            body = json.loads(json.dumps(found)) if found else None
        if body is None:
            return _error(
                404,
                "invalid_request_error",
                f"No such {kind}: '{object_id}'",
                code="resource_missing",
                param=param,
            )
        return JSONResponse(body)

    def _answer_repeat(
        self,
        record: _KeyRecord,
        method_path: str,
        pairs: tuple[tuple[str, str], ...],
        key: str,
    ) -> Response:
        """A request whose key was seen before. Caller holds the lock."""
        if record.method_path != method_path or record.params != pairs:
            self.stats["mismatches"] += 1
            return _error(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they "
                "were first used with. Try using a key other than the one you sent if you "
                "meant to execute a different request.",
            )
        if not record.done:
            self.stats["conflicts"] += 1
            return _error(
                409,
                "invalid_request_error",
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still "
                "going through). Please try again later.",
                code="idempotency_key_in_use",
                doc_url="https://docs.stripe.com/error-codes/idempotency-key-in-use",
            )
        self.stats["replayed"] += 1
        return Response(
            record.body,
            status_code=record.status,
            media_type="application/json",
            headers={
                "Idempotency-Key": key,
                "Idempotent-Replayed": "true",
                "Original-Request": record.request_id,
                "Request-Id": self._new_id("req_"),
            },
        )


def _metadata(params: dict[str, str]) -> dict[str, str]:
    """``metadata[k]=v`` form pairs → ``{k: v}``."""
    return {k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")}


def _parse_query(query: str) -> list[tuple[str, str]] | None:
    """``metadata['k']:'v' AND status:'succeeded'`` → [("metadata.k", "v"), ("status", …)]."""
    clauses: list[tuple[str, str]] = []
    for part in re.split(r"\s+AND\s+", query.strip()):
        match = _CLAUSE.fullmatch(part)
        if match is None:
            return None
        meta, field, value = match.groups()
        clauses.append((f"metadata.{meta}" if meta else field, value))
    return clauses


def _matches(intent: dict[str, Any], clauses: list[tuple[str, str]]) -> bool:
    for field, value in clauses:
        if field.startswith("metadata."):
            if intent["metadata"].get(field[len("metadata.") :]) != value:
                return False
        elif str(intent.get(field)) != value:
            return False
    return True
