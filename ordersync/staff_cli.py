"""Staff and operator commands: ``orders``, ``stock`` and ``accounts``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from db.models import ChannelAccount, Order
from db.session import session_scope
from orders.states import Channel

__all__ = ["accounts_cli", "orders_cli", "stock_cli"]

console = Console()
orders_cli = typer.Typer(no_args_is_help=True, help="Look at orders and retry stuck ones.")
stock_cli = typer.Typer(no_args_is_help=True, help="Stock levels.")
accounts_cli = typer.Typer(no_args_is_help=True, help="Marketplace accounts.")


@orders_cli.command("list")
def orders_list(
    state: Annotated[str | None, typer.Option(help="e.g. needs_attention, on_hold")] = None,
    limit: int = 50,
) -> None:
    """The latest orders (optionally in one state)."""
    query = select(Order).order_by(Order.id.desc()).limit(limit)
    if state:
        query = query.where(Order.state == state)
    table = Table("id", "channel", "number", "state", "total", "failed step", "error")
    with session_scope() as session:
        for o in session.scalars(query):
            table.add_row(str(o.id), o.channel, o.external_number or o.external_id, o.state,
                          f"{o.total} {o.currency}", o.failed_step or "",
                          (o.last_error or "")[:60])  # fmt: skip
    console.print(table)


@orders_cli.command("retry")
def orders_retry(order_id: int) -> None:
    """Resume a needs_attention order from the step that failed (or retry the refused refund of
    a cancelled order)."""
    from orders.states import OrderState
    from workflows.pipeline import retry_order

    with session_scope() as session:
        resumed = retry_order(session, order_id, actor="staff:cli")
    if resumed == OrderState.CANCELLED:
        console.print(f"order {order_id}: refund retried")
    else:
        console.print(f"order {order_id} resumed from {resumed}")


@stock_cli.command("set")
def stock_set(sku: str, quantity: int) -> None:
    """Set the on-hand quantity of SKU; on-hold orders waiting for it are released."""
    from orders.stock import set_on_hand
    from workflows.pipeline import release_waiting

    with session_scope() as session:
        available = set_on_hand(session, sku, quantity)
        waiting = release_waiting(session, sku)
    console.print(f"{sku}: on hand {quantity}, available {available}; "
                  f"{len(waiting)} waiting orders pushed on")  # fmt: skip


def _parse_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


@accounts_cli.command("add")
def accounts_add(
    channel: Channel,
    name: str,
    shop: Annotated[str, typer.Option(help="shop domain, site URL or marketplace id")] = "",
    api_base_url: Annotated[str | None, typer.Option(help="override (sandbox)")] = None,
    webhook_secret: Annotated[str | None, typer.Option()] = None,
    credential: Annotated[
        list[str] | None, typer.Option("--credential", "-c", help="KEY=VALUE, repeatable")
    ] = None,
) -> None:
    """Connect a shop: e.g. `accounts add shopify my-shop --shop my-shop.myshopify.com
    -c access_token=shpat_… --webhook-secret …`."""
    with session_scope() as session:
        session.add(
            ChannelAccount(
                name=name,
                channel=channel.value,
                shop=shop,
                api_base_url=api_base_url,
                webhook_secret=webhook_secret,
                credentials=_parse_pairs(credential or []),
            )
        )
    console.print(f"added {channel.value} account {name}")


@accounts_cli.command("list")
def accounts_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Accounts with their credentials masked."""
    with session_scope() as session:
        rows: list[dict[str, Any]] = [
            {
                "name": a.name,
                "channel": a.channel,
                "shop": a.shop,
                "api_base_url": a.api_base_url,
                "credentials": {k: "********" for k in (a.credentials or {})},
                "webhook_secret": "********" if a.webhook_secret else None,
                "poll_cursor": a.poll_cursor.isoformat() if a.poll_cursor else None,
                "active": a.active,
            }
            for a in session.scalars(select(ChannelAccount).order_by(ChannelAccount.name))
        ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("name", "channel", "shop", "credentials", "poll cursor", "active")
    for r in rows:
        table.add_row(r["name"], r["channel"], r["shop"], ", ".join(r["credentials"]),
                      r["poll_cursor"] or "", str(r["active"]))  # fmt: skip
    console.print(table)


@accounts_cli.command("test")
def accounts_test(name: str) -> None:
    """Make one real authenticated call; say OK or the exact failure."""
    from integrations.errors import IntegrationError
    from workflows.providers import connector_for

    with session_scope() as session:
        account = session.scalars(select(ChannelAccount).where(ChannelAccount.name == name)).one()
    connector: object = connector_for(account)
    try:
        detail = connector.test_connection()  # type: ignore[attr-defined]
    except IntegrationError as exc:
        console.print(f"[red]FAILED[/red] {name}: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    finally:
        connector.close()  # type: ignore[attr-defined]
    console.print(f"[green]OK[/green] {name}: {detail}")
