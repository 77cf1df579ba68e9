"""One stored webhook delivery (an ``inbox_events`` row), processed: the marketplace's own topic
handler applies it, and the row records how it ended.

The task ``ordersync.intake.process_event`` calls ``process`` in its transaction and gives it
what comes after (``after_intake``: new orders enter the pipeline, cancellations release, …;
``fetch``: an order to read from the marketplace as it is now), both published after commit.

- a row already settled (processed, failed, ignored) is left as it is: a redelivery does nothing;
- a channel no longer registered, or a payload that does not parse or map, **fails** with the
  reason staff see (field paths and error types only: values may be buyer data), never retried;
- a topic the marketplace does not handle is **ignored**, with the topic named;
- a delivery about an order we do not hold (it overtook the order's own delivery) has the order
  fetched (what it says comes with it) and is processed; for a webhook-only account, which we
  cannot ask, it raises and the task tries again later, when the order is in;
- otherwise **processed**, with its order, and ``stale`` noted when it was older than ours.

The row's attempts are counted with its outcome, in the same UPDATE (a rolled-back attempt
counts nothing: the task's failure handler records its attempts itself, ``fail``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pydantic
import structlog
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import ChannelAccount, InboxEvent
from domain.errors import OrderNotKnown, PayloadError
from domain.states import InboxStatus
from integrations import registry
from integrations.marketplace import Delivery
from orders.intake import IntakeResult

__all__ = ["AfterIntake", "Fetch", "Processed", "fail", "process"]

log = structlog.get_logger(__name__)

#: what follows an applied delivery, in its transaction: (session, the result, the account's id)
AfterIntake = Callable[[Session, IntakeResult, int], None]
#: an order to fetch from the marketplace after commit: (session, the account's id, its id there)
Fetch = Callable[[Session, int, str], None]


@dataclass(frozen=True)
class Processed:
    """How one delivery ended (``status``: an ``InboxStatus``, or ``missing``)."""

    inbox_id: int
    status: str
    order_id: int | None = None
    outcome: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


# prebuilt (see db.session.core)
_LOAD_EVENT = (
    select(InboxEvent, ChannelAccount)
    .join(ChannelAccount, ChannelAccount.id == InboxEvent.channel_account_id)
    .where(InboxEvent.id == bindparam("b_id"))
    .with_for_update(of=InboxEvent)
)


def process(
    session: Session, inbox_id: int, *, after_intake: AfterIntake, fetch: Fetch
) -> Processed:
    """Apply the delivery ``inbox_id`` once (the row is locked while it is applied)."""
    row = session.execute(_LOAD_EVENT, {"b_id": inbox_id}).one_or_none()
    if row is None:
        log.warning("inbox.missing", inbox_id=inbox_id)
        return Processed(inbox_id, "missing")
    event, account = row
    if event.status != InboxStatus.RECEIVED:
        return Processed(inbox_id, event.status, order_id=event.order_id)
    attempts = event.attempts + 1
    try:
        marketplace = registry.get(event.channel)
    except registry.UnknownMarketplace as exc:
        # a channel no longer registered fails: staff see it, and retry it once the plugin is back
        log.warning("inbox.unknown_marketplace", inbox_id=inbox_id, channel=event.channel)
        return _settle(event, InboxStatus.FAILED, attempts, error=str(exc))
    handler = marketplace.topic_handlers.get(event.topic)
    if handler is None:
        log.info("inbox.ignored_topic", inbox_id=inbox_id, topic=event.topic)
        _settle(event, InboxStatus.IGNORED, attempts, error=f"topic {event.topic!r} is not handled")
        return Processed(inbox_id, event.status)
    try:
        delivery = Delivery(account.id, account.name, event.topic, _parse(event.body))
        with session.begin_nested():  # a failed mapping must not leave half an order
            result = handler(session, marketplace, delivery)
    except OrderNotKnown as exc:
        if not account.credentials:
            raise  # a webhook-only account: tried again later, when the order is in
        fetch(session, account.id, exc.external_id)
        log.info("inbox.order_fetched", inbox_id=inbox_id, topic=event.topic)
        _settle(event, InboxStatus.PROCESSED, attempts,
                error=f"{exc}: the order is fetched from the marketplace")  # fmt: skip
        return Processed(inbox_id, event.status, outcome="fetched")
    except (PayloadError, pydantic.ValidationError) as exc:
        message = _payload_error_message(exc)
        log.warning("inbox.unparseable", inbox_id=inbox_id, error=message[:300])
        _settle(event, InboxStatus.FAILED, attempts, error=message[:2000])
        return Processed(inbox_id, event.status, error=message)
    after_intake(session, result, account.id)
    stale = "stale: older than the stored order" if result.outcome == "stale" else None
    _settle(event, InboxStatus.PROCESSED, attempts, error=stale)
    event.order_id = result.order_id
    log.info("inbox.processed", inbox_id=inbox_id, order_id=result.order_id,
             outcome=result.outcome)  # fmt: skip
    return Processed(inbox_id, event.status, order_id=result.order_id, outcome=result.outcome)


def fail(session: Session, inbox_id: int, error: str, attempts: int) -> None:
    """The delivery failed for good (its task's retries ran out, or its worker died each
    time): marked ``failed`` with the reason, unless it was settled meanwhile."""
    session.execute(
        update(InboxEvent)
        .where(InboxEvent.id == inbox_id, InboxEvent.status == InboxStatus.RECEIVED)
        .values(
            status=InboxStatus.FAILED, error=error, attempts=attempts, processed_at=utcnow()
        )
    )


def _settle(
    event: InboxEvent, status: str, attempts: int, *, error: str | None = None
) -> Processed:
    """The inbox row's outcome, with its attempts counted in the same UPDATE."""
    event.status, event.attempts, event.error = status, attempts, error
    event.processed_at = utcnow()
    return Processed(event.id, status, error=error)


def _parse(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from exc
    except RecursionError:  # signed, stored, but nested deeper than any order is
        raise PayloadError("body is not JSON we can read: nested too deeply") from None
    if not isinstance(payload, dict):
        raise PayloadError(f"body is JSON {type(payload).__name__}, expected an object")
    return payload


def _payload_error_message(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        # field paths and error types only: the values may be customer data
        parts = [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:10]
        ]
        return f"payload does not map: {'; '.join(parts)}"
    return str(exc)
