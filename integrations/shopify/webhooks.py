"""Shopify webhook deliveries: signature check and the headers we keep.

Shopify signs the raw request body with the app's secret: ``X-Shopify-Hmac-Sha256`` is the
base64 HMAC-SHA256 digest. ``X-Shopify-Webhook-Id`` is the same on every retry of one delivery,
so it is the dedupe key; ``X-Shopify-Triggered-At`` tells how old the event is.
https://shopify.dev/docs/apps/build/webhooks/subscribe/https#step-2-validate-the-origin-of-your-webhook
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["KEPT_HEADERS", "kept_headers", "sign", "verify_signature"]

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


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    lower = {k.lower(): v for k, v in headers.items()}
    return {name: lower[name] for name in KEPT_HEADERS if name in lower}
