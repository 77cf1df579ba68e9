"""The soft time limit stays close to the hard one for short limits too."""

from __future__ import annotations

from workflows.celery_app import soft_time_limit


def test_the_soft_limit_is_thirty_seconds_before_a_long_hard_limit() -> None:
    assert soft_time_limit(600) == 570
    assert soft_time_limit(300) == 270


def test_a_short_hard_limit_keeps_most_of_its_time_as_soft_limit() -> None:
    assert soft_time_limit(20) == 18  # was 1 s: every task of a short limit stopped at once
    assert soft_time_limit(31) == 28
    assert soft_time_limit(1) == 1
    assert all(1 <= soft_time_limit(h) < h or h == 1 for h in range(1, 1000))
