"""A worker whose label purchases fail with errors that quote the buyer's address, for the test
that no log line shows what a buyer typed (``tests/e2e/test_log_redaction.py``)::

    python -m tests.support.label_fault worker --concurrency 1

It runs exactly as ``ordersync worker`` does (same CLI, pool, flags and logging, as
``bench.noop_tasks`` does), with ``CarrierClient.buy_label`` wrapped first. For each shipment the
first call fails with a retryable ``ConnectionError`` whose message holds the ship-to address
(Celery's retry line and ours are written); every later call sends the real request after
putting half a surrogate pair back into the street, past the canonical model's cleaning, so that
httpx fails as finding 7 saw it: a ``UnicodeEncodeError`` whose repr holds the whole carrier
request (name, company, street, city, postcode, phone).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import Any

from domain.canonical import Address
from integrations.carriers.client import CarrierClient
from integrations.carriers.payloads import PurchasedLabel
from ordersync.supervisor import Child
from tests.support.stack import Stack

__all__ = ["start_worker"]

_buy_label = CarrierClient.buy_label
_calls: Counter[str] = Counter()


def _failing_buy_label(
    self: CarrierClient, *, shipment_ref: str, ship_to: Address, **rest: Any
) -> PurchasedLabel:
    _calls[shipment_ref] += 1
    if _calls[shipment_ref] == 1:
        raise ConnectionError(f"connection reset while sending the label for {ship_to!r}")
    broken = Address.model_construct(**(ship_to.model_dump() | {"line1": f"{ship_to.line1}\ud800"}))
    return _buy_label(self, shipment_ref=shipment_ref, ship_to=broken, **rest)


def start_worker(stack: Stack, name: str = "label-fault-worker") -> Child:
    """Start this worker with the stack's environment and log directory, as one of its children
    (``stack.logs()`` shows its log, ``run_stack`` stops it). ``ProcessGroup.start`` runs only
    ordersync's own CLI, so the process is started here the way it starts its children."""
    assert stack.group.log_dir is not None
    log_path = stack.group.log_dir / f"{name}.log"
    argv = [sys.executable, "-m", __name__, "worker", "--concurrency", "1"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, env=stack.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    child = Child(name, argv, process, log_path)
    stack.group.children.append(child)
    return child


if __name__ == "__main__":
    from unittest import mock

    from ordersync.cli import main

    with mock.patch.object(CarrierClient, "buy_label", _failing_buy_label):
        main()
