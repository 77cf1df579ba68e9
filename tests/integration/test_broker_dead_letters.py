"""An item in a queue that is not a message (not JSON, not UTF-8) is set aside, and the
consumer goes on with the next message; kombu's own Redis transport raises out of the event
loop on it, which stops a Celery worker ("Unrecoverable error"; found by the chaos suite's
poison scenario). Real Redis, real kombu consumer."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Queue

from workflows.broker import DEAD_LETTERS

BROKEN = [b'{"body": "truncated', b"\xff\xfe not utf-8"]


def _setup(redis_url: str) -> tuple[redis.Redis, Queue]:
    client = redis.Redis.from_url(redis_url)
    client.delete(DEAD_LETTERS)
    return client, Queue(f"chaos-{uuid.uuid4().hex[:8]}")


def _publish(conn: Connection, queue: Queue, body: dict[str, Any]) -> None:
    conn.Producer().publish(body, routing_key=queue.name, declare=[queue], serializer="json")


def test_the_event_loop_sets_unreadable_items_aside_and_delivers_the_next(
    redis_url: str,
) -> None:
    client, queue = _setup(redis_url)
    got: list[Any] = []
    with Connection(redis_url, transport="workflows.broker:Transport") as conn:
        queue(conn.default_channel).declare()
        for item in BROKEN:  # kombu publishes LPUSH and consumes BRPOP: these come first
            client.lpush(queue.name, item)
        _publish(conn, queue, {"n": 1})
        def take(body: Any, message: Any) -> None:
            got.append(body)
            message.ack()

        with conn.Consumer(queue, callbacks=[take]):
            for _ in range(5):
                if got:
                    break
                conn.drain_events(timeout=5)
    assert got == [{"n": 1}]
    assert client.llen(queue.name) == 0
    records = [json.loads(r) for r in client.lrange(DEAD_LETTERS, 0, -1)]
    assert len(records) == 2  # the newest first
    assert records[-1]["body"] == BROKEN[0].decode()
    assert "not utf-8" in records[0]["body"]


def test_a_get_skips_unreadable_items(redis_url: str) -> None:
    client, queue = _setup(redis_url)
    with Connection(redis_url, transport="workflows.broker:Transport") as conn:
        queue(conn.default_channel).declare()
        client.lpush(queue.name, BROKEN[0])
        _publish(conn, queue, {"n": 2})
        message = queue(conn.default_channel).get(no_ack=True)
    assert message is not None and message.decode() == {"n": 2}
    assert client.llen(DEAD_LETTERS) == 1


def test_kombus_own_transport_raises_on_them(redis_url: str) -> None:
    """Why the transport exists: the stock one lets the error out of the event loop."""
    client, queue = _setup(redis_url)
    with Connection(redis_url) as conn:
        queue(conn.default_channel).declare()
        client.lpush(queue.name, BROKEN[0])
        with conn.Consumer(queue, callbacks=[lambda body, m: m.ack()]):
            with pytest.raises(ValueError):
                conn.drain_events(timeout=5)


def test_closing_a_channel_after_redis_went_away_and_its_connection_closed_is_quiet(
    tmp_path: Any,
) -> None:
    """Celery closes a dead connection, then its consumer's channel (which holds an unacked
    message): kombu's transport raised ``AttributeError`` there (the connection's parameters
    were gone), which Celery does not ignore: the worker exited. Ours raises a connection
    error, which ``maybe_close_channel`` ignores; the message stays in Redis's unacked hash."""
    from kombu.common import ignore_errors

    from tests.support.redis_server import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    try:
        conn = Connection(server.url, transport="workflows.broker:Transport")
        queue = Queue("orders")
        channel = conn.default_channel
        _publish(conn, queue, {"n": 1})
        held = queue(channel).get(no_ack=False)
        assert held is not None and held.payload == {"n": 1}
        server.stop()  # Redis goes away
        channel._pool = None  # type: ignore[attr-defined]  # dropped with the connection
        conn._do_close_transport()  # Celery's close of the dead connection

        ignore_errors(conn, conn.maybe_close_channel, channel)  # raised AttributeError

        assert channel.closed
    finally:
        server.stop()


def test_publishes_share_one_client_until_the_pool_is_replaced(redis_url: str) -> None:
    """kombu builds a ``redis.Redis`` per publish; ours keeps one per pool (issue 14), and a
    pool kombu replaces after a connection error gets a client of its own."""
    client, queue = _setup(redis_url)
    with Connection(redis_url, transport="workflows.broker:Transport") as conn:
        channel = conn.default_channel
        queue(channel).declare()
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        for n in range(3):
            _publish(conn, queue, {"n": n})
        with channel.conn_or_acquire() as after:
            assert after is first
        channel._disconnect_pools()  # as after a broken connection
        _publish(conn, queue, {"n": 3})
        with channel.conn_or_acquire() as renewed:
            assert renewed is not first
            assert renewed.connection_pool is channel.pool
        got = [queue(channel).get(no_ack=True).decode()["n"] for _ in range(4)]
    assert sorted(got) == [0, 1, 2, 3]
    assert client.llen(queue.name) == 0
