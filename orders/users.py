"""Staff users, their API tokens, login rate limits and the audit log.

- A password is hashed with argon2id (``argon2-cffi``'s defaults, the OWASP recommendation);
  the hash carries its parameters, so stronger defaults later rehash on the next login.
- An API token is ``os_<lookup>_<secret>``: ``lookup`` finds the row, and only the SHA-256 of
  the secret is stored. The secret is 256 random bits, so a fast hash is as safe as a slow one
  here, and a script's request costs no argon2 run. It is shown once, when created.
- A role: ``viewer`` reads; ``operator`` also acts on orders and stock; ``admin`` also manages
  marketplace accounts, users and tokens. A token's role is at most its user's.
- Login attempts: after ``MAX_FAILURES_PER_USER`` failures for a name, or
  ``MAX_FAILURES_PER_ADDRESS`` from an address, within ``LOCKOUT_WINDOW``, further attempts are
  refused without checking the password until the window has passed.
- ``audit``: one row per staff action with the name of who did it; an action on an order also
  goes on its timeline (``order_events``) with that name as the actor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import ApiToken, AuditEntry, LoginAttempt, User
from db.session import rowcount
from orders.intake import record_event

__all__ = [
    "LOCKOUT_WINDOW",
    "MAX_FAILURES_PER_ADDRESS",
    "MAX_FAILURES_PER_USER",
    "MIN_PASSWORD_LENGTH",
    "Principal",
    "Role",
    "UserError",
    "add_user",
    "audit",
    "authenticate_token",
    "check_login",
    "create_token",
    "disable_user",
    "has_users",
    "login_locked",
    "record_login",
    "reset_password",
    "revoke_token",
    "users_with_tokens",
    "verify_password",
]

MIN_PASSWORD_LENGTH = 10
NAME_MAX = 100
LOCKOUT_WINDOW = dt.timedelta(minutes=15)
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 20
TOKEN_PREFIX = "os_"  # noqa: S105 (the public prefix of every token, not a secret)

_hasher = PasswordHasher()
# verified against when the name is unknown, so that both take the same time
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class Role(IntEnum):
    """Ordered: each role can do what the ones below it can."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value.upper()]
        except KeyError:
            raise UserError(f"unknown role {value!r}: viewer, operator or admin") from None


class UserError(Exception):
    """A user or token request that cannot be done (unknown name, weak password, …)."""


@dataclass(frozen=True)
class Principal:
    """Who is making a request: a logged-in user, or a script with one of the user's tokens."""

    user_id: int
    name: str
    role: Role
    token: str | None = None  # the token's name, when authenticated by one

    @property
    def actor(self) -> str:
        """The name written on timelines and in the audit log."""
        name = self.name if self.token is None else f"{self.name} (token {self.token})"
        return name[:NAME_MAX]


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")


def _user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserError(f"no user named {name!r} (ordersync users list)")
    return user


def add_user(session: Session, name: str, password: str, role: Role, *, actor: str) -> User:
    name = name.strip()
    if not name or len(name) > NAME_MAX or any(c.isspace() for c in name):
        raise UserError(f"a user name has 1 to {NAME_MAX} characters and no spaces")
    _check_password(password)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise UserError(f"a user named {name!r} exists already")
    user = User(
        name=name,
        password_hash=_hasher.hash(password),
        role=role.label,
        active=True,
        session_version=1,
    )
    session.add(user)
    session.flush()
    audit(session, actor, "user.add", name, role=role.label)
    return user


def reset_password(session: Session, name: str, password: str, *, actor: str) -> None:
    """A new password; every session of the user ends (their tokens stay: revoke them apart)."""
    _check_password(password)
    user = _user(session, name)
    user.password_hash = _hasher.hash(password)
    user.session_version += 1
    audit(session, actor, "user.reset_password", name)


def disable_user(session: Session, name: str, *, actor: str) -> None:
    """The user can no longer log in; their sessions and tokens stop working at once."""
    user = _user(session, name)
    user.active = False
    user.session_version += 1
    audit(session, actor, "user.disable", name)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def check_login(session: Session, name: str, password: str) -> User | None:
    """The active user with this name and password, or None (in about the same time either
    way). A hash made with weaker parameters than today's is replaced."""
    user = session.scalar(select(User).where(User.name == name, User.active.is_(True)))
    if user is None:
        verify_password(_DUMMY_HASH, password)
        return None
    if not verify_password(user.password_hash, password):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def login_locked(
    session: Session, name: str, address: str, *, now: dt.datetime | None = None
) -> bool:
    """Too many failed logins lately for this name or from this address."""
    since = (now or utcnow()) - LOCKOUT_WINDOW
    failed = (
        select(func.count())
        .select_from(LoginAttempt)
        .where(LoginAttempt.ok.is_(False), LoginAttempt.at >= since)
    )
    by_user = session.scalar(failed.where(LoginAttempt.user_name == name[:NAME_MAX])) or 0
    by_address = session.scalar(failed.where(LoginAttempt.address == address[:64])) or 0
    return by_user >= MAX_FAILURES_PER_USER or by_address >= MAX_FAILURES_PER_ADDRESS


def record_login(session: Session, name: str, address: str, *, ok: bool) -> None:
    session.execute(
        insert(LoginAttempt).values(
            user_name=name[:NAME_MAX], address=address[:64], ok=ok, at=utcnow()
        )
    )
    if ok:
        audit(session, name, "login", name, address=address[:64])


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session, user_name: str, token_name: str, role: Role | None, *, actor: str
) -> tuple[ApiToken, str]:
    """A new token for ``user_name`` (at most their role); returns the row and the token,
    which is never shown again."""
    user = _user(session, user_name)
    if not user.active:
        raise UserError(f"user {user_name!r} is disabled")
    user_role = Role.parse(user.role)
    role = role or user_role
    if role > user_role:
        raise UserError(f"{user_name} is {user_role.label}: a token cannot be {role.label}")
    if not token_name.strip() or len(token_name) > NAME_MAX:
        raise UserError(f"a token name has 1 to {NAME_MAX} characters")
    lookup = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=token_name,
        lookup=lookup,
        secret_hash=_token_hash(secret),
        role=role.label,
    )
    session.add(token)
    session.flush()
    audit(
        session,
        actor,
        "token.create",
        f"{user_name}/{token_name}",
        token_id=token.id,
        role=role.label,
    )
    return token, f"{TOKEN_PREFIX}{lookup}_{secret}"


def revoke_token(session: Session, token_id: int, *, actor: str) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise UserError(f"no token with id {token_id} (ordersync users list)")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    user = session.get(User, token.user_id)
    audit(
        session,
        actor,
        "token.revoke",
        f"{user.name if user else '?'}/{token.name}",
        token_id=token.id,
    )
    return token


#: a token's use is recorded (``last_used_at``, an audit row) at most once in this long
TOKEN_USE_WINDOW = dt.timedelta(minutes=1)


def authenticate_token(
    session: Session, presented: str, *, request: str = ""
) -> Principal | None:
    """The principal of a bearer token: not revoked, its user active; its role at most the
    user's current role. Its use is recorded once per token per ``TOKEN_USE_WINDOW``, by the
    first request of the window: ``last_used_at`` moves and a ``token.used`` audit row names the
    token (id and name), its user and that ``request`` (method and path, never the query),
    decided by a conditional update, so concurrent requests in several web processes record it
    once. A script's every call is not a row (a poller would drown the log); who acted is on
    every action's own row ("name (token X)")."""
    lookup, _, secret = presented.removeprefix(TOKEN_PREFIX).partition("_")
    if not presented.startswith(TOKEN_PREFIX) or not lookup or not secret:
        return None
    row = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.lookup == lookup, ApiToken.revoked_at.is_(None), User.active.is_(True))
    ).one_or_none()
    if row is None:
        return None
    token, user = row
    if not hmac.compare_digest(token.secret_hash, _token_hash(secret)):
        return None
    now = utcnow()
    role = min(Role.parse(token.role), Role.parse(user.role))
    principal = Principal(user.id, user.name, role, token=token.name)
    if token.last_used_at is None or now - token.last_used_at >= TOKEN_USE_WINDOW:
        moved = session.execute(
            update(ApiToken)
            .where(ApiToken.id == token.id,
                   ApiToken.last_used_at.is_(None)
                   | (ApiToken.last_used_at <= now - TOKEN_USE_WINDOW))
            .values(last_used_at=now)
        )  # fmt: skip
        if rowcount(moved) == 1:
            audit(session, principal.actor, "token.used", f"{user.name}/{token.name}",
                  token_id=token.id, token=token.name, user=user.name,
                  request=request[:200])  # fmt: skip
    return principal


def audit(
    session: Session,
    actor: str,
    action: str,
    target: str = "",
    *,
    order_id: int | None = None,
    timeline: bool = True,
    **detail: Any,
) -> None:
    """Record a staff action in the audit log, and on the order's timeline if it is about one
    (``timeline=False``: the action's own timeline row carries the name already)."""
    session.execute(
        insert(AuditEntry).values(
            at=utcnow(),
            actor=actor[:NAME_MAX],
            action=action,
            target=target[:200],
            order_id=order_id,
            detail=detail,
        )
    )
    if order_id is not None and timeline:
        record_event(session, order_id, actor=actor[:NAME_MAX], kind=action, **detail)


def users_with_tokens(session: Session) -> list[tuple[User, list[ApiToken]]]:
    users = session.scalars(select(User).order_by(User.name)).all()
    tokens = session.scalars(select(ApiToken).order_by(ApiToken.id)).all()
    by_user: dict[int, list[ApiToken]] = {}
    for token in tokens:
        by_user.setdefault(token.user_id, []).append(token)
    return [(u, by_user.get(u.id, [])) for u in users]


def has_users(session: Session) -> bool:
    return session.scalar(select(func.count()).select_from(User)) != 0
