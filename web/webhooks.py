"""The webhook receiver: verify, store, answer, then publish (invariant 7).

``POST /webhooks/{channel}/{account}``:

1. look up the channel's marketplace in the registry (404 if none, or if it sends no webhooks:
   its ``WebhookReceiver`` says how it signs, names and identifies deliveries), then the
   account, *before* reading the body; read the body as a stream of at most
   ``WEBHOOK_MAX_BODY_BYTES`` (413 beyond it, before a byte is read when ``Content-Length``
   says so), so that no request without credentials can make the process hold more;
2. verify the signature over the *raw* body, constant-time. An unknown account and a bad
   signature get the same 401 (account names cannot be enumerated) and a log line; nothing is
   stored;
3. insert the raw delivery into ``inbox_events`` with the channel's dedupe key,
   ``ON CONFLICT DO NOTHING`` (a redelivery of the same webhook is absorbed here);
4. commit, answer 200, and only then publish ``process_event(inbox_id)`` (if the row is new).

The body is never parsed here: a payload we cannot parse is still stored and answered 200, and
the task marks it ``failed`` with the parse error for staff to see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount, InboxEvent
from db.session import dialect_insert
from domain.states import InboxStatus
from integrations import registry
from integrations.marketplace import WebhookReceiver
from web.sessions import SessionDep
from workflows.publish import publish_after_commit
from workflows.tasks import process_event

__all__ = ["router"]

log = structlog.get_logger(__name__)
router = APIRouter(tags=["webhooks"])


#: what an unknown account and a bad signature both get
_REFUSED = HTTPException(401, "invalid signature or unknown account")


@dataclass(frozen=True)
class _Account:
    id: int
    webhook_secret: str = field(repr=False)


def _account(session: Session, channel: str, name: str) -> _Account | None:
    """The active account of ``channel`` named ``name``: what the receiver needs of it (read
    in a transaction of its own, ended before the body is read)."""
    with session.begin():
        row = session.execute(
            select(ChannelAccount.id, ChannelAccount.webhook_secret).where(
                ChannelAccount.name == name,
                ChannelAccount.channel == channel,
                ChannelAccount.active.is_(True),
            )
        ).one_or_none()
    return None if row is None else _Account(row.id, row.webhook_secret or "")


async def _read_body(request: Request, limit: int, *, keep: bool) -> bytes:
    """The body, streamed, at most ``limit`` bytes (413 beyond). ``keep=False`` reads and drops
    it, so a request for an unknown account takes the same time and answers as one with a bad
    signature, without the process holding its bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body larger than {limit} bytes")
    body = bytearray()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
        if keep:
            body += chunk
    return bytes(body)


def _store(
    session: Session,
    channel: str,
    receiver: WebhookReceiver,
    account_name: str,
    account: _Account,
    headers: dict[str, str],
    body: bytes,
) -> dict[str, object]:
    with session.begin():
        if receiver.is_ping(headers, body):
            log.info("webhook.ping", channel=channel, account=account_name)
            return {"status": "ping"}
        topic = receiver.topic(headers) or "unknown"
        if not receiver.verify(
            account.webhook_secret, body, headers.get(receiver.signature_header)
        ):
            log.warning(
                "webhook.bad_signature",
                channel=channel,
                account=account_name,
                topic=topic,
                bytes=len(body),
            )
            raise _REFUSED
        dedupe_key = receiver.dedupe_key(headers, body)
        inbox_id = session.execute(
            dialect_insert(session)(InboxEvent)
            .values(
                channel_account_id=account.id,
                channel=channel,
                topic=topic[:100],
                dedupe_key=dedupe_key[:255],
                headers=receiver.kept_headers(headers),
                body=body,
                status=InboxStatus.RECEIVED.value,
                attempts=0,
                received_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["channel_account_id", "dedupe_key"])
            .returning(InboxEvent.id)
        ).scalar_one_or_none()
        if inbox_id is None:
            log.info("webhook.duplicate", channel=channel, account=account_name)
            return {"status": "duplicate"}
        publish_after_commit(session, process_event.si(inbox_id))
    log.info("webhook.accepted", channel=channel, account=account_name, inbox_id=inbox_id)
    return {"status": "accepted", "inbox_id": inbox_id}


@router.post("/webhooks/{channel}/{account}")
async def receive(
    channel: str, account: str, request: Request, session: SessionDep
) -> dict[str, object]:
    marketplace = registry.marketplaces().get(channel)
    if marketplace is None:
        raise HTTPException(404, "unknown channel")
    receiver = marketplace.webhooks
    if receiver is None:
        raise HTTPException(404, f"{channel} does not send webhooks")
    found = await run_in_threadpool(_account, session, channel, account)
    limit = get_settings().webhook_max_body_bytes
    body = await _read_body(request, limit, keep=found is not None)
    if found is None:
        log.warning("webhook.unknown_account", channel=channel, account=account)
        raise _REFUSED
    headers = {k.lower(): v for k, v in request.headers.items()}
    return await run_in_threadpool(
        _store, session, channel, receiver, account, found, headers, body
    )
