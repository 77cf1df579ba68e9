"""Which failures a task retries, the backoff it waits, and which waits it parks."""

from __future__ import annotations

import datetime as dt
import sqlite3

import kombu.exceptions
import psycopg
import psycopg.errors
import pytest
import redis.exceptions
from sqlalchemy import exc as sa_exc

from core.settings import Settings
from domain.errors import AuthError, PermanentError, RateLimited, ServerError, ValidationError
from workflows.base import RetryPlan, backoff_delay, describe, is_retryable, plan_retry


@pytest.mark.parametrize(
    "error, retry",
    [
        (ServerError("503"), True),
        (RateLimited("429", retry_after=3), True),
        (TimeoutError(), True),
        (
            sa_exc.OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")),
            True,
        ),
        # infrastructure blips: the step lock's Redis, the broker, the database restarting
        (redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"), True),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), True),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), True),
        (kombu.exceptions.OperationalError("[Errno 111] Connection refused"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (
            sa_exc.OperationalError(
                "SELECT 1", {}, psycopg.OperationalError("terminating connection")
            ),
            True,
        ),
        (
            sa_exc.DBAPIError(
                "SELECT 1", {}, psycopg.InterfaceError("closed"), connection_invalidated=True
            ),
            True,
        ),
        # a Redis that refuses us, or answers with an error, does so again on a retry
        (redis.exceptions.AuthenticationError("invalid username-password pair"), False),
        (redis.exceptions.ResponseError("WRONGTYPE Operation against a key"), False),
        (
            sa_exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate key")),
            False,
        ),
        (psycopg.ProgrammingError("syntax error"), False),
        (AuthError("401"), False),
        (ValidationError("422"), False),
        (ValueError("bug"), False),
        (sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE")), False),
    ],
)
def test_retryable_errors_are_told_apart_from_permanent_ones(error: Exception, retry: bool) -> None:
    assert is_retryable(error) is retry


def test_backoff_is_jittered_below_an_exponential_cap() -> None:
    for attempt in range(12):
        delays = {backoff_delay(attempt, base=2.0, cap=60.0) for _ in range(50)}
        assert all(0 <= d <= min(60.0, 2.0 * 2**attempt) for d in delays)
        assert len(delays) > 1  # jitter: concurrent retries do not line up


def test_describe_adds_the_providers_code_when_the_message_lacks_it() -> None:
    refused = PermanentError("refund: HTTP 400", status=400, code="amount_too_large")
    assert describe(refused) == "PermanentError: refund: HTTP 400 [amount_too_large]"
    said = PermanentError("declined: card_declined", status=402, code="card_declined")
    assert describe(said) == "PermanentError: declined: card_declined"
    assert describe(ValueError("x" * 5000)).startswith("ValueError: xxx")
    assert len(describe(ValueError("x" * 5000))) == 2000


NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _settings(**changes: object) -> Settings:
    values: dict[str, object] = {"park_after_s": 300, "retry_max_attempts": 8}
    values.update(changes)
    # validated from a plain mapping, as the environment would give it
    return Settings.model_validate(values)


@pytest.mark.parametrize(
    "error, attempt, settings, plan",
    [
        # within the bound: a countdown through the broker
        (RateLimited("429", retry_after=30), 0, _settings(), RetryPlan("retry", 30)),
        (RateLimited("429", retry_after=300), 3, _settings(), RetryPlan("retry", 300)),
        # past it: parked in the database until now + the delay
        (RateLimited("429", retry_after=301), 0, _settings(),
         RetryPlan("park", 301, NOW + dt.timedelta(seconds=301))),
        (RateLimited("429", retry_after=7200), 7, _settings(),
         RetryPlan("park", 7200, NOW + dt.timedelta(seconds=7200))),
        # a parked retry counts as one: the last attempt fails however long the wait
        (RateLimited("429", retry_after=7200), 8, _settings(), RetryPlan("fail")),
        (AuthError("401"), 0, _settings(), RetryPlan("fail")),
    ],
)  # fmt: skip
def test_a_delay_past_the_bound_is_parked_and_one_within_it_is_a_countdown(
    error: Exception, attempt: int, settings: Settings, plan: RetryPlan
) -> None:
    assert plan_retry(error, attempt, settings, now=NOW) == plan


def test_our_own_backoff_is_parked_too_when_it_outgrows_the_bound() -> None:
    # a backoff that can only land past the bound (base 1000 s, ceiling 2000 s)
    settings = _settings(retry_backoff_base_s=1000.0, retry_backoff_max_s=2000.0)
    plans = [plan_retry(ServerError("503"), 1, settings, now=NOW) for _ in range(50)]
    for plan in plans:
        assert plan.action == ("park" if plan.delay > 300 else "retry")
        if plan.action == "park":
            assert plan.not_before == NOW + dt.timedelta(seconds=plan.delay)
    assert any(p.action == "park" for p in plans)
