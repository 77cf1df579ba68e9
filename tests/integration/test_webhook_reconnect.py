"""The webhook receiver's inbox INSERT runs without the pool's ping (a round trip per webhook):
a connection the server closed (a restart, a failover, a proxy's idle timeout) fails the first
try, and the insert goes again on a new connection; the webhook is answered 200 and stored
once. Real PostgreSQL, the real ASGI app."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from core.settings import get_settings
from db.migrate import upgrade
from db.models import ChannelAccount, InboxEvent
from db.session import get_engine, get_sessionmaker
from integrations.shopify.webhooks import sign
from web.app import create_app

SECRET = "shpss_reconnect_secret"
SHOP = "reconnect-shop"


@pytest.fixture
def client(
    postgres_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    upgrade(postgres_url)
    monkeypatch.setenv("ORDERSYNC_DATABASE_URL", postgres_url)
    monkeypatch.setenv("ORDERSYNC_REDIS_URL", redis_url)
    monkeypatch.setenv("ORDERSYNC_VAR_DIR", str(tmp_path))
    get_settings.cache_clear()
    with get_sessionmaker(postgres_url).begin() as session:
        session.add(ChannelAccount(name=SHOP, channel="shopify", webhook_secret=SECRET))
    yield TestClient(create_app(), base_url="http://ordersync.local")
    for pre_ping in (None, False):
        get_engine(postgres_url, pre_ping=pre_ping).dispose()
    get_settings.cache_clear()


def _post(client: TestClient, body: bytes, webhook_id: str) -> dict[str, object]:
    response = client.post(f"/webhooks/shopify/{SHOP}", content=body, headers={
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Hmac-Sha256": sign(SECRET, body),
        "X-Shopify-Shop-Domain": f"{SHOP}.myshopify.com",
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Triggered-At": dt.datetime.now(dt.UTC).isoformat(),
    })  # fmt: skip
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


@pytest.mark.postgres
def test_a_webhook_after_the_server_closed_the_intake_connection_is_stored_on_a_new_one(
    client: TestClient, postgres_url: str, fixtures_dir: Path
) -> None:
    order = json.loads((fixtures_dir / "shopify" / "rest-2026-07" / "order.get.json").read_text())
    body = json.dumps(order["order"]).encode()
    first = _post(client, body, "before-restart")
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:  # every connection of the web app's pools, as a restart
            closed = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalar_one()  # fmt: skip
        assert closed >= 1

        with capture_logs() as logs:
            second = _post(client, body, "after-restart")
    finally:
        admin.dispose()

    # the first try met the closed connection, the second stored the webhook
    assert [e["event"] for e in logs if "reconnect" in e["event"]] == ["webhook.database_reconnect"]
    assert (first["status"], second["status"]) == ("accepted", "accepted")
    with get_sessionmaker(postgres_url)() as session:
        stored = session.scalars(sa.select(InboxEvent.dedupe_key).order_by(InboxEvent.id)).all()
    assert len(stored) == 2 and second["inbox_id"] != first["inbox_id"]
