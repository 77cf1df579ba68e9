"""Stock: reservations that can never oversell (invariant 6), per location.

Stock is counted per (SKU, location) in ``stock_levels``; ``stock_items`` holds each SKU's sums
over its locations and is its lock: every change takes that row first, then the level (one
order of locking everywhere, so changes of one SKU never deadlock), and moves both by the same
units in the same transaction.

A reservation is one conditional update per SKU on the sums, ``reserved = reserved + q WHERE
on_hand - reserved >= q``, then one on the level of the first location of the order's account
(``locations_of``) that has all the line's units; no split across locations: a line no single
location can fill is short (the order waits ``on_hold``, as when the SKU is short). Both in the
same transaction as the order's state change; if any line is short, the savepoint is rolled
back (no partial reservation). The reservation row records its location, so that release,
shipping and restock move that location's level. The database's CHECK constraints (``0 <=
reserved <= on_hand``, on the sums and on each level) are the last line of defence.

SKUs with no ``stock_items`` row are not stock-managed (like "don't track inventory" in a shop)
and reserve nothing.

Every change of what is available (a reservation, a release, a count set by staff) marks the
SKU's channel listings dirty in the same transaction (``mark_dirty``): their ``want_version``
goes up, so the flusher (``orders/stock_push.py``) pushes the quantity as it is when it sends
(``available_for``: the sum over the account's locations), and the accounts to flush are left
on ``session.info`` for the after-commit trigger (``workflows/stock.py``). Consuming held units
when a parcel ships leaves available as it was (on hand and reserved both fall), so it marks
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, false, func, insert, select, update
from sqlalchemy.orm import Session

from db.base import table, utcnow
from db.models import (
    AccountLocation,
    Listing,
    Order,
    OrderLine,
    StockItem,
    StockLevel,
    StockLocation,
    StockReservation,
)
from db.session import core, dialect_insert, rowcount

__all__ = [
    "DEFAULT_LOCATION",
    "DIRTY_ACCOUNTS",
    "ReservationResult",
    "add_location",
    "available_for",
    "consume",
    "give_back",
    "location_id",
    "locations_of",
    "mark_account_dirty",
    "mark_dirty",
    "orders_waiting_for",
    "our_location",
    "release",
    "reserve",
    "return_to_shelf",
    "set_account_locations",
    "set_counts",
    "set_on_hand",
    "shipment_location",
    "take",
    "take_more",
]

HELD, RELEASED, CONSUMED = "held", "released", "consumed"
#: the location the migration makes; ``stock set`` without ``--location`` counts there
DEFAULT_LOCATION = "main"


@dataclass(frozen=True)
class ReservationResult:
    ok: bool
    short: dict[str, int]  # sku → units missing
    reserved: dict[str, int]


_lines, _items, _levels = table(OrderLine), table(StockItem), table(StockLevel)
# prebuilt (see db.session.core)
_WANTED = (
    select(_lines.c.sku, func.sum(_lines.c.quantity))
    .join(_items, _items.c.sku == _lines.c.sku)
    .where(_lines.c.order_id == bindparam("b_order"))
    .group_by(_lines.c.sku)
    .order_by(_lines.c.sku)
)
_TAKE = (
    update(_items)
    .where(
        _items.c.sku == bindparam("b_sku"),
        _items.c.on_hand - _items.c.reserved >= bindparam("b_qty"),
    )
    .values(reserved=_items.c.reserved + bindparam("b_qty"), updated_at=bindparam("b_at"))
)
_TAKE_AT = (
    update(_levels)
    .where(
        _levels.c.sku == bindparam("b_sku"),
        _levels.c.location_id == bindparam("b_loc"),
        _levels.c.on_hand - _levels.c.reserved >= bindparam("b_qty"),
    )
    .values(reserved=_levels.c.reserved + bindparam("b_qty"), updated_at=bindparam("b_at"))
)
_HOLD = insert(table(StockReservation))
_accounts = table(AccountLocation)
_OF_ACCOUNT = _accounts.c.channel_account_id == bindparam("b_account")
_LOCATIONS_OF = select(_accounts.c.location_id).where(_OF_ACCOUNT).order_by(_accounts.c.position)
_all = table(StockLocation)
_UNLISTED = ~select(_accounts.c.location_id).where(_OF_ACCOUNT).exists()  # the account names none
#: ``locations_of`` in one statement: the account's list, else every location in the order
#: they were made
_SELLS_FROM = (
    select(_accounts.c.location_id, _accounts.c.position.label("rank"))
    .where(_OF_ACCOUNT)
    .union_all(select(_all.c.id, _all.c.id).where(_UNLISTED))
    .order_by("rank")
)
_ACCOUNT_OF = select(table(Order).c.channel_account_id).where(
    table(Order).c.id == bindparam("b_order")
)
_listings = table(Listing)
_MARK = (
    update(_listings)
    .where(
        _listings.c.sku.in_(bindparam("b_skus", expanding=True)),
        _listings.c.fulfilled_by_marketplace == false(),
    )
    .values(
        want_version=_listings.c.want_version + 1,
        dirty_at=func.coalesce(_listings.c.dirty_at, bindparam("b_at")),
    )
    .returning(_listings.c.channel_account_id)
)

#: ``session.info`` key: the ids of the accounts whose listings this transaction marked dirty
DIRTY_ACCOUNTS = "ordersync.stock_dirty_accounts"


def mark_dirty(session: Session, skus: list[str] | set[str]) -> set[int]:
    """In the transaction that changed what is available of ``skus``: their listings (not
    the FBA ones) must be pushed again. Returns the accounts concerned, also kept on
    ``session.info[DIRTY_ACCOUNTS]`` for the after-commit trigger."""
    if not skus:
        return set()
    rows = core(session).execute(_MARK, {"b_skus": sorted(skus), "b_at": utcnow()})
    accounts = {int(a) for (a,) in rows}
    if accounts:
        session.info.setdefault(DIRTY_ACCOUNTS, set()).update(accounts)
    return accounts


def mark_account_dirty(session: Session, account_id: int) -> None:
    """Every listing of the account must be pushed again: what it draws from changed, and
    maybe where it is set (Shopify's location), so what it shows there is not known
    (``last_pushed_qty`` None: sent without a compare-from)."""
    done = session.execute(
        update(Listing)
        .where(Listing.channel_account_id == account_id,
               Listing.fulfilled_by_marketplace.is_(False))
        .values(want_version=Listing.want_version + 1, last_pushed_qty=None,
                dirty_at=func.coalesce(Listing.dirty_at, utcnow()))
    )  # fmt: skip
    if rowcount(done):
        session.info.setdefault(DIRTY_ACCOUNTS, set()).add(account_id)


# --- locations ----------------------------------------------------------------------------------


class UnknownLocation(ValueError):
    """No location of ours has that code (the message says which exist)."""


def location_id(session: Session, code: str) -> int:
    """Our location called ``code``; UnknownLocation (saying which exist) when there is none."""
    found = session.scalar(select(StockLocation.id).where(StockLocation.code == code))
    if found is None:
        known = ", ".join(session.scalars(select(StockLocation.code).order_by(StockLocation.id)))
        raise UnknownLocation(f"no stock location {code!r} (known: {known or 'none'})")
    return int(found)


def add_location(session: Session, code: str, name: str = "") -> int:
    if not code.strip() or len(code) > 50:
        raise ValueError(f"a location code has 1 to 50 characters, got {len(code)}")
    if session.scalar(select(StockLocation.id).where(StockLocation.code == code)) is not None:
        raise ValueError(f"a stock location {code!r} exists already")
    row = StockLocation(code=code, name=name[:255], created_at=utcnow())
    session.add(row)
    session.flush()
    return row.id


def locations_of(session: Session, account_id: int) -> list[int]:
    """The locations the account sells from, in order; an account with no list sells from
    every location (in the order they were made: ``main`` first)."""
    return [int(i) for i, _ in core(session).execute(_SELLS_FROM, {"b_account": account_id})]


def set_account_locations(
    session: Session, account_id: int, locations: Sequence[tuple[str, str | None]]
) -> list[int]:
    """The account sells from these locations (codes, each with the marketplace's location id
    for it or None), in this order; empty: from every location. Its listings are pushed
    again (the quantity each may sell is the sum over them)."""
    codes = [code for code, _ in locations]
    if len(set(codes)) != len(codes):
        raise ValueError(f"a location is named twice: {', '.join(codes)}")
    ids = [location_id(session, code) for code in codes]
    session.query(AccountLocation).filter_by(channel_account_id=account_id).delete()
    session.flush()
    session.add_all(
        AccountLocation(channel_account_id=account_id, location_id=loc, position=position,
                        external_location_id=external)
        for position, (loc, (_, external)) in enumerate(zip(ids, locations, strict=True))
    )  # fmt: skip
    mark_account_dirty(session, account_id)
    return ids


def our_location(session: Session, account_id: int, location: str | None) -> int | None:
    """Which of our locations ``location`` (a shipment's: our code, or the marketplace's id
    of one of the account's locations) is; None when it names none of them."""
    if not location:
        return None
    by_code = session.scalar(select(StockLocation.id).where(StockLocation.code == location))
    if by_code is not None:
        return int(by_code)
    found = session.scalar(
        select(AccountLocation.location_id).where(
            AccountLocation.channel_account_id == account_id,
            AccountLocation.external_location_id == location,
        )
    )
    return None if found is None else int(found)


_locations = table(StockLocation)
_HELD_AT = (
    select(_locations.c.code, _locations.c.id)
    .join(table(StockReservation), table(StockReservation).c.location_id == _locations.c.id)
    .where(table(StockReservation).c.order_id == bindparam("b_order"),
           table(StockReservation).c.status == HELD)
    .order_by(table(StockReservation).c.sku)
    .limit(1)
)  # fmt: skip


def shipment_location(
    session: Session, order_id: int, location: str | None
) -> tuple[str, int | None]:
    """Where a shipment of the order leaves from: ``location`` as the marketplace gave it (or,
    when it gave none, the code of the location the order's units are held at, ``main`` when
    none are), and which of our locations that is (None when it names none of ours)."""
    if not location:
        held = core(session).execute(_HELD_AT, {"b_order": order_id}).first()
        if held is not None:
            return str(held[0]), int(held[1])
        location = DEFAULT_LOCATION
    account = core(session).execute(_ACCOUNT_OF, {"b_order": order_id}).scalar_one()
    return location, our_location(session, int(account), location)


def available_for(session: Session, account_id: int, skus: Iterable[str]) -> dict[str, int]:
    """Units of each stock-managed SKU the account may sell: the sum over its locations of
    on hand - reserved (SKUs not stock-managed are left out)."""
    wanted = sorted(set(skus))
    if not wanted:
        return {}
    managed = set(session.scalars(select(StockItem.sku).where(StockItem.sku.in_(wanted))))
    listed = [int(i) for (i,) in core(session).execute(_LOCATIONS_OF, {"b_account": account_id})]
    if not listed:  # every location: the sums
        rows = session.execute(
            select(StockItem.sku, StockItem.on_hand - StockItem.reserved)
            .where(StockItem.sku.in_(wanted))
        ).all()  # fmt: skip
    else:
        rows = session.execute(
            select(StockLevel.sku, func.sum(StockLevel.on_hand - StockLevel.reserved))
            .where(StockLevel.sku.in_(wanted), StockLevel.location_id.in_(listed))
            .group_by(StockLevel.sku)
        ).all()  # fmt: skip
    free = dict.fromkeys(managed, 0)
    free.update({str(sku): max(0, int(units or 0)) for sku, units in rows})
    return free


# --- moving units -------------------------------------------------------------------------------


def _move(
    session: Session, sku: str, location: int, *, reserved: int = 0, on_hand: int = 0
) -> None:
    """Units in or out of reserved / on hand at one location and in the SKU's sums (the sums
    first: the SKU's lock)."""
    now = utcnow()
    session.execute(
        update(StockItem).where(StockItem.sku == sku)
        .values(reserved=StockItem.reserved + reserved, on_hand=StockItem.on_hand + on_hand,
                updated_at=now)
    )  # fmt: skip
    session.execute(
        update(StockLevel).where(StockLevel.sku == sku, StockLevel.location_id == location)
        .values(reserved=StockLevel.reserved + reserved, on_hand=StockLevel.on_hand + on_hand,
                updated_at=now)
    )  # fmt: skip


def _at(session: Session, location: int | None) -> int:
    return location if location is not None else location_id(session, DEFAULT_LOCATION)


def _best_free(session: Session, sku: str, locations: Sequence[int]) -> int:
    free = session.scalar(
        select(func.max(StockLevel.on_hand - StockLevel.reserved))
        .where(StockLevel.sku == sku, StockLevel.location_id.in_(locations))
    )  # fmt: skip
    return max(0, int(free or 0))


def take(session: Session, sku: str, quantity: int, locations: Sequence[int]) -> int | None:
    """Hold ``quantity`` units of ``sku`` at the first of ``locations`` that has them all;
    returns that location, or None (nothing taken) when none has."""
    now = utcnow()
    if rowcount(core(session).execute(_TAKE, {"b_sku": sku, "b_qty": quantity, "b_at": now})) != 1:
        return None
    for location in locations:
        took = core(session).execute(
            _TAKE_AT, {"b_sku": sku, "b_loc": location, "b_qty": quantity, "b_at": now}
        )
        if rowcount(took) == 1:
            return location
    # the SKU has the units, but not in one of these locations: give the sums back
    session.execute(
        update(StockItem).where(StockItem.sku == sku)
        .values(reserved=StockItem.reserved - quantity, updated_at=now)
    )  # fmt: skip
    return None


def take_more(session: Session, reservation: StockReservation, units: int) -> int | None:
    """``units`` more for a held reservation, at its own location; returns it, or None when
    it has not got them (nothing taken)."""
    return take(session, reservation.sku, units, [_at(session, reservation.location_id)])


def give_back(session: Session, reservation: StockReservation, units: int) -> None:
    """``units`` of a held reservation back to its location's free stock (the caller lowers
    the reservation and marks the SKU dirty)."""
    _move(session, reservation.sku, _at(session, reservation.location_id), reserved=-units)


def return_to_shelf(session: Session, reservation: StockReservation, units: int) -> None:
    """``units`` that left with a parcel come back on hand, where they left from."""
    _move(session, reservation.sku, _at(session, reservation.location_id), on_hand=units)


def _wanted(session: Session, order_id: int) -> dict[str, int]:
    """Units per stock-managed SKU of the order (SKUs with no ``stock_items`` row reserve
    nothing), in SKU order: one order of locking everywhere, so orders never deadlock."""
    rows = core(session).execute(_WANTED, {"b_order": order_id})
    return {str(sku): int(qty) for sku, qty in rows if qty and qty > 0}


def reserve(
    session: Session, order_id: int, *, account_id: int | None = None
) -> ReservationResult:
    """Hold the stock of every stock-managed line of the order, all or nothing. ``account_id``:
    the order's account, when the caller holds the order already (one read fewer)."""
    wanted = _wanted(session, order_id)
    short: dict[str, int] = {}
    reserved: dict[str, tuple[int, int]] = {}  # sku → (units, location)
    if not wanted:
        return ReservationResult(True, {}, {})
    if account_id is None:
        account_id = core(session).execute(_ACCOUNT_OF, {"b_order": order_id}).scalar_one()
    locations = locations_of(session, int(account_id))
    # several SKUs: a savepoint, so a short one undoes the others (no partial reservation);
    # with one SKU there is nothing to undo (``take`` takes all or nothing)
    savepoint = session.begin_nested() if len(wanted) > 1 else None
    for sku, qty in wanted.items():
        location = take(session, sku, qty, locations)
        if location is None:
            short[sku] = qty - _best_free(session, sku, locations)
        else:
            reserved[sku] = (qty, location)
    if short:
        if savepoint is not None:
            savepoint.rollback()
        return ReservationResult(False, short, {})
    now = utcnow()
    rows = [
        {"order_id": order_id, "sku": sku, "quantity": qty, "location_id": location,
         "status": HELD, "created_at": now}
        for sku, (qty, location) in reserved.items()
    ]  # fmt: skip
    core(session).execute(_HOLD, rows if len(rows) > 1 else rows[0])
    mark_dirty(session, set(reserved))
    if savepoint is not None:
        savepoint.commit()
    return ReservationResult(True, {}, {sku: qty for sku, (qty, _) in reserved.items()})


def _settle(session: Session, order_id: int, status: str, *, consume_on_hand: bool) -> int:
    held = session.scalars(
        select(StockReservation)
        .where(StockReservation.order_id == order_id, StockReservation.status == HELD)
        .order_by(StockReservation.sku)
        .with_for_update()
    ).all()
    for reservation in held:
        units = reservation.quantity
        _move(session, reservation.sku, _at(session, reservation.location_id), reserved=-units,
              on_hand=-units if consume_on_hand else 0)  # fmt: skip
        reservation.status = status
    if held and not consume_on_hand:  # a release frees units; consuming leaves available as is
        mark_dirty(session, {r.sku for r in held})
    return len(held)


def release(session: Session, order_id: int) -> int:
    """Give the order's held units back (cancellation)."""
    return _settle(session, order_id, RELEASED, consume_on_hand=False)


def consume(session: Session, order_id: int) -> int:
    """The parcel left: held units leave the shelf."""
    return _settle(session, order_id, CONSUMED, consume_on_hand=True)


def set_on_hand(
    session: Session, sku: str, on_hand: int, *, location: str = DEFAULT_LOCATION,
    actor: str = "system",
) -> int:  # fmt: skip
    """Set the counted quantity of a SKU at ``location`` (creating it) as ``actor``
    (``staff:cli``, a user's name); returns the units of the SKU now available over every
    location. Its listings are marked dirty."""
    free = _set_level(session, sku, on_hand, location_id(session, location), location, actor)
    mark_dirty(session, {sku})
    return free


def set_counts(
    session: Session, counts: list[tuple[str, str, int]], *, actor: str = "system"
) -> dict[str, int]:
    """Set many counts, ``(sku, location, on_hand)`` each, in the caller's transaction (all or
    nothing: a ValueError names the first that cannot be set, UnknownLocation a location we do
    not have), as a stock file or a warehouse
    system sends them; the SKUs are locked in one order, whoever else sets counts at once, and
    their listings marked dirty once. Returns the units now available of each SKU."""
    seen: set[tuple[str, str]] = set()
    for sku, where, _ in counts:
        if (sku, where) in seen:
            raise ValueError(f"{sku}: counted twice at {where}")
        seen.add((sku, where))
    places = {code: location_id(session, code) for code in sorted({c[1] for c in counts})}
    free = {sku: _set_level(session, sku, on_hand, places[where], where, actor)
            for sku, where, on_hand in sorted(counts)}  # fmt: skip
    mark_dirty(session, set(free))
    return free


def _set_level(
    session: Session, sku: str, on_hand: int, where: int, location: str, actor: str
) -> int:
    if on_hand < 0:
        raise ValueError("on_hand cannot be negative")
    now, who = utcnow(), actor[:100]
    insert_ = dialect_insert(session)
    session.execute(
        insert_(StockItem).values(sku=sku, on_hand=0, reserved=0, counted_by=who, updated_at=now)
        .on_conflict_do_nothing(index_elements=["sku"])
    )  # fmt: skip
    # the SKU's lock, then its level there
    session.execute(select(StockItem.sku).where(StockItem.sku == sku).with_for_update()).all()
    level = session.execute(
        select(StockLevel.on_hand, StockLevel.reserved)
        .where(StockLevel.sku == sku, StockLevel.location_id == where)
    ).first()  # fmt: skip
    before, reserved = (int(level[0]), int(level[1])) if level is not None else (0, 0)
    if on_hand < reserved:
        raise ValueError(
            f"{sku}: {reserved} units at {location} are reserved by open orders; on hand >= that"
        )
    session.execute(
        insert_(StockLevel)
        .values(sku=sku, location_id=where, on_hand=on_hand, reserved=0, updated_at=now)
        .on_conflict_do_update(index_elements=["sku", "location_id"],
                               set_={"on_hand": on_hand, "updated_at": now})
    )  # fmt: skip
    session.execute(
        update(StockItem).where(StockItem.sku == sku)
        .values(on_hand=StockItem.on_hand + (on_hand - before), counted_by=who, updated_at=now)
    )  # fmt: skip
    free = session.scalar(
        select(StockItem.on_hand - StockItem.reserved).where(StockItem.sku == sku)
    )
    return int(free or 0)


def orders_waiting_for(session: Session, sku: str, limit: int = 500) -> list[int]:
    """On-hold orders with a line of ``sku``, oldest first (first come, first served)."""
    return list(
        session.scalars(
            select(Order.id)
            .join(OrderLine, OrderLine.order_id == Order.id)
            .where(Order.state == "on_hold", OrderLine.sku == sku)
            .group_by(Order.id)
            .order_by(func.min(Order.created_at), Order.id)
            .limit(limit)
        ).all()
    )
