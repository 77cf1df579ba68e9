"""The WooCommerce connector against the WooCommerce simulator over real HTTP."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI

from domain.errors import AuthError, TransportError
from domain.listings import StockUpdate
from integrations.base import AccountConfig, ConnectorSeams
from integrations.woocommerce.connector import WooCommerceConnector
from integrations.woocommerce.webhooks import dedupe_key, is_ping, verify_signature
from sandbox.knobs import Knobs
from sandbox.woocommerce import (
    SANDBOX_CONSUMER_KEY,
    SANDBOX_CONSUMER_SECRET,
    SANDBOX_WEBHOOK_SECRET,
    WooCommerceSimulator,
)
from tests.support.fake_time import FakeTime as FakeClock
from tests.support.servers import serve_app

Serve = Callable[[WooCommerceSimulator], str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    with ExitStack() as servers:

        def start(sim: WooCommerceSimulator) -> str:
            app = FastAPI()
            app.include_router(sim.build_router(), prefix="/woocommerce")
            return servers.enter_context(serve_app(app)) + "/woocommerce"

        yield start


def _connector(
    base: str, seams: ConnectorSeams | None = None, **creds: str
) -> WooCommerceConnector:
    credentials = {"consumer_key": SANDBOX_CONSUMER_KEY, "consumer_secret": SANDBOX_CONSUMER_SECRET}
    account = AccountConfig(
        name="woo-sandbox",
        channel="woocommerce",
        api_base_url=base,
        credentials=credentials | creds,
    )
    return WooCommerceConnector(account, seams)


def test_full_poll_returns_every_order_exactly_once_mapped(serve: Serve) -> None:
    # given: 250 orders = three pages of 100
    sim = WooCommerceSimulator(seed=1)
    ids = sim.add_orders(250)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    connector = _connector(serve(sim))

    # when
    orders = list(connector.fetch_updated_orders(since))

    # then
    assert sorted(o.external_id for o in orders) == sorted(ids)
    assert len({o.external_id for o in orders}) == 250
    for order in orders:
        raw = sim.orders[order.external_id]
        assert order.total == Decimal(raw["total"])
        assert order.subtotal + order.shipping_total + order.tax_total == order.total
        assert [line.sku for line in order.lines] == [i["sku"] for i in raw["line_items"]]
        assert order.updated_at.tzinfo is not None
    assert [op for op, _ in sim.request_log] == ["list_orders"] * 3
    connector.close()


def test_second_poll_from_the_cursor_sees_only_touched_orders(serve: Serve) -> None:
    clock = FakeClock()
    sim = WooCommerceSimulator(seed=2, clock=clock.time)
    ids = sim.add_orders(30)
    clock.now += 120
    cursor = dt.datetime.fromtimestamp(clock.now, dt.UTC)
    clock.now += 60
    sim.touch_order(ids[3])
    sim.touch_order(ids[17])
    connector = _connector(serve(sim))

    touched = list(
        connector.fetch_updated_orders(cursor, dt.datetime.fromtimestamp(clock.now + 1, dt.UTC))
    )

    assert sorted(o.external_id for o in touched) == sorted([ids[3], ids[17]])
    assert all(o.financial_status in ("paid", "partially_refunded") for o in touched)


def test_fulfillment_and_stock_reach_the_shop_once(serve: Serve) -> None:
    sim = WooCommerceSimulator(seed=3)
    (oid,) = sim.add_orders(1)
    connector = _connector(serve(sim))

    for _ in range(2):  # a retried task
        connector.push_fulfillment(
            oid, tracking_number="1Z999", carrier="UPS", idempotency_key=f"fulfil:{oid}"
        )
    found = {x.sku: x for x in connector.list_listings()}
    wanted = {"SKU-RED-S": 7, "SKU-RED-M": 0, "SKU-MUG": 12}
    updates = [
        StockUpdate(i, sku, found[sku].external_id, found[sku].parent_id, None, qty, None)
        for i, (sku, qty) in enumerate(wanted.items())
    ]
    result = connector.push_stock(updates)
    assert sorted(result.applied) == [0, 1, 2]
    assert found["SKU-RED-M"].parent_id is not None  # a variation: through its parent's batch

    assert len(sim.ledger[f"note:{oid}"]) == 1
    assert len(sim.ledger[f"fulfillment:{oid}"]) == 1
    assert sim.orders[oid]["status"] == "completed"
    assert (sim.stock("SKU-RED-S"), sim.stock("SKU-RED-M"), sim.stock("SKU-MUG")) == (7, 0, 12)
    assert connector.get_order(oid).fulfillment_status == "fulfilled"
    ops = [op for op, _ in sim.request_log]
    assert "batch_variations" in ops and "batch_products" in ops  # SKU-RED-M is a variation


def test_a_dropped_note_answer_leaves_one_note_and_the_connector_reads_it_back(
    serve: Serve,
) -> None:
    # Woo has no idempotency key: a note POSTed again is a second note (and e-mail)
    sim = WooCommerceSimulator(seed=3)
    first, second = sim.add_orders(2, status="processing")
    connector = _connector(serve(sim))

    # the client sees a broken answer; the note is in the shop once, not sent again
    sim.drop_write_answers.arm(1, "add_note")
    with pytest.raises(TransportError):
        connector.client.add_note(first, "Tracking number: 1ZDIRECT", customer_note=True)
    assert len(sim.ledger[f"note:{first}"]) == 1
    assert sim.drop_write_answers.dropped["add_note"] == 1

    # the connector, its note's answer dropped, finds the note and completes the order
    sim.drop_write_answers.arm(1, "add_note")
    connector.push_fulfillment(
        second, tracking_number="1Z999", carrier="UPS", idempotency_key=f"fulfil:{second}"
    )
    connector.push_fulfillment(  # the task retried: nothing more
        second, tracking_number="1Z999", carrier="UPS", idempotency_key=f"fulfil:{second}"
    )
    assert sim.drop_write_answers.dropped["add_note"] == 2
    assert len(sim.ledger[f"note:{second}"]) == 1
    assert len(sim.ledger[f"fulfillment:{second}"]) == 1
    assert sim.orders[second]["status"] == "completed"
    assert [op for op, _ in sim.request_log].count("add_note") == 2  # one per order
    connector.close()


def test_a_dropped_status_or_refund_answer_cancels_and_refunds_once(serve: Serve) -> None:
    sim = WooCommerceSimulator(seed=3)
    (oid,) = sim.add_orders(1, status="processing")  # paid at checkout by the shop's gateway
    connector = _connector(serve(sim))
    sim.drop_write_answers.arm(1, "update_order", "create_refund")

    connector.push_cancellation(oid, reason="out of stock", idempotency_key=f"cancel:{oid}")
    connector.push_cancellation(oid, reason="out of stock", idempotency_key=f"cancel:{oid}")

    assert sim.drop_write_answers.dropped == {"update_order": 1, "create_refund": 1}
    assert len(sim.ledger[f"cancellation:{oid}"]) == 1
    assert sim.ledger[f"refund:{oid}"] == [{"amount": sim.orders[oid]["total"]}]
    assert sim.orders[oid]["status"] == "refunded"
    # the status PUT (absolute) was sent again, the refund POST never
    ops = [op for op, _ in sim.request_log]
    assert ops.count("create_refund") == 1
    assert ops.count("update_order") == 2


def test_a_dropped_stock_batch_answer_sets_the_same_absolute_quantities(serve: Serve) -> None:
    sim = WooCommerceSimulator(seed=3)
    connector = _connector(serve(sim))
    found = {x.sku: x for x in connector.list_listings()}
    wanted = {"SKU-RED-S": 7, "SKU-RED-M": 4}  # a simple product, a variation
    updates = [
        StockUpdate(i, sku, found[sku].external_id, found[sku].parent_id, None, qty, None)
        for i, (sku, qty) in enumerate(wanted.items())
    ]
    sim.drop_write_answers.arm(1, "batch_products", "batch_variations")

    result = connector.push_stock(updates)

    assert sorted(result.applied) == [0, 1]
    assert sim.drop_write_answers.dropped == {"batch_products": 1, "batch_variations": 1}
    # sent again (a PUT of an absolute quantity, not a change): the same value, set twice
    assert sim.ledger["stock:SKU-RED-S"] == [{"quantity": 7}] * 2
    assert sim.ledger["stock:SKU-RED-M"] == [{"quantity": 4}] * 2
    assert (sim.stock("SKU-RED-S"), sim.stock("SKU-RED-M")) == (7, 4)
    connector.close()


def test_poll_under_the_shops_rate_limit_still_completes(serve: Serve) -> None:
    # given: 2 requests per 10 s window, and one fake clock for the window and our sleeps
    clock = FakeClock()
    sim = WooCommerceSimulator(seed=4, clock=clock.time, rate_limit=(2, 10.0))
    ids = sim.add_orders(450)  # five pages
    since = dt.datetime.fromtimestamp(clock.now - 60, dt.UTC)
    connector = _connector(
        serve(sim),
        ConnectorSeams(
            sleep=clock.sleep, clock=lambda: dt.datetime.fromtimestamp(clock.now + 1, dt.UTC)
        ),
    )

    # when
    orders = list(connector.fetch_updated_orders(since))

    # then
    assert sorted(o.external_id for o in orders) == sorted(ids)
    assert clock.sleeps, "the connector waited for the window"
    statuses = [status for _, status in sim.request_log]
    assert statuses.count(200) == 5


def test_poll_survives_injected_429s(serve: Serve) -> None:
    clock = FakeClock()
    sim = WooCommerceSimulator(Knobs(rate_429=0.3, seed=7), clock=clock.time, rate_limit=None)
    ids = sim.add_orders(300)
    since = dt.datetime.fromtimestamp(clock.now - 60, dt.UTC)
    connector = _connector(
        serve(sim),
        ConnectorSeams(
            sleep=clock.sleep, clock=lambda: dt.datetime.fromtimestamp(clock.now + 1, dt.UTC)
        ),
    )

    orders = list(connector.fetch_updated_orders(since))

    assert sorted(o.external_id for o in orders) == sorted(ids)
    assert any(status == 429 for _, status in sim.request_log)
    assert 1.0 in clock.sleeps  # Retry-After honoured


def test_wrong_secret_is_refused_with_woos_error(serve: Serve) -> None:
    sim = WooCommerceSimulator()
    connector = _connector(serve(sim), consumer_secret="cs_wrong")
    with pytest.raises(AuthError) as info:
        connector.test_connection()
    assert info.value.code == "woocommerce_rest_authentication_error"


def test_simulated_deliveries_verify_and_dedupe() -> None:
    sim = WooCommerceSimulator(seed=5)
    (oid,) = sim.add_orders(1)
    headers, body = sim.webhook_delivery(oid, "order.updated", SANDBOX_WEBHOOK_SECRET)
    assert verify_signature(SANDBOX_WEBHOOK_SECRET, body, headers["X-WC-Webhook-Signature"])
    assert b"\\/" in body  # wp_json_encode escapes slashes: verify the raw bytes
    again_headers, again = sim.webhook_delivery(oid, "order.updated", SANDBOX_WEBHOOK_SECRET)
    assert dedupe_key(headers, body) == dedupe_key(again_headers, again)
    assert not is_ping(headers, body)
    assert is_ping(*sim.ping_delivery())


def test_simulator_enforces_woos_limits_and_query_string_auth(serve: Serve) -> None:
    sim = WooCommerceSimulator(rate_limit=None)
    base = serve(sim) + "/wp-json/wc/v3"
    auth = (SANDBOX_CONSUMER_KEY, SANDBOX_CONSUMER_SECRET)
    with httpx.Client() as http:
        too_many = http.get(f"{base}/orders", params={"per_page": "101"}, auth=auth)
        too_big = http.post(
            f"{base}/products/batch", json={"update": [{"id": 100}] * 101}, auth=auth
        )
        by_query = http.get(
            f"{base}/orders",
            params={"consumer_key": auth[0], "consumer_secret": auth[1]},
        )
        anonymous = http.get(f"{base}/orders")
    assert (too_many.status_code, too_many.json()["code"]) == (400, "rest_invalid_param")
    assert (too_big.status_code, too_big.json()["code"]) == (413, "rest_request_entity_too_large")
    assert by_query.status_code == 200 and by_query.headers["X-WP-Total"] == "0"
    assert (anonymous.status_code, anonymous.json()["code"]) == (
        401,
        "woocommerce_rest_cannot_view",
    )
