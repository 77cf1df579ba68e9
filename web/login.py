"""The login page and logout.

``GET /login`` shows the form with a one-time token that is also set as a cookie (the form
can only be posted from this page); ``POST /login`` checks it, refuses a name or address with
too many recent failures (429), checks the password (argon2) and sets the session cookie;
``POST /logout`` ends it. ``next`` only ever leads to a path on this site.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from core.settings import get_settings
from db.models import User
from db.session import get_sessionmaker
from orders.users import check_login, has_users, login_locked, record_login
from web.auth import cookie_header, session_cookie
from web.templating import render

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
LOGIN_COOKIE = "ordersync_login"
MAX_BODY = 8 * 1024


def _local(target: str | None) -> str:
    """``next`` if it is a path on this site, else ``/`` (never another host: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


def _form(
    request: Request, *, error: str = "", status: int = 200, name: str = "", next_url: str = "/"
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    with get_sessionmaker()() as session, session.begin():  # a read: COMMIT (web.sessions)
        first_start = not has_users(session)
    response = render(
        request,
        "login.html",
        nonce=nonce,
        error=error,
        name=name,
        next_url=_local(next_url),
        first_start=first_start,
        status_code=status,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=3600,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/login",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return _form(request, next_url=next)


def _attempt(name: str, password: str, address: str) -> tuple[str, User | None]:
    """('locked' | 'wrong' | 'ok', the user)."""
    with get_sessionmaker()() as session, session.begin():
        if login_locked(session, name, address):
            return "locked", None
    with get_sessionmaker()() as session, session.begin():
        user = check_login(session, name, password)
        record_login(session, name, address, ok=user is not None)
        return ("ok" if user else "wrong"), user


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    body = bytearray()
    async for chunk in request.stream():  # at most MAX_BODY bytes held, whatever is sent
        body += chunk
        if len(body) > MAX_BODY:
            return _form(request, error="That form was too large.", status=413)
    fields: dict[str, Any] = {
        k: v[0] for k, v in parse_qs(bytes(body).decode("utf-8", "replace")).items()
    }
    name = str(fields.get("name", "")).strip()[:100]
    password = str(fields.get("password", ""))
    next_url = _local(fields.get("next"))
    origin = request.headers.get("origin")
    nonce = request.cookies.get(LOGIN_COOKIE)
    if (origin is not None and urlsplit(origin).netloc != request.headers.get("host")) or (
        not nonce or not secrets.compare_digest(nonce, str(fields.get("csrf_token", "")))
    ):
        return _form(
            request,
            error="The form expired: please log in again.",
            status=403,
            name=name,
            next_url=next_url,
        )
    address = request.client.host if request.client else "unknown"
    outcome, user = await run_in_threadpool(_attempt, name, password, address)
    if outcome == "locked":
        return _form(
            request,
            error="Too many failed attempts: wait 15 minutes and try again.",
            status=429,
            name=name,
            next_url=next_url,
        )
    if user is None:
        return _form(
            request, error="Wrong name or password.", status=401, name=name, next_url=next_url
        )
    settings = get_settings()
    response = RedirectResponse(next_url, status_code=303)
    response.headers.append(
        "set-cookie",
        cookie_header(
            request.url.scheme, session_cookie(settings, user), max_age=settings.session_max_s
        ),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.headers.append("set-cookie", cookie_header(request.url.scheme, "", max_age=0))
    return response
