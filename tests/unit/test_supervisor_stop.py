"""ordersync.supervisor.stopping: a shutdown is not cut short by a second SIGINT or SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from ordersync.supervisor import sigterm_interrupts, stopping


class Interrupted(Exception):
    pass


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise Interrupted  # as ``ordersync up`` and the demo do with SIGTERM


@pytest.fixture
def raising_handlers() -> Iterator[None]:
    before = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT,
                                                                       signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_sent_during_the_stop_is_ignored_and_the_handlers_come_back_after(
    raising_handlers: None, signum: signal.Signals
) -> None:
    stopped = []
    with stopping():
        os.kill(os.getpid(), signum)  # a second Ctrl-C, a repeated SIGTERM
        stopped.append("the rest of the shutdown ran")

    assert stopped == ["the rest of the shutdown ran"]
    assert signal.getsignal(signal.SIGINT) is _interrupt
    assert signal.getsignal(signal.SIGTERM) is _interrupt
    with pytest.raises(Interrupted):  # outside the stop, the signal interrupts again
        os.kill(os.getpid(), signum)


def test_off_the_main_thread_it_changes_no_handler(raising_handlers: None) -> None:
    seen = []

    def stop_in_a_thread() -> None:
        with stopping():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=stop_in_a_thread)
    thread.start()
    thread.join()

    assert seen == [_interrupt]


def test_after_sigterm_interrupts_a_sigterm_raises_keyboard_interrupt_as_ctrl_c_does() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        sigterm_interrupts()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
