"""Sync status: a poll, then a nightly full sync that finds what the poll missed, against the
eBay simulator over real HTTP; the night's reconcile report is a row, and ``ordersync sync
status``, ``/api/sync`` and ``/sync`` show it with the poll and the next one."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from core.settings import get_settings
from db.models import ChannelAccount, ReconcileReport, SyncRun
from db.session import make_engine
from ordersync.cli import main
from sandbox.server import Sandbox
from tests.support.staff import bearer, staff_token
from web.app import create_app


@pytest.fixture
def setup(
    migrated_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[sessionmaker[Any], Sandbox]]:
    monkeypatch.setenv("ORDERSYNC_DATABASE_URL", migrated_url)
    monkeypatch.setenv("ORDERSYNC_REDIS_URL", redis_url)
    monkeypatch.setenv("ORDERSYNC_VAR_DIR", str(tmp_path))
    get_settings.cache_clear()
    sandbox = Sandbox(seed=3)
    sandbox.start()
    engine = make_engine(migrated_url)
    try:
        yield sessionmaker(bind=engine, expire_on_commit=False), sandbox
    finally:
        sandbox.stop()
        engine.dispose()
        get_settings.cache_clear()


def test_a_full_sync_stores_what_it_repaired_and_sync_status_shows_it(
    setup: tuple[sessionmaker[Any], Sandbox],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from workflows import sync

    maker, sandbox = setup
    spec = sandbox.accounts("unused")["ebay"]
    with maker() as session, session.begin():
        account = ChannelAccount(
            name="ebay-shop",
            channel="ebay",
            shop=spec.shop,
            api_base_url=spec.api_base_url,
            credentials=spec.credentials,
        )
        session.add(account)
        # and an account whose every sync fails for good (a typo in its rate limits)
        session.add(ChannelAccount(name="typo-shop", channel="amazon", shop="ATVPDKIKX0DER",
                                   api_base_url="http://127.0.0.1:9", credentials={"x": "y"},
                                   rate_limits={"getOrdres": {"rate": 1, "burst": 1}}))  # fmt: skip
        session.flush()
        account_id = account.id
    first = sandbox.ebay.add_orders(3)

    # given a poll that read three orders
    polled = sync.poll_account.apply(args=(account_id,)).get()
    assert (polled["status"], polled["orders"]) == ("ok", 3)

    # when two more arrive and one is cancelled, and the nightly full sync runs before any
    # poll saw them (a missed webhook, a poll that failed all day)
    sandbox.ebay.add_orders(2)
    sandbox.ebay.cancel_order(first[0])
    # (each account's full sync runs here, one after the other: no worker in this test)
    monkeypatch.setattr(
        sync.full_sync_account,
        "delay",
        lambda *args, **kwargs: sync.full_sync_account.apply(args, kwargs),
    )
    assert sync.full_sync_all.apply().get() == 2

    # then the night's report is a row, finished by the last account's run: 5 seen, 2 missing
    # here and created, the cancellation repaired, and the account that failed as an error
    with maker() as session:
        report = session.scalars(select(ReconcileReport)).one()
        full = session.scalars(
            select(SyncRun).where(SyncRun.kind == "full", SyncRun.channel_account_id == account_id)
        ).one()
    assert (
        report.accounts,
        report.seen,
        report.created,
        report.updated,
        report.states_repaired,
        report.errors,
    ) == (2, 5, 2, 1, 1, 1)
    assert report.finished_at is not None and full.reconcile_report_id == report.id

    # and `ordersync sync status --json` shows the poll, the next one and the report
    with pytest.raises(SystemExit) as done:
        main(["sync", "status", "--json"])
    assert done.value.code == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # after the log lines
    row = next(r for r in rows if r["account"] == "ebay-shop")
    assert row["account"] == "ebay-shop" and row["polled"] is True
    assert row["last_poll"]["status"] == "ok" and row["last_poll"]["seen"] == 3
    cursor = dt.datetime.fromisoformat(row["cursor"])
    interval = dt.timedelta(seconds=get_settings().poll_interval_s)
    assert dt.datetime.fromisoformat(row["next_poll"]) >= cursor + interval - dt.timedelta(
        seconds=1
    )
    assert row["last_full_sync"]["status"] == "ok"
    assert {
        k: row["reconcile_report"][k]
        for k in ("seen", "created", "updated", "states_repaired", "errors")
    } == {"seen": 5, "created": 2, "updated": 1, "states_repaired": 1, "errors": 1}

    # and the dashboard's page and the JSON API say the same, with the orders in the chart
    client = TestClient(create_app(), base_url="http://ordersync.local")
    viewer = bearer(staff_token(maker, "viewer"))
    api = client.get("/api/sync", headers=viewer).json()
    assert [a["reconcile_report"]["created"] for a in api["accounts"]] == [2, 2]
    assert sum(api["orders_per_hour"]["ebay"]) == 5
    page = client.get("/sync", headers=viewer)
    assert page.status_code == 200
    assert "missing here, repaired 2" in page.text and "states repaired 1" in page.text
    assert 'class="series" data-channel="ebay"' in page.text
