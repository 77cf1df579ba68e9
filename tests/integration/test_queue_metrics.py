"""Queue depth and the age of the oldest waiting message, read from a real Redis broker the way
/metrics reads it: messages published by Celery carry their publish time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from workflows.metrics import queue_depths

QUEUE = "metrics-test"


@pytest.fixture
def broker(redis_url: str) -> Iterator[tuple[redis.Redis, Celery]]:
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE)
    # a publisher of its own on this Redis (the stamp comes from Celery's global
    # before_task_publish signal, which workflows.metrics connects for every app)
    publisher = Celery("publisher", broker=redis_url)
    try:
        yield client, publisher
    finally:
        client.delete(QUEUE)
        client.close()
        publisher.close()


def test_the_oldest_waiting_message_is_the_first_published_and_its_age_grows(
    broker: tuple[redis.Redis, Celery],
) -> None:
    client, app = broker
    assert queue_depths(client, [QUEUE]) == {QUEUE: (0, None)}

    first = time.time()
    app.send_task("ordersync.tests.nothing", args=[1], queue=QUEUE)
    app.send_task("ordersync.tests.nothing", args=[2], queue=QUEUE)

    (depth, age) = queue_depths(client, [QUEUE], now=first + 60)[QUEUE]
    assert depth == 2
    # the first message's stamp: published just after `first`, so about 60 s old at first + 60
    assert age is not None and 59 <= age <= 60
    # a message without the stamp (published by something else) has no age, but still counts
    client.rpush(QUEUE, b'{"headers": {}}')
    assert queue_depths(client, [QUEUE])[QUEUE] == (3, None)
