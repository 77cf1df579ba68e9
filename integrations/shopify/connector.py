"""Shopify connector: the ``MarketplaceConnector`` over the GraphQL Admin API (2026-07).

Reads from ``account``:

- ``account.shop``: the shop's myshopify domain (``example.myshopify.com``);
- ``account.api_base_url``: default ``https://{shop}`` (the sandbox sets its own);
- ``account.credentials["access_token"]``: the Admin API access token (required);
- ``account.credentials["location_id"]``: optional location GID that ``list_listings`` reads
  and ``push_stock`` sets quantities at (a listing's own location wins); default the shop's
  first active location;
- ``account.rate_limits.cost_bucket``: the shop's GraphQL cost bucket (``maximum`` points,
  ``restore_rate`` points/s, e.g. 2000 and 100 on Shopify Plus) assumed until Shopify reports
  the real one; default the standard plan's 1000 and 50 (``throttle.py``).

The poll lists order ids updated since a time (cursor pages sorted by ``UPDATED_AT``), then
fetches those orders in chunks sized to the cost bucket and maps them with
``map_graphql_order``. Without the ``read_all_orders`` scope Shopify only returns the last 60
days of orders. https://shopify.dev/docs/api/admin-graphql/2026-07/queries/orders
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from domain.canonical import CanonicalOrder, from_checked_text, to_decimal
from domain.errors import (
    AuthError,
    AuthorizationUnusable,
    PayloadError,
    ServerError,
    ValidationError,
)
from domain.listings import ChannelListing, StockPushResult, StockUpdate
from integrations.base import AccountConfig, ConnectorSeams, OrderPage, PagedOrders, ShipmentGroup
from integrations.ratelimit import Bucket, CostLimit
from integrations.shopify import queries as q
from integrations.shopify.client import ShopifyClient, order_gid
from integrations.shopify.mapper import map_graphql_order
from integrations.shopify.throttle import (
    DEFAULT_MAXIMUM,
    DEFAULT_RESTORE_RATE,
    CostBucket,
    shared_bucket,
)

__all__ = ["COST_BUCKET_DEFAULT", "RATE_LIMIT_DEFAULTS", "ShopifyCapture", "ShopifyConnector"]

log = structlog.get_logger(__name__)

#: fulfillment order statuses that can still be fulfilled
_FULFILLABLE = frozenset({"OPEN", "IN_PROGRESS"})


def _line_of(node: dict[str, Any]) -> str:
    """The order line id (REST id, as our order lines hold it) of a fulfillment order line."""
    gid = str((node.get("lineItem") or {}).get("id") or "")
    return gid.rsplit("/", 1)[-1] if gid else ""


def _location_of(fulfillment_order: dict[str, Any]) -> str:
    return str(((fulfillment_order.get("assignedLocation") or {}).get("location") or {}).get("id"))


#: orders per page of a bulk export's result (one transaction each)
BULK_PAGE_SIZE = 250
#: first wait between two questions about a running export, doubled up to the maximum
BULK_POLL_S = 0.5
BULK_POLL_MAX_S = 10.0
_BULK = "bulk:"


#: the least of a result file a lane reads (about 1,000 orders): a smaller file is one lane
LANE_MIN_BYTES = 2 * 1024 * 1024


def _bulk_token(gid: str, at: int, byte: int = 0, *, lane: tuple[int | None] | None = None) -> str:
    """Where a bulk export's reading stands: the operation, the objects read and the byte of
    the result file at which the next one begins (0 while unknown). A lane's (``lane``: the
    byte where it ends, None for the last) counts bytes only: its orders are those whose line
    begins in ``[byte, end)``."""
    state: dict[str, Any] = {"op": gid, "at": at}
    if byte:
        state["byte"] = byte
    if lane is not None:
        state["end"] = lane[0]
    return _BULK + json.dumps(state, separators=(",", ":"))


def lane_bounds(size: int, lanes: int, least: int) -> list[tuple[int, int | None]]:
    """A result file of ``size`` bytes cut in at most ``lanes`` ranges of ``least`` bytes or
    more, ``(start, end)`` each (the last ends with the file: None)."""
    n = max(1, min(lanes, size // max(least, 1)))
    cuts = [size * i // n for i in range(n + 1)]
    return [(cuts[i], cuts[i + 1] if i + 1 < n else None) for i in range(n)]


def _search(since: dt.datetime, until: dt.datetime | None) -> str:
    search = f"updated_at:>='{_search_time(since)}'"
    if until is not None:
        search += f" AND updated_at:<'{_search_time(until)}'"
    return search


def _search_time(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("poll bounds must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ShopifyCapture:
    """A CAPTURE transaction on Shopify (``orders.payments.CapturedPayment``)."""

    id: str
    status: str  # "succeeded" for Shopify's SUCCESS, else Shopify's status lower-cased
    amount: Decimal
    currency: str
    replayed: bool = False


def _money(transaction: Mapping[str, Any]) -> tuple[Decimal, str]:
    bag = ((transaction.get("amountSet") or {}).get("presentmentMoney")) or {}
    try:
        return to_decimal(bag["amount"]), str(bag["currencyCode"])
    except (KeyError, ValueError) as exc:
        raise PayloadError("OrderTransactions: a transaction has no amount") from exc


def _as_capture(transaction: Mapping[str, Any], *, replayed: bool = False) -> ShopifyCapture:
    amount, currency = _money(transaction)
    status = str(transaction.get("status") or "").upper()
    return ShopifyCapture(id=str(transaction["id"]),
                          status="succeeded" if status == "SUCCESS" else status.lower(),
                          amount=amount, currency=currency, replayed=replayed)  # fmt: skip


def _parent(transaction: Mapping[str, Any]) -> str | None:
    parent = transaction.get("parentTransaction") or {}
    return str(parent["id"]) if isinstance(parent, dict) and parent.get("id") else None


#: what ``channel_accounts.rate_limits`` may override (declared in ``marketplace.py``): the
#: cost bucket only, GraphQL has no per-operation request limit
RATE_LIMIT_DEFAULTS: Mapping[str, Bucket] = {}
COST_BUCKET_DEFAULT = CostLimit(DEFAULT_MAXIMUM, DEFAULT_RESTORE_RATE)


class ShopifyConnector(PagedOrders):
    def __init__(
        self,
        account: AccountConfig,
        seams: ConnectorSeams | None = None,
        *,
        cost_bucket: CostBucket | None = None,
        notify_customer: bool = True,
    ) -> None:
        """``cost_bucket``: a bucket of its own (tests, benchmarks); None = the process-wide
        bucket of the shop, seeded from ``account.rate_limits.cost_bucket`` if set."""
        seams = seams or ConnectorSeams()
        token = account.credentials.get("access_token")
        if not token or not account.shop:
            raise AuthError(f"shopify account {account.name!r}: shop or access_token missing")
        limits = account.rate_limits
        limits.over(RATE_LIMIT_DEFAULTS, account=account.name, cost_bucket=True)
        if cost_bucket is None and limits.cost_bucket is not None:
            cost_bucket = shared_bucket(
                account.shop, limits.cost_bucket.maximum, limits.cost_bucket.restore_rate
            )
        self.account = account
        self.clock = seams.clock
        self.lanes = max(1, seams.lanes)
        self.last_window_end: dt.datetime | None = None  # the window asked for is read whole
        self.notify_customer = notify_customer
        self.client = ShopifyClient(
            account.shop,
            str(token),
            base_url=account.api_base_url,
            bucket=cost_bucket,
            transport=seams.transport,
            limiter=seams.limiter,
            sleep=seams.sleep,
        )
        location = account.credentials.get("location_id")
        self._location: str | None = str(location) if location else None
        self._locations: int | None = None  # how many active locations (shipment_groups)

    def __repr__(self) -> str:
        return f"ShopifyConnector(account={self.account.name!r}, shop={self.account.shop!r})"

    def close(self) -> None:
        self.client.close()

    # --- orders ---------------------------------------------------------------------------

    def fetch_pages(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[OrderPage]:
        """Pages of the order search; ``resume`` is the search's ``endCursor`` (or a bulk
        export's token, which goes on with that export: see ``fetch_history``)."""
        if resume is not None and resume.startswith(_BULK):
            yield from self._bulk_pages(_search(since, until), resume)
            return
        after = resume
        search = _search(since, until)
        while True:
            gids, has_next, cursor = self.client.orders_page(search, after)
            size = self.client.chunk_size()
            orders = []
            for start in range(0, len(gids), size):
                for node in self.client.orders_by_ids(gids[start : start + size]):
                    if node is None:  # deleted between the two calls
                        continue
                    # an order updated mid-poll can show up again on a later page (as it is
                    # then): kept, the intake finds it stale; nothing per order is held from
                    # one page to the next, so a long window polls at flat memory
                    orders.append(map_graphql_order(node, self.account.name))
            done = not has_next or not cursor
            yield OrderPage(orders, None if done else cursor)
            if done:
                return
            after = cursor

    def fetch_history(
        self, since: dt.datetime, until: dt.datetime | None, resume: str | None = None
    ) -> Iterator[OrderPage]:
        """A long window (a full sync, a first sync) through a bulk export: one
        ``bulkOperationRunQuery`` of the window's orders with their line items, its status
        asked until it is ``COMPLETED``, then its JSONL result read as a stream and mapped in
        pages of ``BULK_PAGE_SIZE`` orders. Nothing per order is held beyond one page. Each
        page's token is ``bulk:{"op": GID, "at": objects read}``: a resumed slice asks the
        operation for its URL again and skips what was committed; while the export runs, an
        empty page carries the operation's id, so a restart does not start a second one. A
        cursor token goes on paging (``fetch_pages``)."""
        if resume is not None and not resume.startswith(_BULK):
            return self.fetch_pages(since, until, resume)
        return self._bulk_pages(_search(since, until), resume)

    def _bulk_pages(self, search: str, resume: str | None) -> Iterator[OrderPage]:
        state = json.loads(resume[len(_BULK) :]) if resume else {}
        gid: str | None = state.get("op")
        at, byte = int(state.get("at") or 0), int(state.get("byte") or 0)
        in_lane = "end" in state
        end: int | None = int(state["end"]) if state.get("end") is not None else None
        restarted = False
        wait = BULK_POLL_S
        while True:
            if gid is None:
                gid, at, byte = self.client.bulk_run_query(q.bulk_orders(search)), 0, 0
                log.info("shopify.bulk_started", account=self.account.name, operation=gid)
                yield OrderPage([], _bulk_token(gid, 0))
            operation = self.client.bulk_operation(gid)
            status = operation["status"]
            if status == "COMPLETED":
                break
            if status in ("FAILED", "CANCELED", "CANCELING", "EXPIRED"):
                # an expired result (older than 7 days) or a failed export: once more from
                # the start (pages already applied are applied again: newer data wins); a
                # lane cannot (the others read the old file), so its run fails and the next
                # run exports again
                if restarted or in_lane:
                    raise ServerError(f"bulk export {status} {operation.get('errorCode')}",
                                      code=str(operation.get("errorCode") or status))  # fmt: skip
                log.warning("shopify.bulk_restart", account=self.account.name, status=status,
                            error_code=operation.get("errorCode"))  # fmt: skip
                gid, restarted = None, True
                continue
            self.client.sleep(wait)  # CREATED, RUNNING
            wait = min(BULK_POLL_MAX_S, wait * 2)
            yield OrderPage([], _bulk_token(gid, at, byte))
        url = operation.get("url")
        if not url:  # no order in the window: Shopify makes no file
            yield OrderPage([], None)
            return
        if not in_lane and at == 0 and byte == 0 and self.lanes > 1:
            bounds = lane_bounds(int(operation.get("fileSize") or 0), self.lanes, LANE_MIN_BYTES)
            if len(bounds) > 1:  # read in lanes, each from its own slices
                lanes = tuple(_bulk_token(gid, 0, start, lane=(stop,)) for start, stop in bounds)
                log.info("shopify.bulk_lanes", account=self.account.name, operation=gid,
                         lanes=len(lanes), bytes=operation.get("fileSize"))  # fmt: skip
                yield OrderPage([], None, lanes=lanes)
                return
        orders: list[CanonicalOrder] = []
        current: dict[str, Any] | None = None
        lines: list[dict[str, Any]] = []
        escaped = False  # a line of the current order may hold a surrogate
        read = at
        lane = (end,) if in_lane else None
        items = self.client.bulk_lines(str(url), skip=at, start=byte, from_byte=in_lane)
        for item, may_hold, begins in items:
            parent = item.pop("__parentId", None)
            if parent is None:  # the next order: the one before is whole
                if end is not None and begins >= end:
                    break  # the next lane's first order
                if current is not None:
                    orders.append(self._bulk_order(current, lines, escaped))
                    if len(orders) >= BULK_PAGE_SIZE:  # resumed at this order's first byte
                        yield OrderPage(orders, _bulk_token(gid, read, begins, lane=lane))
                        orders = []
                current, lines, escaped = item, [], may_hold
            elif current is None and in_lane:
                continue  # a lane begins inside the lines of the lane before's last order
            elif current is None or parent != current.get("id"):
                raise PayloadError("bulk result: a line item away from its order (not grouped)")
            else:
                lines.append(item)
                escaped = escaped or may_hold
            read += 1
        items.close()  # a lane leaves the file before its end: the download stops
        if current is not None:
            orders.append(self._bulk_order(current, lines, escaped))
        yield OrderPage(orders, None)

    def _bulk_order(
        self, node: dict[str, Any], lines: list[dict[str, Any]], escaped: bool
    ) -> CanonicalOrder:
        """One order of the export, mapped; its text checked for surrogates field by field
        only where its lines' JSON had an escape that can make one."""
        node["lineItems"] = {"nodes": lines, "pageInfo": {"hasNextPage": False}}
        if escaped:
            return map_graphql_order(node, self.account.name)
        with from_checked_text():
            return map_graphql_order(node, self.account.name)

    def get_order(self, external_id: str) -> CanonicalOrder:
        return map_graphql_order(self.client.order(order_gid(external_id)), self.account.name)

    # --- fulfillment and cancel -----------------------------------------------------------

    def shipment_groups(self, external_id: str) -> list[ShipmentGroup]:
        """The order's open fulfillment orders, grouped by their location: each group ships
        as one shipment (``fulfillmentCreate`` never mixes locations). A shop with one active
        location (asked once per connector) ships every order whole: nothing to ask."""
        if self._locations is None:
            self._locations = self.client.active_location_count()
        if self._locations <= 1:
            return []
        state = self.client.fulfillment_state(order_gid(external_id))
        by_location: dict[str, dict[str, int]] = defaultdict(dict)
        for fo in (state.get("fulfillmentOrders") or {}).get("nodes") or []:
            if fo.get("status") not in _FULFILLABLE:
                continue
            for node in (fo.get("lineItems") or {}).get("nodes") or []:
                remaining = int(node.get("remainingQuantity") or 0)
                line = _line_of(node)
                if remaining > 0 and line:
                    lines = by_location[_location_of(fo)]
                    lines[line] = lines.get(line, 0) + remaining
        return [
            ShipmentGroup(location, tuple(sorted(lines.items())))
            for location, lines in sorted(by_location.items())
        ]

    def push_fulfillment(
        self,
        external_id: str,
        *,
        tracking_number: str,
        carrier: str,
        idempotency_key: str,
        lines: Sequence[tuple[str, int]] = (),
        location: str = "",
        last: bool = True,
    ) -> None:
        """Fulfil the shipment's ``lines`` (all that is still open when none are given) from
        ``location`` with tracking: one ``fulfillmentCreate`` per location, of that location's
        fulfillment orders only. ``fulfillmentCreate`` takes no idempotency key, so a retry
        first looks: a fulfillment already carrying this tracking number means the earlier
        attempt went through."""
        state = self.client.fulfillment_state(order_gid(external_id))
        if state.get("cancelledAt"):
            raise ValidationError("push_fulfillment: order is cancelled", code="ORDER_CANCELLED")
        if any(
            t.get("number") == tracking_number
            for f in state.get("fulfillments") or []
            for t in f.get("trackingInfo") or []
        ):
            log.info("shopify.fulfillment_exists", key=idempotency_key)
            return
        fulfillment_orders = (state.get("fulfillmentOrders") or {}).get("nodes") or []
        open_orders = [fo for fo in fulfillment_orders if fo.get("status") in _FULFILLABLE]
        if location and location.startswith("gid://shopify/Location/"):
            open_orders = [fo for fo in open_orders if _location_of(fo) == location]
        wanted = {line_id: qty for line_id, qty in lines}
        by_location: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for fo in open_orders:
            group: dict[str, Any] = {"fulfillmentOrderId": str(fo["id"])}
            if wanted:
                items = []
                for node in (fo.get("lineItems") or {}).get("nodes") or []:
                    line = _line_of(node)
                    take = min(wanted.get(line, 0), int(node.get("remainingQuantity") or 0))
                    if take > 0:
                        items.append({"id": str(node["id"]), "quantity": take})
                        wanted[line] -= take
                if not items:
                    continue
                group["fulfillmentOrderLineItems"] = items
            by_location[_location_of(fo)].append(group)
        if not by_location:
            raise ValidationError(
                "push_fulfillment: nothing left to fulfil", code="NOTHING_TO_FULFILL"
            )
        for groups in by_location.values():
            try:
                self.client.fulfillment_create(
                    {
                        "lineItemsByFulfillmentOrder": groups,
                        "notifyCustomer": self.notify_customer,
                        "trackingInfo": {"number": tracking_number, "company": carrier},
                    }
                )
            except ValidationError:
                # the client's own retry after a lost answer finds the fulfillment order
                # closed: if it was our first try that closed it, this push is done
                if self._has_tracking(external_id, tracking_number):
                    log.info("shopify.fulfillment_exists", key=idempotency_key)
                    return
                raise
        log.info("shopify.fulfilled", key=idempotency_key, fulfillments=len(by_location))

    def push_delivery(
        self, external_id: str, *, tracking_number: str, delivered_at: str, idempotency_key: str
    ) -> None:
        """A ``DELIVERED`` fulfillment event on the fulfillment carrying the tracking number
        (Shopify shows the order delivered); one already delivered is left alone."""
        state = self.client.fulfillment_state(order_gid(external_id))
        found = [
            f for f in state.get("fulfillments") or []
            if any(t.get("number") == tracking_number for t in f.get("trackingInfo") or [])
        ]  # fmt: skip
        if not found:
            raise ValidationError(
                "push_delivery: no fulfillment carries this tracking number", code="NOT_FOUND"
            )
        if found[0].get("displayStatus") == "DELIVERED":
            return
        event = {"fulfillmentId": found[0]["id"], "status": "DELIVERED"}
        if delivered_at:
            event["happenedAt"] = delivered_at
        self.client.fulfillment_event_create(event)
        log.info("shopify.delivered", key=idempotency_key)

    def _has_tracking(self, external_id: str, tracking_number: str) -> bool:
        state = self.client.fulfillment_state(order_gid(external_id))
        return any(
            t.get("number") == tracking_number
            for f in state.get("fulfillments") or []
            for t in f.get("trackingInfo") or []
        )

    def cancel_order(
        self,
        external_id: str,
        *,
        reason: str = "OTHER",
        restock: bool = True,
        notify_customer: bool = False,
        staff_note: str | None = None,
    ) -> None:
        """Cancel on Shopify (refund to the original payment methods); no-op if cancelled."""
        gid = order_gid(external_id)
        if self.client.fulfillment_state(gid).get("cancelledAt"):
            return
        self.client.order_cancel(
            gid,
            reason=reason,
            restock=restock,
            notify_customer=notify_customer,
            staff_note=staff_note,
        )

    def push_cancellation(self, external_id: str, *, reason: str, idempotency_key: str) -> None:
        """``orderCancel`` (``STAFF`` reason, restocked on Shopify, the buyer not notified
        here); ``cancel_order`` checks first, so a retry after a lost answer does nothing."""
        self.cancel_order(external_id, reason="STAFF", staff_note=f"ordersync: {reason}"[:255])
        log.info("shopify.cancelled", key=idempotency_key)

    # --- payments (``orders.payments.AuthorizationHolder``) ---------------------------------

    name = "shopify"

    def _transactions(self, order_external_id: str) -> tuple[dict[str, Any], list[Any]]:
        node = self.client.order_transactions(order_gid(order_external_id))
        txs = [t for t in node.get("transactions") or [] if isinstance(t, dict) and t.get("id")]
        return node, txs

    @staticmethod
    def _captures(txs: list[Any], authorizations: set[str]) -> list[dict[str, Any]]:
        return [t for t in txs if t.get("kind") == "CAPTURE" and t.get("status") == "SUCCESS"
                and _parent(t) in authorizations]  # fmt: skip

    def find_capture(
        self, *, order_external_id: str, authorization_id: str | None
    ) -> ShopifyCapture | None:
        """The successful CAPTURE of the order's authorization, if Shopify has one."""
        _, txs = self._transactions(order_external_id)
        authorizations = {str(t["id"]) for t in txs if t.get("kind") == "AUTHORIZATION"}
        captures = self._captures(txs, authorizations)
        return _as_capture(captures[0], replayed=True) if captures else None

    def capture_authorization(
        self, *, order_external_id: str, authorization_id: str | None, amount: Decimal,
        currency: str, idempotency_key: str,
    ) -> ShopifyCapture:  # fmt: skip
        """Capture ``amount`` of the order's successful AUTHORIZATION on Shopify
        (``orderCapture``, ``finalCapture``), under ``idempotency_key`` (``@idempotent``).

        An authorization already captured answers that capture (``replayed``); one that
        expired, was voided, or covers less than ``amount``, and a cancelled order, raise
        ``AuthorizationUnusable`` with the reason."""
        node, txs = self._transactions(order_external_id)
        if node.get("cancelledAt"):
            raise AuthorizationUnusable("the order was cancelled on Shopify: nothing to capture")
        authorizations = [
            t for t in txs if t.get("kind") == "AUTHORIZATION" and t.get("status") == "SUCCESS"
            and (authorization_id is None or t["id"] == authorization_id)
        ]  # fmt: skip
        done = self._captures(txs, {str(t["id"]) for t in authorizations})
        if done:
            return _as_capture(done[0], replayed=True)
        voided = {
            _parent(t) for t in txs if t.get("kind") == "VOID" and t.get("status") == "SUCCESS"
        }
        usable = [t for t in authorizations if t["id"] not in voided]
        if not usable:
            if authorizations:
                raise AuthorizationUnusable("the payment authorization was voided on Shopify")
            raise AuthorizationUnusable("Shopify holds no successful authorization for the order")
        now = self.clock()
        for auth in usable:
            expires = auth.get("authorizationExpiresAt")
            if expires and dt.datetime.fromisoformat(str(expires).replace("Z", "+00:00")) <= now:
                continue
            held, held_currency = _money(auth)
            if held_currency.upper() != currency.upper():
                raise AuthorizationUnusable(
                    f"the authorization is in {held_currency}, the order in {currency}"
                )
            if held < amount:
                raise AuthorizationUnusable(
                    f"partial authorization: {held} {currency} authorised of {amount} {currency}"
                )
            captured = self.client.order_capture(
                order_gid(order_external_id), parent_transaction_id=str(auth["id"]),
                amount=str(amount), currency=currency.upper(), idempotency_key=idempotency_key,
            )  # fmt: skip
            log.info("shopify.captured", key=idempotency_key)
            return _as_capture(captured)
        expiry = min(str(t.get("authorizationExpiresAt")) for t in usable)
        raise AuthorizationUnusable(
            f"the payment authorization expired at {expiry}: ask the buyer to pay again"
        )

    # --- stock ----------------------------------------------------------------------------

    stock_batch_size = q.INVENTORY_SET_MAX

    def list_listings(self) -> Iterator[ChannelListing]:
        """Every product variant with a SKU: its InventoryItem and the quantity available at
        the account's location."""
        location = self._location_id()
        after: str | None = None
        while True:
            nodes, has_next, cursor = self.client.variants_page(location, after)
            for node in nodes:
                sku, item = node.get("sku"), node.get("inventoryItem") or {}
                if not sku or not item.get("id"):
                    continue
                yield ChannelListing(
                    sku=str(sku), external_id=str(item["id"]), location_id=location,
                    quantity=_available(item.get("inventoryLevel")),
                )  # fmt: skip
            if not has_next or not cursor:
                return
            after = cursor

    def push_stock(self, updates: Sequence[StockUpdate]) -> StockPushResult:
        """``inventorySetQuantities`` with ``changeFromQuantity`` = what we last pushed: a
        quantity someone changed in Shopify's admin is refused (``CHANGE_FROM_QUANTITY_STALE``)
        and reported as drift with the number Shopify has, instead of being overwritten; an
        item Shopify no longer knows is refused. The rest of the batch is sent again (Shopify
        applies a mutation whole or not at all). The ``@idempotent`` key is derived from the
        listings, their versions and quantities: a retry of the same push is the same key."""
        result = StockPushResult()
        pending = [u for u in updates if u.external_id]
        for update in updates:
            if not update.external_id:
                result.refused[update.listing_id] = "no inventory item"
        for _ in range(len(pending) + 1):
            if not pending:
                break
            # the listing's own location (recorded by listings sync); the account's otherwise
            location = "" if all(u.location_id for u in pending) else self._location_id()
            key = _stock_key(self.account.name, pending)
            answer = self.client.inventory_set_quantities(
                [
                    {
                        "inventoryItemId": u.external_id,
                        "locationId": u.location_id or location,
                        "quantity": max(0, u.quantity),
                        "changeFromQuantity": u.expected,
                    }
                    for u in pending
                ],
                idempotency_key=key,
                reference=f"gid://ordersync/StockPush/{key}",
            )
            errors = answer.get("userErrors") or []
            if errors:
                code, index = _failed_item(errors)
                if index is None or index >= len(pending) or code not in _ITEM_ERRORS:
                    self.client.check_user_errors("InventorySetQuantities", errors)
                    raise AssertionError("unreachable")  # pragma: no cover
                bad = pending.pop(index)
                if code == "CHANGE_FROM_QUANTITY_STALE":
                    shown = self.client.inventory_available(
                        [str(bad.external_id)], bad.location_id or location
                    ).get(str(bad.external_id))
                    if shown is None:
                        result.refused[bad.listing_id] = "inventory level not found"
                    else:
                        result.drifted[bad.listing_id] = shown
                else:
                    result.refused[bad.listing_id] = code
                continue
            result.applied.extend(u.listing_id for u in pending)
            break
        return result

    def _location_id(self) -> str:
        if self._location is None:
            self._location = self.client.first_location()
        return self._location

    # --- misc -----------------------------------------------------------------------------

    def test_connection(self) -> str:
        shop = self.client.shop_info()
        return f"Shopify shop {shop.get('name')!s} ({shop.get('myshopifyDomain')!s})"


def _available(level: Any) -> int | None:
    if not isinstance(level, dict):
        return None
    for quantity in level.get("quantities") or []:
        if isinstance(quantity, dict) and quantity.get("name") == "available":
            value = quantity.get("quantity")
            return int(value) if isinstance(value, int) else None
    return None


def _stock_key(account: str, updates: Sequence[StockUpdate]) -> str:
    """The ``@idempotent`` key of one push: our listing ids, versions' quantities and the
    compare-from numbers, so a retry of the same push reuses it and any other push does not."""
    ordered = sorted(updates, key=lambda u: u.listing_id)
    text = account + "|" + ";".join(f"{u.listing_id}:{u.quantity}:{u.expected}" for u in ordered)
    return "stock-" + hashlib.sha256(text.encode()).hexdigest()[:40]


#: userErrors about one item of the batch: that item is set aside, the rest sent again
_ITEM_ERRORS = frozenset(
    {"CHANGE_FROM_QUANTITY_STALE", "INVALID_INVENTORY_ITEM", "INVALID_LOCATION",
     "ITEM_NOT_STOCKED_AT_LOCATION", "NON_MUTABLE_INVENTORY_ITEM"}
)  # fmt: skip


def _failed_item(errors: Any) -> tuple[str, int | None]:
    """(code, index into ``input.quantities``) of the first userError."""
    first = errors[0] if isinstance(errors, list) and isinstance(errors[0], dict) else {}
    code = str(first.get("code") or "USER_ERROR")
    for part in reversed(first.get("field") or []):
        if str(part).isdigit():
            return code, int(part)
    return code, None
