"""Who may do what: every route is closed unless it is public (default deny).

``StaffGate`` is a pure ASGI middleware around the whole app, so a route added later is
protected without being named anywhere:

- public: ``/webhooks/*`` (signed by the marketplace; passed straight through, nothing read),
  ``/healthz``, ``/login`` and ``/static/*``;
- everything else needs a session cookie or ``Authorization: Bearer <token>``. Without one,
  a page (``GET`` outside ``/api/``) redirects to ``/login?next=…``, anything else gets 401;
- ``POST``/``PUT``/``PATCH``/``DELETE`` need at least the operator role (403 for a viewer),
  whatever the route; admin routes add ``Depends(require(Role.ADMIN))``;
- an unsafe request on a session cookie must carry the session's CSRF token (the
  ``X-CSRF-Token`` header, or a ``csrf_token`` form field), and a browser's ``Origin``, when
  sent, must be this site (the second line). A bearer token is not ambient, so it needs
  neither.

The session cookie is signed (itsdangerous), HttpOnly, SameSite=Lax, Secure when the request
came over TLS (directly or through a proxy uvicorn trusts); it holds the user's id, the user's
``session_version`` (a password reset or a disable ends every session), a CSRF token, and its
start. It ends after ``SESSION_IDLE_S`` without a request and ``SESSION_MAX_S`` after login.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import HTTPException, Request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from pydantic import BaseModel
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from core.settings import Settings, get_settings
from db.models import User
from db.session import get_sessionmaker
from orders.users import Principal, Role, authenticate_token

__all__ = [
    "COOKIE",
    "PUBLIC_PATHS",
    "PUBLIC_PREFIXES",
    "STAFF_RESPONSES",
    "Problem",
    "StaffGate",
    "current",
    "is_public",
    "require",
    "session_cookie",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "ordersync_session"
PUBLIC_PATHS = frozenset({"/healthz", "/login"})
PUBLIC_PREFIXES = ("/webhooks/", "/static/")
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: a session cookie is signed again (its idle clock restarted) at most this often
REFRESH_AFTER_S = 60
#: the largest form body read for its CSRF field
MAX_FORM_BYTES = 64 * 1024


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


_key_cache: dict[Path, str] = {}


def secret_key(settings: Settings) -> str:
    """``SECRET_KEY``, else a random key kept in ``VAR_DIR/secret_key`` (made on first use,
    readable by its owner only), so sessions survive a restart."""
    configured = settings.secret_key.get_secret_value()
    if configured:
        return configured
    path = settings.var_dir / "secret_key"
    if path in _key_cache:
        return _key_cache[path]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = path.with_name(f".secret_key.{os.getpid()}")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
        try:
            os.link(fresh, path)  # the first process to get here wins; the others read its key
        except FileExistsError:
            pass
        finally:
            fresh.unlink()
    key = path.read_text().strip()
    _key_cache[path] = key
    return key


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key(settings), salt="ordersync.session")


@dataclass(frozen=True)
class Session:
    user_id: int
    version: int
    csrf: str
    started: float
    signed_at: float


def session_cookie(
    settings: Settings, user: User, *, csrf: str | None = None, started: float | None = None
) -> str:
    payload = {
        "u": user.id,
        "v": user.session_version,
        "c": csrf or secrets.token_urlsafe(24),
        "s": started or time.time(),
    }
    return _serializer(settings).dumps(payload)


def read_session(settings: Settings, value: str) -> Session | None:
    try:
        payload, signed = _serializer(settings).loads(
            value, max_age=settings.session_idle_s, return_timestamp=True
        )
    except (SignatureExpired, BadSignature):
        return None
    try:
        session = Session(
            int(payload["u"]),
            int(payload["v"]),
            str(payload["c"]),
            float(payload["s"]),
            signed.timestamp(),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if time.time() - session.started > settings.session_max_s:
        return None
    return session


def cookie_header(request_scheme: str, value: str, *, max_age: int) -> str:
    secure = "; Secure" if request_scheme == "https" else ""
    return f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"


def _user_of_session(session: Session) -> Principal | None:
    # a read, ended with a COMMIT (web.sessions.end_reads: a ROLLBACK drops psycopg's
    # prepared statements), on every request of a logged-in clerk
    with get_sessionmaker()() as db, db.begin():
        user = db.scalar(select(User).where(User.id == session.user_id, User.active.is_(True)))
        if user is None or user.session_version != session.version:
            return None
        return Principal(user.id, user.name, Role.parse(user.role))


def _user_of_token(token: str, request: str) -> Principal | None:
    with get_sessionmaker()() as db, db.begin():
        return authenticate_token(db, token, request=request)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _cookie(headers: dict[str, str], name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


async def _json(
    send: Send, status: int, detail: str, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def _same_site(headers: dict[str, str]) -> bool:
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc == headers.get("host")


class StaffGate:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)  # webhooks: not a byte read, not a query made
            return
        settings = get_settings()
        headers = _headers(scope)
        method = scope["method"]
        path = scope["path"]
        principal: Principal | None = None
        session: Session | None = None
        authorization = headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            principal = await run_in_threadpool(
                _user_of_token, authorization[7:].strip(), f"{method} {path}"
            )
        else:
            cookie = _cookie(headers, COOKIE)
            session = read_session(settings, cookie) if cookie else None
            if session is not None:
                principal = await run_in_threadpool(_user_of_session, session)
        if principal is None:
            if method in ("GET", "HEAD") and not path.startswith("/api/") and path != "/metrics":
                query = scope.get("query_string", b"").decode("latin-1")
                target = path + (f"?{query}" if query else "")
                await _redirect(send, f"/login?next={quote(target, safe='')}")
            else:
                await _json(
                    send,
                    401,
                    "login required (a session, or Authorization: Bearer)",
                    ((b"www-authenticate", b"Bearer"),),
                )
            return
        if method in UNSAFE:
            if session is not None:
                if not _same_site(headers):
                    await _json(send, 403, "cross-site request refused")
                    return
                presented = headers.get("x-csrf-token")
                if presented is None:
                    presented, receive = await _form_field(receive, headers, "csrf_token")
                if not presented or not secrets.compare_digest(presented, session.csrf):
                    await _json(send, 403, "missing or wrong CSRF token")
                    return
            if principal.role < Role.OPERATOR:
                await _json(send, 403, f"{principal.role.label}s cannot do this")
                return
        scope.setdefault("state", {})["principal"] = principal
        if session is not None:
            scope["state"]["csrf"] = session.csrf
        if session is None or time.time() - session.signed_at < REFRESH_AFTER_S:
            await self.app(scope, receive, send)
            return
        # sign the cookie again: the idle clock starts over
        renewed = _serializer(settings).dumps(
            {"u": session.user_id, "v": session.version, "c": session.csrf, "s": session.started}
        )
        set_cookie = cookie_header(
            scope.get("scheme", "http"), renewed, max_age=settings.session_max_s
        ).encode()

        async def send_renewed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"set-cookie", set_cookie)],
                }
            await send(message)

        await self.app(scope, receive, send_renewed)


async def _form_field(
    receive: Receive, headers: dict[str, str], name: str
) -> tuple[str | None, Receive]:
    """A field of an urlencoded form body, and a ``receive`` that hands the body on unchanged."""
    if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None, receive
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None, receive
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None, receive
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    values = parse_qs(body.decode("utf-8", "replace")).get(name)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return (values[0] if values else None), replay


class Problem(BaseModel):
    """What every refusal says."""

    detail: str


#: the answers every staff route may give besides its own (documented in /docs, and checked
#: by the schemathesis run)
STAFF_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no session or token (or a revoked one)"},
    403: {"model": Problem, "description": "the role cannot do this, or a CSRF check failed"},
}


def current(request: Request) -> Principal:
    """Who makes this request (set by ``StaffGate``); a route's ``actor`` is its ``.actor``."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:  # a public route asking who is there
        raise HTTPException(401, "login required")
    return principal


def require(role: Role) -> Callable[[Request], Principal]:
    """A route dependency: at least ``role`` (e.g. ``Depends(require(Role.ADMIN))``)."""

    def check(request: Request) -> Principal:
        principal = current(request)
        if principal.role < role:
            raise HTTPException(403, f"{principal.role.label}s cannot do this: {role.label} only")
        return principal

    check.required_role = role  # type: ignore[attr-defined]  # read by the route tests
    return check
