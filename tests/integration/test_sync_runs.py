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
