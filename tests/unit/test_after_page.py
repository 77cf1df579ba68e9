"""A sync's page sends the pipelines of its new orders as one message, after commit."""

from __future__ import annotations

from typing import Any

from domain.states import OrderState
from orders.intake import IntakeOutcome, IntakeResult
from workflows.pipeline import enter_pipelines
from workflows.tasks import after_page


class _Session:
    def __init__(self) -> None:
        self.info: dict[str, Any] = {}


def test_the_new_orders_of_a_page_enter_the_pipeline_in_one_message() -> None:
    session = _Session()
    results = [
        IntakeResult(1, IntakeOutcome.CREATED, OrderState.NEW),
        IntakeResult(2, IntakeOutcome.STALE, OrderState.NEW),
        IntakeResult(3, IntakeOutcome.UPDATED, OrderState.RESERVED),  # news: its payment
        IntakeResult(4, IntakeOutcome.CREATED, OrderState.CANCELLED),  # born cancelled
        IntakeResult(5, IntakeOutcome.CREATED, OrderState.NEW),
    ]

    after_page(session, results)

    pending = session.info.get("ordersync.after_commit")
    assert pending is not None and len(pending) == 1
    [message] = pending
    assert message.task == enter_pipelines.name
    assert message.args == ([1, 3, 5],)
    assert message.immutable


def test_a_page_without_new_orders_publishes_nothing() -> None:
    session = _Session()
    stale = [IntakeResult(2, IntakeOutcome.STALE, OrderState.PAID)]
    after_page(session, stale)
    assert session.info == {}


def test_an_order_of_a_page_whose_refund_came_without_lines_is_fetched_from_its_account() -> None:
    from workflows.sync import refresh_order

    session = _Session()
    partial = IntakeResult(7, IntakeOutcome.UPDATED, OrderState.CANCELLED, refetch="4711")

    after_page(session, [partial], 42)

    [message] = session.info["ordersync.after_commit"]
    assert (message.task, message.args) == (refresh_order.name, (42, "4711"))
