"""The Shopify connector against the simulator over real HTTP: a full poll over several
pages, a poll that meets throttling and still completes, and the pushes the ledger counts."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from decimal import Decimal

import pytest
from fastapi import FastAPI

from domain.errors import AuthError
from domain.listings import StockUpdate
from domain.states import OrderState
from integrations.base import AccountConfig, ConnectorSeams
from integrations.shopify.connector import ShopifyConnector
from integrations.shopify.throttle import CostBucket
from sandbox.shopify import SANDBOX_ACCESS_TOKEN, SANDBOX_SHOP, ShopifySimulator
from tests.support.servers import serve_app

SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def account(base_url: str, token: str = SANDBOX_ACCESS_TOKEN) -> AccountConfig:
    return AccountConfig(
        name="sandbox",
        channel="shopify",
        shop=SANDBOX_SHOP,
        api_base_url=f"{base_url}/shopify",
        credentials={"access_token": token},
    )


def serve(sim: ShopifySimulator) -> Iterator[str]:
    app = FastAPI()
    app.include_router(sim.build_router(), prefix="/shopify")
    with serve_app(app) as base_url:
        yield base_url


@pytest.fixture
def sim() -> ShopifySimulator:
    # a fast restore keeps the test quick; the bucket itself is Shopify's 1000 points
    return ShopifySimulator(seed=11, restore_rate=5000.0)


@pytest.fixture
def base_url(sim: ShopifySimulator) -> Iterator[str]:
    yield from serve(sim)


def test_a_full_poll_returns_every_order_once(sim: ShopifySimulator, base_url: str) -> None:
    # given: enough orders for three pages of ids (100 per page)
    ids = sim.add_orders(230)
    shopify = ShopifyConnector(account(base_url), cost_bucket=CostBucket())

    # when
    orders = list(shopify.fetch_updated_orders(SINCE))

    # then
    assert sorted(o.external_id for o in orders) == sorted(ids)
    assert sum(1 for op, _ in sim.request_log if op == "OrdersUpdatedSince") == 3
    for result in orders:
        assert result.total == result.subtotal + result.shipping_total + result.tax_total
        assert result.lines
    shopify.close()


def test_a_poll_sees_only_what_changed_since(sim: ShopifySimulator, base_url: str) -> None:
    # given
    old = sim.add_orders(5)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=2)
    sim._now = lambda: start + dt.timedelta(seconds=5)
    sim.touch_order(old[0], cancel=True)
    new = sim.add_orders(2)
    shopify = ShopifyConnector(account(base_url), cost_bucket=CostBucket())

    # when
    orders = {o.external_id: o for o in shopify.fetch_updated_orders(start)}

    # then
    assert sorted(orders) == sorted([old[0], *new])
    assert orders[old[0]].status is OrderState.CANCELLED


def test_a_throttled_poll_still_completes() -> None:
    # given: a smaller bucket than the client assumes, drained by another app
    sim = ShopifySimulator(seed=5, bucket_max=600.0, restore_rate=500.0)
    ids = sim.add_orders(40)
    for base_url in serve(sim):
        shopify = ShopifyConnector(account(base_url), cost_bucket=CostBucket())
        sim.spend(600)

        # when
        orders = list(shopify.fetch_updated_orders(SINCE))

        # then: Shopify said THROTTLED at least once, and the poll went on after the restore
        assert sorted(o.external_id for o in orders) == sorted(ids)
        assert any(status == 429 for _, status in sim.request_log)


def _stock_updates(sim: ShopifySimulator, quantities: dict[str, int]) -> list[StockUpdate]:
    return [StockUpdate(i, sku, sim.inventory_items[sku], None, None, qty, None)
            for i, (sku, qty) in enumerate(quantities.items())]  # fmt: skip


def test_an_admin_edit_is_found_as_drift_by_change_from_and_listings_show_it(
    sim: ShopifySimulator, base_url: str
) -> None:
    shopify = ShopifyConnector(account(base_url), ConnectorSeams(), cost_bucket=CostBucket())
    listings = {x.sku: x for x in shopify.list_listings()}
    assert set(listings) == set(sim.inventory_items)
    assert listings["SKU-RED-S"].quantity == sim.inventory["SKU-RED-S"]
    item = listings["SKU-RED-S"].external_id
    shopify.push_stock([StockUpdate(1, "SKU-RED-S", item, None, None, 5, None)])
    sim.edit_in_admin("SKU-RED-S", 11)

    result = shopify.push_stock([StockUpdate(1, "SKU-RED-S", item, None, None, 4, 5)])

    assert result.drifted == {1: 11} and sim.inventory["SKU-RED-S"] == 11
    repaired = shopify.push_stock([StockUpdate(1, "SKU-RED-S", item, None, None, 4, 11)])
    assert repaired.applied == [1] and sim.inventory["SKU-RED-S"] == 4


def test_pushes_land_once_in_the_ledger(sim: ShopifySimulator, base_url: str) -> None:
    # given
    first, second = sim.add_orders(2)
    shopify = ShopifyConnector(account(base_url), ConnectorSeams(), cost_bucket=CostBucket())

    # when: every push is made twice, as a retried task would
    for _ in range(2):
        shopify.push_fulfillment(
            first, tracking_number="1Z999AA1", carrier="UPS", idempotency_key="ship:1"
        )
        shopify.push_stock(_stock_updates(sim, {"SKU-RED-S": 7, "SKU-BLUE-M": 0}))
        shopify.cancel_order(second, reason="CUSTOMER")

    # then
    assert [(f["order_id"], f["tracking_number"]) for f in sim.fulfillments] == [
        (first, "1Z999AA1")
    ]
    assert sim.inventory["SKU-RED-S"] == 7 and sim.inventory["SKU-BLUE-M"] == 0
    assert len(sim.inventory_sets) == 1  # the retry reused the push's key: applied once
    assert sim.stock_calls == 2
    assert [c["order_id"] for c in sim.cancels] == [second]
    assert shopify.get_order(second).status is OrderState.CANCELLED
    assert shopify.get_order(first).fulfillment_status == "fulfilled"
    assert shopify.test_connection().startswith("Shopify shop")


def test_a_webhook_body_and_a_poll_agree(sim: ShopifySimulator, base_url: str) -> None:
    import json

    from integrations.shopify.mapper import map_order

    [external_id] = sim.add_orders(1)
    _, body = sim.webhook_delivery(external_id, "orders/create", "secret")
    shopify = ShopifyConnector(account(base_url), cost_bucket=CostBucket())

    polled = shopify.get_order(external_id)
    pushed = map_order(json.loads(body), "sandbox")

    assert polled.model_dump(exclude={"raw"}) == pushed.model_dump(exclude={"raw"})
    assert polled.total > Decimal(0)


def test_a_wrong_token_is_an_auth_error(sim: ShopifySimulator, base_url: str) -> None:
    shopify = ShopifyConnector(account(base_url, token="shpat_wrong"), cost_bucket=CostBucket())

    with pytest.raises(AuthError):
        shopify.test_connection()
    assert sim.request_log[-1] == ("graphql", 401)


def test_a_bulk_export_streams_every_order_with_its_lines_in_pages_and_resumes(
    sim: ShopifySimulator, base_url: str
) -> None:
    # given: 600 orders; a poll of the same window as the reference
    import integrations.shopify.connector as shopify_connector

    sim.add_orders(600)
    poller = ShopifyConnector(account(base_url), cost_bucket=CostBucket())
    polled = {o.external_id: o for o in poller.fetch_updated_orders(SINCE)}
    poller.close()
    sleeps: list[float] = []
    seams = ConnectorSeams(sleep=sleeps.append)
    shopify = ShopifyConnector(account(base_url), seams, cost_bucket=CostBucket())

    # when: the export is read, stopping after its second page of orders, then resumed
    pages = []
    for page in shopify.fetch_history(SINCE, None):
        pages.append(page)
        if sum(1 for p in pages if p.orders) == 2:
            break
    resumed = list(shopify.fetch_history(SINCE, None, pages[-1].resume))

    # then: one operation, asked about until it completed (the waits through the seam), and
    # every order once with the same data and lines as the poll's
    assert [op for op, _ in sim.request_log].count("BulkOperationRunQuery") == 1
    assert sleeps and all(s <= shopify_connector.BULK_POLL_MAX_S for s in sleeps)
    exported = [o for p in [*pages, *resumed] for o in p.orders]
    assert sorted(o.external_id for o in exported) == sorted(polled)
    assert all(len(p.orders) <= shopify_connector.BULK_PAGE_SIZE for p in [*pages, *resumed])
    for order in exported:
        assert order.model_dump() == polled[order.external_id].model_dump()
    assert [p.resume for p in resumed][-1] is None
    assert all(p.resume and p.resume.startswith("bulk:") for p in [*pages, *resumed][:-1])
    # the resumed read asked the file from the byte where its first order begins
    [(name, whole), (again, part)] = sim.bulk_downloads
    assert again == name and whole is None
    assert part is not None and re.fullmatch(r"bytes=[1-9][0-9]*-", part)
    shopify.close()


@pytest.mark.parametrize("lanes", [2, 3, 7])
def test_a_bulk_export_read_in_lanes_gives_every_order_once_wherever_the_bytes_are_cut(
    sim: ShopifySimulator, base_url: str, monkeypatch: pytest.MonkeyPatch, lanes: int
) -> None:
    # given: 300 orders of 1 to 3 lines, the file cut in ``lanes`` ranges of equal bytes (each
    # cut falls inside some line: an order's or a line item's), pages of 40 orders
    import integrations.shopify.connector as shopify_connector

    monkeypatch.setattr(shopify_connector, "LANE_MIN_BYTES", 1)
    monkeypatch.setattr(shopify_connector, "BULK_PAGE_SIZE", 40)
    sim.add_orders(300)
    poller = ShopifyConnector(account(base_url), cost_bucket=CostBucket())
    polled = {o.external_id: o for o in poller.fetch_updated_orders(SINCE)}
    poller.close()
    seams = ConnectorSeams(sleep=lambda s: None, lanes=lanes)
    shopify = ShopifyConnector(account(base_url), seams, cost_bucket=CostBucket())

    # when: the export runs, then its split page names the lanes; each lane is read, lane 1
    # stopped after its first page and resumed from that page's token
    pages = list(shopify.fetch_history(SINCE, None))
    assert [len(p.orders) for p in pages[:-1]] == [0] * (len(pages) - 1)
    assert pages[-1].resume is None and len(pages[-1].lanes) == lanes
    exported = []
    for n, token in enumerate(pages[-1].lanes):
        read = shopify.fetch_history(SINCE, None, token)
        if n == 1:
            first = next(read)  # the rest of that read is dropped (the stream closed with it)
            assert first.resume is not None and first.resume.startswith("bulk:")
            exported += first.orders
            read = shopify.fetch_history(SINCE, None, first.resume)
        lane = list(read)
        assert lane[-1].resume is None  # each lane ends by itself
        assert all(len(p.orders) <= 40 for p in lane)
        exported += [o for p in lane for o in p.orders]

    # then: every order once, whole (its lines), as the poll has it; one export; every lane
    # but the first asked the file from the byte before its range
    assert sorted(o.external_id for o in exported) == sorted(polled)
    for order in exported:
        assert order.model_dump() == polled[order.external_id].model_dump()
    assert [op for op, _ in sim.request_log].count("BulkOperationRunQuery") == 1
    ranges = [r for _, r in sim.bulk_downloads]
    assert ranges.count(None) == 1 and len(ranges) == lanes + 1
    [operation] = sim.bulk_operations.values()
    for start, _ in shopify_connector.lane_bounds(int(operation["fileSize"]), lanes, 1)[1:]:
        assert f"bytes={start - 1}-" in ranges
    shopify.close()


def test_a_bulk_export_cleans_half_pairs_wherever_its_json_escapes_them(
    sim: ShopifySimulator, base_url: str
) -> None:
    # given: the simulator writes JSON with ASCII escapes, so a lone half is "\\ud800" in the
    # file: in an order's own line, only in one of its line items' lines, and a whole pair
    address, line_only, pair, plain = sim.add_orders(4)
    sim.orders[address]["shipping_address"]["name"] = "Ann \ud800"
    sim.orders[line_only]["line_items"][-1]["title"] = "Mug \udc00"
    sim.orders[pair]["shipping_address"]["name"] = "Bo \U0001f600"
    shopify = ShopifyConnector(account(base_url), ConnectorSeams(sleep=lambda s: None),
                               cost_bucket=CostBucket())  # fmt: skip

    # when
    orders = {o.external_id: o for p in shopify.fetch_history(SINCE, None) for o in p.orders}

    # then: each half became U+FFFD, in the canonical fields and in raw; the rest is as sent
    def name(order_id: str) -> str | None:
        ship_to = orders[order_id].shipping_address
        return ship_to.name if ship_to else None

    assert name(address) == "Ann \ufffd"
    assert orders[address].raw["shippingAddress"]["name"] == "Ann \ufffd"
    assert orders[line_only].lines[-1].title.startswith("Mug \ufffd")
    assert orders[line_only].raw["lineItems"]["nodes"][-1]["title"] == "Mug \ufffd"
    assert name(pair) == "Bo \U0001f600"
    assert name(plain) == sim.orders[plain]["shipping_address"]["name"]
    shopify.close()


def test_a_bulk_export_of_an_empty_window_and_a_second_export_while_one_runs(
    sim: ShopifySimulator, base_url: str
) -> None:
    from domain.errors import Conflict

    sim.add_orders(3)
    shopify = ShopifyConnector(account(base_url), ConnectorSeams(sleep=lambda s: None),
                               cost_bucket=CostBucket())  # fmt: skip
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)

    # an empty window: the operation completes without a file, one last empty page
    assert [p.orders for p in shopify.fetch_history(future, None)] == [[], [], []]

    # a second export while one is running is refused for now (retryable)
    first = shopify.fetch_history(SINCE, None)
    next(first)  # started, not finished
    with pytest.raises(Conflict):
        list(ShopifyConnector(account(base_url), cost_bucket=CostBucket())
             .fetch_history(SINCE, None))  # fmt: skip
    shopify.close()
