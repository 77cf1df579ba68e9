"""Staff and operator commands: ``orders``, ``stock`` and ``accounts``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Column, Table
from sqlalchemy import select

from db.models import AccountLocation, ChannelAccount, Order, StockLocation
from db.session import session_scope
from domain.states import OrderState
from ordersync.users_cli import As, cli_actor

__all__ = [
    "CliError",
    "accounts_cli",
    "listings_cli",
    "money_cli",
    "orders_cli",
    "outbox_cli",
    "stock_cli",
]

#: the widths of the columns these commands write (db/models.py)
NAME_MAX, SKU_MAX = 100, 100
INT32_MAX = 2**31 - 1


class CliError(Exception):
    """An operator's input that cannot be done: printed as one line, exit code 1."""


console = Console()
orders_cli = typer.Typer(no_args_is_help=True, help="Look at orders and retry stuck ones.")
stock_cli = typer.Typer(no_args_is_help=True, help="Stock levels.")
accounts_cli = typer.Typer(no_args_is_help=True, help="Marketplace accounts.")
listings_cli = typer.Typer(no_args_is_help=True, help="Our SKUs as listed on each channel.")
outbox_cli = typer.Typer(
    no_args_is_help=True, help="Fulfilments and cancellations on their way to the marketplaces."
)
money_cli = typer.Typer(no_args_is_help=True, help="Does the money add up?")


@money_cli.command("check")
def money_check(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """For every order whose money is settled: invoiced - credited = captured - refunded = what
    the marketplace says the buyer paid. Lists each order that differs and why; exit code 1
    when any does."""
    from orders.money_check import check

    with session_scope() as session:
        found = check(session)
    if as_json:
        typer.echo(json.dumps([m.as_dict() for m in found], sort_keys=True))
    elif found:
        table = Table("order", "channel", "external id", "invoiced", "captured", "buyer paid",
                      Column("why", overflow="fold"))  # fmt: skip
        for m in found:
            table.add_row(str(m.order_id), m.channel, m.external_id, str(m.invoiced),
                          str(m.captured), str(m.buyer_paid), "; ".join(m.reasons))  # fmt: skip
        console.print(table)
    else:
        console.print("every order adds up")
    if found:
        raise typer.Exit(1)


@orders_cli.command("list")
def orders_list(
    state: Annotated[OrderState | None, typer.Option(help="e.g. needs_attention, on_hold")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
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
def orders_retry(order_id: int, as_: As = None) -> None:
    """Resume a needs_attention order from the step that failed (or retry the refused refund of
    a cancelled order)."""
    from orders.users import audit
    from workflows.pipeline import retry_order

    actor = cli_actor(as_)
    with session_scope() as session:
        resumed = retry_order(session, order_id, actor=actor)
        audit(session, actor, "order.retry", f"order {order_id}", order_id=order_id,
              timeline=False, resumed_from=resumed.value)  # fmt: skip
    if resumed == OrderState.CANCELLED:
        console.print(f"order {order_id}: refund retried")
    else:
        console.print(f"order {order_id} resumed from {resumed}")


@orders_cli.command("cancel")
def orders_cancel(
    order_id: int,
    reason: Annotated[str, typer.Option("--reason", "-r", help="why (on the timeline)")],
    as_: As = None,
) -> None:
    """Cancel an order before it ships: stock back, label voided, refund, credit note, and the
    cancellation pushed to the marketplace."""
    from orders.staff import CannotCancel
    from orders.transitions import IllegalTransition
    from workflows.pipeline import cancel_order

    try:
        with session_scope() as session:
            cancel_order(session, order_id, reason=reason, actor=cli_actor(as_))
    except (LookupError, CannotCancel, IllegalTransition, ValueError) as exc:
        raise CliError(str(exc).strip("'\"")) from None
    console.print(f"order {order_id} cancelled")


@orders_cli.command("ship")
def orders_ship(
    order_id: int,
    shipment: Annotated[
        list[int] | None, typer.Option("--shipment", "-s", help="only this one; repeatable")
    ] = None,
    line: Annotated[
        list[str] | None,
        typer.Option("--line", help="LINE=UNITS (a line id or SKU) that leave now; repeatable"),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(help="with --line: this request's key (default: its lines: the same "
                     "lines again are the same request)"),
    ] = None,
    as_: As = None,
) -> None:
    """The order's labelled shipments (or the ones given) left: their tracking goes to the
    marketplace (the API's Ship). With --line: those units leave now, the rest later (their
    parcels are split, each part labelled, and shipped once labelled)."""
    from db.models import Shipment
    from orders.transitions import IllegalTransition
    from orders.users import audit
    from workflows.pipeline import ship, ship_lines
    from workflows.publish import publish_after_commit

    if shipment and line:
        _refuse("give --shipment or --line, not both")
    lines: dict[str, int] = {}
    for name, units in _parse_pairs(line or []).items():
        if not units.isdigit() or int(units) < 1:
            _refuse(f"--line {name}={units}: units must be a whole number of at least 1")
        lines[name] = int(units)
    actor = cli_actor(as_)
    with session_scope() as session:
        order = session.get(Order, order_id)
        if order is None:
            raise CliError(f"no order {order_id}")
        if lines:
            try:
                asked = ship_lines(session, order_id, lines, actor=actor, request_key=key)
            except (IllegalTransition, ValueError) as exc:
                raise CliError(str(exc).strip("'\"")) from None
            if asked.new:
                audit(session, actor, "ship", f"order {order_id}", order_id=order_id,
                      timeline=False, lines=lines, shipments=asked.shipment_ids)  # fmt: skip
            said = "shipping" if asked.new else "already asked (the same request)"
            console.print(f"order {order_id}: {said}: shipments "
                          + ", ".join(str(i) for i in asked.shipment_ids))  # fmt: skip
            return
        if order.state not in (OrderState.READY_TO_SHIP, OrderState.PARTIALLY_SHIPPED):
            raise CliError(f"order {order_id} is {order.state}, not ready_to_ship")
        labelled = set(session.scalars(select(Shipment.id).where(
            Shipment.order_id == order_id, Shipment.status == "labelled")))  # fmt: skip
        if shipment and not set(shipment) <= labelled:
            raise CliError(f"order {order_id}: labelled shipments are {sorted(labelled)}")
        audit(session, actor, "ship", f"order {order_id}", order_id=order_id)
        publish_after_commit(session, ship.si(order_id, shipment or None))
    console.print(f"order {order_id}: shipping")


@orders_cli.command("hold")
def orders_hold(
    order_id: int,
    reason: Annotated[str, typer.Option("--reason", "-r", help="why (on the timeline)")],
    as_: As = None,
) -> None:
    """Hold an order: it does not ship until released."""
    from orders.staff import hold
    from orders.transitions import IllegalTransition

    try:
        with session_scope() as session:
            hold(session, order_id, reason=reason, actor=cli_actor(as_))
    except (IllegalTransition, ValueError) as exc:
        raise CliError(str(exc)) from None
    console.print(f"order {order_id} held")


@orders_cli.command("release")
def orders_release(order_id: int, as_: As = None) -> None:
    """Release a held order."""
    from orders.staff import release
    from orders.transitions import IllegalTransition

    try:
        with session_scope() as session:
            release(session, order_id, actor=cli_actor(as_))
    except IllegalTransition as exc:
        raise CliError(str(exc)) from None
    console.print(f"order {order_id} released")


@orders_cli.command("mark-shipped")
def orders_mark_shipped(
    order_id: int,
    tracking: Annotated[str, typer.Option("--tracking", "-t", help="the tracking number")],
    carrier: Annotated[str, typer.Option("--carrier", "-c", help="e.g. ups, dhl")],
    as_: As = None,
) -> None:
    """The parcel left with a label bought elsewhere: record it with its tracking number (the
    marketplace is told; our unused labels are voided)."""
    from orders.transitions import IllegalTransition
    from workflows.pipeline import mark_shipped

    try:
        with session_scope() as session:
            mark_shipped(session, order_id, tracking_number=tracking, carrier=carrier,
                         actor=cli_actor(as_))  # fmt: skip
    except (LookupError, IllegalTransition, ValueError) as exc:
        raise CliError(str(exc).strip("'\"")) from None
    console.print(f"order {order_id} shipped by hand ({carrier} {tracking})")


@orders_cli.command("void-label")
def orders_void_label(
    shipment_id: int,
    rebuy: Annotated[
        bool, typer.Option("--rebuy", help="buy a new label for the same lines")
    ] = False,
    as_: As = None,
) -> None:
    """Void the label of a shipment that has not left (the carrier refunds it)."""
    from orders.transitions import IllegalTransition
    from workflows.pipeline import void_shipment_label

    try:
        with session_scope() as session:
            new = void_shipment_label(session, shipment_id, actor=cli_actor(as_), rebuy=rebuy)
    except (LookupError, IllegalTransition) as exc:
        raise CliError(str(exc).strip("'\"")) from None
    console.print(f"shipment {shipment_id}: label voided"
                  + (f"; new shipment {new} is being labelled" if new else ""))  # fmt: skip


@orders_cli.command("label")
def orders_label(
    shipment_id: int,
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the PDF")],
) -> None:
    """Reprint: write a shipment's stored label to a PDF file (never buys another)."""
    from db.models import Label

    with session_scope() as session:
        label = session.scalar(
            select(Label).where(Label.shipment_id == shipment_id, Label.voided_at.is_(None))
        )
        pdf = label.pdf if label is not None else None
    if pdf is None:
        raise CliError(f"shipment {shipment_id} has no label in use")
    try:
        output.write_bytes(pdf)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror}") from None
    console.print(f"shipment {shipment_id}: label written to {output}")


@outbox_cli.command("list")
def outbox_list(
    all_: Annotated[bool, typer.Option("--all", help="delivered ones too")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
) -> None:
    """Effects on the marketplaces not delivered yet (with --all: the latest of every status)."""
    from db.models import OutboxMessage

    query = (
        select(OutboxMessage, Order)
        .join(Order, Order.id == OutboxMessage.order_id)
        .where(OutboxMessage.kind.is_not(None))
        .order_by(OutboxMessage.id.desc())
        .limit(limit)
    )
    if not all_:
        query = query.where(OutboxMessage.status != "delivered")
    table = Table("id", "order", "channel", "effect", "status", "last error")
    with session_scope() as session:
        for m, o in session.execute(query):
            table.add_row(str(m.id), str(o.id), o.channel, m.kind or "", m.status or "",
                          (m.last_error or "")[:60])  # fmt: skip
    console.print(table)


@outbox_cli.command("retry")
def outbox_retry(message_id: int, as_: As = None) -> None:
    """Deliver a failed message again (same idempotency key)."""
    from workflows.pipeline import retry_message

    try:
        with session_scope() as session:
            was = retry_message(session, message_id, actor=cli_actor(as_))
    except (LookupError, ValueError) as exc:
        raise CliError(str(exc).strip("'\"")) from None
    console.print(f"outbox message {message_id} ({was}): delivery started")


@orders_cli.command("refund")
def orders_refund(
    order_id: int,
    line: Annotated[
        list[str] | None,
        typer.Option("--line", help="LINE=UNITS (a line id or SKU), repeatable"),
    ] = None,
    amount: Annotated[
        str | None, typer.Option(help="an amount instead of lines, e.g. 5.00")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            help="this refund's key (default: its content: the same refund again is "
            "the same refund)"
        ),
    ] = None,
    as_: As = None,
) -> None:
    """Refund lines or an amount of an order whose money we captured, at the payment provider,
    once; never more than is left to refund."""
    from decimal import Decimal, InvalidOperation

    from orders.refunds import RefundRefused
    from orders.users import audit
    from workflows.pipeline import request_refund

    lines: dict[str, int] | None = None
    if line:
        lines = {}
        for name, units in _parse_pairs(line).items():
            if not units.isdigit() or int(units) < 1:
                _refuse(f"--line {name}={units}: units must be a whole number of at least 1")
            lines[name] = int(units)
    value = None
    if amount is not None:
        try:
            value = Decimal(amount)
        except InvalidOperation:
            _refuse(f"--amount {amount!r} is not an amount")
        if not value.is_finite():
            _refuse(f"--amount {amount!r} is not an amount")
    actor = cli_actor(as_)
    try:
        with session_scope() as session:
            refund, new = request_refund(session, order_id, actor=actor, lines=lines,
                                         amount=value, request_key=key)  # fmt: skip
            refund_id, total, currency = refund.id, refund.amount, refund.currency
            if new:
                audit(session, actor, "order.refund", f"order {order_id}", order_id=order_id,
                      timeline=False, refund_id=refund_id, amount=str(total))  # fmt: skip
    except RefundRefused as exc:
        raise CliError(f"order {order_id}: {exc}") from None
    said = "requested" if new else "already requested (the same refund)"
    console.print(f"order {order_id}: refund {refund_id} of {total} {currency} {said}")


# "-5" is read as the quantity (and refused as negative), not as an unknown option
@stock_cli.command("set", context_settings={"ignore_unknown_options": True})
def stock_set(
    sku: str,
    quantity: int,
    location: Annotated[
        str, typer.Option(help="our location's code (ordersync stock locations)")
    ] = "main",
    as_: As = None,
) -> None:
    """Set the on-hand quantity of SKU at a location; on-hold orders waiting for it are
    released."""
    from orders.stock import set_on_hand
    from orders.users import audit
    from workflows.pipeline import release_waiting

    if not sku.strip() or len(sku) > SKU_MAX:
        raise CliError(f"a SKU has 1 to {SKU_MAX} characters, got {len(sku)}")
    if not 0 <= quantity <= INT32_MAX:
        raise CliError(f"quantity must be between 0 and {INT32_MAX}, got {quantity}")
    actor = cli_actor(as_)
    with session_scope() as session:
        try:
            available = set_on_hand(session, sku, quantity, location=location, actor=actor)
        except ValueError as exc:  # below what open orders hold there, an unknown location
            raise CliError(str(exc)) from None
        waiting = release_waiting(session, sku)
        audit(session, actor, "stock.set", sku, on_hand=quantity, location=location,
              available=available, released=waiting)  # fmt: skip
    console.print(f"{sku}: on hand {quantity} at {location}, available {available} over every "
                  f"location; {len(waiting)} waiting orders pushed on")  # fmt: skip


@stock_cli.command("locations")
def stock_locations() -> None:
    """Our stock locations: units there and the accounts that sell from each."""
    from orders.stock_view import locations_overview

    with session_scope() as session:
        rows = locations_overview(session)
    table = Table("code", "name", "on hand", "reserved", "accounts drawing from it")
    for r in rows:
        table.add_row(r["code"], r["name"], str(r["on_hand"]), str(r["reserved"]),
                      ", ".join(r["accounts"]) or "(accounts with no list: all)")  # fmt: skip
    console.print(table)


@stock_cli.command("add-location")
def stock_add_location(
    code: str, name: Annotated[str, typer.Option(help="what staff call it")] = "", as_: As = None
) -> None:
    """Add a stock location (a warehouse) called CODE."""
    from orders.stock import add_location
    from orders.users import audit

    actor = cli_actor(as_)
    with session_scope() as session:
        try:
            add_location(session, code, name)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        audit(session, actor, "stock.location_add", code, name=name)
    console.print(f"added stock location {code}")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


@stock_cli.command("show")
def stock_show(sku: str) -> None:
    """On hand, reserved and available of SKU; per channel listing what it should show, what
    was last pushed and when, and any drift (both numbers)."""
    from orders.stock_view import stock_view

    with session_scope() as session:
        view = stock_view(session, sku)
    if view is None:
        raise CliError(
            f"no stock and no listing for SKU {sku!r} (ordersync stock set / listings sync)"
        )
    console.print(f"{view.sku}: on hand {view.on_hand}, reserved {view.reserved}, "
                  f"available {view.available}"
                  + (f" (counted by {view.counted_by})" if view.counted_by else ""))  # fmt: skip
    where = Table("location", "on hand", "reserved", "available")
    for loc in view.locations:
        where.add_row(loc.code, str(loc.on_hand), str(loc.reserved), str(loc.available))
    console.print(where)
    table = Table("account", "channel", "draws from", "may sell", "should show", "last pushed",
                  "at", "state", "drift")  # fmt: skip
    for item in view.listings:
        drift = item.drift
        drift_text = ""
        if drift is not None:
            drift_text = (f"{drift['found_by']}: channel had {drift['channel_qty']}, expected "
                          f"{drift['expected_qty']}"
                          + (" (repaired)" if drift["repaired_at"] else ""))  # fmt: skip
        if item.fulfilled_by_marketplace:
            state = "FBA: not pushed"
        elif item.last_error:
            state = f"failed: {item.last_error[:50]}"
        else:
            state = "pending" if item.pending else "in sync"
        table.add_row(item.account, item.channel, ", ".join(item.draws_from),
                      "" if item.may_sell is None else str(item.may_sell),
                      "" if item.should_show is None else str(item.should_show),
                      "" if item.last_pushed_qty is None else str(item.last_pushed_qty),
                      _when(item.last_pushed_at), state, drift_text)  # fmt: skip
    console.print(table)


@listings_cli.command("sync")
def listings_sync(account: str) -> None:
    """Discover ACCOUNT's listings on the marketplace by SKU and record them (new ones are
    pushed our quantity); report SKUs that exist on one side only."""
    from domain.errors import IntegrationError
    from orders.stock_push import sync_listings
    from workflows.providers import connector_for

    with session_scope() as session:
        row = session.scalar(select(ChannelAccount).where(ChannelAccount.name == account))
    if row is None:
        raise CliError(f"no account named {account!r} (ordersync accounts list)")
    try:
        connector = connector_for(row)
    except KeyError as exc:
        raise CliError(f"account {account!r} has no credential {exc} (accounts add … -c)") from None
    try:
        report = sync_listings(session_scope, row.id, connector)
    except IntegrationError as exc:
        raise CliError(f"{account}: {type(exc).__name__}: {exc}") from None
    finally:
        connector.close()
    console.print(f"{account}: {report.found} listings on {row.channel}, {report.created} new, "
                  f"{report.updated} changed, {report.fulfilled_by_marketplace} fulfilled by "
                  f"the marketplace (never pushed)")  # fmt: skip
    if report.channel_only:
        console.print(f"on {row.channel} only ({len(report.channel_only)}, we hold no stock): "
                      + ", ".join(report.channel_only[:20]))  # fmt: skip
    if report.ours_only:
        console.print(f"ours only ({len(report.ours_only)}, not listed on {row.channel}): "
                      + ", ".join(report.ours_only[:20]))  # fmt: skip


@listings_cli.command("list")
def listings_list(
    account: Annotated[str | None, typer.Option(help="only this account")] = None,
    sku: Annotated[str | None, typer.Option(help="only this SKU")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 200,
) -> None:
    """Listings with their identifiers, what was last pushed and whether a push is pending."""
    from db.models import Listing

    query = (
        select(Listing, ChannelAccount)
        .join(ChannelAccount, ChannelAccount.id == Listing.channel_account_id)
        .order_by(ChannelAccount.name, Listing.sku)
        .limit(limit)
    )
    if account:
        query = query.where(ChannelAccount.name == account)
    if sku:
        query = query.where(Listing.sku == sku)
    table = Table("account", "sku", "external id", "last pushed", "at", "state")
    with session_scope() as session:
        for listing, acc in session.execute(query):
            if listing.fulfilled_by_marketplace:
                state = "FBA"
            elif listing.last_error:
                state = "failed"
            else:
                state = "pending" if listing.want_version > listing.pushed_version else "in sync"
            table.add_row(acc.name, listing.sku, listing.external_id or "",
                          "" if listing.last_pushed_qty is None else str(listing.last_pushed_qty),
                          _when(listing.last_pushed_at), state)  # fmt: skip
    console.print(table)


def _parse_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


_RATE_LIMIT_SYNTAX = "OPERATION=RATE/BURST (Shopify: cost_bucket=MAXIMUM/RESTORE_RATE)"


def _refuse(message: str) -> NoReturn:
    """A usage error: one line on stderr, exit code 2 (what click uses for bad parameters)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


def _parse_rate_limits(channel: str, name: str, pairs: list[str]) -> dict[str, Any]:
    """``--rate-limit`` values → the ``rate_limits`` column, checked by the parser every
    connector of the account goes through (``registry.parse_rate_limits``)."""
    from integrations import registry
    from integrations.ratelimit import COST_BUCKET

    raw: dict[str, dict[str, float]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        first, slash, second = value.partition("/")
        key = key.strip()
        if not (key and sep and slash):
            _refuse(f"--rate-limit {pair!r}: expected {_RATE_LIMIT_SYNTAX}")
        try:
            numbers = float(first), float(second)
        except ValueError:
            _refuse(f"--rate-limit {pair!r}: expected two numbers, {_RATE_LIMIT_SYNTAX}")
        if key in raw:
            _refuse(f"--rate-limit {key!r} given twice")
        names = ("maximum", "restore_rate") if key == COST_BUCKET else ("rate", "burst")
        raw[key] = dict(zip(names, numbers, strict=True))
    try:
        return registry.parse_rate_limits(channel, raw, account=name).as_json()
    except ValueError as exc:
        _refuse(f"--rate-limit: {exc}")


def _custom_limits(account: ChannelAccount) -> tuple[dict[str, dict[str, float]], str | None]:
    """(the account's limits that differ from the documented ones, the error if the column
    does not parse)."""
    from integrations import registry
    from integrations.ratelimit import COST_BUCKET

    try:
        limits = registry.parse_rate_limits(
            account.channel, account.rate_limits, account=account.name
        )
    except (ValueError, registry.UnknownMarketplace) as exc:
        return {}, str(exc)
    buckets, cost = registry.rate_limit_defaults(account.channel)
    shown = {}
    for op, spec in limits.as_json().items():
        if op == COST_BUCKET:
            custom = limits.cost_bucket != cost
        else:
            custom = limits.buckets[op] != buckets.get(op)
        if custom:
            shown[op] = spec
    return shown, None


def _limits_text(limits: dict[str, dict[str, float]], error: str | None) -> str:
    if error is not None:
        return f"INVALID: {error}"
    return ", ".join(
        f"{op}={'/'.join(f'{n:g}' for n in spec.values())}" for op, spec in limits.items()
    )


def _marketplace(value: str) -> str:
    """A registered marketplace's name (built-in or plugin), checked when the command runs."""
    from integrations import registry

    if value not in registry.marketplaces():
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(registry.marketplaces())}")
    return value


def _marketplace_names() -> list[str]:
    from integrations import registry

    return list(registry.marketplaces())


def _check_new_account(
    channel: str, name: str, webhook_secret: str | None, api_base_url: str | None
) -> None:
    from urllib.parse import urlsplit

    from integrations import registry

    if not name.strip():
        _refuse("an account needs a name")
    if len(name) > NAME_MAX:
        _refuse(f"an account name has at most {NAME_MAX} characters, got {len(name)}")
    if registry.get(channel).webhooks is not None and not webhook_secret:
        _refuse(f"{channel} signs its webhooks: give --webhook-secret")
    if api_base_url is not None:
        parts = urlsplit(api_base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            _refuse(f"--api-base-url {api_base_url!r}: expected http(s)://host[:port][/path]")


@accounts_cli.command("add")
def accounts_add(
    channel: Annotated[
        str,
        typer.Argument(
            parser=_marketplace,
            autocompletion=_marketplace_names,
            metavar="MARKETPLACE",
            help="a registered marketplace (built in, or named in ORDERSYNC_MARKETPLACE_PLUGINS)",
        ),
    ],
    name: str,
    shop: Annotated[str, typer.Option(help="shop domain, site URL or marketplace id")] = "",
    api_base_url: Annotated[str | None, typer.Option(help="override (sandbox)")] = None,
    webhook_secret: Annotated[str | None, typer.Option()] = None,
    credential: Annotated[
        list[str] | None, typer.Option("--credential", "-c", help="KEY=VALUE, repeatable")
    ] = None,
    rate_limit: Annotated[
        list[str] | None,
        typer.Option(
            "--rate-limit",
            help=f"{_RATE_LIMIT_SYNTAX}, per second; repeatable; overrides the documented limit",
        ),
    ] = None,
    invoice_series: Annotated[
        str | None,
        typer.Option(
            help="the seller entity's invoice series prefix, e.g. ACME-US "
            "(→ ACME-US-INV-2026-000001); default: the shared INV-/CN- series"
        ),
    ] = None,
    as_: As = None,
) -> None:
    """Connect a shop: e.g. `accounts add shopify my-shop --shop my-shop.myshopify.com
    -c access_token=shpat_… --webhook-secret … --rate-limit cost_bucket=2000/100`."""
    from orders.users import audit

    _check_new_account(channel, name, webhook_secret, api_base_url)
    if invoice_series is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,29}",
                                                       invoice_series):  # fmt: skip
        _refuse(f"--invoice-series {invoice_series!r}: 1 to 30 letters, digits, - or _")
    rate_limits = _parse_rate_limits(channel, name, rate_limit or [])
    with session_scope() as session:
        if session.scalar(select(ChannelAccount.id).where(ChannelAccount.name == name)):
            _refuse(f"an account named {name!r} exists already")
        session.add(
            ChannelAccount(
                name=name,
                channel=channel,
                shop=shop,
                api_base_url=api_base_url,
                webhook_secret=webhook_secret,
                credentials=_parse_pairs(credential or []),
                rate_limits=rate_limits,
                invoice_series=invoice_series,
            )
        )
        audit(session, cli_actor(as_), "account.add", name, channel=channel, shop=shop)
    console.print(f"added {channel} account {name}")


@accounts_cli.command("list")
def accounts_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Accounts with their credentials masked, and the rate limits that are not the
    documented ones."""
    with session_scope() as session:
        rows: list[dict[str, Any]] = []
        for a in session.scalars(select(ChannelAccount).order_by(ChannelAccount.name)):
            limits, limits_error = _custom_limits(a)
            rows.append(
                {
                    "name": a.name,
                    "channel": a.channel,
                    "shop": a.shop,
                    "api_base_url": a.api_base_url,
                    "credentials": {k: "********" for k in (a.credentials or {})},
                    "webhook_secret": "********" if a.webhook_secret else None,
                    "poll_cursor": a.poll_cursor.isoformat() if a.poll_cursor else None,
                    "rate_limits": limits,
                    "rate_limits_error": limits_error,
                    "active": a.active,
                }
            )
    if as_json:
        print(json.dumps(rows))
        return
    limits_column = Column("rate limits", overflow="fold")  # readable on a narrow terminal
    table = Table("name", "channel", "shop", "credentials", limits_column, "poll cursor", "active")
    for r in rows:
        table.add_row(r["name"], r["channel"], r["shop"], ", ".join(r["credentials"]),
                      _limits_text(r["rate_limits"], r["rate_limits_error"]),
                      r["poll_cursor"] or "", str(r["active"]))  # fmt: skip
    console.print(table)


@accounts_cli.command("locations")
def accounts_locations(
    name: str,
    locations: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[CODE[=MARKETPLACE_LOCATION_ID]]...",
            help="our locations it sells from, in the order reservations take from them "
            "(Shopify: =gid://shopify/Location/… where its listings are set)",
        ),
    ] = None,
    every: Annotated[
        bool, typer.Option("--every", help="sell from every location (the default)")
    ] = False,
    as_: As = None,
) -> None:
    """Show or set the locations account NAME sells from; what its listings are pushed is
    the sum over them."""
    from orders.stock import set_account_locations
    from orders.users import audit

    pairs = [(c, e or None) for c, _, e in (item.partition("=") for item in locations or [])]
    with session_scope() as session:
        account = session.scalar(select(ChannelAccount).where(ChannelAccount.name == name))
        if account is None:
            raise CliError(f"no account named {name!r} (ordersync accounts list)")
        if pairs or every:
            if pairs and every:
                raise CliError("either locations or --every, not both")
            try:
                set_account_locations(session, account.id, pairs)
            except ValueError as exc:
                raise CliError(str(exc)) from None
            audit(session, cli_actor(as_), "account.locations", name,
                  locations=[c for c, _ in pairs] or "every")  # fmt: skip
        now = session.execute(
            select(StockLocation.code, AccountLocation.external_location_id)
            .join(AccountLocation, AccountLocation.location_id == StockLocation.id)
            .where(AccountLocation.channel_account_id == account.id)
            .order_by(AccountLocation.position)
        ).all()  # fmt: skip
    said = ", ".join(f"{code}={ext}" if ext else code for code, ext in now) or "every location"
    console.print(f"{name} sells from: {said}")


@accounts_cli.command("test")
def accounts_test(name: str) -> None:
    """Make one real authenticated call; say OK or the exact failure."""
    from domain.errors import IntegrationError
    from integrations.ratelimit import RateLimitsError
    from workflows.providers import connector_for

    with session_scope() as session:
        account = session.scalar(select(ChannelAccount).where(ChannelAccount.name == name))
    if account is None:
        raise CliError(f"no account named {name!r} (ordersync accounts list)")
    try:
        connector = connector_for(account)
    except KeyError as exc:  # a credential the marketplace needs is not on the account
        raise CliError(f"account {name!r} has no credential {exc} (accounts add … -c)") from None
    except RateLimitsError as exc:
        console.print(f"[red]FAILED[/red] {name}: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    try:
        detail = connector.test_connection()
    except IntegrationError as exc:
        console.print(f"[red]FAILED[/red] {name}: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    finally:
        connector.close()
    console.print(f"[green]OK[/green] {name}: {detail}")
