"""Beat stops when told to (``workflows.beat``), against a real Redis.

The failure this guards against: Celery's SIGTERM handler closes the scheduler (the leader lock
released) inside the handler and raises ``SystemExit``; when that exception was lost (raised
inside a ``__del__``, or replaced by the error of a socket the handler had just closed) the loop
went on, found no lock, took it again and never stopped (3 stops in 150 of a Beat with a tight
schedule; the chaos suite's Beat once ignored its SIGTERM for 20 s).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from uuid import uuid4

import pytest
import redis
from celery import Celery, beat

from workflows.beat import install_stop_handler


@pytest.fixture
def beat_app(redis_url: str) -> Iterator[Celery]:
    app = Celery("beat-stop", broker=redis_url, set_as_current=False)
    app.conf.update(
        redbeat_redis_url=redis_url,
        redbeat_key_prefix=f"test-beat-{uuid4().hex[:8]}",
        redbeat_lock_timeout=30,
        beat_max_loop_interval=5,
        beat_schedule={},
    )
    yield app
    app.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def _service(app: Celery) -> beat.Service:
    return beat.Service(app=app, scheduler_cls="workflows.beat:Scheduler")


def _signalled(service: beat.Service, number: signal.Signals) -> None:
    """ordersync beat's handler installed on ``service``, then called as signal ``number``
    would call it; its SystemExit is swallowed here, as a ``__del__`` can swallow it."""
    install_stop_handler(service)
    handler = signal.getsignal(number)
    assert callable(handler)
    with pytest.raises(SystemExit):
        handler(number, None)


def test_a_closed_scheduler_stops_instead_of_taking_the_lock_again(
    beat_app: Celery, client: redis.Redis
) -> None:
    # given: the leader (its first tick takes the free lock)
    scheduler = _service(beat_app).scheduler
    assert scheduler.tick() == 0.0
    assert client.get(scheduler.lock_key) is not None

    # when: it is closed (what Celery's SIGTERM handler does), and its loop ticks again because
    # the SystemExit raised after the close was lost
    scheduler.close()
    assert client.get(scheduler.lock_key) is None

    # then: the tick ends the loop; the lock stays free for a standby
    with pytest.raises(SystemExit):
        scheduler.tick()
    assert client.get(scheduler.lock_key) is None


@pytest.mark.usefixtures("restore_signals")
def test_a_stop_whose_system_exit_is_lost_still_ends_the_loop_and_frees_the_lock(
    beat_app: Celery, client: redis.Redis
) -> None:
    # given: a service not started yet
    service = _service(beat_app)

    # when: SIGTERM arrives and its SystemExit is swallowed where it was raised
    _signalled(service, signal.SIGTERM)

    # then: the handler did no I/O (no scheduler was made, let alone closed) ...
    assert "scheduler" not in service.__dict__
    # ... and the loop, started anyway, ends before its first tick and frees the lock it took
    service.start()
    lock_key = service.scheduler.lock_key
    assert service.scheduler._closed
    assert client.get(lock_key) is None


@pytest.mark.usefixtures("restore_signals")
def test_sigint_stops_the_loop_too(beat_app: Celery) -> None:
    service = _service(beat_app)
    _signalled(service, signal.SIGINT)
    assert service._is_shutdown.is_set()
