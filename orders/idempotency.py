"""Idempotency keys for side effects in the outside world (brandur / Stripe style).

A key such as ``capture:{order_id}`` is stored locally *before* the outside call is made, with
a hash of the request, a recovery point, who holds it (``locked_by``, the Celery task id) and,
once finished, the response. The same key is sent to the provider (``Idempotency-Key``), so
even a call whose answer we never saw is applied once there.

``begin`` decides what an attempt may do:

- new key → created, locked by this attempt; go ahead;
- same key, different request → ``IdempotencyMismatch`` (a bug or tampering: never retry);
- finished → the stored response; do nothing;
- locked by a live attempt (another owner, lock younger than the timeout) → ``KeyLocked``
  (retryable: try again later);
- locked by this same owner (a redelivery after the worker died), or by an owner whose lock
  expired → taken over and resumed from its recovery point.

Each function runs in the caller's transaction; the caller commits ``begin`` before the outside
call and ``finish`` together with the local effect it records (e.g. the payment row).
``Claimant`` is one attempt (a task run) doing that: it claims keys under its owner and, when
the outside call fails, releases the key (retired for good when the provider refused it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from db.base import table, utcnow
from db.models import IdempotencyKey
from db.session import Transaction, core, per_dialect
from domain.errors import AuthorizationUnusable, PermanentError, RetryableError

__all__ = [
    "Attempt",
    "Claimant",
    "IdempotencyMismatch",
    "KeyLocked",
    "KeyRejected",
    "begin",
    "claim",
    "current_key",
    "fail",
    "family",
    "finish",
    "refused",
    "request_hash",
    "set_recovery_point",
    "unfinished",
]

STARTED = "started"
FINISHED = "finished"
#: the provider refused the request (a 4xx, a decline): nothing was applied, and the key is
#: never used again; the next attempt, after a person changed something, takes a new key
REJECTED = "rejected"


_keys = table(IdempotencyKey)
# prebuilt (see db.session.core)
_CREATE = per_dialect(
    lambda insert: (
        insert(_keys).on_conflict_do_nothing(index_elements=["key"]).returning(_keys.c.id)
    )
)
_LOAD = select(IdempotencyKey).where(IdempotencyKey.key == bindparam("b_key")).with_for_update()
_FINISH = (
    update(_keys)
    .where(_keys.c.key == bindparam("b_key"))
    .values(
        recovery_point=FINISHED,
        response_code=bindparam("b_code"),
        response_body=bindparam("b_body"),
        locked_at=None,
        locked_by=None,
        last_error=None,
    )
)
_SET_POINT = (
    update(_keys)
    .where(_keys.c.key == bindparam("b_key"))
    .values(recovery_point=bindparam("b_point"))
)


class IdempotencyMismatch(PermanentError):
    """The key was used before for a different request."""


class KeyRejected(IdempotencyMismatch):
    """The key was retired after the provider refused its request; ``claim`` moves on."""


class KeyLocked(RetryableError):
    """Another live attempt holds the key; try again later."""


@dataclass(frozen=True)
class Attempt:
    key: str
    recovery_point: str
    response: dict[str, Any] | None  # set when the key had already finished

    @property
    def finished(self) -> bool:
        return self.recovery_point == FINISHED


def family(base: str) -> ColumnElement[bool]:
    """``base`` and the keys under it (``base:…``: the next keys of a retired one, a label
    key's shipments): one range of the key's unique index, which orders the keys byte by byte
    (``db.models.IdempotencyKey.key``), so the bound is ``:`` + 1. A ``LIKE 'base:%'`` read the
    whole table instead (the index is not used for it under PostgreSQL's language collations,
    nor under SQLite's case-blind LIKE), once per claim: a pipeline slowed as history grew."""
    key = IdempotencyKey.key
    return or_(key == base, and_(key >= f"{base}:", key < f"{base};"))


def _chain(session: Session, base: str) -> tuple[str, IdempotencyKey | None]:
    """The current key of ``base`` and its row (None: not stored yet), in one read of the
    family. Only ``base``'s own chain counts (``base``, ``base:2``, …), not the keys under it of
    another name (a label key's shipments, ``label:7:s3``): a shipment's retired key does not
    move the order's first label on."""
    rows = {row.key: row for row in session.scalars(select(IdempotencyKey).where(family(base)))}
    n = 1
    while True:
        key = base if n == 1 else f"{base}:{n}"
        row = rows.get(key)
        if row is None or row.recovery_point != REJECTED:
            return key, row
        n += 1


def current_key(session: Session, base: str) -> str:
    """``base`` until an attempt under it was rejected, then ``base:2``, ``base:3``, … (the
    key ``claim`` stores next).

    Only a rejected key moves on: a key whose attempt may have been applied (a timeout, a
    crash) is kept, so the provider replays that result instead of doing it twice.
    """
    return _chain(session, base)[0]


def unfinished(session: Session, base: str) -> IdempotencyKey | None:
    """The current key of ``base`` if an attempt under it started and never finished: its call
    may or may not have been applied by the outside world."""
    row = _chain(session, base)[1]  # never a rejected one: the chain has moved past it
    if row is None or row.recovery_point == FINISHED:
        return None
    return row


def request_hash(params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def begin(
    session: Session,
    key: str,
    params: dict[str, Any],
    *,
    owner: str,
    lock_timeout: dt.timedelta = dt.timedelta(seconds=90),
    point: str | None = None,
) -> Attempt:
    """Start or resume an attempt under ``key`` (see the module docstring). With ``point``, the
    key is stored at that recovery point (in the same statement that creates it) or moved
    there when taken over; the returned ``Attempt`` says where it was before."""
    digest = request_hash(params)
    now = utcnow()
    created = (
        core(session)
        .execute(
            _CREATE(session),
            {
                "key": key,
                "request_hash": digest,
                "recovery_point": point or STARTED,
                "locked_at": now,
                "locked_by": owner,
                "created_at": now,
                "last_run_at": now,
            },
        )
        .scalar_one_or_none()
    )
    if created is not None:
        return Attempt(key, STARTED, None)

    row = session.execute(_LOAD, {"b_key": key}).scalar_one()
    if row.recovery_point == REJECTED:
        raise KeyRejected(f"idempotency key {key} was rejected; use claim() or current_key()")
    if row.request_hash != digest:
        raise IdempotencyMismatch(f"idempotency key {key} was used for a different request")
    if row.recovery_point == FINISHED:
        return Attempt(key, FINISHED, row.response_body)
    _check_not_live(row, owner, lock_timeout, now)
    was = row.recovery_point
    row.locked_at = now
    row.locked_by = owner
    row.last_run_at = now
    if point is not None:
        row.recovery_point = point
    return Attempt(key, was, None)


def _check_not_live(
    row: IdempotencyKey,
    owner: str,
    lock_timeout: dt.timedelta,
    now: dt.datetime,
    *,
    until_released: bool = False,
) -> None:
    """``KeyLocked`` when another owner holds ``row`` and its lock has not timed out (its
    call may still be in flight): retry in 5 s, or (``until_released``) once the lock has
    timed out, when the holder is known to be dead if it has not released the key."""
    live = row.locked_at is not None and now - row.locked_at < lock_timeout
    if live and row.locked_by not in (None, owner):
        assert row.locked_at is not None
        left = (row.locked_at + lock_timeout - now).total_seconds() + 1.0
        raise KeyLocked(f"{row.key} is in progress elsewhere",
                        retry_after=max(5.0, left) if until_released else 5.0)  # fmt: skip


def claim(
    session: Session,
    base: str,
    params: dict[str, Any],
    *,
    owner: str,
    point: str,
    lock_timeout: dt.timedelta = dt.timedelta(seconds=90),
) -> Attempt:
    """``begin`` under the current key of ``base`` (see ``current_key``), stored at ``point``.

    The common case is one statement: the key is new. Keys retired by a rejection are stepped
    over (``base``, ``base:2``, …) only when they exist.
    """
    n = 1
    while True:
        key = base if n == 1 else f"{base}:{n}"
        try:
            return begin(session, key, params, owner=owner, lock_timeout=lock_timeout, point=point)
        except KeyRejected:
            n += 1


def set_recovery_point(session: Session, key: str, point: str) -> None:
    core(session).execute(_SET_POINT, {"b_key": key, "b_point": point})


def finish(session: Session, key: str, response: dict[str, Any], *, code: int = 200) -> None:
    core(session).execute(_FINISH, {"b_key": key, "b_code": code, "b_body": response})


def locked_point(session: Session, key: str) -> str | None:
    """``key``'s recovery point, its row locked until the transaction ends (None: no such
    key): a retirement of the key and the recording of its call's result, each taking this
    first, come one after the other, never across each other."""
    return session.scalar(
        select(IdempotencyKey.recovery_point)
        .where(IdempotencyKey.key == key)
        .with_for_update()
    )


def retired(session: Session, key: str) -> bool:
    """Whether ``key`` was retired (``REJECTED``) while its attempt's call was out: another
    attempt found it dead and gave its call up for good (``orders.fulfilment`` voids what a
    dead label attempt bought). Locks the row (``locked_point``)."""
    return locked_point(session, key) == REJECTED


def fail(session: Session, key: str, error: str, *, rejected: bool = False) -> None:
    """Release the key after a failed attempt. A retryable failure keeps its recovery point for
    the next attempt; ``rejected`` (the provider refused it) retires the key for good."""
    values: dict[str, Any] = {"locked_at": None, "locked_by": None, "last_error": error[:2000]}
    if rejected:
        values["recovery_point"] = REJECTED
    session.execute(update(IdempotencyKey).where(IdempotencyKey.key == key).values(**values))


def refused(exc: Exception) -> bool:
    """The provider answered 4xx: it refused the request and applied nothing (an unparseable
    2xx or a transport failure might have been applied, so they keep their key); or the holder
    said the authorization cannot be captured (voided, expired, the order cancelled there),
    whatever the status its answer came with (GraphQL's userErrors come in a 200)."""
    if isinstance(exc, AuthorizationUnusable):
        return True
    status = getattr(exc, "status", None)
    return isinstance(exc, PermanentError) and status is not None and 400 <= status < 500


@dataclass(frozen=True)
class Claimant:
    """One attempt at a step's outside calls: ``owner`` (the task id, the same again when the
    task is redelivered) holds the keys it claims, for ``lock_timeout``; ``describe`` says what
    staff see of an error; a failed call is recorded in a ``transaction`` of its own."""

    transaction: Transaction
    owner: str
    lock_timeout: dt.timedelta
    describe: Callable[[Exception], str]

    def claim(self, session: Session, base: str, params: dict[str, Any], *, point: str) -> str:
        """Store (or take back) the current key of ``base`` before the outside call, at
        ``point``; returns the key (``base``, or ``base:N`` after rejected attempts)."""
        attempt = claim(
            session, base, params, owner=self.owner, point=point, lock_timeout=self.lock_timeout
        )
        return attempt.key

    def check_not_live(self, row: IdempotencyKey, *, until_released: bool = False) -> None:
        """``KeyLocked`` when another attempt holds ``row`` and its lock has not timed out
        (its call may still be in flight), as ``begin`` judges it; ``until_released``: its
        retry waits until the lock has timed out, rather than 5 s."""
        _check_not_live(row, self.owner, self.lock_timeout, utcnow(),
                        until_released=until_released)  # fmt: skip

    @contextmanager
    def outside_call(self, key: str) -> Iterator[None]:
        """Around a call to the outside world under ``key``: a failure releases the key (and
        retires it when the provider refused the request) before the error goes on."""
        try:
            yield
        except Exception as exc:
            with self.transaction() as session:
                fail(session, key, self.describe(exc), rejected=refused(exc))
            raise
