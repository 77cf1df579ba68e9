"""The carrier's tracking webhooks: ``POST /webhooks/carrier/{name}`` (served by
``web.webhooks.WebhookIntake``, before the staff gate, like the marketplaces' webhooks).

As for the marketplaces (invariant 7): the body is read as a bounded stream
(``WEBHOOK_MAX_BODY_BYTES``, 413 beyond), its signature checked over the raw bytes
(``integrations.carriers.webhooks.verify``: ShipEngine's RSA-SHA256 with the public keys of
``CARRIER_WEBHOOK_KEYS``, and a timestamp within five minutes), then it is stored raw in
``carrier_events`` (``INSERT … ON CONFLICT DO NOTHING`` on the SHA-256 of the body: the same
delivery twice is one row), committed, answered 200, and only then is its task published
(``orders.carrier_events``; the sweeper publishes a row whose publish was lost). A bad or
missing signature, a stale timestamp or an unknown key gets 401 and a log line naming the
reason, and nothing is stored; without ``CARRIER_WEBHOOK_KEYS`` the route answers 404, and
with keys we refuse to trust (under 2048 bits) 503 and an error line naming the setting. The
body is never parsed here. ``{name}`` is the carrier's name as the URL was registered with it
(``shipengine``), kept with the event.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from core.settings import get_settings
from db.base import utcnow
from db.models import CarrierEvent
from db.session import dialect_insert_for, get_engine
from domain.states import InboxStatus
from integrations.carriers.webhooks import PublicKey, parse_jwks, verify
from orders.carrier_events import TASK
from web.metrics import WEBHOOKS_DUPLICATE, WEBHOOKS_RECEIVED, WEBHOOKS_REJECTED
from workflows.celery_app import app

__all__ = ["PREFIX", "receive"]

log = structlog.get_logger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/webhooks/carrier/"
#: the metrics' channel label of these deliveries
_CHANNEL = "carrier"


@functools.lru_cache(maxsize=4)
def _keys(document: str) -> dict[str, PublicKey]:
    return parse_jwks(document)


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    content = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": content})


async def _body(receive: Receive, headers: dict[str, str], limit: int) -> bytes | None:
    """The body, at most ``limit`` bytes (``None`` beyond: 413). Signed deliveries are small
    (one parcel's tracking), so it is read into memory."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _store(engine: Engine, carrier: str, body: bytes) -> int | None:
    """Insert the delivery (once per body) and commit; its id, or None for a duplicate."""
    statement = (
        dialect_insert_for(engine.dialect.name)(CarrierEvent)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(CarrierEvent.id)
    )
    values = {
        "carrier": carrier, "dedupe_key": hashlib.sha256(body).hexdigest(), "body": body,
        "status": InboxStatus.RECEIVED.value, "attempts": 0, "received_at": utcnow(),
    }  # fmt: skip
    with engine.begin() as conn:
        found: int | None = conn.execute(statement, values).scalar()
        return found


def _publish(event_id: int) -> None:
    try:
        app.signature(TASK, (event_id,)).apply_async()
    except Exception as exc:  # the row waits in ``received``: the sweeper publishes it
        log.warning("publish.failed", task=TASK, event_id=event_id, error=type(exc).__name__)


async def receive(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one ``/webhooks/carrier/{name}`` request (see the module docstring)."""
    name = scope["path"][len(PREFIX) :]
    if scope["method"] != "POST":
        await _answer(send, 405, {"detail": "method not allowed"})
        return
    settings = get_settings()
    if not name or "/" in name or len(name) > 50 or not settings.carrier_webhook_keys:
        await _answer(send, 404, {"detail": "not found"})
        return
    WEBHOOKS_RECEIVED.labels(_CHANNEL).inc()
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    body = await _body(receive, headers, settings.webhook_max_body_bytes)
    if body is None:
        WEBHOOKS_REJECTED.labels(_CHANNEL, "too_large").inc()
        await _answer(send, 413, {"detail": "body too large"})
        return
    try:
        keys = _keys(settings.carrier_webhook_keys)
    except ValueError as exc:  # a key we refuse to trust (too short, …): nothing is verified
        log.error("carrier_webhook.keys_unusable", setting="ORDERSYNC_CARRIER_WEBHOOK_KEYS",
                  error=str(exc))  # fmt: skip
        await _answer(send, 503, {"detail": "carrier webhooks are misconfigured here"})
        return
    refused = verify(keys, headers, body, utcnow())
    if refused is not None:
        log.warning("carrier_webhook.refused", carrier=name, reason=refused, bytes=len(body))
        WEBHOOKS_REJECTED.labels(_CHANNEL, "bad_signature").inc()
        await _answer(send, 401, {"detail": "invalid signature"})
        return
    event_id = await run_in_threadpool(_store, get_engine(), name, body)
    if event_id is None:
        log.info("carrier_webhook.duplicate", carrier=name)
        WEBHOOKS_DUPLICATE.labels(_CHANNEL).inc()
        await _answer(send, 200, {"status": "duplicate"})
        return
    log.info("carrier_webhook.accepted", carrier=name, event_id=event_id)
    await _answer(send, 200, {"status": "accepted", "event_id": event_id})
    await run_in_threadpool(_publish, event_id)
