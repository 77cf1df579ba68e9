"""Queue depth and the age of the oldest waiting message, read from a real Redis broker the way
/metrics reads it: messages published by Celery carry their publish time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from core.settings import get_settings
from workflows.celery_app import app
from workflows.metrics import queue_depths

QUEUE = "metrics-test"


@pytest.fixture
def broker(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    monkeypatch.setenv("ORDERSYNC_REDIS_URL", redis_url)
    get_settings.cache_clear()
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE)
    try:
        yield client
    finally:
        client.delete(QUEUE)
        client.close()
        get_settings.cache_clear()


def test_the_oldest_waiting_message_is_the_first_published_and_its_age_grows(
    broker: redis.Redis,
) -> None:
    assert queue_depths(broker, [QUEUE]) == {QUEUE: (0, None)}

    first = time.time()
    app.send_task("ordersync.tests.nothing", args=[1], queue=QUEUE)
    app.send_task("ordersync.tests.nothing", args=[2], queue=QUEUE)

    (depth, age) = queue_depths(broker, [QUEUE], now=first + 60)[QUEUE]
    assert depth == 2
    # the first message's stamp: published just after `first`, so about 60 s old at first + 60
    assert age is not None and 59 <= age <= 60
    # a message without the stamp (published by something else) has no age, but still counts
    broker.rpush(QUEUE, b'{"headers": {}}')
    assert queue_depths(broker, [QUEUE])[QUEUE] == (3, None)
