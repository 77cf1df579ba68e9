"""Staff for tests: users with a role, their API tokens, and logged-in HTTP clients.

Every staff route needs a session or a token (web/auth.py), so a test that calls one makes a
user first: ``staff_token(maker, "operator")`` gives the ``Authorization`` header of a new
operator, ``login(client, name, password)`` logs a client in through the real login form and
returns the session's CSRF token.
"""

from __future__ import annotations

import re
import uuid

import httpx
from sqlalchemy.orm import Session, sessionmaker

from orders.users import Role, add_user, create_token

__all__ = ["PASSWORD", "bearer", "login", "new_user", "staff_token"]

PASSWORD = "correct horse battery staple"


def new_user(maker: sessionmaker[Session], role: str, name: str | None = None) -> str:
    """A new active user with ``role`` and the password ``PASSWORD``; returns the name."""
    name = name or f"{role}-{uuid.uuid4().hex[:8]}"
    with maker() as session, session.begin():
        add_user(session, name, PASSWORD, Role.parse(role), actor="tests")
    return name


def staff_token(
    maker: sessionmaker[Session], role: str = "operator", name: str | None = None
) -> str:
    """The bearer token of a new user with ``role``."""
    user = new_user(maker, role, name)
    with maker() as session, session.begin():
        _, token = create_token(session, user, "tests", None, actor="tests")
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(client: httpx.Client, name: str, password: str = PASSWORD) -> str:
    """Log ``client`` in through the login form; returns the session's CSRF token."""
    page = client.get("/login")
    nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert nonce, page.text
    done = client.post(
        "/login",
        data={"name": name, "password": password, "csrf_token": nonce.group(1), "next": "/"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    home = client.get("/")
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text)
    assert csrf, home.text
    return csrf.group(1)
