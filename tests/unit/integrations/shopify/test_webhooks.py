"""Webhook signature, dedupe key and staleness, against the simulator's deliveries."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from integrations.shopify.mapper import map_order
from integrations.shopify.webhooks import (
    dedupe_key,
    kept_headers,
    sign,
    triggered_at,
    verify_signature,
)
from sandbox.shopify import ShopifySimulator

SECRET = "whsec-test"
NOW = dt.datetime(2026, 7, 10, 15, 0, 27, 877041, tzinfo=dt.UTC)


@pytest.fixture
def delivery() -> tuple[dict[str, str], bytes]:
    sim = ShopifySimulator(seed=3, now=lambda: NOW)
    [external_id] = sim.add_orders(1)
    return sim.webhook_delivery(external_id, "orders/create", SECRET)


def test_a_delivery_signed_by_the_simulator_verifies(
    delivery: tuple[dict[str, str], bytes],
) -> None:
    headers, body = delivery

    assert verify_signature(SECRET, body, headers["X-Shopify-Hmac-Sha256"])


def test_the_wrong_secret_fails(delivery: tuple[dict[str, str], bytes]) -> None:
    headers, body = delivery

    assert not verify_signature("other-secret", body, headers["X-Shopify-Hmac-Sha256"])


def test_a_tampered_body_fails(delivery: tuple[dict[str, str], bytes]) -> None:
    headers, body = delivery
    tampered = body.replace(b'"financial_status":"', b'"financial_status":"x', 1)
    assert tampered != body

    assert not verify_signature(SECRET, tampered, headers["X-Shopify-Hmac-Sha256"])


def test_a_reserialised_body_fails(delivery: tuple[dict[str, str], bytes]) -> None:
    # the HMAC covers the raw bytes: parsing and dumping again is not the same body
    headers, body = delivery
    reserialised = json.dumps(json.loads(body), indent=1).encode()

    assert not verify_signature(SECRET, reserialised, headers["X-Shopify-Hmac-Sha256"])


@pytest.mark.parametrize("header", [None, "", "not-base64", sign(SECRET, b"{}")])
def test_missing_or_foreign_signatures_fail(
    delivery: tuple[dict[str, str], bytes], header: str | None
) -> None:
    _, body = delivery

    assert not verify_signature(SECRET, body, header)


def test_an_empty_secret_never_verifies() -> None:
    assert not verify_signature("", b"{}", sign("", b"{}"))


def test_the_body_is_the_rest_order(delivery: tuple[dict[str, str], bytes]) -> None:
    headers, body = delivery

    order = map_order(json.loads(body), "a")

    assert headers["X-Shopify-Topic"] == "orders/create"
    assert headers["Content-Type"] == "application/json"
    assert order.external_id == str(json.loads(body)["id"])


def test_triggered_at_reads_nanosecond_utc(delivery: tuple[dict[str, str], bytes]) -> None:
    headers, _ = delivery
    assert headers["X-Shopify-Triggered-At"] == "2026-07-10T15:00:27.877041000Z"

    assert triggered_at(headers) == NOW


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "2023-03-29T18:00:27.877041743Z",
            dt.datetime(2023, 3, 29, 18, 0, 27, 877041, tzinfo=dt.UTC),
        ),
        ("2023-03-29T18:00:27Z", dt.datetime(2023, 3, 29, 18, 0, 27, tzinfo=dt.UTC)),
        ("2023-03-29T14:00:27.5-04:00", dt.datetime(2023, 3, 29, 18, 0, 27, 500000, tzinfo=dt.UTC)),
        ("2023-03-29T18:00:27", None),  # no zone: cannot judge staleness
        ("yesterday", None),
        ("2023-03-29T18:00:27.Z", None),
        ("", None),
    ],
)
def test_triggered_at_values(value: str, expected: dt.datetime | None) -> None:
    assert triggered_at({"x-shopify-triggered-at": value}) == expected


def test_triggered_at_absent() -> None:
    assert triggered_at({}) is None


def test_dedupe_key_is_the_webhook_id_whatever_the_header_case() -> None:
    body = b'{"id":1}'

    assert dedupe_key({"X-Shopify-Webhook-Id": "abc"}, body) == "shopify:webhook:abc"
    assert dedupe_key({"x-shopify-webhook-id": "abc"}, b"other") == "shopify:webhook:abc"


def test_a_redelivery_keeps_its_key_and_a_new_delivery_gets_another() -> None:
    sim = ShopifySimulator(seed=1)
    [external_id] = sim.add_orders(1)
    first = sim.webhook_delivery(external_id, "orders/updated", SECRET, webhook_id="w-1")
    retry = sim.webhook_delivery(external_id, "orders/updated", SECRET, webhook_id="w-1")
    other = sim.webhook_delivery(external_id, "orders/updated", SECRET)

    assert dedupe_key(*first) == dedupe_key(*retry)
    assert dedupe_key(*first) != dedupe_key(*other)


def test_without_a_webhook_id_the_key_is_topic_and_body_hash() -> None:
    created = dedupe_key({"X-Shopify-Topic": "orders/create"}, b'{"id":1}')

    assert created == dedupe_key({"X-Shopify-Topic": "orders/create"}, b'{"id":1}')
    assert created != dedupe_key({"X-Shopify-Topic": "orders/updated"}, b'{"id":1}')
    assert created != dedupe_key({"X-Shopify-Topic": "orders/create"}, b'{"id":2}')


def test_kept_headers_never_keep_the_hmac(delivery: tuple[dict[str, str], bytes]) -> None:
    headers, _ = delivery

    kept = kept_headers(headers)

    assert "x-shopify-hmac-sha256" not in kept
    assert kept["x-shopify-webhook-id"] == headers["X-Shopify-Webhook-Id"]
    assert set(kept) == {
        "x-shopify-topic",
        "x-shopify-webhook-id",
        "x-shopify-event-id",
        "x-shopify-shop-domain",
        "x-shopify-api-version",
        "x-shopify-triggered-at",
    }


def test_unsupported_topics_are_refused() -> None:
    sim = ShopifySimulator()
    [external_id] = sim.add_orders(1)

    with pytest.raises(ValueError, match="topic"):
        sim.webhook_delivery(external_id, "products/update", SECRET)
