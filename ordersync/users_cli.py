"""Staff users, their API tokens, and the audit log: ``ordersync users …``, ``ordersync audit``.

What a command changes is recorded in the audit log with who ran it: the operating-system user,
or the name given with ``--as``.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from db.models import AuditEntry
from db.session import session_scope
from orders.users import (
    MIN_PASSWORD_LENGTH,
    Role,
    UserError,
    add_user,
    create_token,
    disable_user,
    reset_password,
    revoke_token,
    users_with_tokens,
)

__all__ = ["As", "audit_cli", "cli_actor", "users_cli"]

console = Console()
users_cli = typer.Typer(no_args_is_help=True, help="Staff who log in, and their API tokens.")
token_cli = typer.Typer(no_args_is_help=True, help="API tokens for scripts (Bearer).")
users_cli.add_typer(token_cli, name="token")
audit_cli = typer.Typer(help="Who did what: the audit log.", invoke_without_command=True)

As = Annotated[
    str | None,
    typer.Option("--as", help="the name recorded in the audit log (default: your login name)"),
]


def cli_actor(name: str | None) -> str:
    """Who runs a CLI command, for timelines and the audit log."""
    if name and name.strip():
        return name.strip()[:100]
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        login = f"uid {os.getuid()}"
    return f"{login} (cli)"


def _role(value: str) -> Role:
    try:
        return Role.parse(value)
    except UserError as exc:
        raise typer.BadParameter(str(exc)) from None


def _password(prompt: str) -> str:
    """Prompted twice on a terminal; else the first line of standard input."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"{prompt}: ")
        if getpass.getpass("again: ") != first:
            raise UserError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


@users_cli.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "viewer",
    as_: As = None,
) -> None:
    """Add a user; the password is prompted for (or read from stdin)."""
    parsed = _role(role)
    password = _password(f"password for {name} (at least {MIN_PASSWORD_LENGTH} characters)")
    with session_scope() as session:
        add_user(session, name, password, parsed, actor=cli_actor(as_))
    console.print(f"added {parsed.label} {name}")


@users_cli.command("list")
def users_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Users, their roles and their tokens (never the secrets)."""
    with session_scope() as session:
        rows: list[dict[str, Any]] = [
            {
                "name": u.name,
                "role": u.role,
                "active": u.active,
                "created_at": u.created_at.isoformat(),
                "tokens": [
                    {
                        "id": t.id,
                        "name": t.name,
                        "role": t.role,
                        "last_used_at": t.last_used_at and t.last_used_at.isoformat(),
                        "revoked": t.revoked_at is not None,
                    }
                    for t in tokens
                ],
            }
            for u, tokens in users_with_tokens(session)
        ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("name", "role", "active", "tokens (id name role)")
    for r in rows:
        tokens = ", ".join(
            f"{t['id']} {t['name']} {t['role']}{' REVOKED' if t['revoked'] else ''}"
            for t in r["tokens"]
        )
        table.add_row(r["name"], r["role"], "yes" if r["active"] else "DISABLED", tokens)
    console.print(table)


@users_cli.command("disable")
def users_disable(name: str, as_: As = None) -> None:
    """The user can no longer log in; their sessions and tokens stop working at once."""
    with session_scope() as session:
        disable_user(session, name, actor=cli_actor(as_))
    console.print(f"disabled {name}")


@users_cli.command("reset-password")
def users_reset_password(name: str, as_: As = None) -> None:
    """A new password (prompted or from stdin); the user's sessions end."""
    password = _password(f"new password for {name}")
    with session_scope() as session:
        reset_password(session, name, password, actor=cli_actor(as_))
    console.print(f"password of {name} changed; their sessions have ended")


@token_cli.command("create")
def token_create(
    user: str,
    name: Annotated[str, typer.Option(help="what the token is for, e.g. the script's name")],
    role: Annotated[str | None, typer.Option(help="at most the user's (default: theirs)")] = None,
    as_: As = None,
) -> None:
    """A token for USER; printed once, on stdout, and never shown again."""
    with session_scope() as session:
        row, token = create_token(
            session, user, name, _role(role) if role else None, actor=cli_actor(as_)
        )
        token_id, token_role = row.id, row.role
    Console(stderr=True).print(
        f"token {token_id} ({token_role}) for {user}; "
        "send it as 'Authorization: Bearer …'. It is not shown again:"
    )
    print(token)


@token_cli.command("revoke")
def token_revoke(token_id: int, as_: As = None) -> None:
    """Revoke a token by its id (``users list`` shows them); it stops working at once."""
    with session_scope() as session:
        token = revoke_token(session, token_id, actor=cli_actor(as_))
        name = token.name
    console.print(f"revoked token {token_id} ({name})")


@audit_cli.callback()
def audit(
    ctx: typer.Context,
    actor: Annotated[str | None, typer.Option(help="only what this name did")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. order.retry, stock.set, login")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest staff actions, with who did them."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action == action)
    with session_scope() as session:
        rows: list[dict[str, Any]] = [
            {
                "at": e.at.isoformat(),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "order_id": e.order_id,
                "detail": e.detail or {},
            }
            for e in session.scalars(query)
        ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("when", "who", "action", "on", "detail")
    for r in rows:
        table.add_row(
            r["at"][:19],
            r["actor"],
            r["action"],
            r["target"],
            json.dumps(r["detail"], sort_keys=True),
        )
    console.print(table)
