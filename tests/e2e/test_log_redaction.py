"""No log line shows what a buyer typed, whatever the error quotes (finding 7 of "Faults found
from the outside"): a real web server and a real Celery worker (``tests.support.label_fault``,
the ``ordersync worker`` command with a carrier call that fails with the address in its errors),
real Redis, SQLite, and the sandbox; every line the processes wrote is read back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ordersync.supervisor import wait_ready
from tests.support.label_fault import start_worker
from tests.support.world import World, fixture_order, running_world, stock_for

pytestmark = pytest.mark.slow

# what the buyer typed: values found nowhere else in the stack's logs
ADDRESS = {
    "first_name": "Zebulon",
    "last_name": "Quackenbush",
    "name": "Zebulon Quackenbush",
    "company": "Pickled Kumquat Works",
    "address1": "742 Evergreen Terrace",
    "address2": "Flat 5B Marigold Court",
    "city": "Fennimore Springs",
    "zip": "53809-4417",
    "phone": "+1 608 555 0199",
}
EMAIL = "zebulon.q@buyer.example"
PHONE = "+16085550123"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[World]:
    var_dir = tmp_path_factory.mktemp("redaction")
    with running_world(f"sqlite:///{var_dir / 'ordersync.db'}", redis_url, var_dir,
                       workers=0) as world:  # fmt: skip
        start_worker(world.stack)  # the only worker: every task of the pipeline runs on it
        wait_ready(world.stack.base_url, redis_url, world.stack.group, workers=1)
        yield world


def _log_lines(world: World) -> list[str]:
    lines: list[str] = []
    for child in world.stack.group.children:
        assert child.log_path is not None
        lines += child.log_path.read_text(errors="backslashreplace").splitlines()
    return lines


def test_a_label_failure_whose_errors_quote_the_address_logs_class_step_and_order_only(
    world: World, fixtures_dir: Path
) -> None:
    # given an order with the buyer's name, address, e-mail and phone everywhere Shopify has them
    shop = world.account()
    payload = fixture_order(fixtures_dir, email=EMAIL, contact_email=EMAIL, phone=PHONE)
    payload["shipping_address"] = payload["billing_address"] = ADDRESS
    names = {"first_name": ADDRESS["first_name"], "last_name": ADDRESS["last_name"]}
    payload["customer"] = {**payload["customer"], "email": EMAIL, "phone": PHONE, **names}
    stock_for(world, payload)

    # when it goes through the pipeline and its label purchase fails: first a retryable error
    # quoting the address, then the UnicodeEncodeError that holds the whole carrier request
    world.post(shop, payload, topic="orders/create")
    order = world.wait_state(shop, str(payload["id"]), "needs_attention")
    world.wait_idle()

    # then staff see the step and the error
    assert order.failed_step == "buy_label"
    assert order.last_error is not None and "UnicodeEncodeError" in order.last_error

    # and no line of any process shows what the buyer typed ...
    lines = _log_lines(world)
    typed = {*ADDRESS.values(), EMAIL, PHONE}
    # and each of its words (not the e-mail's domain; digits only whole: ids and times have runs)
    words = {w for value in typed for w in re.findall(r"[A-Za-z]{5,}", value.split("@")[0])}
    leaks = [(w, line) for line in lines for w in sorted(typed | words) if w in line]
    assert not leaks, leaks[:5]

    # while the failure is reported: ours with the class, the step and the order id ...
    def ours(event: str, error: str) -> list[str]:
        return [
            line
            for line in lines
            if event in line
            and f"error={error}" in line
            and "task=ordersync.outbound.buy_label" in line
            and f"order_id={order.id}" in line
        ]

    assert ours("task.retry", "ConnectionError"), "\n".join(lines)
    (failed,) = ours("task.failed", "UnicodeEncodeError")
    assert "detail='utf-8 codec: surrogates not allowed at position " in failed
    # ... Celery's own lines, with the exception redacted in place of its repr ...
    celery = [line for line in lines if "celery.app.trace" in line and "buy_label[" in line]
    assert any("] retry: Retry in " in line and line.endswith("s: ConnectionError")
               for line in celery), "\n".join(celery)  # fmt: skip
    assert any("] raised unexpected: UnicodeEncodeError: utf-8 codec: surrogates not allowed"
               in line for line in celery), "\n".join(celery)  # fmt: skip
    # ... and tracebacks that still say where it happened
    assert any("in encode_json" in line for line in lines)
