"""The tables (first cut of DESIGN.md). Each class says what one row is.

Uniqueness that the invariants rest on lives here, not in Python:
``orders(channel_account_id, external_id)``, ``inbox_events(channel_account_id, dedupe_key)``,
``idempotency_keys(key)``, ``invoices(series, number)``, ``payments(order_id)``,
``labels(idempotency_key)``, ``outbox_messages(idempotency_key)`` (one push per effect).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import Base, Currency, ExternalId, created_at, updated_at
from domain.states import InboxStatus, OrderState

__all__ = [
    "AccountLocation",
    "ApiToken",
    "AuditEntry",
    "CarrierEvent",
    "ChannelAccount",
    "IdempotencyKey",
    "InboxEvent",
    "Invoice",
    "InvoiceCounter",
    "Label",
    "Listing",
    "LoginAttempt",
    "Order",
    "OrderEvent",
    "OrderLine",
    "OutboxAttempt",
    "OutboxMessage",
    "Payment",
    "ReconcileReport",
    "Refund",
    "Shipment",
    "ShipmentLine",
    "StockCheck",
    "StockDrift",
    "StockItem",
    "StockLevel",
    "StockLocation",
    "StockReservation",
    "SyncRun",
    "User",
]

JSONDict = dict[str, Any]


class ChannelAccount(Base):
    """One merchant shop on one marketplace, with its credentials and sync cursor."""

    __tablename__ = "channel_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    channel: Mapped[str] = mapped_column(String(20))
    # shop domain, site URL or marketplace id, depending on the channel
    shop: Mapped[str] = mapped_column(String(255), default="")
    api_base_url: Mapped[str | None] = mapped_column(String(500))
    # a reference (env var / secret store key) or the credentials themselves for the sandbox;
    # never logged, masked by every command that prints an account
    credentials: Mapped[JSONDict] = mapped_column(JSON, default=dict)
    webhook_secret: Mapped[str | None] = mapped_column(String(255))
    poll_cursor: Mapped[dt.datetime | None]
    rate_limits: Mapped[JSONDict] = mapped_column(JSON, default=dict)
    # the seller entity's invoice series prefix (``ACME-US`` → ``ACME-US-INV-2026``); None:
    # the shared default series (``INV-2026``)
    invoice_series: Mapped[str | None] = mapped_column(String(30))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # the buffer rule of the account's listings that set none of their own (domain/buffer.py)
    stock_keep_percent: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stock_max_quantity: Mapped[int | None] = mapped_column(Integer)
    stock_zero_at_or_below: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the one stock flusher of the account (orders/stock_push.py): who holds it, until when
    stock_flush_owner: Mapped[str | None] = mapped_column(String(255))
    stock_flush_until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()


class Order(Base):
    """Our copy of one marketplace order, newest data wins (``external_updated_at``)."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("channel_account_id", "external_id"),
        Index("ix_orders_state_updated", "state", "updated_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_account_id: Mapped[int] = mapped_column(ForeignKey("channel_accounts.id"))
    channel: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str] = mapped_column(ExternalId)
    external_number: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), default=OrderState.NEW)
    financial_status: Mapped[str | None] = mapped_column(String(32))
    fulfillment_status: Mapped[str | None] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(Currency)
    subtotal: Mapped[Decimal]
    tax_total: Mapped[Decimal]
    shipping_total: Mapped[Decimal]
    discount_total: Mapped[Decimal]
    total: Mapped[Decimal]
    buyer_name: Mapped[str | None] = mapped_column(String(255))
    buyer_email: Mapped[str | None] = mapped_column(String(255))
    shipping_address: Mapped[JSONDict | None] = mapped_column(JSON)
    payment_collected_by_marketplace: Mapped[bool] = mapped_column(Boolean, default=False)
    # what the marketplace says about the money (``domain.canonical.PaymentFacts`` as JSON):
    # gateway, where the authorization lives, its id, amounts, expiry
    payment_facts: Mapped[JSONDict | None] = mapped_column(JSON)
    # the marketplace ships it from its own stock (Amazon FBA): no reservation, no label, no
    # fulfilment push
    fulfilled_by_marketplace: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    external_created_at: Mapped[dt.datetime | None]
    external_updated_at: Mapped[dt.datetime]
    cancelled_at: Mapped[dt.datetime | None]
    # the marketplace's payload as received: read by staff, not by the pipeline (not loaded
    # with the order unless asked for)
    raw: Mapped[JSONDict] = mapped_column(JSON, default=dict, deferred=True)
    # fencing token: every state write checks and bumps it
    version: Mapped[int] = mapped_column(Integer, default=1)
    # set when state is needs_attention: where it failed, why, after how many attempts
    # staff put the order on hold (why): it does not ship until released; the pipeline
    # prepares it meanwhile
    held_reason: Mapped[str | None] = mapped_column(String(500))
    failed_step: Mapped[str | None] = mapped_column(String(50))
    last_error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()

    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", cascade="all, delete-orphan", order_by="OrderLine.id"
    )
    events: Mapped[list[OrderEvent]] = relationship(
        back_populates="order", order_by="OrderEvent.id"
    )


class OrderLine(Base):
    """One line of an order: a SKU, a quantity and its prices."""

    __tablename__ = "order_lines"
    __table_args__ = (UniqueConstraint("order_id", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(ExternalId)
    sku: Mapped[str | None] = mapped_column(String(100), index=True)
    title: Mapped[str] = mapped_column(String(500), default="")
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal]
    # the line's share of discounts; total = unit_price * quantity - discount (before tax)
    discount: Mapped[Decimal] = mapped_column(default=Decimal(0), server_default="0")
    tax: Mapped[Decimal]
    total: Mapped[Decimal]

    order: Mapped[Order] = relationship(back_populates="lines")


class OrderEvent(Base):
    """The order's timeline: who or what did what, when, from which state to which."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = created_at()
    actor: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(50))
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str | None] = mapped_column(String(20))
    detail: Mapped[JSONDict] = mapped_column(JSON, default=dict)

    order: Mapped[Order] = relationship(back_populates="events")


# The sweeper's searches (every ``sweep_after_s / 2``) look for the few rows still to do among
# every row ever written: a partial index of just those rows keeps a sweep's reads flat however
# large the history (300,000 orders on PostgreSQL: a sweep took 120 ms with full scans, 14 ms
# with these; ``bench.sweep``). The queries use these same predicates, with the values written
# in the SQL, so that PostgreSQL (generic plans included) and SQLite can prove the index applies.
#: a key whose call may still need running (``orders.recovery.unfinished_calls``)
UNFINISHED_KEY = text("recovery_point NOT IN ('finished', 'rejected')")
#: an effect on a marketplace not delivered yet (``workflows.tasks`` sweep)
PENDING_EFFECT = text("kind IS NOT NULL AND status = 'pending'")
#: a sync run still reading (``orders.syncing.ACTIVE``, ``stalled_runs``)
ACTIVE_RUN = text("status IN ('running', 'retrying')")
#: a webhook committed and not processed yet (``InboxStatus.RECEIVED``)
RECEIVED_EVENT = text(f"status = '{InboxStatus.RECEIVED.value}'")
#: a task to publish (parked work, or a publish after commit) not published yet
UNPUBLISHED_WORK = text("kind IS NULL AND published_at IS NULL")


class InboxEvent(Base):
    """A raw webhook delivery, committed before we answer 2xx; the dedupe key makes it once."""

    __tablename__ = "inbox_events"
    __table_args__ = (
        UniqueConstraint("channel_account_id", "dedupe_key"),
        Index("ix_inbox_events_status_received_at", "status", "received_at"),
        Index("ix_inbox_events_received", "id",
              postgresql_where=RECEIVED_EVENT, sqlite_where=RECEIVED_EVENT),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_account_id: Mapped[int] = mapped_column(ForeignKey("channel_accounts.id"))
    channel: Mapped[str] = mapped_column(String(20))
    topic: Mapped[str] = mapped_column(String(100))
    dedupe_key: Mapped[str] = mapped_column(String(255))
    # only the headers that matter (topic, ids, timestamps); never the signature
    headers: Mapped[JSONDict] = mapped_column(JSON, default=dict)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20), default=InboxStatus.RECEIVED)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"))
    received_at: Mapped[dt.datetime] = created_at()
    processed_at: Mapped[dt.datetime | None]


class CarrierEvent(Base):
    """A raw tracking webhook of the carrier (ShipEngine's ``track`` event), committed before
    we answer 2xx; the same body delivered twice is one row (``dedupe_key``: its SHA-256)."""

    __tablename__ = "carrier_events"
    __table_args__ = (Index("ix_carrier_events_status_received_at", "status", "received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    carrier: Mapped[str] = mapped_column(String(50))
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20), default=InboxStatus.RECEIVED)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: the shipment it was about, once applied
    shipment_id: Mapped[int | None] = mapped_column(
        ForeignKey("shipments.id", ondelete="SET NULL")
    )
    received_at: Mapped[dt.datetime] = created_at()
    processed_at: Mapped[dt.datetime | None]


class OutboxMessage(Base):
    """A task to publish, written in the transaction that needs it; the sweeper republishes.

    Parked work is one too: a retry whose delay is longer than ``PARK_AFTER_S`` (a marketplace's
    ``Retry-After: 7200``) waits here until ``not_before``, with the Celery options of the task
    it continues (its id, retry count, chain and chord) and the order or account it is for, so
    that nothing else pushes that work on before its time."""

    __tablename__ = "outbox_messages"
    __table_args__ = (
        Index("ix_outbox_messages_published_at", "published_at"),
        Index("ix_outbox_messages_order_id", "order_id"),
        Index("ix_outbox_messages_channel_account_id", "channel_account_id"),
        Index("ix_outbox_messages_pending_effects", "id",
              postgresql_where=PENDING_EFFECT, sqlite_where=PENDING_EFFECT),
        Index("ix_outbox_messages_unpublished_work", "id",
              postgresql_where=UNPUBLISHED_WORK, sqlite_where=UNPUBLISHED_WORK),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(primary_key=True)
    task_name: Mapped[str] = mapped_column(String(200))
    args: Mapped[list[Any]] = mapped_column(JSON, default=list)
    kwargs: Mapped[JSONDict | None] = mapped_column(JSON)
    # Celery execution options of a parked retry (task_id, retries, chain, chord, …)
    options: Mapped[JSONDict | None] = mapped_column(JSON)
    queue: Mapped[str | None] = mapped_column(String(50))
    # delayed work waits here, not as a long ETA in the broker
    not_before: Mapped[dt.datetime | None]
    # what the work is waiting for, and whose it is (the sweeper's stuck-order push and
    # poll_due leave an order / account with parked work alone until then)
    reason: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    channel_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("channel_accounts.id", ondelete="CASCADE")
    )
    created_at: Mapped[dt.datetime] = created_at()
    published_at: Mapped[dt.datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # an effect on a marketplace (``fulfilment``, ``cancellation``): written in the transaction
    # of the state change that causes it, delivered by ``ordersync.outbound.deliver`` under
    # ``idempotency_key`` (from our ids), each try an ``outbox_attempts`` row; None = a task
    # to publish (parked work)
    kind: Mapped[str | None] = mapped_column(String(20))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    # what the effect says (tracking number and carrier, the cancellation's reason)
    payload: Mapped[JSONDict | None] = mapped_column(JSON)
    # pending → delivered, or failed (retries exhausted, refused, no credentials: staff retry)
    status: Mapped[str | None] = mapped_column(String(20))
    shipment_id: Mapped[int | None] = mapped_column(ForeignKey("shipments.id", ondelete="SET NULL"))
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[dt.datetime | None]


class OutboxAttempt(Base):
    """One try at delivering an outbox message to the marketplace: how it ended, the HTTP
    status the marketplace answered (if any), the error and how long it took."""

    __tablename__ = "outbox_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("outbox_messages.id", ondelete="CASCADE"), index=True
    )
    # delivered | retry (a retryable error: it goes again) | failed (refused, or for good)
    status: Mapped[str] = mapped_column(String(20))
    response_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = created_at()


class IdempotencyKey(Base):
    """Stripe/brandur-style key for one side effect: request hash, recovery point, response."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        Index("ix_idempotency_keys_unfinished", "id",
              postgresql_where=UNFINISHED_KEY, sqlite_where=UNFINISHED_KEY),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(primary_key=True)
    # ordered byte by byte (COLLATE "C" on PostgreSQL; SQLite's BINARY already is), so that a
    # key and the keys under it (``label:7``, ``label:7:2``, ``label:7:s3``) are one range of
    # its unique index (``orders.idempotency.family``): under the database's language
    # collation neither that range nor a LIKE can use the index, and every claim read the
    # whole table
    key: Mapped[str] = mapped_column(
        String(255).with_variant(String(255, collation="C"), "postgresql"), unique=True
    )
    request_hash: Mapped[str] = mapped_column(String(64))
    recovery_point: Mapped[str] = mapped_column(String(50), default="started")
    locked_at: Mapped[dt.datetime | None]
    # who holds it: the Celery task id, the same on a redelivery of the same message, so an
    # attempt that died (SIGKILL, lost worker) is resumed at once by its own redelivery
    locked_by: Mapped[str | None] = mapped_column(String(255))
    # the last failure, for staff
    last_error: Mapped[str | None] = mapped_column(Text)
    response_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[JSONDict | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = created_at()
    last_run_at: Mapped[dt.datetime | None]


class StockLocation(Base):
    """One of our warehouses (a shelf that stock is counted on). The migration makes ``main``,
    so a merchant with one warehouse never has to think about locations."""

    __tablename__ = "stock_locations"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(50), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[dt.datetime] = created_at()


class StockItem(Base):
    """Stock of one SKU over every location: on hand and reserved are the sums of its
    ``stock_levels`` (kept so by ``orders/stock.py``, the only writer, in the same statement
    order everywhere: this row first, then the level); available = on_hand - reserved, never
    < 0. The row is also the SKU's lock: whoever changes a level holds it."""

    __tablename__ = "stock_items"
    __table_args__ = (
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        CheckConstraint("reserved <= on_hand", name="reserved_within_on_hand"),
    )

    sku: Mapped[str] = mapped_column(String(100), primary_key=True)
    on_hand: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    # who set the last count (``staff:cli``, a user's name from the web): reservations and
    # shipments move the numbers, people set them
    counted_by: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[dt.datetime] = updated_at()


class StockLevel(Base):
    """Stock of one SKU at one location: on hand and reserved there."""

    __tablename__ = "stock_levels"
    __table_args__ = (
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        CheckConstraint("reserved <= on_hand", name="reserved_within_on_hand"),
    )

    sku: Mapped[str] = mapped_column(
        ForeignKey("stock_items.sku", ondelete="CASCADE"), primary_key=True
    )
    location_id: Mapped[int] = mapped_column(ForeignKey("stock_locations.id"), primary_key=True)
    on_hand: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = updated_at()


class AccountLocation(Base):
    """One of the locations a channel account sells from, in order (``position``): its
    reservations take from the first that has all the units of a line, and the quantity its
    listings are pushed is the sum over them. An account with none sells from every location.
    ``external_location_id``: the marketplace's location for ours (Shopify: a Location GID,
    where the account's listings are set)."""

    __tablename__ = "account_locations"
    __table_args__ = (UniqueConstraint("channel_account_id", "position"),)

    channel_account_id: Mapped[int] = mapped_column(
        ForeignKey("channel_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    location_id: Mapped[int] = mapped_column(
        ForeignKey("stock_locations.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer)
    external_location_id: Mapped[str | None] = mapped_column(String(255))


class StockReservation(Base):
    """Units of one SKU held for one order at one location (held → consumed on ship, or
    released)."""

    __tablename__ = "stock_reservations"
    __table_args__ = (UniqueConstraint("order_id", "sku"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(ForeignKey("stock_items.sku"))
    # where the units are held (None only for a row made before locations; none is left
    # after the migration)
    location_id: Mapped[int | None] = mapped_column(ForeignKey("stock_locations.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="held")
    created_at: Mapped[dt.datetime] = created_at()


class Listing(Base):
    """One SKU as listed on one channel account: the marketplace's identifiers, the buffer rule
    and what was pushed.

    ``want_version`` is bumped in the transaction of every change of the SKU's available stock
    (the dirty mark); the flusher pushes and records ``pushed_version`` with a conditional
    update (``WHERE pushed_version < :v``), so an older quantity never overwrites a newer one.
    The listing is dirty while ``want_version > pushed_version``. Identifiers per channel:
    Shopify ``external_id`` = InventoryItem GID, ``external_location_id`` = its Location GID;
    WooCommerce product or variation id, ``external_parent_id`` = the variable product;
    Amazon seller SKU (+ ``external_location_id`` = marketplace id); eBay SKU (+ offer id in
    ``external_parent_id``)."""

    __tablename__ = "listings"
    __table_args__ = (
        UniqueConstraint("channel_account_id", "sku"),
        Index("ix_listings_sku", "sku"),
        Index("ix_listings_dirty", "channel_account_id", "dirty_at"),
        CheckConstraint("buffer_percent BETWEEN 0 AND 100", name="buffer_percent_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_account_id: Mapped[int] = mapped_column(ForeignKey("channel_accounts.id"))
    sku: Mapped[str] = mapped_column(String(100))
    external_id: Mapped[str | None] = mapped_column(String(255))
    external_parent_id: Mapped[str | None] = mapped_column(String(255))
    external_location_id: Mapped[str | None] = mapped_column(String(255))
    # Amazon FBA: Amazon holds that stock; recorded, never pushed
    fulfilled_by_marketplace: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # the listing's own buffer rule; None = the account's
    buffer_percent: Mapped[int | None] = mapped_column(Integer)
    buffer_max: Mapped[int | None] = mapped_column(Integer)
    zero_at_or_below: Mapped[int | None] = mapped_column(Integer)
    want_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    pushed_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # first unpushed change (None = clean): what the flusher and its safety net look for
    dirty_at: Mapped[dt.datetime | None]
    last_pushed_qty: Mapped[int | None] = mapped_column(Integer)
    last_pushed_at: Mapped[dt.datetime | None]
    # the last push that failed for good (retries exhausted or refused): shown to staff
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = created_at()


class StockDrift(Base):
    """A listing whose quantity on the channel was not what we last pushed: someone changed it
    in the marketplace's admin. Found by a push (Shopify's ``changeFromQuantity``) or by the
    nightly check, repaired by pushing ours again."""

    __tablename__ = "stock_drifts"

    id: Mapped[int] = mapped_column(primary_key=True)
    listing_id: Mapped[int] = mapped_column(
        ForeignKey("listings.id", ondelete="CASCADE"), index=True
    )
    found_at: Mapped[dt.datetime] = created_at()
    found_by: Mapped[str] = mapped_column(String(20))  # push | nightly
    channel_qty: Mapped[int] = mapped_column(Integer)
    expected_qty: Mapped[int | None] = mapped_column(Integer)
    repaired_at: Mapped[dt.datetime | None]


class StockCheck(Base):
    """One nightly full push of one account: every listing read, compared, repaired."""

    __tablename__ = "stock_checks"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_account_id: Mapped[int] = mapped_column(
        ForeignKey("channel_accounts.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(20), default="running")
    listings_checked: Mapped[int] = mapped_column(Integer, default=0)
    drifted: Mapped[int] = mapped_column(Integer, default=0)
    missing_on_channel: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = created_at()
    finished_at: Mapped[dt.datetime | None]


class Payment(Base):
    """The one payment of an order: captured by us, or collected by the marketplace."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), unique=True)
    provider: Mapped[str] = mapped_column(String(50))
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(Currency)
    status: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    collected_by_marketplace: Mapped[bool] = mapped_column(Boolean, default=False)
    captured_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = created_at()


class Refund(Base):
    """Money given back, once per ``idempotency_key``: by us at the payment provider (a
    cancelled order's capture, a staff refund: ``source`` ``provider`` / ``staff``), or by the
    marketplace (``source`` ``marketplace``: the key is the marketplace's refund id), with the
    lines and shipping it covers (``lines``: ``[{"line": external id, "quantity": n,
    "amount": "…", "tax": "…", "restock": bool}]``) for its credit note."""

    __tablename__ = "refunds"
    # the sweeper's search for refunds without their credit note reads the last day of them
    __table_args__ = (Index("ix_refunds_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"), index=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    provider: Mapped[str] = mapped_column(String(50))
    source: Mapped[str] = mapped_column(String(20), default="provider", server_default="provider")
    # the provider's or marketplace's id; None while a staff refund waits for its call
    external_id: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(Currency)
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(50))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    lines: Mapped[list[Any] | None] = mapped_column(JSON)
    shipping: Mapped[Decimal] = mapped_column(default=Decimal(0), server_default="0")
    # who asked: the staff member's name, or the marketplace / system
    requested_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = created_at()


class InvoiceCounter(Base):
    """Next number of one invoice series; locked in the invoice's transaction (gap-free)."""

    __tablename__ = "invoice_counters"

    series: Mapped[str] = mapped_column(String(50), primary_key=True)
    next_number: Mapped[int] = mapped_column(Integer, default=1)


class Invoice(Base):
    """A finalised invoice or credit note; never changed, never deleted.

    ``source_key`` says what made it, once: ``invoice:{order}:{revision}``,
    ``credit:cancel:{order}``, ``credit:edit:{order}:{revision}``, ``credit:refund:{refund}``.
    ``lines`` are the printed lines with every column (``domain.invoice_math``), so a credit
    note mirrors exactly what it credits."""

    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("series", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    source_key: Mapped[str] = mapped_column(String(120), unique=True)
    kind: Mapped[str] = mapped_column(String(20), default="invoice")
    series: Mapped[str] = mapped_column(String(50))
    number: Mapped[int] = mapped_column(Integer)
    full_number: Mapped[str] = mapped_column(String(80), unique=True)
    total: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(Currency)
    credits_invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    lines: Mapped[list[Any] | None] = mapped_column(JSON)
    pdf: Mapped[bytes | None] = mapped_column(LargeBinary)
    issued_at: Mapped[dt.datetime] = created_at()


class Shipment(Base):
    """A parcel of an order: its carrier, tracking number and where it is (pending →
    labelled → shipped → delivered; ``voided`` when its label was voided, ``exception`` when
    the carrier lost it or sends it back)."""

    __tablename__ = "shipments"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    carrier: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    tracking_number: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = created_at()
    shipped_at: Mapped[dt.datetime | None]
    delivered_at: Mapped[dt.datetime | None]
    # the carrier's last tracking status code (ShipEngine's: AC, IT, DE, EX, …), and when its
    # tracking was last asked for
    tracking_status: Mapped[str | None] = mapped_column(String(10))
    tracked_at: Mapped[dt.datetime | None]
    # where it leaves from: the marketplace's location id (a Shopify location GID) or our
    # stock location's code (``main``) …
    location: Mapped[str] = mapped_column(String(100), default="main", server_default="main")
    # staff asked for it to leave as soon as it is labelled (shipping chosen lines,
    # ``orders.staff.ship_lines``): the request's key (a repeat of it is the same request) and
    # who asked
    ship_request: Mapped[str | None] = mapped_column(String(120))
    ship_requested_by: Mapped[str | None] = mapped_column(String(100))
    # … and which of our locations that is, where it can be told (the code, or the account's
    # ``account_locations.external_location_id``; orders/stock.py ``our_location``)
    stock_location_id: Mapped[int | None] = mapped_column(ForeignKey("stock_locations.id"))

    lines: Mapped[list[ShipmentLine]] = relationship(
        cascade="all, delete-orphan", order_by="ShipmentLine.id"
    )


class ShipmentLine(Base):
    """How many units of one order line travel in one shipment. The line is named by its
    marketplace id (``order_lines.external_id``), which stays when a marketplace update
    rewrites the order's lines."""

    __tablename__ = "shipment_lines"
    __table_args__ = (
        UniqueConstraint("shipment_id", "line_external_id"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipments.id", ondelete="CASCADE"))
    line_external_id: Mapped[str] = mapped_column(ExternalId)
    quantity: Mapped[int] = mapped_column(Integer)


class Label(Base):
    """The one label of a shipment, bought once with an idempotency key; reprints reuse it."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipments.id"), unique=True)
    carrier: Mapped[str] = mapped_column(String(50))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    tracking_number: Mapped[str] = mapped_column(String(100))
    # the carrier's id of the label (to void it)
    external_id: Mapped[str | None] = mapped_column(String(100))
    pdf: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = created_at()
    voided_at: Mapped[dt.datetime | None]


class SyncRun(Base):
    """One poll or full sync of one account: window, counts, progress, outcome."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        Index("ix_sync_runs_active", "id", postgresql_where=ACTIVE_RUN, sqlite_where=ACTIVE_RUN),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_account_id: Mapped[int] = mapped_column(ForeignKey("channel_accounts.id"))
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="running")
    window_from: Mapped[dt.datetime | None]
    window_to: Mapped[dt.datetime | None]
    orders_seen: Mapped[int] = mapped_column(Integer, default=0)
    orders_changed: Mapped[int] = mapped_column(Integer, default=0)
    # progress of a run read in slices: pages committed, the token that resumes after the last
    # of them (None: from the start, or done), and when the last page was committed (a run
    # still reading whose heartbeat is old has lost its worker: the sweeper resumes it)
    pages: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    page_token: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[dt.datetime | None]
    # of the changed: orders we did not have (missing here, now repaired), and orders whose
    # state the marketplace had moved without telling us (a cancellation we missed)
    orders_created: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    states_repaired: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: a full sync's orders whose state here disagrees with the marketplace's in a way not safe
    #: to repair: on their timeline (``reconcile_mismatch``), most in ``needs_attention``
    mismatches_flagged: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = created_at()
    finished_at: Mapped[dt.datetime | None]
    # the nightly reconciliation this full sync is part of
    reconcile_report_id: Mapped[int | None] = mapped_column(
        ForeignKey("reconcile_reports.id", ondelete="SET NULL"), index=True
    )


class ReconcileReport(Base):
    """One nightly full sync of every account: what it found that webhooks and polls had
    missed. Written when the night starts (its runs point at it) and totalled when the last
    account is done."""

    __tablename__ = "reconcile_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[dt.datetime] = created_at()
    finished_at: Mapped[dt.datetime | None]
    accounts: Mapped[int] = mapped_column(Integer, default=0)
    seen: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[int] = mapped_column(Integer, default=0)  # missing here, now repaired
    updated: Mapped[int] = mapped_column(Integer, default=0)
    states_repaired: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # for staff
    errors: Mapped[int] = mapped_column(Integer, default=0)  # accounts whose full sync failed


ROLES = ("viewer", "operator", "admin")
_KNOWN_ROLE = "role IN ('viewer', 'operator', 'admin')"


class User(Base):
    """A member of staff who logs in: viewer reads, operator acts on orders and stock, admin
    also manages accounts, users and tokens."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_KNOWN_ROLE, name="known_role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id, with its parameters
    role: Mapped[str] = mapped_column(String(20))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # in every session cookie; bumped by a password reset or a disable, which ends every
    # session signed before
    session_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()


class ApiToken(Base):
    """A token for scripts, sent as ``Authorization: Bearer``. Only the SHA-256 of its secret is
    kept (the secret is 256 random bits, shown once); ``lookup`` is its public first part."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint(_KNOWN_ROLE, name="known_role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    lookup: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(20))  # at most its user's role when used
    created_at: Mapped[dt.datetime] = created_at()
    last_used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class LoginAttempt(Base):
    """One login attempt: failures in the last minutes rate-limit the name and the address."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_user_name_at", "user_name", "at"),
        Index("ix_login_attempts_address_at", "address", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = created_at()
    user_name: Mapped[str] = mapped_column(String(100))
    address: Mapped[str] = mapped_column(String(64))
    ok: Mapped[bool] = mapped_column(Boolean)


class AuditEntry(Base):
    """A staff action, with the name of who did it: every retry, ship, stock change, account,
    user and token change (an action on an order is on its timeline too)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = created_at()
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(String(200), default="")
    order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", ondelete="SET NULL"), index=True
    )
    detail: Mapped[JSONDict] = mapped_column(JSON, default=dict)
