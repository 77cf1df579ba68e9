"""Webhooks end to end: a real web server, real Celery workers, real Redis, SQLite and Postgres.

The stack is started once per database; each test uses its own shop account so tests do not
see each other's rows.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.net import free_port
from db.migrate import upgrade
from db.models import ChannelAccount, InboxEvent, Order
from db.session import make_engine
from domain.states import InboxStatus
from integrations.shopify.webhooks import sign
from integrations.woocommerce import webhooks as woo_webhooks
from ordersync.supervisor import ProcessGroup
from tests.support.stack import Stack, run_stack, wait_until
from tests.support.staff import bearer, staff_token
from tests.support.world import module_database_url

pytestmark = pytest.mark.slow

SECRET = "shpss_test_secret"


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[Stack, sessionmaker[Session]]]:
    var_dir = tmp_path_factory.mktemp("e2e")
    url = module_database_url(request, var_dir, request.param)
    upgrade(url)
    engine = make_engine(url)
    with run_stack(database_url=url, redis_url=redis_url, var_dir=var_dir, workers=2) as running:
        yield running, sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture
def shop(stack: tuple[Stack, sessionmaker[Session]]) -> str:
    _, maker = stack
    name = f"shop-{uuid.uuid4().hex[:8]}"
    with maker() as session, session.begin():
        session.add(ChannelAccount(name=name, channel="shopify", webhook_secret=SECRET))
    return name


def _order(fixtures_dir: Path, **changes: Any) -> dict[str, Any]:
    order: dict[str, Any] = json.loads(
        (fixtures_dir / "shopify" / "rest-2026-07" / "order.get.json").read_text()
    )["order"]
    order.update(changes)
    return order


def _post(
    base_url: str,
    shop: str,
    body: bytes,
    *,
    webhook_id: str,
    topic: str = "orders/updated",
    signature: str | None = None,
) -> httpx.Response:
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": signature if signature is not None else sign(SECRET, body),
        "X-Shopify-Shop-Domain": f"{shop}.myshopify.com",
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Triggered-At": dt.datetime.now(dt.UTC).isoformat(),
        "X-Shopify-API-Version": "2026-07",
    }
    return httpx.post(f"{base_url}/webhooks/shopify/{shop}", content=body, headers=headers)


def _settled(maker: sessionmaker[Session], shop: str, expected_rows: int) -> bool:
    """All of the shop's inbox rows exist and none is still waiting to be processed."""
    with maker() as session:
        rows = session.execute(
            select(InboxEvent.status, func.count())
            .join(ChannelAccount)
            .where(ChannelAccount.name == shop)
            .group_by(InboxEvent.status)
        ).all()
    counts = dict(rows)
    return sum(counts.values()) == expected_rows and InboxStatus.RECEIVED not in counts


def _orders(maker: sessionmaker[Session], shop: str) -> list[Order]:
    with maker() as session:
        return list(
            session.scalars(select(Order).join(ChannelAccount).where(ChannelAccount.name == shop))
        )


def test_twenty_simultaneous_deliveries_of_one_webhook_make_one_order_and_one_inbox_row(
    stack: tuple[Stack, sessionmaker[Session]], shop: str, fixtures_dir: Path
) -> None:
    # given one delivery, posted 20 times at the same moment (Shopify retrying a slow answer)
    running, maker = stack
    body = json.dumps(_order(fixtures_dir, id=8_102_334_455_667_788)).encode()
    barrier = threading.Barrier(20)

    def deliver(_: int) -> int:
        barrier.wait()
        return _post(running.base_url, shop, body, webhook_id="b1d2c3-retry").status_code

    # when
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(deliver, range(20)))

    # then every delivery is acknowledged, one inbox row exists, and one order
    assert statuses == [200] * 20
    wait_until(lambda: _settled(maker, shop, 1), what="inbox processed")
    orders = _orders(maker, shop)
    assert [o.external_id for o in orders] == ["8102334455667788"]  # > 2^53, kept exact
    assert orders[0].total == Decimal("598.94")


def test_the_same_order_under_two_webhook_ids_is_one_order_with_two_inbox_rows(
    stack: tuple[Stack, sessionmaker[Session]], shop: str, fixtures_dir: Path
) -> None:
    running, maker = stack
    body = json.dumps(_order(fixtures_dir)).encode()
    barrier = threading.Barrier(2)

    def deliver(webhook_id: str) -> int:
        barrier.wait()
        return _post(running.base_url, shop, body, webhook_id=webhook_id).status_code

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(deliver, ["create-1", "update-2"])) == [200, 200]

    wait_until(lambda: _settled(maker, shop, 2), what="inbox processed")
    assert len(_orders(maker, shop)) == 1


def test_an_older_update_arriving_after_a_newer_one_leaves_the_newer_data(
    stack: tuple[Stack, sessionmaker[Session]], shop: str, fixtures_dir: Path
) -> None:
    running, maker = stack
    newer = _order(fixtures_dir, updated_at="2026-05-02T10:00:00-04:00", total_price="120.00")
    older = _order(fixtures_dir, updated_at="2026-05-02T09:00:00-04:00", total_price="80.00")

    assert _post(running.base_url, shop, json.dumps(newer).encode(), webhook_id="n").is_success
    wait_until(lambda: _settled(maker, shop, 1), what="newer processed")
    assert _post(running.base_url, shop, json.dumps(older).encode(), webhook_id="o").is_success
    wait_until(lambda: _settled(maker, shop, 2), what="older processed")

    (order,) = _orders(maker, shop)
    assert order.total == Decimal("120.00")
    assert order.external_updated_at == dt.datetime(2026, 5, 2, 14, 0, tzinfo=dt.UTC)


def test_a_bad_signature_gets_401_and_stores_nothing(
    stack: tuple[Stack, sessionmaker[Session]], shop: str, fixtures_dir: Path
) -> None:
    running, maker = stack
    body = json.dumps(_order(fixtures_dir)).encode()
    tampered = body.replace(b"598.94", b"0.01")

    forged = _post(running.base_url, shop, body, webhook_id="x", signature="AAAA")
    altered = _post(running.base_url, shop, tampered, webhook_id="y", signature=sign(SECRET, body))

    assert (forged.status_code, altered.status_code) == (401, 401)
    with maker() as session:
        count = session.scalar(
            select(func.count()).select_from(InboxEvent).join(ChannelAccount)
            .where(ChannelAccount.name == shop)
        )  # fmt: skip
    assert count == 0


def test_a_webhook_body_is_stored_once_in_the_inbox_linked_to_its_order(
    stack: tuple[Stack, sessionmaker[Session]], shop: str, fixtures_dir: Path
) -> None:
    running, maker = stack
    body = json.dumps(_order(fixtures_dir, id=9_100_000_001)).encode()

    assert _post(running.base_url, shop, body, webhook_id="once").status_code == 200

    wait_until(lambda: _settled(maker, shop, 1), what="delivery processed")
    with maker() as session:
        event = session.scalars(select(InboxEvent).join(ChannelAccount)
                                .where(ChannelAccount.name == shop)).one()  # fmt: skip
        order = session.get(Order, event.order_id)
        assert order is not None and order.external_id == "9100000001"
        assert event.body == body
        assert order.raw == {}


def test_an_unknown_account_and_a_bad_signature_get_the_same_answer(
    stack: tuple[Stack, sessionmaker[Session]], shop: str, fixtures_dir: Path
) -> None:
    running, _ = stack
    body = json.dumps(_order(fixtures_dir)).encode()

    unknown = _post(running.base_url, "no-such-shop", body, webhook_id="u")
    forged = _post(running.base_url, shop, body, webhook_id="f", signature="AAAA")

    assert unknown.status_code == forged.status_code == 401
    assert unknown.json() == forged.json()


def _raw_post(base_url: str, path: str, head: dict[str, str], send_mb: int) -> tuple[int, bytes]:
    """POST through a plain socket: the headers, then up to ``send_mb`` MB of body in 64 KB
    chunks until the server stops taking them; returns (bytes sent, what the server answered)."""
    host, port = base_url.removeprefix("http://").split(":")
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        *(f"{k}: {v}" for k, v in head.items()),
    ]
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            while sent < send_mb * 1024 * 1024:
                if head.get("Transfer-Encoding") == "chunked":
                    sock.sendall(b"10000\r\n" + chunk + b"\r\n")
                else:
                    sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server answered and closed: it will not take more
            pass
        try:
            answer = sock.recv(4096)
        except OSError:
            answer = b""
    return sent, answer


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_body_declared_over_the_limit_gets_413_before_it_is_read(
    stack: tuple[Stack, sessionmaker[Session]], shop: str
) -> None:
    running, _ = stack
    head = {"Content-Type": "application/json", "Content-Length": str(100 * 1024 * 1024),
            "X-Shopify-Hmac-Sha256": "AAAA"}  # fmt: skip

    for account in (shop, "no-such-shop"):
        _, answer = _raw_post(running.base_url, f"/webhooks/shopify/{account}", head, 0)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_eight_concurrent_100_mb_posts_keep_the_web_process_under_150_mb(
    stack: tuple[Stack, sessionmaker[Session]], shop: str
) -> None:
    # given: the web process, and bodies streamed without a length (nothing to refuse up front)
    running, _ = stack
    web = next(c for c in running.group.children if c.name == "web")
    assert web.process is not None
    head = {"Content-Type": "application/json", "Transfer-Encoding": "chunked",
            "X-Shopify-Hmac-Sha256": "AAAA"}  # fmt: skip
    paths = [f"/webhooks/shopify/{'no-such-shop' if i % 2 else shop}" for i in range(8)]

    before = _peak_rss_mb(web.process.pid)

    # when: 8 at once, half to an unknown account, half to a real one with a bad signature
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: _raw_post(running.base_url, p, head, 100), paths))

    # then: the server stopped each at the limit, and never held much more than it allows
    for sent, answer in results:
        assert sent < 100 * 1024 * 1024 or answer.startswith(b"HTTP/1.1 413")
    # a body with a bad signature is checked as it streams and spooled past 64 KiB, never held
    # whole: the 800 MB sent leave the process's peak where it was, and under 150 MB
    peak = _peak_rss_mb(web.process.pid)
    assert peak < 150, f"peak RSS {peak:.0f} MB (before: {before:.0f} MB)"
    assert peak - before < 16, f"peak RSS {before:.0f} -> {peak:.0f} MB"
    assert httpx.get(f"{running.base_url}/healthz").status_code == 200


def test_an_unparseable_body_with_a_valid_signature_is_kept_and_shown_as_failed(
    stack: tuple[Stack, sessionmaker[Session]], shop: str
) -> None:
    running, maker = stack
    body = b'{"id": 1, "currency": "USD", "total_price": '  # cut off mid-way

    response = _post(running.base_url, shop, body, webhook_id="broken")

    assert response.status_code == 200
    wait_until(lambda: _settled(maker, shop, 1), what="broken delivery processed")
    inbox = httpx.get(f"{running.base_url}/api/inbox", params={"status": "failed"},
                      headers=bearer(staff_token(maker, "viewer"))).json()  # fmt: skip
    mine = [e for e in inbox["events"] if e["account"] == shop]
    assert len(mine) == 1
    assert mine[0]["error"].startswith("body is not JSON")
    with maker() as session:
        stored = session.scalars(select(InboxEvent.body).join(ChannelAccount)
                                 .where(ChannelAccount.name == shop)).one()  # fmt: skip
    assert stored == body
    assert _orders(maker, shop) == []


def test_a_signed_woocommerce_body_nested_too_deeply_is_kept_and_shown_as_failed(
    stack: tuple[Stack, sessionmaker[Session]],
) -> None:
    # given: WooCommerce never retries a delivery, so one we do not store is an order lost
    running, maker = stack
    name = f"woo-{uuid.uuid4().hex[:8]}"
    with maker() as session, session.begin():
        session.add(ChannelAccount(name=name, channel="woocommerce", webhook_secret=SECRET))
    body = b'{"id": 1, "line_items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    headers = {
        "Content-Type": "application/json",
        "X-WC-Webhook-Topic": "order.updated",
        "X-WC-Webhook-Delivery-ID": uuid.uuid4().hex,
        "X-WC-Webhook-Signature": woo_webhooks.sign(SECRET, body),
    }

    # when
    response = httpx.post(f"{running.base_url}/webhooks/woocommerce/{name}", content=body,
                          headers=headers)  # fmt: skip

    # then
    assert response.status_code == 200, response.text
    wait_until(lambda: _settled(maker, name, 1), what="nested delivery processed")
    with maker() as session:
        event = session.scalars(select(InboxEvent).join(ChannelAccount)
                                .where(ChannelAccount.name == name)).one()  # fmt: skip
        assert (event.status, event.body) == (InboxStatus.FAILED, body)
        assert event.error is not None and "nested too deeply" in event.error
    inbox = httpx.get(f"{running.base_url}/api/inbox", params={"status": "failed"},
                      headers=bearer(staff_token(maker, "viewer"))).json()  # fmt: skip
    assert [e["account"] for e in inbox["events"]].count(name) == 1
    assert _orders(maker, name) == []


def test_a_payload_that_does_not_map_fails_with_field_names_and_no_order(
    stack: tuple[Stack, sessionmaker[Session]], shop: str, fixtures_dir: Path
) -> None:
    running, maker = stack
    order = _order(fixtures_dir)
    del order["total_price"]
    order["updated_at"] = "not a date"

    assert _post(running.base_url, shop, json.dumps(order).encode(), webhook_id="m").is_success

    wait_until(lambda: _settled(maker, shop, 1), what="delivery processed")
    with maker() as session:
        event = session.scalars(
            select(InboxEvent).join(ChannelAccount).where(ChannelAccount.name == shop)
        ).one()
    assert event.status == InboxStatus.FAILED
    assert event.error is not None
    assert "total_price" in event.error and "updated_at" in event.error
    assert _orders(maker, shop) == []


def test_a_rotated_webhook_secret_costs_one_refused_delivery_not_the_cache_lifetime(
    stack: tuple[Stack, sessionmaker[Session]], shop: str, fixtures_dir: Path
) -> None:
    # given: the receiver has the account, with its secret, in its cache
    running, maker = stack
    body = json.dumps(_order(fixtures_dir, id=8_800_000_001)).encode()
    assert _post(running.base_url, shop, body, webhook_id="before").status_code == 200
    with maker() as session, session.begin():
        account = session.scalars(select(ChannelAccount).where(ChannelAccount.name == shop)).one()
        account.webhook_secret = "rotated-secret"

    # when: the marketplace signs with the new secret (and retries the refused delivery)
    new = sign("rotated-secret", body)
    first = _post(running.base_url, shop, body, webhook_id="after", signature=new)
    retried = _post(running.base_url, shop, body, webhook_id="after", signature=new)

    # then: only the first try met the cached old secret
    assert (first.status_code, retried.status_code) == (401, 200)


def test_every_process_of_web_workers_2_logs_as_configured(
    stack: tuple[Stack, sessionmaker[Session]], shop: str, fixtures_dir: Path, tmp_path: Path
) -> None:
    # given `ordersync web --workers 2` (two new interpreters serve the port) told to log JSON
    # at WARNING
    running, _ = stack
    port = free_port()
    env = {**running.env, "ORDERSYNC_WEB_PORT": str(port), "ORDERSYNC_LOG_JSON": "true",
           "ORDERSYNC_LOG_LEVEL": "WARNING"}  # fmt: skip
    group = ProcessGroup(env=env, log_dir=tmp_path)
    child = group.start("web", ["web", "--workers", "2"])
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(base_url), what="web --workers 2")
        body = json.dumps(_order(fixtures_dir)).encode()
        # when deliveries come in on new connections, bad signatures (WARNING) and good (INFO)
        for i in range(12):
            assert _post(base_url, shop, body, webhook_id=f"w2-bad-{i}",
                         signature="AAAA").status_code == 401  # fmt: skip
            assert _post(base_url, shop, body, webhook_id=f"w2-ok-{i}").status_code == 200
    finally:
        group.stop(timeout_s=20)
    # then every line the processes wrote is JSON: the warnings, with the account and no
    # body; the accepted deliveries (INFO) are not logged
    assert child.log_path is not None
    lines = child.log_path.read_text().splitlines()
    assert not [line for line in lines if "webhook." in line and not line.startswith("{")]
    events = [json.loads(line) for line in lines if line.startswith("{")]
    bad = [e for e in events if e.get("event") == "webhook.bad_signature"]
    assert len(bad) == 12 and {e["account"] for e in bad} == {shop}
    assert not [e for e in events if e.get("event") == "webhook.accepted"]


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
