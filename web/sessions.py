"""The database session of a web request: one FastAPI dependency, ``SessionDep``.

A route takes ``session: SessionDep`` and opens ``with session.begin():`` where it writes (the
commit happens there, before the route answers). The session is closed when the request is
done; a connection still held then (a read that left its transaction open) ends with a COMMIT
(``end_reads``) and is given back in a worker thread, never on the event loop; after an error
it is rolled back. After a commit nothing is held and closing is
bookkeeping, so the webhook path pays no second thread hop for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from db.session import get_sessionmaker

__all__ = ["SessionDep", "end_reads", "get_session"]


async def get_session() -> AsyncIterator[Session]:
    session = get_sessionmaker()()  # no connection yet: taken on first use
    try:
        yield session
    except BaseException:
        if session.in_transaction():
            await run_in_threadpool(session.close)  # rolls back over the network
        else:
            session.close()
        raise
    if session.in_transaction():
        await run_in_threadpool(end_reads, session)
    else:
        session.close()


def end_reads(session: Session) -> None:
    """Close a session whose open transaction only read (a route writes in ``with
    session.begin():``, committed there) with a COMMIT: closing would ROLLBACK, and on a
    ROLLBACK psycopg drops every statement it prepared on the connection (``DEALLOCATE ALL``),
    so no read of a request would ever run as a prepared statement."""
    try:
        session.commit()
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
