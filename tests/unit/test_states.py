"""The transition table: the happy path, the side states, and nothing that moves backwards."""

from __future__ import annotations

import itertools

import pytest

from domain.states import TRANSITIONS, OrderState, can_transition

S = OrderState
HAPPY = [S.NEW, S.RESERVED, S.PAID, S.DOCUMENTED, S.READY_TO_SHIP, S.SHIPPED, S.DELIVERED]


def test_every_happy_path_step_is_allowed() -> None:
    for current, nxt in itertools.pairwise(HAPPY):
        assert can_transition(current, nxt), (current, nxt)


@pytest.mark.parametrize("later", range(1, len(HAPPY)))
def test_no_state_moves_back_along_the_happy_path(later: int) -> None:
    for earlier in range(later):
        assert not can_transition(HAPPY[later], HAPPY[earlier])


def test_cancelled_and_delivered_are_final() -> None:
    assert TRANSITIONS[S.CANCELLED] == frozenset()
    assert TRANSITIONS[S.DELIVERED] == frozenset()


def test_shipped_orders_cannot_be_cancelled_but_open_ones_can() -> None:
    assert not can_transition(S.SHIPPED, S.CANCELLED)
    for state in (S.NEW, S.RESERVED, S.PAID, S.DOCUMENTED, S.READY_TO_SHIP, S.ON_HOLD):
        assert can_transition(state, S.CANCELLED)


def test_on_hold_only_resumes_to_reserved() -> None:
    assert TRANSITIONS[S.ON_HOLD] == {S.RESERVED, S.CANCELLED, S.NEEDS_ATTENTION}


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(OrderState)
