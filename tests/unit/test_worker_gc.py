"""A worker's start-up heap is frozen (``gc.freeze``) in the parent before the pool forks and in
each child after its own start-up; what its tasks make later is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from db import session


@pytest.fixture
def unfrozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(session, "set_pre_ping_default", lambda _value: None)
    monkeypatch.setattr(session, "after_fork", lambda: None)
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()  # the test process's heap goes back to the collector


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


@pytest.mark.usefixtures("unfrozen")
@pytest.mark.parametrize("signal", ["worker_init", "worker_process_init"])
def test_the_worker_signals_freeze_the_heap_and_later_cycles_are_still_collected(
    signal: str,
) -> None:
    from celery import signals

    import workflows.celery_app  # noqa: F401  (connects the receivers)

    old = _Node()
    old_ref = weakref.ref(old)
    assert gc.get_freeze_count() == 0
    getattr(signals, signal).send(sender=None)
    assert gc.get_freeze_count() > 1_000  # the modules, the app, its tasks: all frozen
    del old
    gc.collect()
    assert old_ref() is not None  # frozen: no collection walks it (or frees it) any more

    young = _Node()
    young_ref = weakref.ref(young)
    del young
    gc.collect()
    assert young_ref() is None  # a task's garbage is collected as before
