"""Metrics say what happened: a real web process and a real worker (with its own exporter)
take webhooks through the pipeline, then both are scraped and read with prometheus_client's
own parser."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.net import free_port
from integrations.shopify.webhooks import sign
from ordersync.supervisor import ProcessGroup
from tests.support.stack import wait_until
from tests.support.staff import bearer
from tests.support.world import SECRET, World, fixture_order, running_world, stock_for

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def world_and_port(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[World, int]]:
    var_dir = tmp_path_factory.mktemp("metrics")
    port = free_port()
    with running_world(
        f"sqlite:///{var_dir / 'ordersync.db'}",
        redis_url,
        var_dir,
        seed=5,
        workers=1,
        extra_env={"ORDERSYNC_WORKER_METRICS_PORT": str(port)},
    ) as world:
        yield world, port


def _scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    response = httpx.get(url, headers=headers or {}, timeout=10)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _delivery(world: World, shop: str, body: bytes, webhook_id: str, secret: str = SECRET) -> int:
    response = httpx.post(
        f"{world.stack.base_url}/webhooks/shopify/{shop}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Hmac-Sha256": sign(secret, body),
            "X-Shopify-Webhook-Id": webhook_id,
        },
    )
    return response.status_code


def test_web_and_worker_metrics_count_what_a_run_did(
    world_and_port: tuple[World, int], fixtures_dir: Path
) -> None:
    world, worker_port = world_and_port
    # given three orders by webhook, one delivered twice, and one delivery with a bad signature
    shop = world.account()
    orders = [fixture_order(fixtures_dir) for _ in range(3)]
    for order in orders:
        stock_for(world, order)
        body = json.dumps(order).encode()
        webhook_id = str(uuid.uuid4())
        assert _delivery(world, shop, body, webhook_id) == 200
    assert _delivery(world, shop, json.dumps(orders[0]).encode(), "again") == 200
    assert _delivery(world, shop, json.dumps(orders[0]).encode(), "again") == 200  # duplicate
    assert _delivery(world, shop, b"{}", str(uuid.uuid4()), secret="not the secret") == 401
    for order in orders:
        world.wait_state(shop, str(order["id"]), "ready_to_ship")
    world.wait_idle()

    # then the web app's /metrics (a token is needed) counts the deliveries and the states
    assert httpx.get(f"{world.stack.base_url}/metrics").status_code == 401
    web = _scrape(f"{world.stack.base_url}/metrics", bearer(world.staff))
    channel = (("channel", "shopify"),)
    assert web[("ordersync_webhooks_received_total", channel)] == 6
    assert web[("ordersync_webhooks_duplicate_total", channel)] == 1
    assert (
        web[
            (
                "ordersync_webhooks_rejected_total",
                (("channel", "shopify"), ("reason", "bad_signature")),
            )
        ]
        == 1
    )
    assert web[("ordersync_orders", (("state", "ready_to_ship"),))] == 3
    assert web[("ordersync_needs_attention", ())] == 0
    assert web[("ordersync_outbox_undelivered", (("kind", "pending"),))] == 0
    for queue in ("intake", "orders", "documents", "outbound"):
        assert web[("ordersync_queue_depth", (("queue", queue),))] == 0

    # and the worker's exporter counts its task runs and how long they took
    worker = _scrape(f"http://127.0.0.1:{worker_port}/metrics")

    def runs(task: str, outcome: str = "success") -> float:
        return worker.get(("ordersync_task_runs_total", (("outcome", outcome), ("task", task))), 0)

    # four stored deliveries (the duplicate was absorbed at the door): four intakes, of which
    # the order's own update made no new order
    assert runs("ordersync.intake.process_event") == 4
    for step in (
        "orders.reserve_stock",
        "orders.capture_payment",
        "documents.issue_invoice",
        "outbound.buy_label",
        "orders.mark_ready_to_ship",
    ):
        assert runs(f"ordersync.{step}") == 3, step
        timed = worker[("ordersync_task_duration_seconds_count", (("task", f"ordersync.{step}"),))]
        assert timed == 3, step
    assert not [
        key for key, value in worker.items() if key[0] == "ordersync_task_failures_total" and value
    ]


def test_several_web_processes_on_one_port_add_up_their_webhook_counts(
    world_and_port: tuple[World, int], fixtures_dir: Path
) -> None:
    # given `ordersync web --workers 2` (the kernel spreads connections over both processes)
    world, _ = world_and_port
    port = free_port()
    env = {**world.stack.env, "ORDERSYNC_WEB_PORT": str(port)}
    group = ProcessGroup(env=env, log_dir=Path(world.stack.env["ORDERSYNC_VAR_DIR"]) / "web2")
    base_url = f"http://127.0.0.1:{port}"
    try:
        group.start("web2", ["web", "--workers", "2"])
        wait_until(lambda: _healthy(base_url), timeout=60, what="web --workers 2 up")
        shop = world.account()

        # when eight deliveries arrive, on connections of their own, one with a bad signature
        for _ in range(7):
            order = fixture_order(fixtures_dir)
            stock_for(world, order)
            assert _post(base_url, shop, json.dumps(order).encode(), str(uuid.uuid4())) == 200
        assert _post(base_url, shop, b"{}", str(uuid.uuid4()), secret="wrong secret") == 401

        # then any scrape counts all eight, whichever process answers it
        for _ in range(3):
            samples = _scrape(f"{base_url}/metrics", bearer(world.staff))
            assert samples[("ordersync_webhooks_received_total", (("channel", "shopify"),))] == 8
            assert (
                samples[
                    (
                        "ordersync_webhooks_rejected_total",
                        (("channel", "shopify"), ("reason", "bad_signature")),
                    )
                ]
                == 1
            )
    finally:
        group.stop(timeout_s=20)


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _post(base_url: str, shop: str, body: bytes, webhook_id: str, secret: str = SECRET) -> int:
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Hmac-Sha256": sign(secret, body),
        "X-Shopify-Webhook-Id": webhook_id,
        "Connection": "close",
    }
    return httpx.post(
        f"{base_url}/webhooks/shopify/{shop}", content=body, headers=headers
    ).status_code
