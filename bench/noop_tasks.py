"""No-op tasks for the baseline of ``bench.pipeline_throughput``: the pipeline's canvas, bare.

Six tasks on ordersync's own Celery app (``workflows.app``: same broker, result backend and
settings: acks late, prefetch 1, JSON, results only where the pipeline keeps them) named
``ordersync.bench.*`` and sent to their own ``bench`` queue, so they never mix with real work.
:func:`chain_for` builds one "order" with the pipeline's shape and number of tasks, the
intake task included (a webhook's ``process_event`` runs, then publishes the canvas)::

    chain(intake.si(i), a.si(i), b.si(i), chord([c.si(i), d.si(i)], e.si(i)))

``e`` returns the wall-clock time it ran (``time.time()``), so the moment each chain completed
is read back from the result backend afterwards; nothing else is written anywhere.

Workers for it run exactly as ``ordersync worker`` does (same CLI, pool, flags and logging),
with these tasks registered first::

    python -m bench.noop_tasks worker --queues bench --concurrency 1
"""

from __future__ import annotations

import time

from celery import chain, chord
from celery.canvas import Signature

from workflows.celery_app import app

__all__ = ["BENCH_QUEUE", "a", "b", "c", "chain_for", "d", "e", "intake", "last_task_id"]

BENCH_QUEUE = "bench"


@app.task(name="ordersync.bench.intake", ignore_result=True)
def intake(i: int) -> None:
    """Stands for process_event (the webhook's task, which then publishes the canvas)."""


@app.task(name="ordersync.bench.a", ignore_result=True)
def a(i: int) -> None:
    """Stands for reserve_stock."""


@app.task(name="ordersync.bench.b", ignore_result=True)
def b(i: int) -> None:
    """Stands for capture_payment."""


@app.task(name="ordersync.bench.c")
def c(i: int) -> None:
    """Stands for issue_invoice (chord header)."""


@app.task(name="ordersync.bench.d")
def d(i: int) -> None:
    """Stands for buy_label (chord header)."""


@app.task(name="ordersync.bench.e")
def e(i: int) -> float:
    """Stands for mark_ready_to_ship (chord body): when the chain completed."""
    return time.time()


def last_task_id(run: str, i: int) -> str:
    """The id of chain ``i``'s last task, whose result is its completion time."""
    return f"bench-{run}-{i}"


def chain_for(i: int, run: str) -> Signature:
    """One baseline "order": the pipeline's shape, every task on the ``bench`` queue."""
    q = {"queue": BENCH_QUEUE}
    return chain(
        intake.si(i).set(**q),
        a.si(i).set(**q),
        b.si(i).set(**q),
        chord(
            [c.si(i).set(**q), d.si(i).set(**q)],
            e.si(i).set(task_id=last_task_id(run, i), **q),
        ),
    )


if __name__ == "__main__":
    # the tasks above are registered (under their explicit names) before the worker starts;
    # from here on it is the very same command as `python -m ordersync worker ...`
    from ordersync.cli import main

    main()
