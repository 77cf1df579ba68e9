"""WooCommerce webhook deliveries: signature, the save-time ping, dedupe key, kept headers.

What WooCommerce sends (``WC_Webhook::deliver`` in woocommerce/includes/class-wc-webhook.php):

- ``POST`` with ``Content-Type: application/json``; the body is ``wp_json_encode`` of the REST
  resource (an ``order.*`` body is the REST order, ``order.deleted`` only ``{"id": N}``);
- ``X-WC-Webhook-Signature``: base64 HMAC-SHA256 of the raw body with the webhook's secret
  (after ``wp_specialchars_decode`` of that secret), so verify on the bytes as received;
- ``X-WC-Webhook-Source`` (site URL), ``-Topic`` (``order.updated``), ``-Resource``,
  ``-Event``, ``-ID`` (the webhook) and ``-Delivery-ID`` = ``wp_hash(webhook id . time())``:
  second-granular, so two deliveries of one webhook in the same second share it;
- when a webhook is saved, an unsigned ping: form body ``webhook_id=NN`` and no X-WC headers.
  Woo disables the webhook unless it gets a 200, so answer 200 and drop it.

Woo never retries a failed delivery (it only counts failures, disabling the hook after 5),
which is why polling stays the reliable path.
https://woocommerce.github.io/woocommerce-rest-api-docs/#webhooks
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping

from integrations.signing import HmacCheck

__all__ = [
    "KEPT_HEADERS",
    "body_check",
    "dedupe_key",
    "is_ping",
    "kept_headers",
    "sign",
    "topic",
    "verify_signature",
]

#: lower-case header names stored with the inbox row (never the signature)
KEPT_HEADERS = (
    "x-wc-webhook-topic",
    "x-wc-webhook-resource",
    "x-wc-webhook-event",
    "x-wc-webhook-delivery-id",
    "x-wc-webhook-id",
    "x-wc-webhook-source",
)

_PING = re.compile(rb"\Awebhook_id=\d{1,20}\Z")

# wp_specialchars_decode( $secret, ENT_QUOTES ): the entities WordPress turns back into text
_WP_ENTITIES = (
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&quot;", '"'),
    ("&#039;", "'"),
    ("&#x27;", "'"),
    ("&amp;", "&"),
)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def sign(secret: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _wp_decoded(secret: str) -> str:
    for entity, char in _WP_ENTITIES:
        secret = secret.replace(entity, char)
    return secret


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time check of ``X-WC-Webhook-Signature`` against the raw body."""
    if not header or not secret:
        return False
    received = header.strip().encode()
    candidates = {secret, _wp_decoded(secret)}  # both come from our own secret
    # evaluate every candidate so the time does not depend on which one matched
    results = [hmac.compare_digest(sign(c, body).encode(), received) for c in candidates]
    return any(results)


def is_ping(headers: Mapping[str, str], body: bytes) -> bool:
    """The unsigned ``webhook_id=NN`` ping sent when a webhook is saved (answer 200, ignore)."""
    lower = _lower(headers)
    if "x-wc-webhook-topic" in lower or "x-wc-webhook-signature" in lower:
        return False
    return bool(_PING.match(body.strip()))


def topic(headers: Mapping[str, str]) -> str | None:
    """``order.created`` etc.; built from resource + event when the topic header is absent."""
    lower = _lower(headers)
    value = lower.get("x-wc-webhook-topic", "").strip()
    if value:
        return value
    resource = lower.get("x-wc-webhook-resource", "").strip()
    event = lower.get("x-wc-webhook-event", "").strip()
    return f"{resource}.{event}" if resource and event else None


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    lower = _lower(headers)
    return {name: lower[name] for name in KEPT_HEADERS if name in lower}


def dedupe_key(headers: Mapping[str, str], body: bytes) -> str:
    """``{delivery id}:sha256-{digest of the body}``.

    The delivery id alone is second-granular per webhook (two orders saved in one second share
    it), so a digest of the body completes the key: a resend of the same delivery gives the same
    key, a later change of the same order (a new ``date_modified``) or another order a new one.
    The body is never parsed here: the web process stores whatever is signed (a body nested too
    deeply for a JSON parser included) and the worker parses it. Without a delivery id (a proxy
    dropped it) the digest alone stands in.
    """
    delivery = _lower(headers).get("x-wc-webhook-delivery-id", "").strip()
    digest = "sha256-" + hashlib.sha256(body).hexdigest()[:32]
    return f"{delivery[:64]}:{digest}" if delivery else digest


def body_check(secret: str, header: str | None) -> HmacCheck:
    """The signature check fed the body as it streams in (the same test as
    ``verify_signature``, without holding the body)."""
    return HmacCheck([secret, _wp_decoded(secret)], header)
