"""A poll that cannot even build its connector fails its sync run (never left "running")."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from db.models import ChannelAccount, SyncRun
from db.session import make_engine


def test_an_account_with_bad_rate_limits_fails_its_poll_visibly(settings_for: str) -> None:
    from workflows.sync import poll_account

    maker = sessionmaker(bind=make_engine(settings_for), expire_on_commit=False)
    with maker() as session, session.begin():
        account = ChannelAccount(
            name="typo-shop", channel="amazon", shop="ATVPDKIKX0DER",
            api_base_url="http://127.0.0.1:9", credentials={"client_id": "x"},
            rate_limits={"getOrdres": {"rate": 1, "burst": 1}},  # a typo in an operation name
        )  # fmt: skip
        session.add(account)
        session.flush()
        account_id = account.id

    outcome = poll_account.apply(args=(account_id,))

    assert outcome.failed() and "getOrdres" in str(outcome.result)
    with maker() as session:
        (run,) = session.scalars(select(SyncRun).where(SyncRun.channel_account_id == account_id))
        assert run.status == "failed" and run.finished_at is not None
        assert run.error is not None and "getOrdres" in run.error


def test_a_redelivered_poll_takes_back_the_lock_its_dead_worker_left(
    settings_for: str, redis_url: str
) -> None:
    """A poll's worker died holding the account's reading lock, after the run it read had
    finished; Redis redelivers the message (same task id), which starts the next run: it
    takes its own lock back, reads, and leaves no lock behind (not the dead one's to run out
    its TTL). Another poll meanwhile finds a reader and returns at once."""
    import datetime as dt

    import httpx
    import redis
    import respx

    from db.base import utcnow
    from workflows.sync import poll_account

    site = f"http://woo.redelivered-{settings_for[-6:]}.test"
    maker = sessionmaker(bind=make_engine(settings_for), expire_on_commit=False)
    with maker() as session, session.begin():
        account = ChannelAccount(
            name=f"woo-redelivered-{settings_for[-6:]}", channel="woocommerce", shop=site,
            api_base_url=site, credentials={"consumer_key": "ck", "consumer_secret": "cs"},
        )  # fmt: skip
        session.add(account)
        session.flush()
        now = utcnow()
        session.add(SyncRun(channel_account_id=account.id, kind="poll", status="ok",
                            window_from=now - dt.timedelta(hours=1), window_to=now,
                            started_at=now, finished_at=now))  # fmt: skip
        account_id = account.id
    key = f"ordersync:lock:sync:{account_id}:poll"
    client = redis.Redis.from_url(redis_url)
    client.set(key, "poll-dead", px=600_000)  # what the killed worker left

    with respx.mock(assert_all_called=False) as mock:
        pages = mock.get(url__startswith=f"{site}/wp-json/wc/v3/orders").mock(
            return_value=httpx.Response(200, json=[], headers={"X-WP-TotalPages": "0"})
        )
        other = poll_account.apply(args=(account_id,), task_id="poll-other")
        assert other.result["status"] == "already running" and pages.call_count == 0
        assert client.get(key) == b"poll-dead"

        again = poll_account.apply(args=(account_id,), task_id="poll-dead")

    assert again.successful() and again.result["status"] == "ok", again.result
    assert pages.call_count >= 1
    assert client.exists(key) == 0
    with maker() as session:
        runs = session.scalars(select(SyncRun).where(SyncRun.channel_account_id == account_id))
        assert sorted(r.status for r in runs) == ["ok", "ok"]
