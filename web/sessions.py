"""The database session of a web request: one FastAPI dependency, ``SessionDep``.

A route takes ``session: SessionDep`` and opens ``with session.begin():`` where it writes (the
commit happens there, before the route answers). The session is closed when the request is
done; a connection still held then (a read that left its transaction open) is given back in a
worker thread, never on the event loop. After a commit nothing is held and closing is
bookkeeping, so the webhook path pays no second thread hop for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from db.session import get_sessionmaker

__all__ = ["SessionDep", "get_session"]


async def get_session() -> AsyncIterator[Session]:
    session = get_sessionmaker()()  # no connection yet: taken on first use
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)  # rolls back over the network
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]
