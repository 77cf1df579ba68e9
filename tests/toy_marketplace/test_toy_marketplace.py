"""A fifth marketplace, registered through ``ORDERSYNC_MARKETPLACE_PLUGINS`` only, works end to
end: its signed webhook on the real web app becomes an order, and a real worker's
``poll_account`` reads its orders from the toy simulator (a real HTTP server) and upserts them.
Nothing outside this package names "toy"."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.models import ChannelAccount, InboxEvent, Order, OrderLine, SyncRun
from db.session import make_engine
from domain.states import InboxStatus
from tests.support.servers import serve_app
from tests.support.stack import Stack, run_stack, wait_until
from tests.support.world import module_database_url
from tests.toy_marketplace.simulator import API_KEY, ToySimulator
from tests.toy_marketplace.webhooks import sign

pytestmark = pytest.mark.slow

PLUGIN = "tests.toy_marketplace.marketplace"
SECRET = "toy-webhook-secret"


@pytest.fixture
def toy() -> Iterator[tuple[ToySimulator, str]]:
    simulator = ToySimulator()
    with serve_app(simulator.app) as url:
        yield simulator, url


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[Stack, sessionmaker[Session]]]:
    var_dir = tmp_path_factory.mktemp("toy")
    url = module_database_url(request, var_dir, request.param)
    upgrade(url)
    engine = make_engine(url)
    env = {"ORDERSYNC_MARKETPLACE_PLUGINS": PLUGIN}
    with run_stack(
        database_url=url, redis_url=redis_url, var_dir=var_dir, workers=1, extra_env=env
    ) as running:
        yield running, sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


def _account(maker: sessionmaker[Session], **fields: object) -> tuple[int, str]:
    name = f"toy-{uuid.uuid4().hex[:8]}"
    with maker() as session, session.begin():
        account = ChannelAccount(name=name, channel="toy", **fields)
        session.add(account)
        session.flush()
        return account.id, name


def _orders(maker: sessionmaker[Session], account_id: int) -> list[Order]:
    with maker() as session:
        return list(
            session.scalars(
                select(Order).where(Order.channel_account_id == account_id).order_by(Order.id)
            )
        )


def test_a_signed_toy_webhook_is_stored_and_becomes_an_order(
    stack: tuple[Stack, sessionmaker[Session]], toy: tuple[ToySimulator, str]
) -> None:
    running, maker = stack
    simulator, _ = toy
    account_id, name = _account(maker, webhook_secret=SECRET)
    order = simulator.add_order(1001, qty=3, price="4.10")
    headers, body = simulator.webhook(order, SECRET, delivery="d-1001")
    url = f"{running.base_url}/webhooks/toy/{name}"

    first = httpx.post(url, content=body, headers=headers)
    again = httpx.post(url, content=body, headers=headers)  # the toy retried the delivery
    forged = httpx.post(url, content=body, headers={**headers, "X-Toy-Signature": sign("x", body)})

    assert first.status_code == 200 and first.json()["status"] == "accepted"
    assert again.json() == {"status": "duplicate"}
    assert forged.status_code == 401
    (stored,) = wait_until(lambda: _orders(maker, account_id), what="the toy order")
    assert (stored.channel, stored.external_id, stored.external_number) == ("toy", "T-1001", "1001")
    assert (stored.currency, stored.total) == ("EUR", Decimal("12.30"))
    with maker() as session:
        (line,) = session.scalars(select(OrderLine).where(OrderLine.order_id == stored.id))
        (event,) = session.scalars(
            select(InboxEvent).where(InboxEvent.channel_account_id == account_id)
        )
    assert (line.sku, line.quantity, line.unit_price) == ("TOY-1001", 3, Decimal("4.10"))
    assert (event.channel, event.topic, event.status) == ("toy", "order.placed", "processed")
    assert event.headers == {"x-toy-topic": "order.placed", "x-toy-delivery": "d-1001"}
    assert event.order_id == stored.id


def test_a_toy_topic_without_a_handler_is_kept_as_ignored(
    stack: tuple[Stack, sessionmaker[Session]], toy: tuple[ToySimulator, str]
) -> None:
    running, maker = stack
    simulator, _ = toy
    account_id, name = _account(maker, webhook_secret=SECRET)
    headers, body = simulator.webhook(simulator.add_order(1002), SECRET, delivery="d-1002")

    response = httpx.post(
        f"{running.base_url}/webhooks/toy/{name}",
        content=body,
        headers={**headers, "X-Toy-Topic": "product.updated"},
    )

    assert response.json()["status"] == "accepted"

    def settled() -> list[InboxEvent]:
        with maker() as session:
            return list(
                session.scalars(
                    select(InboxEvent).where(
                        InboxEvent.channel_account_id == account_id,
                        InboxEvent.status != InboxStatus.RECEIVED,
                    )
                )
            )

    (event,) = wait_until(settled, what="the delivery processed")
    assert event.status == InboxStatus.IGNORED
    assert _orders(maker, account_id) == []


def test_a_worker_polls_a_toy_account_and_upserts_its_orders(
    stack: tuple[Stack, sessionmaker[Session]], toy: tuple[ToySimulator, str], redis_url: str
) -> None:
    _, maker = stack
    simulator, toy_url = toy
    account_id, _ = _account(maker, api_base_url=toy_url, credentials={"api_key": API_KEY})
    placed = [simulator.add_order(n) for n in range(2001, 2006)]  # three pages of two

    def poll() -> SyncRun:
        probe = Celery("probe", broker=redis_url)
        try:
            probe.send_task("ordersync.sync.poll_account", args=[account_id], queue="sync")
        finally:
            probe.close()
        before = len(runs())

        def finished() -> SyncRun | None:
            done = runs()
            return done[-1] if len(done) > before else None

        run = wait_until(finished, what="the poll")
        assert run is not None
        return run

    def runs() -> list[SyncRun]:
        with maker() as session:
            return list(
                session.scalars(
                    select(SyncRun)
                    .where(SyncRun.channel_account_id == account_id, SyncRun.status != "running")
                    .order_by(SyncRun.id)
                )
            )

    first = poll()

    assert (first.status, first.error) == ("ok", None)
    assert (first.orders_seen, first.orders_changed) == (5, 5)
    orders = _orders(maker, account_id)
    assert [o.external_id for o in orders] == [o["id"] for o in placed]
    assert {o.channel for o in orders} == {"toy"}
    assert [o.total for o in orders] == [Decimal("12.50")] * 5

    # the next poll reads the same orders again (the overlap) and changes nothing
    second = poll()
    assert (second.status, second.orders_seen, second.orders_changed) == ("ok", 5, 0)
    assert len(_orders(maker, account_id)) == 5
