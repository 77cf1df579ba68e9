"""The webhook receiver: verify, store, answer, then publish (invariant 7).

``POST /webhooks/{channel}/{account}``:

1. look up the account *before* reading the body; read the body as a stream of at most
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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount, InboxEvent
from db.session import dialect_insert, get_sessionmaker
from domain.states import Channel, InboxStatus
from integrations.shopify import webhooks as shopify_webhooks
from integrations.woocommerce import webhooks as woocommerce_webhooks
from workflows.publish import publish_after_commit
from workflows.tasks import process_event

__all__ = ["RECEIVERS", "Receiver", "router"]

log = structlog.get_logger(__name__)
router = APIRouter(tags=["webhooks"])


@dataclass(frozen=True)
class Receiver:
    """How one marketplace signs, names and identifies its deliveries."""

    signature_header: str
    verify: Callable[[str, bytes, str | None], bool]
    topic: Callable[[Mapping[str, str]], str]
    dedupe_key: Callable[[Mapping[str, str], bytes], str]
    kept_headers: Callable[[Mapping[str, str]], dict[str, str]]
    # an unsigned "ping" that must be answered 200 and otherwise ignored (WooCommerce)
    is_ping: Callable[[Mapping[str, str], bytes], bool] = lambda _h, _b: False


RECEIVERS: dict[Channel, Receiver] = {
    Channel.SHOPIFY: Receiver(
        signature_header="x-shopify-hmac-sha256",
        verify=shopify_webhooks.verify_signature,
        topic=lambda h: h.get("x-shopify-topic") or "unknown",
        dedupe_key=shopify_webhooks.dedupe_key,
        kept_headers=shopify_webhooks.kept_headers,
    ),
    Channel.WOOCOMMERCE: Receiver(
        signature_header="x-wc-webhook-signature",
        verify=woocommerce_webhooks.verify_signature,
        topic=lambda h: woocommerce_webhooks.topic(h) or "unknown",
        dedupe_key=woocommerce_webhooks.dedupe_key,
        kept_headers=woocommerce_webhooks.kept_headers,
        is_ping=woocommerce_webhooks.is_ping,
    ),
}


#: what an unknown account and a bad signature both get
_REFUSED = HTTPException(401, "invalid signature or unknown account")


@dataclass(frozen=True)
class _Account:
    id: int
    webhook_secret: str = field(repr=False)


def _account(channel: Channel, name: str) -> _Account | None:
    """The active account of ``channel`` named ``name``: what the receiver needs of it."""
    with get_sessionmaker()() as session:
        row = session.execute(
            select(ChannelAccount.id, ChannelAccount.webhook_secret).where(
                ChannelAccount.name == name,
                ChannelAccount.channel == channel.value,
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
    channel: Channel, account_name: str, account: _Account, headers: dict[str, str], body: bytes
) -> dict[str, object]:
    receiver = RECEIVERS[channel]
    with get_sessionmaker()() as session, session.begin():
        if receiver.is_ping(headers, body):
            log.info("webhook.ping", channel=channel.value, account=account_name)
            return {"status": "ping"}
        if not receiver.verify(
            account.webhook_secret, body, headers.get(receiver.signature_header)
        ):
            log.warning(
                "webhook.bad_signature",
                channel=channel.value,
                account=account_name,
                topic=receiver.topic(headers),
                bytes=len(body),
            )
            raise _REFUSED
        dedupe_key = receiver.dedupe_key(headers, body)
        inbox_id = session.execute(
            dialect_insert(session)(InboxEvent)
            .values(
                channel_account_id=account.id,
                channel=channel.value,
                topic=receiver.topic(headers)[:100],
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
            log.info("webhook.duplicate", channel=channel.value, account=account_name)
            return {"status": "duplicate"}
        publish_after_commit(session, process_event.si(inbox_id))
    log.info("webhook.accepted", channel=channel.value, account=account_name, inbox_id=inbox_id)
    return {"status": "accepted", "inbox_id": inbox_id}


@router.post("/webhooks/{channel}/{account}")
async def receive(channel: str, account: str, request: Request) -> dict[str, object]:
    try:
        ch = Channel(channel)
    except ValueError:
        raise HTTPException(404, "unknown channel") from None
    if ch not in RECEIVERS:
        raise HTTPException(404, f"{channel} does not send webhooks")
    found = await run_in_threadpool(_account, ch, account)
    limit = get_settings().webhook_max_body_bytes
    body = await _read_body(request, limit, keep=found is not None)
    if found is None:
        log.warning("webhook.unknown_account", channel=ch.value, account=account)
        raise _REFUSED
    headers = {k.lower(): v for k, v in request.headers.items()}
    return await run_in_threadpool(_store, ch, account, found, headers, body)
