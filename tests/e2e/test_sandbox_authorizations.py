"""Capturing authorizations over real HTTP: the Shopify connector against the Shopify
simulator's transactions (``OrderTransactions``, ``OrderCapture``), and the payments client
against the payment provider's PaymentIntents in ``requires_capture``: once per key, and every
authorization that cannot be captured refused with its reason."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest
from fastapi import FastAPI

from domain.errors import AuthorizationUnusable
from integrations.base import AccountConfig, ConnectorSeams
from integrations.payments import PaymentsClient
from integrations.shopify.connector import ShopifyConnector
from integrations.shopify.throttle import CostBucket
from sandbox.payments import AUTHORIZATION_VALID_S, SANDBOX_API_KEY, PaymentsSimulator
from sandbox.shopify import SANDBOX_ACCESS_TOKEN, SANDBOX_SHOP, ShopifySimulator
from tests.support.servers import serve_app

pytestmark = pytest.mark.slow


@pytest.fixture
def shop() -> Iterator[tuple[ShopifySimulator, ShopifyConnector]]:
    sim = ShopifySimulator(seed=5, restore_rate=5000.0)
    app = FastAPI()
    app.include_router(sim.build_router(), prefix="/shopify")
    with serve_app(app) as base_url:
        config = AccountConfig(name="sandbox", channel="shopify", shop=SANDBOX_SHOP,
                               api_base_url=f"{base_url}/shopify",
                               credentials={"access_token": SANDBOX_ACCESS_TOKEN})  # fmt: skip
        connector = ShopifyConnector(config, ConnectorSeams(), cost_bucket=CostBucket())
        yield sim, connector
        connector.close()


@pytest.fixture
def provider() -> Iterator[tuple[PaymentsSimulator, PaymentsClient]]:
    sim = PaymentsSimulator(seed=3)
    app = FastAPI()
    app.include_router(sim.build_router(), prefix="/payments")
    with serve_app(app) as base_url:
        client = PaymentsClient(f"{base_url}/payments", SANDBOX_API_KEY)
        yield sim, client
        client.close()


def _authorized(sim: ShopifySimulator) -> tuple[str, Decimal]:
    for external_id in sim.add_orders(40):
        order = sim.orders[external_id]
        if order["financial_status"] == "authorized":
            return external_id, Decimal(order["total_price"])
    raise AssertionError("the seed made no authorized order")


def _capture(connector: ShopifyConnector, external_id: str, amount: Decimal, key: str) -> str:
    captured = connector.capture_authorization(
        order_external_id=external_id, authorization_id=None, amount=amount, currency="USD",
        idempotency_key=key,
    )  # fmt: skip
    assert captured.status == "succeeded" and captured.amount == amount
    return captured.id


def test_shopify_captures_the_authorization_once_under_its_key_and_says_so_again(
    shop: tuple[ShopifySimulator, ShopifyConnector],
) -> None:
    sim, connector = shop
    external_id, total = _authorized(sim)

    first = _capture(connector, external_id, total, "capture:1")
    again = _capture(connector, external_id, total, "capture:1")  # a retry: the same capture

    assert first == again and sim.capture_count() == 1
    kinds = [t["kind"] for t in sim.transactions[external_id]]
    assert kinds == ["AUTHORIZATION", "CAPTURE"]
    capture = sim.transactions[external_id][1]
    assert capture["parentTransaction"]["id"] == sim.transactions[external_id][0]["id"]
    assert sim.orders[external_id]["financial_status"] == "paid"
    found = connector.find_capture(order_external_id=external_id, authorization_id=None)
    assert found is not None and found.id == first


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        ("expire", "the payment authorization expired at"),
        ("void", "the payment authorization was voided on Shopify"),
        ("short", "partial authorization:"),
    ],
)
def test_shopify_refuses_an_expired_voided_or_partial_authorization_with_the_reason(
    shop: tuple[ShopifySimulator, ShopifyConnector], spoil: str, reason: str
) -> None:
    sim, connector = shop
    external_id, total = _authorized(sim)
    if spoil == "expire":
        sim.expire_authorization(external_id)
    elif spoil == "void":
        sim.void_authorization(external_id)
    else:
        total += Decimal("0.01")  # the order now asks more than was authorised

    with pytest.raises(AuthorizationUnusable, match=reason):
        _capture(connector, external_id, total, "capture:1")
    assert sim.capture_count() == 0


def test_the_provider_captures_a_checkout_authorization_once_and_refuses_it_after_7_days(
    provider: tuple[PaymentsSimulator, PaymentsClient],
) -> None:
    sim, client = provider
    good = sim.authorize("woocommerce:1", 2_500, "usd")
    old = sim.authorize("woocommerce:2", 2_500, "usd")
    voided = sim.authorize("woocommerce:3", 2_500, "usd")
    sim.age_authorization(old, AUTHORIZATION_VALID_S + 60)
    sim.cancel_authorization(voided)

    def capture(intent: str, amount: str = "25.00", key: str = "k") -> str:
        return client.capture_authorization(
            order_external_id="1", authorization_id=intent, amount=Decimal(amount),
            currency="USD", idempotency_key=f"{key}:{intent}",
        ).status  # fmt: skip

    assert capture(good) == "succeeded"
    assert capture(good) == "succeeded"  # the same key: replayed
    assert capture(good, key="other") == "succeeded"  # already captured: answered as is
    assert len(sim.captures_for("woocommerce:1")) == 1
    with pytest.raises(AuthorizationUnusable, match="expired"):
        capture(old)
    with pytest.raises(AuthorizationUnusable, match="voided"):
        capture(voided)
    fresh = sim.authorize("woocommerce:4", 2_000, "usd")
    with pytest.raises(AuthorizationUnusable, match=r"partial authorization: 20\.00 USD"):
        capture(fresh)
    assert sim.capture_count() == 1
    assert dt.timedelta(seconds=AUTHORIZATION_VALID_S) == dt.timedelta(days=7)
