"""The web's database sessions end a request's reads with a COMMIT, and roll back after an error.

On PostgreSQL a ROLLBACK makes psycopg drop every statement it prepared on the connection
(``DEALLOCATE ALL``): a read-only request that ended its transaction by closing it (a
ROLLBACK) left the next request nothing prepared, and a logged-in clerk's every request did so
twice (the gate's read of the user, then the route's reads); the login page and
Prometheus's scrape did too. Measured with ``ordersync web`` on
PostgreSQL, 600 requests each: the dashboard 87-90 -> 106-115 requests/s, ``/api/summary``
217-223 -> 252-259 (web.sessions.end_reads)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from db.models import User
from db.session import get_engine, get_sessionmaker
from tests.support.staff import bearer, login, new_user, staff_token
from web.app import create_app
from web.sessions import SessionDep

BASE = "http://ordersync.local"


class Ends:
    """How the transactions on an engine ended: COMMIT or ROLLBACK (SQLAlchemy's own events,
    not the pool's reset of a connection given back idle, which sends nothing)."""

    def __init__(self, url: str) -> None:
        self.engine, self.seen = get_engine(url), list[str]()
        for name in ("commit", "rollback"):
            sa.event.listen(self.engine, name, self._record(name))

    def _record(self, name: str) -> Any:
        def record(_conn: object) -> None:
            self.seen.append(name)

        return record

    def clear(self) -> None:
        self.seen.clear()


def test_a_clerks_reads_end_with_commit_not_rollback(settings_for: str) -> None:
    app = create_app()
    clerk, script = TestClient(app, base_url=BASE), TestClient(app, base_url=BASE)
    maker = get_sessionmaker(settings_for)
    login(clerk, new_user(maker, "viewer"))
    token = staff_token(maker, "viewer")
    ends = Ends(settings_for)

    for path in ("/", "/orders", "/api/summary", "/api/orders?limit=50"):
        assert clerk.get(path).status_code == 200, path  # the session cookie
        assert script.get(path, headers=bearer(token)).status_code == 200, path
    assert script.get("/login").status_code == 200  # anyone's
    assert script.get("/metrics", headers=bearer(token)).status_code == 200
    assert "commit" in ends.seen and "rollback" not in ends.seen


def test_an_error_after_a_write_outside_a_begin_block_rolls_it_back(settings_for: str) -> None:
    """The contract is that a route writes in ``with session.begin():``; one that wrote outside
    it and then failed leaves nothing behind (and a read-only one that failed rolls back)."""
    app = FastAPI()
    name = f"ghost-{uuid.uuid4().hex[:6]}"

    @app.post("/fails")
    def fails(session: SessionDep) -> None:
        session.add(User(name=name, role="viewer", password_hash="x"))
        session.flush()
        raise HTTPException(409, "refused")

    @app.get("/reads")
    def reads(session: SessionDep) -> dict[str, int]:
        return {"users": len(session.scalars(sa.select(User.id)).all())}

    ends = Ends(settings_for)
    client = TestClient(app, base_url=BASE)
    assert client.post("/fails").status_code == 409
    assert ends.seen == ["rollback"]
    ends.clear()
    assert client.get("/reads").json() == {"users": 0}  # the ghost was never committed
    assert ends.seen == ["commit"]
