"""WooCommerce webhook deliveries: signature, ping, dedupe key and kept headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from integrations.woocommerce.webhooks import (
    dedupe_key,
    is_ping,
    kept_headers,
    sign,
    topic,
    verify_signature,
)
from tests.unit.integrations.woocommerce.official import FIXTURES

SECRET = "wh-secret-123"
# the order webhook body is the REST order resource, bytes as Woo sends them
BODY = (FIXTURES / "order.retrieve.json").read_bytes()


def _headers(
    body: bytes = BODY, delivery: str = "a3f1c2d4e5b6a7980112233445566778"
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-WC-Webhook-Source": "https://example.com/",
        "X-WC-Webhook-Topic": "order.updated",
        "X-WC-Webhook-Resource": "order",
        "X-WC-Webhook-Event": "updated",
        "X-WC-Webhook-Signature": base64.b64encode(
            hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
        ).decode(),
        "X-WC-Webhook-ID": "142",
        "X-WC-Webhook-Delivery-ID": delivery,
    }


def test_valid_signature_is_accepted() -> None:
    assert verify_signature(SECRET, BODY, _headers()["X-WC-Webhook-Signature"])


def test_wrong_secret_is_refused() -> None:
    assert not verify_signature("other", BODY, _headers()["X-WC-Webhook-Signature"])


def test_tampered_body_is_refused() -> None:
    tampered = BODY.replace(b'"29.35"', b'"0.01"')
    assert tampered != BODY
    assert not verify_signature(SECRET, tampered, _headers()["X-WC-Webhook-Signature"])


def test_reserialised_body_is_refused_so_verification_must_use_the_raw_bytes() -> None:
    reserialised = json.dumps(json.loads(BODY)).encode()
    assert not verify_signature(SECRET, reserialised, _headers()["X-WC-Webhook-Signature"])


@pytest.mark.parametrize("header", [None, "", "not base64!", sign(SECRET, b"other")])
def test_missing_or_garbage_signature_is_refused(header: str | None) -> None:
    assert not verify_signature(SECRET, BODY, header)


def test_empty_secret_never_verifies() -> None:
    assert not verify_signature("", BODY, sign("", BODY))


def test_secret_with_html_entities_matches_what_wordpress_signs_with() -> None:
    # WC_Webhook::generate_signature uses wp_specialchars_decode( $secret, ENT_QUOTES )
    stored = "a&amp;b&quot;c"
    assert verify_signature(stored, BODY, sign('a&b"c', BODY))


def test_ping_sent_when_the_webhook_is_saved_is_detected() -> None:
    headers = {
        "User-Agent": "WooCommerce/9.8.0 Hookshot (WordPress/6.8)",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    assert is_ping(headers, b"webhook_id=142")


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (_headers(), BODY),
        (_headers(b"webhook_id=142"), b"webhook_id=142"),  # signed + topic: not the ping
        ({}, b"webhook_id=abc"),
        ({}, b'{"webhook_id": 142}'),
        ({}, b""),
    ],
)
def test_real_deliveries_and_lookalikes_are_not_pings(headers: dict[str, str], body: bytes) -> None:
    assert not is_ping(headers, body)


def test_dedupe_key_is_the_delivery_and_a_digest_of_the_body() -> None:
    key = dedupe_key(_headers(), BODY)
    assert key.startswith("a3f1c2d4e5b6a7980112233445566778:sha256-")
    assert key == f"a3f1c2d4e5b6a7980112233445566778:sha256-{hashlib.sha256(BODY).hexdigest()[:32]}"


def test_same_second_deliveries_of_different_orders_get_different_keys() -> None:
    # Delivery-ID is wp_hash(webhook id . time()): the same for a whole second
    other = json.dumps(json.loads(BODY) | {"id": 728}).encode()
    assert dedupe_key(_headers(), BODY) != dedupe_key(_headers(other), other)


def test_a_later_change_of_the_same_order_gets_a_new_key_and_a_resend_the_same() -> None:
    newer_body = (FIXTURES / "order.update.json").read_bytes()
    assert dedupe_key(_headers(), BODY) == dedupe_key(_headers(), BODY)
    assert dedupe_key(_headers(), BODY) != dedupe_key(_headers(newer_body), newer_body)


def test_dedupe_key_never_parses_the_body() -> None:
    nested = b"[" * 100_000 + b"]" * 100_000  # a JSON parser gives up on this (RecursionError)
    assert dedupe_key({}, b"\xff\xfe not json").startswith("sha256-")
    assert dedupe_key(_headers(nested), nested).startswith("a3f1c2d4e5b6a7980112233445566778:")
    assert dedupe_key(_headers(b'{"id": 9}'), b'{"id": 9}') != dedupe_key(
        _headers(b'{"id": 10}'), b'{"id": 10}'
    )  # order.deleted bodies of two orders in one second


def test_kept_headers_keep_routing_headers_and_never_the_signature() -> None:
    kept = kept_headers(_headers())
    assert kept == {
        "x-wc-webhook-topic": "order.updated",
        "x-wc-webhook-resource": "order",
        "x-wc-webhook-event": "updated",
        "x-wc-webhook-delivery-id": "a3f1c2d4e5b6a7980112233445566778",
        "x-wc-webhook-id": "142",
        "x-wc-webhook-source": "https://example.com/",
    }
    assert "x-wc-webhook-signature" not in kept


def test_topic_from_header_or_resource_and_event() -> None:
    assert topic(_headers()) == "order.updated"
    assert topic({"x-wc-webhook-resource": "order", "x-wc-webhook-event": "created"}) == (
        "order.created"
    )
    assert topic({}) is None
