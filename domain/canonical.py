"""The canonical order: what every marketplace mapper produces and the pipeline consumes.

Money is ``Decimal`` (parsed from strings or numbers, never through float arithmetic), ids are
strings, timestamps are timezone-aware UTC, and the marketplace payload is kept whole in ``raw``
so that nothing a mapper does not understand yet is lost. No string in it, ``raw`` included,
holds a lone UTF-16 surrogate (see ``_Canonical``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from domain.money import MoneyField, to_decimal
from domain.states import OrderState

__all__ = [
    "Address",
    "CanonicalLine",
    "CanonicalOrder",
    "CanonicalRefund",
    "MoneyField",
    "PaymentFacts",
    "RefundLine",
    "from_checked_text",
    "may_hold_surrogates",
    "to_decimal",
]


def _aware_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    return value.astimezone(dt.UTC)


UTCTimestamp = Annotated[dt.datetime, AfterValidator(_aware_utc)]
ExternalIdStr = Annotated[
    str,
    BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
    Field(min_length=1, max_length=64),
]


_SURROGATE = re.compile("[\ud800-\udfff]")


_TEXT_CHECKED: ContextVar[bool] = ContextVar("ordersync_text_checked", default=False)


def may_hold_surrogates(json_text: str | bytes) -> bool:
    """Whether the strings parsed from this JSON text (or its UTF-8 bytes) may hold a
    surrogate. Text decoded from UTF-8 holds none (a decoder replaces what it cannot read);
    only an escape in the range ``\\ud800``-``\\udfff`` makes one (a pair that makes one
    character is caught too)."""
    if isinstance(json_text, bytes):
        return b"\\ud" in json_text or b"\\uD" in json_text
    return "\\ud" in json_text or "\\uD" in json_text


@contextmanager
def from_checked_text() -> Iterator[None]:
    """Canonical models made inside take their text from JSON that ``may_hold_surrogates``
    found free of them: the check of each field is skipped (a third of mapping a Shopify bulk
    order). A source that cannot say so (a webhook body, a REST page) is checked field by
    field, as every model is by default."""
    token = _TEXT_CHECKED.set(True)
    try:
        yield
    finally:
        _TEXT_CHECKED.reset(token)


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` with each lone surrogate in its strings (dict keys too) replaced by U+FFFD; a
    high-low pair that stands for one character is joined into it.

    It runs for every field of every canonical model (some fifty an order), so the common
    cases return first: a number, a time or a model (cleaned when it was made), an ASCII
    string, a list of models (an order's lines)."""
    if isinstance(value, str):
        return value if value.isascii() else _walk(value)
    if not isinstance(value, (dict, list, tuple)):
        return value
    if not isinstance(value, dict) and all(isinstance(item, _Canonical) for item in value):
        return value
    if _utf8_clean(value):
        return value  # the common case, checked in C: no walk through a payload of 3 KB
    return _walk(value)


def _utf8_clean(value: Any) -> bool:
    """No surrogate anywhere in it: its JSON (unescaped) encodes as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False, default=_opaque).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError):
        return False  # a surrogate (or something JSON cannot say): walk it
    return True


def _opaque(value: Any) -> Any:
    """What JSON says for a value it has no form for: nothing for a canonical model (each
    was cleaned by its own validators when it was made: a list of order lines is not turned
    into text again), the text of anything else."""
    return None if isinstance(value, _Canonical) else str(value)


def _walk(value: Any) -> Any:
    if isinstance(value, str):
        if value.isascii() or not _SURROGATE.search(value):
            return value
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_walk(k): _walk(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_walk(v) for v in value)
    return value


class _Canonical(BaseModel):
    """Frozen, and free of lone surrogates in every field.

    JSON may carry half of a surrogate pair (``"\\ud800"``, typically an emoji cut in half by
    a length limit), which Python decodes into a string that UTF-8 cannot encode: such an
    order passed intake and then failed when its label request was encoded, and PostgreSQL
    cannot store it. The half is replaced by U+FFFD, as any UTF-8 decoder does with bytes it
    cannot read, rather than the payload refused: half a character carries nothing to
    recover, the rest of the address is good, and a refused order would wait for a fix that
    neither staff nor the buyer can make here (the marketplace keeps sending the same text).
    """

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _replace_lone_surrogates(cls, data: Any) -> Any:
        # once per model, not once per field (fifty calls an order, most of them returning at
        # once: a tenth of mapping an order of a bulk export, whose text is checked already)
        if _TEXT_CHECKED.get() or not isinstance(data, dict):
            return data
        return {key: _without_lone_surrogates(value) for key, value in data.items()}


class Address(_Canonical):
    name: str | None = None
    company: str | None = None
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country_code: str | None = None
    phone: str | None = None


class CanonicalLine(_Canonical):
    external_id: ExternalIdStr
    sku: str | None = None
    title: str = ""
    quantity: int = Field(ge=0)
    unit_price: MoneyField
    tax: MoneyField = Decimal(0)
    discount: MoneyField = Decimal(0)
    total: MoneyField


class PaymentFacts(_Canonical):
    """What the marketplace says about the order's money, as far as it says it.

    ``held_by`` is where an authorization we may capture lives: ``marketplace`` (Shopify holds
    it; captured there with ``orderCapture``), ``provider`` (a PaymentIntent at the shop's
    Stripe account, e.g. WooCommerce's Stripe gateway: captured at the provider), or None (no
    authorization: the marketplace collected the money, or nobody has paid yet). Nothing here is
    guessed: a field the marketplace does not give stays None.
    """

    gateway: str | None = None
    held_by: Literal["marketplace", "provider"] | None = None
    #: the authorization to capture: Shopify's AUTHORIZATION transaction id, or the
    #: PaymentIntent id (``pi_…``); None when only found at capture time
    authorization_id: str | None = None
    amount_authorized: MoneyField | None = None
    amount_captured: MoneyField | None = None
    authorization_expires_at: UTCTimestamp | None = None


class RefundLine(_Canonical):
    """Units of one order line the marketplace refunded: their net (after discount, before
    tax) and tax as it computed them, and whether they go back into stock."""

    line_external_id: ExternalIdStr
    quantity: int = Field(ge=0)
    subtotal: MoneyField
    tax: MoneyField = Decimal(0)
    restock: bool = False


class CanonicalRefund(_Canonical):
    """A refund the marketplace made (Shopify ``refunds/create``, a WooCommerce order refund):
    the lines and shipping it covers and the money that went back (``amount``)."""

    external_id: ExternalIdStr
    order_external_id: ExternalIdStr
    lines: list[RefundLine] = Field(default_factory=list)
    shipping: MoneyField = Decimal(0)
    shipping_tax: MoneyField = Decimal(0)
    amount: MoneyField
    currency: str | None = None
    created_at: UTCTimestamp | None = None
    #: False: the order's body gave only the refund's id and amount (WooCommerce's refund
    #: summaries), not its lines: intake fetches it whole before recording it
    itemized: bool = True


class CanonicalOrder(_Canonical):
    #: the registered marketplace's name (``integrations.registry``); the domain lists none
    channel: str = Field(min_length=1, max_length=20)
    account: str
    external_id: ExternalIdStr
    external_number: str | None = None
    status: OrderState = OrderState.NEW
    marketplace_status: str | None = None
    financial_status: str | None = None
    fulfillment_status: str | None = None
    currency: str = Field(min_length=3, max_length=3)
    subtotal: MoneyField
    tax_total: MoneyField = Decimal(0)
    shipping_total: MoneyField = Decimal(0)
    discount_total: MoneyField = Decimal(0)
    total: MoneyField
    lines: list[CanonicalLine] = Field(default_factory=list)
    shipping_address: Address | None = None
    buyer_name: str | None = None
    buyer_email: str | None = None
    payment_collected_by_marketplace: bool = False
    #: the payment facts the marketplace gives (gateway, authorization); None: it gives none
    payment: PaymentFacts | None = None
    #: refunds the marketplace made, as far as the payload carries them
    refunds: list[CanonicalRefund] = Field(default_factory=list)
    #: the marketplace ships it from its own warehouse (Amazon FBA): no stock of ours, no
    #: label, no fulfilment push
    fulfilled_by_marketplace: bool = False
    created_at: UTCTimestamp | None = None
    updated_at: UTCTimestamp
    cancelled_at: UTCTimestamp | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @field_validator("currency")
    @classmethod
    def _upper_currency(cls, value: str) -> str:
        if not value.isalpha():
            raise ValueError(f"not a currency code: {value!r}")
        return value.upper()
