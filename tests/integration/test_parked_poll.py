"""A poll told to come back in two hours parks itself: its sync run says so, the cursor stays
where it was, and ``poll_due`` leaves the account alone until the parked poll is published.

The task runs in-process (``apply``) on a real database and Redis; only the marketplace's HTTP
is a respx mock.
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
import respx
from celery.states import IGNORED
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from db.models import ChannelAccount, OutboxMessage, SyncRun
from db.session import make_engine

SITE = "http://woo.parked.test"
CURSOR = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)



def test_a_long_retry_after_parks_the_poll_keeps_the_cursor_and_holds_off_poll_due(
    settings_for: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workflows.sync import poll_account, poll_due

    maker = sessionmaker(bind=make_engine(settings_for), expire_on_commit=False)
    with maker() as session, session.begin():
        account = ChannelAccount(
            name=f"woo-parked-{settings_for[-8:]}", channel="woocommerce", shop=SITE,
            api_base_url=SITE, credentials={"consumer_key": "ck", "consumer_secret": "cs"},
            poll_cursor=CURSOR,  # long due for a poll
        )  # fmt: skip
        session.add(account)
        session.flush()
        account_id = account.id
    before = dt.datetime.now(dt.UTC)

    # when the marketplace answers the poll 429, Retry-After two hours
    with respx.mock(assert_all_called=True) as mock:
        orders = mock.get(url__startswith=f"{SITE}/wp-json/wc/v3/orders").mock(
            return_value=httpx.Response(429, json={}, headers={"Retry-After": "7200"})
        )
        outcome = poll_account.apply(args=(account_id,))

    # then the task ends without failing, asked once and slept not at all
    assert outcome.state == IGNORED and orders.call_count == 1
    with maker() as session:
        (run,) = session.scalars(select(SyncRun).where(SyncRun.channel_account_id == account_id))
        assert run.status == "parked" and run.error is not None
        assert "waiting until" in run.error and "RateLimited" in run.error
        stored = session.get(ChannelAccount, account_id)
        assert stored is not None and stored.poll_cursor == CURSOR  # the window is read again
        (parked,) = session.scalars(select(OutboxMessage))
    assert parked.task_name == "ordersync.sync.poll_account" and parked.args == [account_id]
    assert parked.channel_account_id == account_id and parked.published_at is None
    expected = before + dt.timedelta(seconds=7200)
    assert parked.not_before is not None
    assert expected <= parked.not_before <= expected + dt.timedelta(seconds=30)
    assert parked.options is not None and parked.options["retries"] == 1
    assert parked.options["task_id"] == outcome.id
    assert run.error.startswith(f"waiting until {parked.not_before.isoformat()}")

    # and poll_due does not poll the account while its poll is parked, nor while the parked
    # poll, published again, goes on with its run; it does once that run is done
    published: list[int] = []
    monkeypatch.setattr(poll_account, "delay", published.append)
    assert poll_due.apply().get() == [] and published == []
    with maker() as session, session.begin():
        session.get_one(OutboxMessage, parked.id).published_at = dt.datetime.now(dt.UTC)
    assert poll_due.apply().get() == [] and published == []
    with maker() as session, session.begin():
        session.get_one(SyncRun, run.id).status = "ok"
    assert poll_due.apply().get() == [account_id] and published == [account_id]
