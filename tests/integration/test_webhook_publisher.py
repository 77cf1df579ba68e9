"""The webhook receiver's publisher thread (``web.webhooks._Broker``): the request hands the
inbox id over and answers; the thread publishes what has gathered with one producer. Real
Redis, real kombu (our transport), ids handed over from several threads at once."""

from __future__ import annotations

import json
import threading
import time
import uuid
from base64 import b64decode
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, Task

from core.net import free_port
from tests.support.stack import wait_until
from web.webhooks import _BROKER_BACKOFF_S, _Broker


def _app(broker: str, queue: str) -> tuple[Celery, Task]:
    app = Celery("publisher-test", broker=broker)
    app.conf.update(broker_transport="workflows.broker:Transport", task_default_queue=queue,
                    broker_connection_retry=False, task_publish_retry=False)  # fmt: skip

    @app.task(name="ordersync.intake.process_event")
    def process(inbox_id: int) -> None:  # never run here: only published
        raise AssertionError(inbox_id)

    return app, process


@pytest.fixture
def queue() -> str:
    return f"publisher-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _published(client: redis.Redis, queue: str) -> list[int]:
    ids = []
    for raw in client.lrange(queue, 0, -1):
        args, _kwargs, _embed = json.loads(b64decode(json.loads(raw)["body"]))
        ids.append(args[0])
    return ids


def test_ids_handed_over_from_many_threads_are_each_published_once(
    redis_url: str, queue: str, client: redis.Redis
) -> None:
    app, task = _app(redis_url, queue)
    broker = _Broker(task)
    ids = list(range(1, 401))

    def hand_over(part: list[int]) -> None:
        for inbox_id in part:
            broker.submit(inbox_id)

    threads = [threading.Thread(target=hand_over, args=(ids[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: client.llen(queue) >= len(ids), timeout=20, what="every id published")
    assert sorted(_published(client, queue)) == ids
    app.close()


def test_a_broker_that_is_down_is_skipped_for_the_backoff_and_not_retried_per_webhook(
    queue: str,
) -> None:
    app, task = _app(f"redis://127.0.0.1:{free_port()}/0", queue)  # nothing listens there
    broker = _Broker(task)
    # when: the first batch fails
    assert broker.publish([1, 2]) == 0
    # then: the publisher stops trying for the backoff; the rows wait for the sweeper
    assert broker.down_until > time.monotonic() + _BROKER_BACKOFF_S - 1
    started = time.monotonic()
    assert broker.publish([3]) == 0
    assert time.monotonic() - started < 0.05  # no connection attempt
    app.close()
