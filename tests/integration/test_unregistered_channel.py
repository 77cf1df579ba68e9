"""A stored delivery of a channel no longer registered (its plugin was removed from
``ORDERSYNC_MARKETPLACE_PLUGINS``) fails visibly instead of being retried forever or dropped."""

from __future__ import annotations

from sqlalchemy.orm import sessionmaker

from db.base import utcnow
from db.models import ChannelAccount, InboxEvent
from db.session import make_engine
from domain.states import InboxStatus


def test_a_delivery_of_an_unregistered_channel_is_marked_failed(settings_for: str) -> None:
    from workflows.tasks import process_event

    maker = sessionmaker(bind=make_engine(settings_for), expire_on_commit=False)
    with maker() as session, session.begin():
        account = ChannelAccount(name="old-plugin-shop", channel="gone", webhook_secret="s")
        session.add(account)
        session.flush()
        event = InboxEvent(
            channel_account_id=account.id, channel="gone", topic="order.placed",
            dedupe_key="d-1", headers={}, body=b"{}", status=InboxStatus.RECEIVED,
            attempts=0, received_at=utcnow(),
        )  # fmt: skip
        session.add(event)
        session.flush()
        inbox_id = event.id

    outcome = process_event.apply(args=(inbox_id,))

    assert outcome.successful()
    with maker() as session:
        stored = session.get(InboxEvent, inbox_id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (InboxStatus.FAILED, 1)
        assert stored.error is not None and "unknown marketplace 'gone'" in stored.error
