"""The webhook receiver: verify, store, answer, then publish (invariant 7).

``POST /webhooks/{channel}/{account}`` is served by ``WebhookIntake``, a plain ASGI layer in
front of the FastAPI app: a webhook pays for no routing, dependency or middleware machinery
(it is the one route that must absorb a burst: Shopify gives us 5 seconds per delivery).

1. look up the channel's marketplace in the registry (404 if none, or if it sends no webhooks:
   its ``WebhookReceiver`` says how it signs, names and identifies deliveries), then the
   account, *before* reading the body, from a small in-process cache (``AccountCache``:
   ``WEBHOOK_ACCOUNT_CACHE_S``; a delivery whose signature fails drops the entry, so a rotated
   secret costs one marketplace retry); read the body as a stream of at most
   ``WEBHOOK_MAX_BODY_BYTES`` (413 beyond it, before a byte is read when ``Content-Length``
   says so), so that no request without credentials can make the process hold more;
2. verify the signature over the *raw* body, constant-time, as it streams in where the
   marketplace's receiver has a ``body_check`` (the body is spooled: memory up to 64 KiB, then
   a temporary file), so a body with a bad signature is never held whole. An unknown
   account and a bad signature get the same 401 (account names cannot be enumerated) and a
   log line; nothing is stored;
3. insert the raw delivery into ``inbox_events`` with the channel's dedupe key, one prebuilt
   ``INSERT … ON CONFLICT DO NOTHING RETURNING id``, committed (on PostgreSQL in autocommit:
   no BEGIN and COMMIT round trips; a redelivery of the same webhook is absorbed here);
4. commit, answer 200, and only then hand the inbox id (if the row is new) to the process's
   publisher thread, which publishes ``process_event(inbox_id)`` for what has gathered with
   one producer (the request path makes no broker round trip and no thread hop for it).
   A broker that is down does not fail the delivery: the row is committed in state
   ``received`` and the sweeper publishes it; after a failed publish the publisher stops
   trying for ``_BROKER_BACKOFF_S``.

The request path hops to a thread once (the insert and commit: at most ``WRITERS`` of them at
once per process), twice when the account is not in the cache.

The body is never parsed here: a payload we cannot parse is still stored and answered 200, and
the task marks it ``failed`` with the parse error for staff to see.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Any

import structlog
from celery import Task
from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from core.settings import get_settings
from db.base import utcnow
from db.models import ChannelAccount, InboxEvent
from db.session import dialect_insert_for, get_engine
from domain.states import InboxStatus
from integrations import registry
from integrations.marketplace import BodyCheck, WebhookReceiver
from web import carrier_webhooks
from web.metrics import WEBHOOKS_DUPLICATE, WEBHOOKS_RECEIVED, WEBHOOKS_REJECTED
from workflows.tasks import process_event

__all__ = ["AccountCache", "WebhookIntake", "accounts"]

log = structlog.get_logger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: a body with a bad signature up to this size is still read whole (an unsigned ping is tiny);
#: past it, it is refused without ever being held
_SMALL = 64 * 1024
#: after a publish the broker refused, skip publishing from here for this long (the sweeper
#: publishes what is committed)
_BROKER_BACKOFF_S = 5.0
_PREFIX = "/webhooks/"


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


#: what an unknown account and a bad signature both get
_REFUSED = _Refused(401, "invalid signature or unknown account")


@dataclass(frozen=True)
class _Account:
    id: int
    webhook_secret: str = field(repr=False)


class AccountCache:
    """(channel, account name) → the active account's id and webhook secret, kept for
    ``ttl_s`` (unknown names too, so a flood for a name we do not have costs no query each)."""

    def __init__(self) -> None:
        #: key → (when it was read, the account or None for a name we do not have)
        self._entries: dict[tuple[str, str], tuple[float, _Account | None]] = {}
        self._lock = threading.Lock()

    def cached(self, channel: str, name: str) -> tuple[bool, _Account | None]:
        """(True, the entry) while it is fresh, else (False, None): no query, no thread, so
        the event loop asks this first and goes to a thread only for ``get``."""
        with self._lock:
            entry = self._entries.get((channel, name))
        ttl = get_settings().webhook_account_cache_s
        if entry is not None and time.monotonic() - entry[0] < ttl:
            return True, entry[1]
        return False, None

    def get(self, engine: Engine, channel: str, name: str) -> _Account | None:
        hit, found = self.cached(channel, name)
        if hit:
            return found
        key, now = (channel, name), time.monotonic()
        with engine.connect() as conn:
            row = conn.execute(_ACCOUNT, {"name": name, "channel": channel}).one_or_none()
        found = None if row is None else _Account(row.id, row.webhook_secret or "")
        with self._lock:
            if len(self._entries) > 10_000:  # names sent by strangers: never grows unbounded
                self._entries.clear()
            self._entries[key] = (now, found)
        return found

    def forget(self, channel: str, name: str) -> None:
        with self._lock:
            self._entries.pop((channel, name), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


accounts = AccountCache()

_ACCOUNT = select(ChannelAccount.id, ChannelAccount.webhook_secret).where(
    ChannelAccount.name == bindparam("name"),
    ChannelAccount.channel == bindparam("channel"),
    ChannelAccount.active.is_(True),
)
_INSERTS: dict[str, Any] = {}


def _insert_statement(dialect: str) -> Any:
    """``INSERT … ON CONFLICT (account, dedupe key) DO NOTHING RETURNING id``, built once."""
    statement = _INSERTS.get(dialect)
    if statement is None:
        statement = _INSERTS[dialect] = (
            dialect_insert_for(dialect)(InboxEvent)
            .on_conflict_do_nothing(index_elements=["channel_account_id", "dedupe_key"])
            .returning(InboxEvent.id)
        )
    return statement


class _Broker:
    """Publishing ``process_event`` after the answer, from one thread of its own: the request
    hands the inbox id over (no thread hop of its own, no broker round trip on its path), the
    publisher sends what has gathered with one producer. After a failure it skips publishing
    for ``_BROKER_BACKOFF_S``; what it skips, or holds when the process stops, is committed in
    state ``received`` and the sweeper publishes it."""

    #: ids sent with one producer at most
    BATCH = 256

    def __init__(self, task: Task = process_event) -> None:
        self.task = task
        self.down_until = 0.0
        self._ids: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, inbox_id: int) -> None:
        if time.monotonic() < self.down_until:
            return  # the row waits in ``received``; the sweeper publishes it
        if not self._running():
            self._start()
        self._ids.put(inbox_id)

    def _running(self) -> bool:
        """This process's publisher thread is alive (a forked child has none of its own)."""
        return self._thread is not None and self._pid == os.getpid() and self._thread.is_alive()

    def _start(self) -> None:
        with self._lock:
            if self._running():
                return
            self._ids, self._pid = queue.SimpleQueue(), os.getpid()  # a child's own queue
            self._thread = threading.Thread(
                target=self._run, args=(self._ids,), name="webhook-publisher", daemon=True
            )
            self._thread.start()

    def _run(self, ids: queue.SimpleQueue[int]) -> None:
        while True:
            batch = [ids.get()]
            while len(batch) < self.BATCH:
                try:
                    batch.append(ids.get_nowait())
                except queue.Empty:
                    break
            self.publish(batch)

    def publish(self, batch: list[int]) -> int:
        """Publish each id's ``process_event``; the number sent."""
        if time.monotonic() < self.down_until:
            return 0
        sent = 0
        try:
            with self.task.app.producer_or_acquire() as producer:
                for inbox_id in batch:
                    self.task.si(inbox_id).apply_async(producer=producer)
                    sent += 1
        except Exception as exc:
            self.down_until = time.monotonic() + _BROKER_BACKOFF_S
            log.warning("publish.failed", task=self.task.name, inbox_ids=len(batch) - sent,
                        error=type(exc).__name__)  # fmt: skip
        return sent


_broker = _Broker()

#: threads of one web process that store deliveries (at most this many at once). Fewer than
#: the webhook engine's pool (``db.session``: 10), so that no insert opens a connection of the
#: pool's overflow (one is opened and closed per use: a PostgreSQL backend started for one
#: INSERT); and few, so that the event loop, which reads, verifies and answers every request,
#: is not kept waiting for the GIL by dozens of threads. On Starlette's thread pool (40
#: threads) a burst was answered at 550 to 650 webhooks/s with a third of the machine idle; on
#: these 8, 785 (``bench.burst``, one web process).
WRITERS = 8
_writers: tuple[int, ThreadPoolExecutor] | None = None


def _writer_pool() -> ThreadPoolExecutor:
    """This process's pool of ``WRITERS`` threads (a forked child makes its own)."""
    global _writers
    if _writers is None or _writers[0] != os.getpid():
        _writers = (os.getpid(), ThreadPoolExecutor(WRITERS, thread_name_prefix="webhook-store"))
    return _writers[1]


@dataclass
class _Body:
    """A request body read as a stream: in memory up to ``_SMALL``, in a temporary file past
    it (a plain buffer first: most deliveries are a few KB, and a spooled file object per
    request cost the event loop about a tenth of its time)."""

    #: None: the body is read and dropped (``keep=False``)
    buffer: bytearray | None = None
    file: IO[bytes] | None = None
    size: int = 0
    #: what the streaming signature check said (None: the receiver has none, or nothing kept)
    verified: bool | None = None

    def write(self, chunk: bytes) -> None:
        if self.buffer is None:
            return
        if self.file is None and len(self.buffer) + len(chunk) <= _SMALL:
            self.buffer += chunk
            return
        if self.file is None:
            self.file = tempfile.TemporaryFile()
            self.file.write(self.buffer)
            self.buffer.clear()
        self.file.write(chunk)

    def read(self) -> bytes:
        if self.file is not None:
            self.file.seek(0)
            return self.file.read()
        return bytes(self.buffer or b"")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


async def _read_body(
    receive: Receive, headers: dict[str, str], limit: int, check: BodyCheck | None, *, keep: bool
) -> _Body:
    """The body, streamed, at most ``limit`` bytes (413 beyond). ``keep=False`` reads and drops
    it, so a request for an unknown account takes the same time and answers as one with a bad
    signature. A kept body is fed to the receiver's streaming signature ``check`` and spooled
    (memory up to ``_SMALL``, then a temporary file), so that no request with a bad signature
    makes the process hold more than ``_SMALL`` of it."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Refused(413, f"body larger than {limit} bytes")
    body = _Body(bytearray() if keep else None)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(400, "client disconnected")
            chunk: bytes = message.get("body", b"")
            body.size += len(chunk)
            if body.size > limit:
                raise _Refused(413, f"body larger than {limit} bytes")
            if body.buffer is not None and chunk:
                body.write(chunk)
                if check is not None:
                    check.update(chunk)
            if not message.get("more_body", False):
                break
    except BaseException:
        body.close()
        raise
    if check is not None and keep:
        body.verified = check.valid()
    return body


def _writing(engine: Engine) -> AbstractContextManager[Connection]:
    """PostgreSQL: one statement that commits as it ends (autocommit: no BEGIN and no COMMIT
    of our own, two round trips fewer; the driver returns after the commit, so the row is
    durable before the 200). SQLite: a transaction, as everywhere (its ``BEGIN IMMEDIATE``
    queues the writers, ``db.session``)."""
    if engine.dialect.name == "postgresql":
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    return engine.begin()


def _insert(values: dict[str, Any]) -> int | None:
    """The inbox row's id; None: the delivery is in already. The pool does not ping a
    connection before each webhook (a round trip, about a tenth of the request's CPU):
    one the server closed (a restart, a failover, a proxy's idle timeout) fails the insert,
    SQLAlchemy drops the pool's connections of before, and the insert is tried once more
    on a new one. If the first try had committed before its answer was lost, the second
    finds the row and says duplicate: the webhook is answered 2xx and the sweeper publishes
    it (``received``)."""
    engine = get_engine(pre_ping=False)
    try:
        return _insert_once(engine, values)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("webhook.database_reconnect", error=type(exc.orig).__name__)
    return _insert_once(engine, values)


def _insert_once(engine: Engine, values: dict[str, Any]) -> int | None:
    with _writing(engine) as conn:
        inbox_id: int | None = conn.execute(_insert_statement(engine.dialect.name), values).scalar()
    return inbox_id


def _store(
    channel: str,
    receiver: WebhookReceiver,
    account_name: str,
    account: _Account,
    headers: dict[str, str],
    body: bytes,
    verified: bool | None,
) -> dict[str, Any]:
    """Verify (unless the stream did) and insert the delivery; commit. Runs in a thread."""
    if receiver.is_ping(headers, body):
        log.info("webhook.ping", channel=channel, account=account_name)
        return {"status": "ping"}
    topic = receiver.topic(headers) or "unknown"
    if verified is None:
        verified = receiver.verify(
            account.webhook_secret, body, headers.get(receiver.signature_header)
        )
    if not verified:
        accounts.forget(channel, account_name)  # a rotated secret is read again next time
        log.warning("webhook.bad_signature", channel=channel, account=account_name, topic=topic,
                    bytes=len(body))  # fmt: skip
        raise _REFUSED
    values = {
        "channel_account_id": account.id,
        "channel": channel,
        "topic": topic[:100],
        "dedupe_key": receiver.dedupe_key(headers, body)[:255],
        "headers": receiver.kept_headers(headers),
        "body": body,
        "status": InboxStatus.RECEIVED.value,
        "attempts": 0,
        "received_at": utcnow(),
    }
    inbox_id = _insert(values)
    if inbox_id is None:
        log.info("webhook.duplicate", channel=channel, account=account_name)
        return {"status": "duplicate"}
    log.info("webhook.accepted", channel=channel, account=account_name, inbox_id=inbox_id)
    return {"status": "accepted", "inbox_id": inbox_id}


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    content = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": content})


async def _receive(scope: Scope, receive: Receive, send: Send) -> None:
    channel, _, name = scope["path"][len(_PREFIX) :].partition("/")
    if scope["method"] != "POST":
        raise _Refused(405, "method not allowed")
    if not channel or not name or "/" in name:
        raise _Refused(404, "not found")
    marketplace = registry.marketplaces().get(channel)
    if marketplace is None:  # not counted: a label per made-up channel name would be unbounded
        raise _Refused(404, "unknown channel")
    receiver = marketplace.webhooks
    if receiver is None:
        raise _Refused(404, f"{channel} does not send webhooks")
    WEBHOOKS_RECEIVED.labels(channel).inc()
    engine = get_engine()
    hit, found = accounts.cached(channel, name)
    if not hit:
        found = await run_in_threadpool(accounts.get, engine, channel, name)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    check = None
    if found is not None and receiver.body_check is not None:
        check = receiver.body_check(found.webhook_secret, headers.get(receiver.signature_header))
    limit = get_settings().webhook_max_body_bytes
    try:
        body = await _read_body(receive, headers, limit, check, keep=found is not None)
    except _Refused as refused:
        if refused.status == 413:
            WEBHOOKS_REJECTED.labels(channel, "too_large").inc()
        raise
    try:
        if found is None:
            log.warning("webhook.unknown_account", channel=channel, account=name)
            WEBHOOKS_REJECTED.labels(channel, "unknown_account").inc()
            raise _REFUSED
        if body.verified is False and body.size > _SMALL:
            # too big to be a ping, and not signed by the account: never loaded
            accounts.forget(channel, name)
            log.warning("webhook.bad_signature", channel=channel, account=name,
                        topic=receiver.topic(headers) or "unknown", bytes=body.size)  # fmt: skip
            WEBHOOKS_REJECTED.labels(channel, "bad_signature").inc()
            raise _REFUSED
        raw = body.read()
    finally:
        body.close()
    try:
        answer = await asyncio.get_running_loop().run_in_executor(
            _writer_pool(), _store, channel, receiver, name, found, headers, raw, body.verified
        )
    except _Refused as refused:
        if refused is _REFUSED:
            WEBHOOKS_REJECTED.labels(channel, "bad_signature").inc()
        raise
    if answer["status"] == "duplicate":
        WEBHOOKS_DUPLICATE.labels(channel).inc()
    await _answer(send, 200, answer)
    inbox_id = answer.get("inbox_id")
    if isinstance(inbox_id, int):  # after the answer: a slow broker never delays it
        _broker.submit(inbox_id)


class WebhookIntake:
    """ASGI layer: ``/webhooks/…`` is served here, everything else by ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_PREFIX):
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(carrier_webhooks.PREFIX):  # the carrier's tracking
            await carrier_webhooks.receive(scope, receive, send)
            return
        try:
            await _receive(scope, receive, send)
        except _Refused as refused:
            await _answer(send, refused.status, {"detail": refused.detail})
