"""Shopify connector: the ``MarketplaceConnector`` over the GraphQL Admin API (2026-07).

Reads from ``account``:

- ``account.shop``: the shop's myshopify domain (``example.myshopify.com``);
- ``account.api_base_url``: default ``https://{shop}`` (the sandbox sets its own);
- ``account.credentials["access_token"]``: the Admin API access token (required);
- ``account.credentials["location_id"]``: optional location GID that ``push_stock`` sets
  quantities at; default the shop's first active location;
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
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import structlog

from domain.canonical import CanonicalOrder
from domain.errors import AuthError, PayloadError, ServerError, ValidationError
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

__all__ = ["COST_BUCKET_DEFAULT", "RATE_LIMIT_DEFAULTS", "ShopifyConnector"]

log = structlog.get_logger(__name__)

#: SKUs per inventoryItems search (keeps the search string short)
SKU_LOOKUP_BATCH = 50
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


def _bulk_token(gid: str, at: int) -> str:
    return _BULK + json.dumps({"op": gid, "at": at}, separators=(",", ":"))


def _search(since: dt.datetime, until: dt.datetime | None) -> str:
    search = f"updated_at:>='{_search_time(since)}'"
    if until is not None:
        search += f" AND updated_at:<'{_search_time(until)}'"
    return search


def _search_time(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("poll bounds must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        # SKU → InventoryItem GID; SKUs rarely move between items, and a stale entry is
        # dropped on INVALID_INVENTORY_ITEM
        self._inventory_items: dict[str, str] = {}

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
        at = int(state.get("at") or 0)
        restarted = False
        wait = BULK_POLL_S
        while True:
            if gid is None:
                gid, at = self.client.bulk_run_query(q.bulk_orders(search)), 0
                log.info("shopify.bulk_started", account=self.account.name, operation=gid)
                yield OrderPage([], _bulk_token(gid, 0))
            operation = self.client.bulk_operation(gid)
            status = operation["status"]
            if status == "COMPLETED":
                break
            if status in ("FAILED", "CANCELED", "CANCELING", "EXPIRED"):
                # an expired result (older than 7 days) or a failed export: once more from
                # the start (pages already applied are applied again: newer data wins)
                if restarted:
                    raise ServerError(f"bulk export {status} {operation.get('errorCode')}",
                                      code=str(operation.get("errorCode") or status))  # fmt: skip
                log.warning("shopify.bulk_restart", account=self.account.name, status=status,
                            error_code=operation.get("errorCode"))  # fmt: skip
                gid, restarted = None, True
                continue
            self.client.sleep(wait)  # CREATED, RUNNING
            wait = min(BULK_POLL_MAX_S, wait * 2)
            yield OrderPage([], _bulk_token(gid, at))
        url = operation.get("url")
        if not url:  # no order in the window: Shopify makes no file
            yield OrderPage([], None)
            return
        orders: list[CanonicalOrder] = []
        current: dict[str, Any] | None = None
        lines: list[dict[str, Any]] = []
        read = at
        for item in self.client.bulk_lines(str(url), skip=at):
            parent = item.pop("__parentId", None)
            if parent is None:  # the next order: the one before is whole
                if current is not None:
                    orders.append(self._bulk_order(current, lines))
                    if len(orders) >= BULK_PAGE_SIZE:
                        yield OrderPage(orders, _bulk_token(gid, read))
                        orders = []
                current, lines = item, []
            elif current is None or parent != current.get("id"):
                raise PayloadError("bulk result: a line item away from its order (not grouped)")
            else:
                lines.append(item)
            read += 1
        if current is not None:
            orders.append(self._bulk_order(current, lines))
        yield OrderPage(orders, None)

    def _bulk_order(self, node: dict[str, Any], lines: list[dict[str, Any]]) -> CanonicalOrder:
        node["lineItems"] = {"nodes": lines, "pageInfo": {"hasNextPage": False}}
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

    # --- stock ----------------------------------------------------------------------------

    def push_stock(self, quantities: Mapping[str, int]) -> None:
        """Set ``available`` per SKU at the location, at most 250 per mutation."""
        if not quantities:
            return
        self._lookup(s for s in quantities if s not in self._inventory_items)
        unknown = [s for s in quantities if s not in self._inventory_items]
        if unknown:
            log.warning("shopify.unknown_skus", account=self.account.name, count=len(unknown))
        location = self._location_id()
        items = [(s, max(0, int(n))) for s, n in quantities.items() if s in self._inventory_items]
        for start in range(0, len(items), q.INVENTORY_SET_MAX):
            batch = items[start : start + q.INVENTORY_SET_MAX]
            try:
                self._set_batch(batch, location)
            except ValidationError as exc:
                if exc.code != "INVALID_INVENTORY_ITEM":
                    raise
                # an item was deleted or re-created: look the batch's SKUs up again, once
                for sku, _ in batch:
                    self._inventory_items.pop(sku, None)
                self._lookup(sku for sku, _ in batch)
                self._set_batch([(s, n) for s, n in batch if s in self._inventory_items], location)

    def _set_batch(self, batch: list[tuple[str, int]], location: str) -> None:
        if not batch:
            return
        # one key per batch per call: in-call retries reuse it (Shopify applies it once);
        # a later push is a new key, because the same absolute numbers may be due again
        key = str(uuid.uuid4())
        self.client.inventory_set_quantities(
            [
                {
                    "inventoryItemId": self._inventory_items[sku],
                    "locationId": location,
                    "quantity": qty,
                    "changeFromQuantity": None,  # we are the source of truth: no compare
                }
                for sku, qty in batch
            ],
            idempotency_key=key,
            reference=f"gid://ordersync/StockPush/{key}",
        )

    def _lookup(self, skus: Any) -> None:
        wanted = list(dict.fromkeys(skus))
        for start in range(0, len(wanted), SKU_LOOKUP_BATCH):
            found = self.client.inventory_items_by_sku(wanted[start : start + SKU_LOOKUP_BATCH])
            self._inventory_items.update(found)

    def _location_id(self) -> str:
        if self._location is None:
            self._location = self.client.first_location()
        return self._location

    # --- misc -----------------------------------------------------------------------------

    def test_connection(self) -> str:
        shop = self.client.shop_info()
        return f"Shopify shop {shop.get('name')!s} ({shop.get('myshopifyDomain')!s})"
