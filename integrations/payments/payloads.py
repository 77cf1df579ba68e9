"""The payment provider's wire format (Stripe API v1): minor units, form bodies, PaymentIntents
and Refunds.

Amounts travel as integers in the currency's smallest unit (https://docs.stripe.com/currencies):
cents for USD (10.00 → 1000), whole units for the zero-decimal currencies (¥500 → 500), and
thousandths for the three-decimal ones (KWD 5.120 → 5120), where Stripe also requires the last
digit to be 0 "to ensure compatibility with its payments partners". Conversion is exact or it
fails: an amount with more decimals than its currency has is a bug upstream, never rounded here.

Request bodies are ``application/x-www-form-urlencoded`` with nested keys written in brackets
(``metadata[order_ref]=…``, ``payment_method_types[0]=card``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "THREE_DECIMAL_CURRENCIES",
    "ZERO_DECIMAL_CURRENCIES",
    "Capture",
    "Refund",
    "capture_from_intent",
    "currency_exponent",
    "form_pairs",
    "from_minor",
    "refund_from_object",
    "to_minor",
]

# https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL_CURRENCIES = frozenset(
    {
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    }
)
# https://docs.stripe.com/currencies#three-decimal: the last minor digit must be 0 on the wire
THREE_DECIMAL_CURRENCIES = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})


def currency_exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit on the wire (ISO 4217 code, any case)."""
    code = currency.upper()
    if len(code) != 3 or not code.isalpha():
        raise ValueError(f"not a currency code: {currency!r}")
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def to_minor(amount: Decimal, currency: str) -> int:
    """``Decimal('10.50'), 'USD'`` → 1050. Raises ValueError if the amount needs rounding."""
    exponent = currency_exponent(currency)
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise ValueError("amount must be a finite Decimal")
    scaled = amount.scaleb(exponent)
    try:
        minor = scaled.to_integral_exact()
    except InvalidOperation as exc:  # only under a trapping context; same meaning
        raise ValueError("amount does not fit the currency's minor unit") from exc
    if minor != scaled:
        raise ValueError(f"{currency.upper()} amounts have at most {exponent} decimal places")
    return int(minor)


def from_minor(minor: int, currency: str) -> Decimal:
    """1050, 'USD' → ``Decimal('10.50')``: always with the currency's number of places."""
    exponent = currency_exponent(currency)
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise ValueError("minor-unit amounts are integers")
    return Decimal(minor).scaleb(-exponent)


def form_pairs(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding of nested params: dicts as ``a[b]``, lists as ``a[0]``.

    Booleans are ``true``/``false`` as Stripe's SDKs send them; None values are left out.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            pairs.extend(form_pairs(value, name))
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
            pairs.extend(form_pairs({str(i): item for i, item in enumerate(value)}, name))
        elif isinstance(value, bool):
            pairs.append((name, "true" if value else "false"))
        else:
            pairs.append((name, str(value)))
    return pairs


@dataclass(frozen=True)
class Capture:
    """What the pipeline keeps of a PaymentIntent.

    ``status`` is Stripe's PaymentIntent status verbatim: only ``succeeded`` means the money is
    captured; ``processing`` settles later; ``requires_payment_method`` is a failed attempt.
    ``replayed`` is True when the provider answered from its idempotency cache
    (``Idempotent-Replayed: true``): the capture happened on an earlier attempt.
    """

    id: str
    status: str
    amount: Decimal
    currency: str
    replayed: bool = False
    order_ref: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


def capture_from_intent(intent: Mapping[str, Any], *, replayed: bool = False) -> Capture:
    """A PaymentIntent object (``"object": "payment_intent"``) → ``Capture``.

    Raises KeyError/TypeError/ValueError on a body that is not one; the client turns those into
    ``PayloadError``.
    """
    if intent.get("object") != "payment_intent":
        raise ValueError("not a payment_intent object")
    currency = str(intent["currency"]).upper()
    metadata = intent.get("metadata") or {}
    order_ref = metadata.get("order_ref") if isinstance(metadata, Mapping) else None
    return Capture(
        id=str(intent["id"]),
        status=str(intent["status"]),
        amount=from_minor(intent["amount"], currency),
        currency=currency,
        replayed=replayed,
        order_ref=str(order_ref) if order_ref is not None else None,
    )


@dataclass(frozen=True)
class Refund:
    """What the pipeline keeps of a Refund object (https://docs.stripe.com/api/refunds/object).

    ``amount`` is in major units of ``currency`` (upper-case); ``status`` is Stripe's verbatim
    (``succeeded``, ``pending``, ``requires_action``, ``failed``, ``canceled``). ``replayed``
    is True when the answer came from the provider's idempotency cache: the refund was made
    by an earlier attempt.
    """

    id: str
    payment_intent: str
    amount: Decimal
    currency: str
    status: str
    replayed: bool = False

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


def refund_from_object(refund: Mapping[str, Any], *, replayed: bool = False) -> Refund:
    """A Refund object (``"object": "refund"``) → ``Refund``.

    Raises KeyError/TypeError/ValueError on a body that is not one; the client turns those into
    ``PayloadError``.
    """
    if refund.get("object") != "refund":
        raise ValueError("not a refund object")
    currency = str(refund["currency"]).upper()
    return Refund(
        id=str(refund["id"]),
        payment_intent=str(refund["payment_intent"]),
        amount=from_minor(refund["amount"], currency),
        currency=currency,
        status=str(refund["status"]),
        replayed=replayed,
    )
