"""Shopify webhook deliveries: signature check, dedupe key, staleness, and the headers we keep.

Shopify signs the raw request body with the app's secret: ``X-Shopify-Hmac-Sha256`` is the
base64 HMAC-SHA256 digest. ``X-Shopify-Webhook-Id`` is the same on every retry of one delivery,
so it is the dedupe key; ``X-Shopify-Triggered-At`` tells how old the event is (a retry hours
later carries the original time, so an old event never overwrites a newer poll).
https://shopify.dev/docs/apps/build/webhooks/subscribe/https#step-2-validate-the-origin-of-your-webhook
https://shopify.dev/docs/apps/build/webhooks/delivery-structure#headers
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping

from integrations.signing import HmacCheck

__all__ = [
    "KEPT_HEADERS",
    "body_check",
    "dedupe_key",
    "kept_headers",
    "sign",
    "topic",
    "triggered_at",
    "verify_signature",
]

#: lower-case header names stored with the inbox row (never the HMAC itself)
KEPT_HEADERS = (
    "x-shopify-topic",
    "x-shopify-webhook-id",
    "x-shopify-event-id",
    "x-shopify-shop-domain",
    "x-shopify-api-version",
    "x-shopify-triggered-at",
)


def sign(secret: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time comparison of the expected and the received digest."""
    if not header or not secret:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    lower = _lower(headers)
    return {name: lower[name] for name in KEPT_HEADERS if name in lower}


def topic(headers: Mapping[str, str]) -> str | None:
    """``X-Shopify-Topic`` (``orders/create`` etc.); None if absent."""
    return _lower(headers).get("x-shopify-topic", "").strip() or None


def triggered_at(headers: Mapping[str, str]) -> dt.datetime | None:
    """``X-Shopify-Triggered-At`` as an aware UTC datetime; None if absent or unreadable.

    Shopify sends ISO 8601 in UTC with up to nanoseconds (``2023-03-29T18:00:27.877041743Z``);
    Python keeps microseconds, which is all a staleness check needs.
    """
    value = _lower(headers).get("x-shopify-triggered-at", "").strip()
    if not value:
        return None
    text = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    main, sep, rest = text.partition(".")
    if sep:  # trim the fraction to 6 digits, keep the offset
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{main}.{rest[: min(digits, 6)]}{rest[digits:]}"
        if digits == 0:
            return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.astimezone(dt.UTC)


def dedupe_key(headers: Mapping[str, str], body: bytes) -> str:
    """The inbox dedupe key: the webhook id (stable across Shopify's retries of one delivery);
    without it, the topic plus a hash of the raw body (identical redeliveries still collapse)."""
    lower = _lower(headers)
    webhook_id = lower.get("x-shopify-webhook-id", "").strip()
    if webhook_id:
        return f"shopify:webhook:{webhook_id}"
    topic = lower.get("x-shopify-topic", "").strip() or "unknown"
    return f"shopify:body:{topic}:{hashlib.sha256(body).hexdigest()}"


def body_check(secret: str, header: str | None) -> HmacCheck:
    """The signature check fed the body as it streams in (the same test as
    ``verify_signature``, without holding the body)."""
    return HmacCheck([secret], header)
