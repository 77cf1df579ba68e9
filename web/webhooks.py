"""The webhook receiver: verify, store, answer, then publish (invariant 7).

``POST /webhooks/{channel}/{account}``:

1. look up the channel's marketplace in the registry (404 if none, or if it sends no webhooks:
   its ``WebhookReceiver`` says how it signs, names and identifies deliveries), then the
   account, *before* reading the body; read the body as a stream of at most
   ``WEBHOOK_MAX_BODY_BYTES`` (413 beyond it, before a byte is read when ``Content-Length``
   says so), so that no request without credentials can make the process hold more;
2. verify the signature over the *raw* body, constant-time, as it streams in where the
   marketplace's receiver has a ``body_check`` (the body is spooled: memory up to 64 KiB, then
   a temporary file), so a body with a bad signature is never held whole. An unknown
   account and a bad signature get the same 401 (account names cannot be enumerated) and a
   log line; nothing is stored;
3. insert the raw delivery into ``inbox_events`` with the channel's dedupe key,
   ``ON CONFLICT DO NOTHING`` (a redelivery of the same webhook is absorbed here);
4. commit, answer 200, and only then publish ``process_event(inbox_id)`` (if the row is new).

The body is never parsed here: a payload we cannot parse is still stored and answered 200, and
the task marks it ``failed`` with the parse error for staff to see.
"""

from __future__ import annotations

import tempfile
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
from integrations.marketplace import BodyCheck, WebhookReceiver
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


#: a body with a bad signature up to this size is still read whole (an unsigned ping is tiny);
#: past it, it is refused without ever being held
_SMALL = 64 * 1024


@dataclass
class _Body:
    """A request body read as a stream: in memory up to ``_SMALL``, on disk past it."""

    file: tempfile.SpooledTemporaryFile[bytes] | None = None
    size: int = 0
    #: what the streaming signature check said (None: the receiver has none, or nothing kept)
    verified: bool | None = None

    def read(self) -> bytes:
        if self.file is None:
            return b""
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


async def _read_body(request: Request, limit: int, check: BodyCheck | None, *, keep: bool) -> _Body:
    """The body, streamed, at most ``limit`` bytes (413 beyond). ``keep=False`` reads and drops
    it, so a request for an unknown account takes the same time and answers as one with a bad
    signature. A kept body is fed to the receiver's streaming signature ``check`` and spooled
    (memory up to ``_SMALL``, then a temporary file), so that no request with a bad signature
    makes the process hold more than ``_SMALL`` of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body larger than {limit} bytes")
    body = _Body(tempfile.SpooledTemporaryFile(max_size=_SMALL) if keep else None)
    try:
        async for chunk in request.stream():
            body.size += len(chunk)
            if body.size > limit:
                raise HTTPException(413, f"body larger than {limit} bytes")
            if body.file is not None:
                body.file.write(chunk)
                if check is not None:
                    check.update(chunk)
    except BaseException:
        body.close()
        raise
    if check is not None and keep:
        body.verified = check.valid()
    return body


def _store(
    session: Session,
    channel: str,
    receiver: WebhookReceiver,
    account_name: str,
    account: _Account,
    headers: dict[str, str],
    body: bytes,
    verified: bool | None = None,
) -> dict[str, object]:
    with session.begin():
        if receiver.is_ping(headers, body):
            log.info("webhook.ping", channel=channel, account=account_name)
            return {"status": "ping"}
        topic = receiver.topic(headers) or "unknown"
        if verified is None:
            verified = receiver.verify(
                account.webhook_secret, body, headers.get(receiver.signature_header)
            )
        if not verified:
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
    headers = {k.lower(): v for k, v in request.headers.items()}
    check = None
    if found is not None and receiver.body_check is not None:
        check = receiver.body_check(found.webhook_secret, headers.get(receiver.signature_header))
    body = await _read_body(request, limit, check, keep=found is not None)
    try:
        if found is None:
            log.warning("webhook.unknown_account", channel=channel, account=account)
            raise _REFUSED
        if body.verified is False and body.size > _SMALL:
            # too big to be a ping, and not signed by the account: never loaded
            log.warning("webhook.bad_signature", channel=channel, account=account,
                        topic=receiver.topic(headers) or "unknown", bytes=body.size)  # fmt: skip
            raise _REFUSED
        raw = body.read()
    finally:
        body.close()
    return await run_in_threadpool(
        _store, session, channel, receiver, account, found, headers, raw, body.verified
    )
