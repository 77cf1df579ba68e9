"""The staff dashboard in a real headless Chromium, against a real web server and Celery worker,
real Redis, SQLite, and the sandbox payment provider and carrier over real HTTP.

Orders get where they are the way they do in production (signed webhooks, the pipeline), except
the sync runs, which are written as rows (polling a marketplace is not what is tested here).
Waits are Playwright's auto-waiting ``expect`` or polls of the staff API, never sleeps.

Chromium is taken from ``/usr/bin/chromium`` (``ORDERSYNC_TEST_CHROMIUM``); where it or the
``playwright`` package is missing these tests are skipped on a laptop but FAIL under CI.
"""

from __future__ import annotations

import copy
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from db.base import utcnow
from db.models import ChannelAccount, SyncRun
from integrations.shopify.webhooks import sign
from tests.support.stack import wait_until
from tests.support.staff import PASSWORD, bearer, new_user
from tests.support.world import (
    SECRET,
    World,
    charged_woo_order,
    fixture_order,
    running_world,
    stock_for,
    unavailable,
)

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # reported by the browser fixture: skipped, or failed under CI
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("ORDERSYNC_TEST_CHROMIUM", "/usr/bin/chromium"))
# the machine may have no outside network: nothing may phone home or update itself
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# screenshots of the staff flow, kept after the run (CI keeps var/)
ARTIFACTS = Path(
    os.environ.get(
        "ORDERSYNC_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
    )
)
# customer data the fixture order carries that no list page may show
EMAIL, PHONE = "bob.norman@mail.example.com", "+557734881234"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not HAVE_PLAYWRIGHT:
        unavailable("the playwright package is not installed")
    if not CHROMIUM.exists():
        unavailable(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[World]:
    var_dir = tmp_path_factory.mktemp("dashboard")
    with running_world(f"sqlite:///{var_dir / 'ordersync.db'}", redis_url, var_dir,
                       seed=11, workers=1) as world:  # fmt: skip
        yield world


def log_in(page: Page, name: str, password: str = PASSWORD) -> None:
    """Through the login page, as staff do; lands on the overview."""
    page.goto("/login")
    page.get_by_label("name").fill(name)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#who")).to_contain_text(name)


@pytest.fixture
def page(browser: Browser, world: World) -> Iterator[Page]:
    """A fresh browser context, logged in as the world's operator; an uncaught script error on
    any page fails the test."""
    context = browser.new_context(base_url=world.stack.base_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    expect.set_options(timeout=15_000)
    log_in(page, world.staff_name)
    try:
        yield page
    finally:
        context.close()
    assert errors == [], errors


def _api(world: World, path: str) -> Any:
    response = world.api("GET", path, timeout=10)
    response.raise_for_status()
    return response.json()


def _wait_api_state(world: World, order_id: int, state: str) -> None:
    def reached() -> bool:
        return bool(_api(world, f"/orders/{order_id}")["state"] == state)

    try:
        wait_until(reached, timeout=60, what=f"order {order_id} {state}")
    except AssertionError:
        raise AssertionError(
            f"{_api(world, f'/orders/{order_id}')}\n{world.stack.logs()}"
        ) from None


def test_a_stuck_order_is_shown_with_its_step_and_error_and_retry_moves_it_on(
    world: World, page: Page, fixtures_dir: Path
) -> None:
    # given an order whose label the carrier refuses (postal code 00000)
    shop = world.account()
    payload = fixture_order(fixtures_dir, updated_at="2026-06-01T10:00:00Z")
    payload["shipping_address"] = {**payload["shipping_address"], "zip": "00000"}
    stock_for(world, payload)
    world.post(shop, payload, topic="orders/create")
    stuck = world.wait_state(shop, str(payload["id"]), "needs_attention")

    # then the overview lists it under needs attention, with its step and error
    page.goto("/")
    row = page.locator(f"#attention tr[data-order-id='{stuck.id}']")
    expect(row.locator(".step")).to_have_text("buy_label")
    expect(row.locator(".error")).to_contain_text("AddressRejected")
    content = page.content()
    assert EMAIL not in content and PHONE not in content and "00000" not in content

    # when the address is corrected on the marketplace and staff click Retry (twice)
    fixed = copy.deepcopy(payload)
    fixed["updated_at"] = "2026-06-01T11:00:00Z"
    fixed["shipping_address"]["zip"] = "40202"
    world.post(shop, fixed)
    wait_until(lambda: (o := world.order(shop, str(payload["id"]))) and
               (o.shipping_address or {}).get("postal_code") == "40202",
               what="corrected address stored")  # fmt: skip
    retry = row.get_by_role("button", name="Retry")
    retry.click()
    expect(row.locator("output")).to_have_text("retry started (resumes at paid)")
    retry.click()
    expect(row.locator("output")).to_contain_text("already done")

    # then it moves on: the reloaded overview no longer lists it, the list shows it ready
    _wait_api_state(world, stuck.id, "ready_to_ship")
    page.reload()
    expect(page.locator(f"#attention tr[data-order-id='{stuck.id}']")).to_have_count(0)
    page.locator("#states a[href='/orders?state=ready_to_ship']").click()
    listed = page.locator(f"#orders tr[data-order-id='{stuck.id}']")
    expect(listed.locator(".state")).to_have_text("ready_to_ship")
    expect(listed).to_contain_text("598.94 USD")
    content = page.content()
    assert EMAIL not in content and PHONE not in content

    # and its page shows the whole story, the documents and the one action left (Ship)
    listed.get_by_role("link", name=f"#{stuck.id}", exact=True).click()
    expect(page.locator("h1 .state")).to_have_text("ready_to_ship")
    expect(page.locator("#order-total")).to_have_text("598.94 USD")
    moves = page.locator("#timeline td.move")
    expect(moves.filter(has_text="paid → needs_attention")).to_have_count(1)
    expect(moves.filter(has_text="needs_attention → paid")).to_have_count(1)
    expect(page.locator("#timeline")).to_contain_text("buy_label")
    expect(page.locator("#header")).to_contain_text("Louisville")
    expect(page.get_by_role("button", name="Ship", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    assert EMAIL not in page.content() and PHONE not in page.content()
    for name in ("invoice PDF", "label PDF"):
        href = page.get_by_role("link", name=name).get_attribute("href")
        assert href
        pdf = page.request.get(href)
        assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf", name
        assert pdf.body().startswith(b"%PDF"), name


def test_a_webhook_we_cannot_parse_is_listed_with_its_error(world: World, page: Page) -> None:
    # given a correctly signed delivery whose body is not JSON
    shop = world.account()
    body = b'{"id": 42, "line_items": ['
    response = httpx.post(
        f"{world.stack.base_url}/webhooks/shopify/{shop}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Hmac-Sha256": sign(SECRET, body),
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 200, response.text
    inbox_id = response.json()["inbox_id"]

    def failed() -> dict[str, Any] | None:
        events = _api(world, "/inbox?status=failed&limit=500")["events"]
        return next((e for e in events if e["id"] == inbox_id), None)

    event = wait_until(failed, what="the delivery marked failed")

    # then the overview lists it with the parse error, and Retry queues it again
    page.goto("/")
    row = page.locator(f"#failed-inbox tr[data-inbox-id='{inbox_id}']")
    expect(row).to_contain_text(shop)
    expect(row.locator(".error")).to_have_text(event["error"])
    expect(row.locator(".error")).to_contain_text("body is not JSON")
    row.get_by_role("button", name="Retry").click()
    expect(row.locator("output")).to_have_text("queued again")


def test_an_on_hold_order_shows_the_skus_it_waits_for_and_marketplace_markup_stays_text(
    world: World, page: Page, fixtures_dir: Path
) -> None:
    # given an order for SKUs that are out of stock, whose number is HTML, on a shop that
    # sends webhooks but has no API connection
    shop = world.webhook_only_account()
    evil = '<img src=x onerror="document.title=1">'
    payload = fixture_order(fixtures_dir, name=evil)
    missing = stock_for(world, payload, per_unit=0)
    world.post(shop, payload, topic="orders/create")
    held = world.wait_state(shop, str(payload["id"]), "on_hold")

    # then the overview shows it on hold with each SKU it waits for, the number as text
    page.goto("/")
    row = page.locator(f"#on-hold tr[data-order-id='{held.id}']")
    for sku, quantity in missing.items():
        expect(row.locator(".short")).to_contain_text(f"{sku} ({quantity} missing)")
    expect(row).to_contain_text(evil)
    expect(row.locator("img")).to_have_count(0)

    # and the list finds it by its number, filtered by state and channel
    page.goto("/orders")
    page.locator("select[name=state]").select_option("on_hold")
    page.locator("select[name=channel]").select_option("shopify")
    page.locator(".filters input[name=q]").fill(str(payload["id"]))
    page.locator(".filters").get_by_role("button", name="Show").click()
    expect(page.locator("#orders tbody tr")).to_have_count(1)
    expect(page.locator(f"#orders tr[data-order-id='{held.id}'] .state")).to_have_text("on_hold")
    expect(page.locator("#count")).to_have_text("1 order")
    page.get_by_role("link", name=f"#{held.id}", exact=True).click()
    expect(page.locator("h1")).to_contain_text(evil)
    expect(page.locator("img")).to_have_count(0)
    expect(page.locator("#timeline td.move").filter(has_text="new → on_hold")).to_have_count(1)
    # nothing to do but wait for stock, or cancel it with a reason
    expect(page.locator("main").get_by_role("button")).to_have_text(["Hold", "Cancel order"])
    page.get_by_placeholder("reason for cancelling").fill("out of stock for weeks")
    page.get_by_role("button", name="Cancel order").click()
    cancel_form = page.locator("#actions form").filter(
        has=page.get_by_role("button", name="Cancel order")
    )
    expect(cancel_form.locator("output")).to_contain_text("cancelled")
    page.reload()
    expect(page.locator("h1 .state")).to_have_text("cancelled")
    cancelled = page.locator("#timeline td.move").filter(has_text="on_hold → cancelled")
    expect(cancelled).to_have_count(1)

    # the shop has no API connection: the cancellation waits, visibly, for staff
    def refused() -> bool:
        page.reload()
        return "no credentials" in page.locator("#outbox").inner_text()

    wait_until(refused, timeout=60, what="the cancellation's delivery refused")
    page.goto("/")
    expect(page.locator("#undelivered")).to_contain_text(f"#{held.id}")


def test_the_latest_sync_run_of_each_account_is_shown_and_a_failed_one_stands_out(
    world: World, page: Page
) -> None:
    # given an account whose last poll failed after an earlier one succeeded, and a full sync
    name = f"amazon-{uuid.uuid4().hex[:8]}"
    with world.maker() as session, session.begin():
        account = ChannelAccount(name=name, channel="amazon")
        session.add(account)
        session.flush()
        for kind, status, error in [
            ("poll", "ok", None),
            ("poll", "failed", "RateLimited: <quota> exhausted"),
            ("full", "ok", None),
        ]:
            session.add(
                SyncRun(channel_account_id=account.id, kind=kind, status=status, error=error,
                        orders_seen=3, finished_at=utcnow())
            )  # fmt: skip

    # then the overview shows one row per kind: the failed poll highlighted with its error
    page.goto("/")
    rows = page.locator(f"#sync-runs tr[data-account='{name}']")
    expect(rows).to_have_count(2)
    failed = rows.filter(has_text="poll")
    expect(failed).to_have_class("sync-failed failed")
    expect(failed.locator(".error")).to_have_text("RateLimited: <quota> exhausted")
    expect(rows.filter(has_text="full").locator(".status")).to_have_text("ok")


def test_staff_pages_answer_plainly_for_what_does_not_exist(world: World) -> None:
    base = world.stack.base_url
    staff = bearer(world.staff)
    assert httpx.get(f"{base}/orders/999999999", headers=staff).status_code == 404
    assert httpx.get(f"{base}/orders", params={"state": "lost"}, headers=staff).status_code == 400
    empty = httpx.get(f"{base}/orders", params={"q": "no-such-order", "page": 3}, headers=staff)
    assert empty.status_code == 200 and "No orders match." in empty.text


def test_a_refused_refund_is_listed_as_owed_and_retry_gives_the_money_back(
    world: World, page: Page, fixtures_dir: Path
) -> None:
    # given an order we charged, partly refunded in the provider's dashboard, then cancelled:
    # our full refund is refused
    shop, external_id, order = charged_woo_order(world)
    capture = world.sandbox.payments.captures_for(f"woocommerce:{external_id}")[0]
    world.sandbox.payments.refund_outside(capture["id"], 100)
    world.sandbox.woocommerce.cancel_order(external_id)
    world.post_woo(shop, external_id)
    world.wait_state(shop, external_id, "cancelled")

    def refund_failed() -> bool:
        events = _api(world, f"/orders/{order.id}")["events"]
        return any(e["kind"] == "refund_failed" for e in events)

    wait_until(refund_failed, what="refund refused")

    # then the overview lists it as owed, with the provider's answer
    page.goto("/")
    row = page.locator(f"#refunds-owed tr[data-order-id='{order.id}']")
    expect(row.locator(".error")).to_contain_text("amount_too_large")
    expect(row).to_contain_text(capture["id"])

    # when the provider's side is put right and staff click Retry
    world.sandbox.payments.refund_outside(capture["id"], -100)
    row.get_by_role("button", name="Retry").click()
    expect(row.locator("output")).to_have_text("retry started (refund_payment)")

    # then the money goes back once and the order no longer shows as owed
    wait_until(
        lambda: world.sandbox.payments.refunds_for(f"woocommerce:{external_id}"), what="refunded"
    )
    world.wait_idle()
    page.reload()
    expect(page.locator(f"#refunds-owed tr[data-order-id='{order.id}']")).to_have_count(0)
    page.goto(f"/orders/{order.id}")
    expect(page.locator("#payment .refund")).to_have_count(1)
    assert len(world.sandbox.payments.refunds_for(f"woocommerce:{external_id}")) == 1


def test_staff_log_in_find_an_order_by_buyer_retry_it_and_see_their_name_on_its_timeline(
    world: World, browser: Browser, fixtures_dir: Path
) -> None:
    # given a member of staff, and a stuck order (the carrier refuses its postal code) of a
    # buyer with a name nobody else has
    suffix = uuid.uuid4().hex[:6]
    staff = new_user(world.maker, "operator", name=f"ada-{suffix}")
    surname = f"Quillfeather{suffix}"
    shop = world.account()
    payload = fixture_order(fixtures_dir, updated_at="2026-06-03T10:00:00Z")
    payload["customer"] = {**payload["customer"], "first_name": "Ada", "last_name": surname}
    payload["shipping_address"] = {**payload["shipping_address"], "zip": "00000"}
    stock_for(world, payload)
    world.post(shop, payload, topic="orders/create")
    stuck = world.wait_state(shop, str(payload["id"]), "needs_attention")
    shots = ARTIFACTS / f"staff-flow-{suffix}"
    shots.mkdir(parents=True, exist_ok=True)

    context = browser.new_context(base_url=world.stack.base_url)
    page = context.new_page()
    expect.set_options(timeout=15_000)
    try:
        # when they open the dashboard, they are sent to the login page, and log in
        page.goto("/")
        expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
        page.screenshot(path=str(shots / "1-login.png"))
        page.get_by_label("name").fill(staff)
        page.get_by_label("password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#who")).to_contain_text(f"{staff} (operator)")

        # and find the order by the buyer's name, and open it
        page.locator("header .search input").fill(surname)
        page.locator("header .search input").press("Enter")
        expect(page.locator("#orders tbody tr")).to_have_count(1)
        assert surname not in page.locator("#orders").inner_text()  # searched, never listed
        page.screenshot(path=str(shots / "2-found.png"))
        page.get_by_role("link", name=f"#{stuck.id}", exact=True).click()
        expect(page.locator("h1 .state")).to_have_text("needs_attention")

        # when the address is put right on the marketplace and they press Retry
        fixed = copy.deepcopy(payload)
        fixed["updated_at"] = "2026-06-03T11:00:00Z"
        fixed["shipping_address"]["zip"] = "40202"
        world.post(shop, fixed)
        wait_until(lambda: (o := world.order(shop, str(payload["id"]))) and
                   (o.shipping_address or {}).get("postal_code") == "40202",
                   what="corrected address stored")  # fmt: skip
        page.locator("#actions").get_by_role("button", name="Retry").click()
        retry_form = page.locator("#actions form").filter(
            has=page.get_by_role("button", name="Retry")
        )
        expect(retry_form.locator("output")).to_have_text("retry started (resumes at paid)")

        # then it moves on, and its timeline says who retried it
        _wait_api_state(world, stuck.id, "ready_to_ship")
        page.reload()
        expect(page.locator("h1 .state")).to_have_text("ready_to_ship")
        retried = page.locator("#timeline tbody tr").filter(has_text="needs_attention → paid")
        expect(retried).to_have_count(1)
        expect(retried.locator("td").nth(1)).to_have_text(staff)
        page.screenshot(path=str(shots / "3-retried.png"), full_page=True)

        # and the sync page charts the orders received per hour, these among them
        page.get_by_role("link", name="Sync", exact=True).click()
        expect(page.locator("#orders-per-hour polyline[data-channel='shopify']")).to_have_count(1)
        page.screenshot(path=str(shots / "4-sync.png"), full_page=True)

        # and after logging out, the order's page is out of reach again
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(re.compile(r"/login$"))
        page.goto(f"/orders/{stuck.id}")
        expect(page).to_have_url(re.compile(r"/login\?next="))
        expect(page.locator("#who")).to_have_count(0)
        page.screenshot(path=str(shots / "5-logged-out.png"))
    finally:
        context.close()


def test_the_stock_page_puts_failed_pushes_and_drift_first_with_both_numbers(
    world: World, page: Page
) -> None:
    from db.models import Listing, StockDrift

    sku, quiet = f"<b>SKU</b>-{uuid.uuid4().hex[:6]}", f"QUIET-{uuid.uuid4().hex[:6]}"
    for s in (sku, quiet):
        world.api("PUT", f"/stock/{s}", params={"on_hand": 12}).raise_for_status()
    with world.maker() as session, session.begin():
        account = ChannelAccount(name=f"stock-{uuid.uuid4().hex[:6]}", channel="ebay")
        session.add(account)
        session.flush()
        listing = Listing(channel_account_id=account.id, sku=sku, external_id=sku,
                          want_version=3, pushed_version=2, last_pushed_qty=5,
                          last_pushed_at=utcnow(),
                          last_error="ServerError: HTTP 503 (after 8 attempts)")  # fmt: skip
        session.add(listing)
        session.flush()
        session.add(StockDrift(listing_id=listing.id, found_by="nightly", channel_qty=9,
                               expected_qty=5))  # fmt: skip

    page.goto("/stock")
    first = page.locator("#stock tbody tr").first
    expect(first).to_have_attribute("data-sku", sku)  # problems first; markup stays text
    expect(first.locator("td").nth(4)).to_have_text("main 12")  # available by location
    expect(first.locator("td").nth(7)).to_have_text("1")  # failed
    expect(first.locator("td").nth(8)).to_have_text("1")  # open drift
    first.get_by_role("link").click()
    expect(page.locator("#stock-numbers tbody")).to_contain_text("12")
    expect(page.locator("#stock-locations tr[data-location=main]")).to_contain_text("12")
    row = page.locator("#stock-listings tbody tr").first
    expect(row).to_contain_text("push failed: ServerError: HTTP 503 (after 8 attempts)")
    expect(row).to_contain_text("channel showed 9, expected 5")
    expect(row).to_contain_text("12")  # what it should show: all 12 available (no rule)
    expect(page.locator("#stock-numbers")).to_contain_text(world.staff_name)  # who counted
