"""The audit log (``/audit``, ``/api/audit``) and, for admins, users and their tokens
(``/api/users``, ``POST /api/tokens/{id}/revoke``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditEntry
from orders.users import Principal, Role, UserError, revoke_token, users_with_tokens
from web.api import MAX_ID, NO_NUL
from web.auth import STAFF_RESPONSES, Problem, require
from web.sessions import SessionDep
from web.templating import render

__all__ = ["api", "pages"]

api = APIRouter(
    prefix="/api",
    tags=["staff"],
    responses={**STAFF_RESPONSES, 404: {"model": Problem, "description": "no such token"}},
)
pages = APIRouter(include_in_schema=False)
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
AUDIT_LIMIT = 200


class AuditOut(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    order_id: int | None
    detail: dict[str, Any]


class AuditListOut(BaseModel):
    entries: list[AuditOut]


class TokenOut(BaseModel):
    id: int
    name: str
    role: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


class UserOut(BaseModel):
    name: str
    role: str
    active: bool
    created_at: dt.datetime
    tokens: list[TokenOut]


class UserListOut(BaseModel):
    users: list[UserOut]


def audit_entries(
    session: Session,
    *,
    actor: str = "",
    action: str = "",
    order_id: int | None = None,
    limit: int = AUDIT_LIMIT,
) -> list[AuditEntry]:
    """The newest audit rows first, filtered."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action == action)
    if order_id is not None:
        query = query.where(AuditEntry.order_id == order_id)
    return list(session.scalars(query).all())


def _audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "order_id": entry.order_id,
        "detail": entry.detail or {},
    }


@api.get("/audit", response_model=AuditListOut)
def list_audit(
    session: SessionDep,
    actor: Annotated[str, Query(max_length=100, pattern=NO_NUL)] = "",
    action: Annotated[str, Query(max_length=50, pattern=NO_NUL)] = "",
    order_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = AUDIT_LIMIT,
) -> dict[str, Any]:
    rows = audit_entries(session, actor=actor, action=action, order_id=order_id, limit=limit)
    return {"entries": [_audit_json(e) for e in rows]}


@pages.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    session: SessionDep,
    actor: Annotated[str, Query(max_length=100, pattern=NO_NUL)] = "",
    action: Annotated[str, Query(max_length=50, pattern=NO_NUL)] = "",
) -> HTMLResponse:
    rows = audit_entries(session, actor=actor.strip(), action=action.strip())
    return render(request, "audit.html", rows=rows, actor=actor, action=action, limit=AUDIT_LIMIT)


@api.get("/users", response_model=UserListOut)
def list_users(session: SessionDep, admin: Admin) -> dict[str, Any]:
    return {
        "users": [
            {
                "name": u.name,
                "role": u.role,
                "active": u.active,
                "created_at": u.created_at,
                "tokens": [
                    {
                        "id": t.id,
                        "name": t.name,
                        "role": t.role,
                        "created_at": t.created_at,
                        "last_used_at": t.last_used_at,
                        "revoked_at": t.revoked_at,
                    }
                    for t in tokens
                ],
            }
            for u, tokens in users_with_tokens(session)
        ]
    }


@api.post("/tokens/{token_id}/revoke", response_model=TokenOut)
def revoke(
    token_id: Annotated[int, Path(ge=1, le=MAX_ID)], session: SessionDep, admin: Admin
) -> dict[str, Any]:
    with session.begin():
        try:
            token = revoke_token(session, token_id, actor=admin.actor)
        except UserError as exc:
            raise HTTPException(404, str(exc)) from None
        return {
            "id": token.id,
            "name": token.name,
            "role": token.role,
            "created_at": token.created_at,
            "last_used_at": token.last_used_at,
            "revoked_at": token.revoked_at,
        }
