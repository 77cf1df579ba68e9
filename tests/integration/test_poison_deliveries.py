"""A message whose worker dies each time it runs it (redelivered by Redis: ``redelivered`` in
its delivery info) is counted by its task id; past ``MAX_DELIVERIES`` it is set aside
as poison (the inbox row ``failed`` with why) and not run again. A first delivery costs
nothing and counts nothing. Real database and Redis; the task runs in-process, its request
made as the worker makes it for a redelivered message."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import sessionmaker

from db.models import ChannelAccount, InboxEvent
from db.session import make_engine


@pytest.fixture
def poison_settings(settings_for: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``settings_for`` with a delivery bound of 3, and no delivery counted yet."""
    from core.runtime import redis_url as url_of
    from core.settings import get_settings
    from workflows.locks import DELIVERIES_KEY, _scripts

    monkeypatch.setenv("ORDERSYNC_MAX_DELIVERIES", "3")
    get_settings.cache_clear()
    client = _scripts(url_of()).client  # inbox ids repeat across the databases: counts start at 0
    for key in client.scan_iter(f"{DELIVERIES_KEY}*"):
        client.delete(key)
    yield settings_for
    get_settings.cache_clear()


def _inbox_row(url: str, body: bytes) -> tuple[sessionmaker, int]:  # type: ignore[type-arg]
    maker = sessionmaker(bind=make_engine(url), expire_on_commit=False)
    with maker() as session, session.begin():
        account = ChannelAccount(name=f"poison-{url[-8:]}-{len(body)}", channel="shopify",
                                 shop="p.myshopify.com", webhook_secret="s")  # fmt: skip
        session.add(account)
        session.flush()
        event = InboxEvent(channel_account_id=account.id, channel="shopify", body=body,
                           topic="orders/create", dedupe_key=f"k-{account.id}")  # fmt: skip
        session.add(event)
        session.flush()
        return maker, event.id


def _deliver(inbox_id: int, *, redelivered: bool) -> object:
    from workflows.tasks import process_event

    process_event.push_request(id=f"t-{inbox_id}", delivery_info={"redelivered": redelivered})
    try:
        return process_event(inbox_id)
    finally:
        process_event.pop_request()


def test_a_message_redelivered_past_the_bound_is_set_aside_not_run(poison_settings: str) -> None:
    # an inbox row whose processing "killed" its worker three times (each run ended with the
    # process gone: here the row stays received because the run is never made)
    from workflows.locks import count_delivery

    maker, inbox_id = _inbox_row(poison_settings, b'{"id": 1}')
    for _ in range(3):
        count_delivery(f"t-{inbox_id}")

    # when Redis hands it out a fourth time
    assert _deliver(inbox_id, redelivered=True) is None

    # then it was not run: set aside for staff, with why and how often
    with maker() as session:
        event = session.get_one(InboxEvent, inbox_id)
        assert event.status == "failed" and event.attempts == 3
        assert event.error is not None and "poison" in event.error and "3 times" in event.error


def test_redeliveries_within_the_bound_run_and_first_deliveries_count_nothing(
    poison_settings: str,
) -> None:
    from core.runtime import redis_url
    from workflows.locks import DELIVERIES_KEY, _scripts

    maker, inbox_id = _inbox_row(poison_settings, b"not json")
    key = f"{DELIVERIES_KEY}t-{inbox_id}"
    client = _scripts(redis_url()).client

    _deliver(inbox_id, redelivered=False)
    assert client.get(key) is None  # a first delivery: no Redis round trip, nothing counted

    with maker() as session, session.begin():  # handed out again after its worker died
        session.get_one(InboxEvent, inbox_id).status = "received"
    result = _deliver(inbox_id, redelivered=True)
    assert int(client.get(key) or 0) == 1
    assert isinstance(result, dict) and result["status"] == "failed"  # it ran: unparseable
    with maker() as session:
        assert "not JSON" in (session.get_one(InboxEvent, inbox_id).error or "")


def test_other_messages_of_the_same_work_each_redelivered_once_are_not_poison(
    poison_settings: str,
) -> None:
    # the same work published many times over a day (a stock flush of one account, say), each
    # message redelivered once after a crash: four such messages, a bound of three
    maker, inbox_id = _inbox_row(poison_settings, b"not json")
    from workflows.tasks import process_event

    for n in range(4):
        with maker() as session, session.begin():
            session.get_one(InboxEvent, inbox_id).status = "received"
        process_event.push_request(id=f"copy-{n}-{inbox_id}", delivery_info={"redelivered": True})
        try:
            result = process_event(inbox_id)
        finally:
            process_event.pop_request()
        assert isinstance(result, dict)  # it ran: not set aside

    with maker() as session:
        assert "poison" not in (session.get_one(InboxEvent, inbox_id).error or "")
