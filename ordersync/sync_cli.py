"""``ordersync sync status``: polls and the nightly reconciliation, per account."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.settings import get_settings
from db.base import utcnow
from db.session import session_scope
from orders.sync_status import account_statuses, status_json

__all__ = ["sync_cli"]

sync_cli = typer.Typer(no_args_is_help=True, help="Polling and the nightly full sync.")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


@sync_cli.command("status")
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Per account: cursor and lag, last poll and its outcome, next poll, last full sync and
    its reconcile report."""
    with session_scope() as session:
        rows = [
            status_json(s)
            for s in account_statuses(
                session, now=utcnow(), poll_interval_s=get_settings().poll_interval_s
            )
        ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(
        "account",
        "cursor (lag)",
        "last poll",
        "next poll",
        "last full sync",
        "reconcile report",
        title="sync status",
    )
    for r in rows:
        poll, full, report = r["last_poll"], r["last_full_sync"], r["reconcile_report"]
        poll_text = (
            (
                f"{poll['status']} {poll['started_at'][:19]}: {poll['seen']} seen, "
                f"{poll['changed']} changed" + (f" ({poll['error']})" if poll["error"] else "")
            )
            if poll
            else "never"
        )
        full_text = f"{full['status']} {full['started_at'][:19]}" if full else "never"
        report_text = (
            (
                f"seen {report['seen']}, created {report['created']}, updated "
                f"{report['updated']}, states repaired {report['states_repaired']}, "
                f"flagged {report['flagged']}, errors {report['errors']}"
            )
            if report
            else ""
        )
        next_text = ("parked until " if r["parked_until"] else "") + (r["next_poll"] or "-")[:19]
        if not r["polled"]:
            next_text = "webhooks only"
        cursor = f"{(r['cursor'] or '-')[:19]} ({_age(r['lag_s'])})" if r["cursor"] else "-"
        table.add_row(
            f"{r['account']} ({r['channel']})", cursor, poll_text, next_text, full_text, report_text
        )
    Console().print(table)
