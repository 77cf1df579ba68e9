"""A running ordersync for end-to-end tests: the sandbox (payment provider, carrier,
marketplaces), the web app and Celery workers as real processes, and helpers to drive orders
through them as a marketplace would."""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from celery import Celery
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.models import ChannelAccount, InboxEvent, Order
from db.session import make_engine
from domain.states import InboxStatus
from integrations.shopify.webhooks import sign
from orders.stock import set_on_hand
from sandbox import carrier as sandbox_carrier
from sandbox import payments as sandbox_payments
from sandbox.server import Sandbox
from tests.support.stack import Stack, run_stack, wait_until
from tests.support.staff import bearer, staff_token

__all__ = [
    "IN_CI",
    "SECRET",
    "World",
    "fixture_order",
    "module_database_url",
    "running_world",
    "stock_for",
    "unavailable",
]

SECRET = "pipeline-webhook-secret"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip on a laptop; fail under CI, which must run everything."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must run these tests)")
    pytest.skip(reason)


class World:
    def __init__(self, stack: Stack, maker: sessionmaker[Session], sandbox: Sandbox, redis: str):
        self.stack, self.maker, self.sandbox, self.redis_url = stack, maker, sandbox, redis
        # the staff API needs a session or a token: an operator's, made once per world
        self.staff_name = f"operator-{uuid.uuid4().hex[:6]}"  # password: staff.PASSWORD
        self.staff = staff_token(maker, "operator", name=self.staff_name)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A staff API call (``path`` after ``/api``) with the world's operator token."""
        headers = {**bearer(self.staff), **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.stack.base_url}/api{path}", headers=headers,
                             timeout=kwargs.pop("timeout", 30), **kwargs)  # fmt: skip

    def account(self) -> str:
        """A Shopify account on the sandbox shop (where authorizations are captured)."""
        name = f"shop-{uuid.uuid4().hex[:8]}"
        spec = self.sandbox.accounts(SECRET)["shopify"]
        with self.maker() as session, session.begin():
            session.add(ChannelAccount(name=name, channel="shopify", shop=spec.shop,
                                       api_base_url=spec.api_base_url,
                                       credentials=dict(spec.credentials),
                                       webhook_secret=SECRET))  # fmt: skip
        return name

    def webhook_only_account(self) -> str:
        """A Shopify account with a webhook secret only: no credentials, no API URL (it can
        take no push)."""
        name = f"hooks-{uuid.uuid4().hex[:8]}"
        with self.maker() as session, session.begin():
            session.add(ChannelAccount(name=name, channel="shopify", shop=f"{name}.example",
                                       webhook_secret=SECRET))  # fmt: skip
        return name

    def post(self, shop: str, order: dict[str, Any], topic: str = "orders/updated") -> None:
        """Shopify sends the order's webhook; an order new to the sandbox shop is put there
        first, with the payment transactions its ``financial_status`` implies."""
        if str(order["id"]) not in self.sandbox.shopify.orders:
            self.sandbox.shopify.put_order(order)
        self.deliver(shop, topic, order)

    def deliver(
        self, shop: str, topic: str, payload: dict[str, Any], webhook_id: str | None = None
    ) -> None:
        """One signed Shopify delivery of ``payload`` (any topic's body)."""
        body = json.dumps(payload).encode()
        response = httpx.post(
            f"{self.stack.base_url}/webhooks/shopify/{shop}",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Shopify-Topic": topic,
                "X-Shopify-Hmac-Sha256": sign(SECRET, body),
                "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
            },
        )
        assert response.status_code == 200, response.text

    def woo_account(self) -> str:
        """A WooCommerce account on the sandbox shop (its Stripe gateway authorises card
        orders at the sandbox payment provider)."""
        name = f"woo-{uuid.uuid4().hex[:8]}"
        spec = self.sandbox.accounts(SECRET)["woocommerce"]
        with self.maker() as session, session.begin():
            session.add(ChannelAccount(name=name, channel="woocommerce", shop=spec.shop,
                                       api_base_url=spec.api_base_url,
                                       credentials=dict(spec.credentials),
                                       webhook_secret=SECRET))  # fmt: skip
        return name

    def post_woo(self, account: str, external_id: str, topic: str = "order.updated") -> None:
        """WooCommerce sends the order's webhook as it is now in the sandbox shop."""
        headers, body = self.sandbox.woocommerce.webhook_delivery(
            external_id, topic, SECRET, delivery_id=uuid.uuid4().hex
        )
        response = httpx.post(f"{self.stack.base_url}/webhooks/woocommerce/{account}",
                              content=body, headers=headers)  # fmt: skip
        assert response.status_code == 200, response.text

    def order(self, shop: str, external_id: str) -> Order | None:
        with self.maker() as session:
            return session.scalar(
                select(Order).join(ChannelAccount)
                .where(ChannelAccount.name == shop, Order.external_id == external_id)
            )  # fmt: skip

    def order_state(self, order_id: int) -> str | None:
        with self.maker() as session:
            return session.scalar(select(Order.state).where(Order.id == order_id))

    def wait_state(self, shop: str, external_id: str, *states: str, timeout: float = 60) -> Order:
        def reached() -> Order | None:
            order = self.order(shop, external_id)
            return order if order is not None and order.state in states else None

        try:
            return wait_until(reached, timeout=timeout, what=f"order in {states}")
        except AssertionError:
            order = self.order(shop, external_id)
            raise AssertionError(
                f"order is {order and order.state} ({order and order.last_error}), "
                f"wanted {states}\n{self.stack.logs()}"
            ) from None

    def wait_idle(self) -> None:
        """No delivery waiting for its publish (the web app publishes after its answer), no
        task queued or running anywhere (duplicates have all finished skipping)."""
        probe = Celery("probe", broker=self.redis_url)
        client = probe.connection_for_write().default_channel.client

        def idle() -> bool:
            with self.maker() as session:
                unpublished = session.scalar(
                    sa.select(sa.func.count())
                    .select_from(InboxEvent)
                    .where(InboxEvent.status == InboxStatus.RECEIVED.value)
                )
            if unpublished:
                return False
            queued = sum(client.llen(q) for q in ("intake", "orders", "documents", "outbound"))
            active = probe.control.inspect(timeout=0.5).active() or {}
            reserved = probe.control.inspect(timeout=0.5).reserved() or {}
            busy = sum(len(v) for v in active.values()) + sum(len(v) for v in reserved.values())
            return queued == 0 and busy == 0 and bool(active)

        try:
            wait_until(idle, timeout=60, what="workers idle")
        finally:
            probe.close()


def module_database_url(request: pytest.FixtureRequest, var_dir: Path, kind: str) -> str:
    """A fresh database for a module-scoped stack: a SQLite file, or a new PostgreSQL database
    dropped when the module is done."""
    if kind == "sqlite":
        return f"sqlite:///{var_dir / 'ordersync.db'}"
    admin_url = request.getfixturevalue("postgres_admin_url")
    name = f"ordersync_e2e_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    request.addfinalizer(drop)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@contextmanager
def running_world(
    url: str,
    redis_url: str,
    var_dir: Path,
    *,
    seed: int = 7,
    workers: int = 2,
    beat: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Iterator[World]:
    """Migrate ``url``, start the sandbox, the web app and ``workers`` Celery workers (and Beat,
    ``beat``; ``extra_env``: more ``ORDERSYNC_*`` settings for them all)."""
    upgrade(url)
    sandbox = Sandbox(seed=seed)
    sandbox.start()
    engine = make_engine(url)
    env = {
        "ORDERSYNC_PAYMENTS_URL": f"{sandbox.url}/payments",
        "ORDERSYNC_PAYMENTS_API_KEY": sandbox_payments.SANDBOX_API_KEY,
        "ORDERSYNC_CARRIER_URL": f"{sandbox.url}/carrier",
        "ORDERSYNC_CARRIER_API_KEY": sandbox_carrier.SANDBOX_API_KEY,
        # the public keys the sandbox carrier signs its tracking webhooks with (its JWKS)
        "ORDERSYNC_CARRIER_WEBHOOK_KEYS": json.dumps(sandbox.carrier.jwks()),
        "ORDERSYNC_RETRY_BACKOFF_BASE_S": "0.2",
        "ORDERSYNC_RETRY_BACKOFF_MAX_S": "2",
        **(extra_env or {}),
    }
    try:
        with run_stack(
            database_url=url,
            redis_url=redis_url,
            var_dir=var_dir,
            workers=workers,
            beat=beat,
            extra_env=env,
        ) as stack:
            yield World(
                stack, sessionmaker(bind=engine, expire_on_commit=False), sandbox, redis_url
            )
    finally:
        engine.dispose()
        sandbox.stop()


def fixture_order(fixtures_dir: Path, **changes: Any) -> dict[str, Any]:
    order: dict[str, Any] = json.loads(
        (fixtures_dir / "shopify" / "rest-2026-07" / "order.get.json").read_text()
    )["order"]
    order = copy.deepcopy(order)
    order["id"] = int(uuid.uuid4().int % 10**13)
    order["admin_graphql_api_id"] = f"gid://shopify/Order/{order['id']}"  # the same order
    # a new order: the sample's refunds (it is partially refunded) belong to another story
    order["refunds"] = []
    for item in order["line_items"]:
        item["sku"] = f"{item['sku']}-{order['id']}"  # SKUs of its own: tests do not share stock
    order.update(changes)
    return order


def charged_woo_order(world: World) -> tuple[str, str, Order]:
    """A WooCommerce card order whose authorization we captured at the payment provider, ready
    to ship: (account, external id, order)."""
    account = world.woo_account()
    (external_id,) = world.sandbox.woocommerce.add_orders(1, status="on-hold")
    with world.maker() as session, session.begin():
        for line in world.sandbox.woocommerce.orders[external_id]["line_items"]:
            set_on_hand(session, line["sku"], 10_000)  # the shared sandbox SKUs: plenty
    world.post_woo(account, external_id, "order.created")
    return account, external_id, world.wait_state(account, external_id, "ready_to_ship")


def stock_for(world: World, order: dict[str, Any], per_unit: int = 1) -> dict[str, int]:
    wanted: dict[str, int] = {}
    for item in order["line_items"]:
        wanted[item["sku"]] = wanted.get(item["sku"], 0) + item["quantity"]
    with world.maker() as session, session.begin():
        for sku, qty in wanted.items():
            set_on_hand(session, sku, qty * per_unit)
    return wanted


def world_fixture(name: str) -> Any:
    """A module's ``world`` fixture: one running world per database (SQLite, and PostgreSQL
    where the run has it), its files under a temporary folder named ``name``."""

    @pytest.fixture(
        scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
    )
    def world(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
    ) -> Iterator[World]:
        var_dir = tmp_path_factory.mktemp(name)
        url = module_database_url(request, var_dir, request.param)
        with running_world(url, redis_url, var_dir) as running:
            yield running

    return world
