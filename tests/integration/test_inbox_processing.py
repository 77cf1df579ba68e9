"""integrations.inbox.process: one stored webhook delivery applied once, every way it can end
recorded on its row, what follows handed to the caller (the task publishes it after commit)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from db.models import ChannelAccount, InboxEvent, Order
from domain.errors import OrderNotKnown
from domain.states import InboxStatus
from integrations import inbox
from orders.intake import IntakeResult
from tests.support.shop import Shop
from tests.support.world import fixture_order


class Followed:
    """What ``process`` handed on: results to follow up, orders to fetch."""

    def __init__(self) -> None:
        self.results: list[tuple[IntakeResult, int]] = []
        self.fetched: list[tuple[int, str]] = []

    def after_intake(self, _session: Session, result: IntakeResult, account_id: int) -> None:
        self.results.append((result, account_id))

    def fetch(self, _session: Session, account_id: int, external_id: str) -> None:
        self.fetched.append((account_id, external_id))


@pytest.fixture
def shop(migrated_url: str) -> Iterator[Shop]:
    shop = Shop(migrated_url)
    yield shop
    shop.engine.dispose()


def _stored(shop: Shop, topic: str, body: Any, *, channel: str = "shopify",
            account: ChannelAccount | None = None) -> int:  # fmt: skip
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with shop.transaction() as session:
        event = InboxEvent(channel_account_id=(account or shop.account).id, channel=channel,
                           topic=topic, dedupe_key=uuid.uuid4().hex, headers={},
                           body=raw)  # fmt: skip
        session.add(event)
        session.flush()
        return event.id


def _process(shop: Shop, inbox_id: int, followed: Followed) -> inbox.Processed:
    with shop.transaction() as session:
        return inbox.process(session, inbox_id, after_intake=followed.after_intake,
                             fetch=followed.fetch)  # fmt: skip


def _row(shop: Shop, inbox_id: int) -> tuple[str, int, str | None, int | None]:
    (event,) = shop.rows(InboxEvent, id=inbox_id)
    return event.status, event.attempts, event.error, event.order_id


def test_an_order_delivery_is_applied_once_and_a_redelivery_changes_nothing(
    shop: Shop, fixtures_dir: Path
) -> None:
    order = fixture_order(fixtures_dir)
    inbox_id = _stored(shop, "orders/create", order)
    followed = Followed()

    done = _process(shop, inbox_id, followed)
    (stored,) = shop.rows(Order, external_id=str(order["id"]))
    assert done == inbox.Processed(inbox_id, InboxStatus.PROCESSED, order_id=stored.id,
                                   outcome="created")  # fmt: skip
    assert _row(shop, inbox_id) == (InboxStatus.PROCESSED, 1, None, stored.id)
    assert [(r.order_id, a) for r, a in followed.results] == [(stored.id, shop.account.id)]

    again = _process(shop, inbox_id, followed)
    assert again == inbox.Processed(inbox_id, InboxStatus.PROCESSED, order_id=stored.id)
    assert len(followed.results) == 1 and _row(shop, inbox_id)[1] == 1


def test_an_older_version_is_processed_as_stale(shop: Shop, fixtures_dir: Path) -> None:
    order = fixture_order(fixtures_dir)
    older = {**order, "updated_at": "2000-01-01T00:00:00+00:00"}
    _process(shop, _stored(shop, "orders/updated", order), Followed())

    inbox_id = _stored(shop, "orders/updated", older)
    assert _process(shop, inbox_id, Followed()).outcome == "stale"
    assert _row(shop, inbox_id)[:3] == (InboxStatus.PROCESSED, 1,
                                        "stale: older than the stored order")  # fmt: skip


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "body is not JSON"),
        (b"[1, 2]", "body is JSON list, expected an object"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_a_body_that_does_not_parse_fails_with_the_reason(
    shop: Shop, body: bytes, error: str
) -> None:
    inbox_id = _stored(shop, "orders/create", body)
    done = _process(shop, inbox_id, Followed())
    status, attempts, stored_error, _ = _row(shop, inbox_id)
    assert (done.status, status, attempts) == (InboxStatus.FAILED, InboxStatus.FAILED, 1)
    assert stored_error is not None and error in stored_error


def test_a_payload_that_does_not_map_names_fields_not_the_buyers_values(
    shop: Shop, fixtures_dir: Path
) -> None:
    order = fixture_order(fixtures_dir, email="ada@example.com", currency="€€")
    inbox_id = _stored(shop, "orders/create", order)
    _process(shop, inbox_id, Followed())
    status, _, error, order_id = _row(shop, inbox_id)
    assert (status, order_id) == (InboxStatus.FAILED, None)
    assert error == "shopify rest order: invalid canonical.currency (string_too_short)"
    assert shop.rows(Order) == []  # nothing half-written


def test_a_topic_nobody_handles_is_ignored_and_a_gone_channel_fails(shop: Shop) -> None:
    ignored = _stored(shop, "carts/create", {"id": 1})
    assert _process(shop, ignored, Followed()).status == InboxStatus.IGNORED
    assert _row(shop, ignored)[:3] == (InboxStatus.IGNORED, 1,
                                       "topic 'carts/create' is not handled")  # fmt: skip

    gone = _stored(shop, "order.placed", {"id": 1}, channel="gone")
    assert _process(shop, gone, Followed()).status == InboxStatus.FAILED
    assert "unknown marketplace 'gone'" in (_row(shop, gone)[2] or "")


def test_a_refund_that_overtook_its_order_has_the_order_fetched_or_waits_when_nobody_can_ask(
    shop: Shop, fixtures_dir: Path
) -> None:
    refund = json.loads((fixtures_dir / "shopify" / "refund.json").read_text())["refund"]
    with shop.transaction() as session:  # an account we can ask, and the shop's, which has no
        keyed = ChannelAccount(name="keyed", channel="shopify",  # credentials: webhooks only
                               credentials={"access_token": "shpat_test"})  # fmt: skip
        session.add(keyed)
    followed = Followed()

    fetched = _stored(shop, "refunds/create", refund, account=keyed)
    assert _process(shop, fetched, followed).outcome == "fetched"
    assert followed.fetched == [(keyed.id, str(refund["order_id"]))]
    assert _row(shop, fetched)[0] == InboxStatus.PROCESSED

    waits = _stored(shop, "refunds/create", refund)
    with pytest.raises(OrderNotKnown):  # the task tries it again later, when the order is in
        _process(shop, waits, followed)
    assert _row(shop, waits)[:2] == (InboxStatus.RECEIVED, 0)


def test_a_delivery_that_failed_for_good_is_marked_failed_unless_settled_meanwhile(
    shop: Shop, fixtures_dir: Path
) -> None:
    waiting = _stored(shop, "orders/create", fixture_order(fixtures_dir))
    settled = _stored(shop, "orders/create", fixture_order(fixtures_dir))
    _process(shop, settled, Followed())
    with shop.transaction() as session:
        inbox.fail(session, waiting, "WorkerLost: its worker died", 3)
        inbox.fail(session, settled, "WorkerLost: its worker died", 3)
    assert _row(shop, waiting)[:3] == (InboxStatus.FAILED, 3, "WorkerLost: its worker died")
    assert _row(shop, settled)[:2] == (InboxStatus.PROCESSED, 1)


def test_a_missing_row_is_said_so(shop: Shop) -> None:
    assert _process(shop, 10**9, Followed()).as_dict() == {"inbox_id": 10**9, "status": "missing"}
