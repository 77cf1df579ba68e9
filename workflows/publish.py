"""Publish tasks only after the transaction that needs them has committed.

A task published before commit can run before its row exists (or for a row that is then rolled
back). ``publish_after_commit(session, signature)`` keeps the signature on the session and
sends it from the ``after_commit`` hook; a rollback drops it. If the broker is down at that
moment the work is not lost: the row that needs it (an inbox event in state ``received``, an
outbox message without ``published_at``) is still there, and the sweeper republishes it.
"""

from __future__ import annotations

import structlog
from celery.canvas import Signature
from sqlalchemy import event
from sqlalchemy.orm import Session

__all__ = ["publish_after_commit"]

log = structlog.get_logger(__name__)

_KEY = "ordersync.after_commit"


def publish_after_commit(session: Session, signature: Signature) -> None:
    pending: list[Signature] = session.info.setdefault(_KEY, [])
    pending.append(signature)


@event.listens_for(Session, "after_commit")
def _publish(session: Session) -> None:
    pending: list[Signature] = session.info.pop(_KEY, [])
    for signature in pending:
        try:
            signature.apply_async()
        except Exception as exc:  # the sweeper republishes from the database
            log.warning("publish.failed", task=signature.task, error=type(exc).__name__)


@event.listens_for(Session, "after_rollback")
def _drop(session: Session) -> None:
    session.info.pop(_KEY, None)
