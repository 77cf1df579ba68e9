"""One local HTTP server that simulates the outside world.

Each simulator sits under its own prefix with the real API's paths below it, so a client whose
base URL is ``{sandbox}/amazon`` talks to it exactly as to the real thing:

    /shopify   Shopify Admin GraphQL           /payments  a Stripe-like payment provider
    /woocommerce  WooCommerce REST v3          /carrier   a label-buying carrier
    /amazon    SP-API Orders v0 + LWA          /_sandbox/ledger  effects, counted from outside
    /ebay      eBay Sell Fulfillment + OAuth    /_sandbox/stock   quantity per SKU per channel
                                                /_sandbox/admin/{channel}/{sku}?quantity=N
                                                           someone edits it in the admin

``Sandbox`` runs it in a background thread (the demo, tests, benchmarks); ``ordersync sandbox``
runs it in the foreground for a merchant to try ordersync before connecting a real shop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI

from sandbox import amazon, carrier, ebay, payments, shopify, woocommerce
from sandbox.knobs import Knobs

__all__ = ["AccountSpec", "Sandbox"]


@dataclass(frozen=True)
class AccountSpec:
    """What `ordersync accounts add` needs to connect to one sandbox marketplace."""

    channel: str
    shop: str
    api_base_url: str
    credentials: dict[str, Any] = field(repr=False)
    webhook_secret: str | None = field(default=None, repr=False)


class ShiftableClock:
    """``time.time`` with an offset: lets the demo place Amazon orders a few minutes in the past
    (SP-API only lists changes at least two minutes old)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    @contextmanager
    def shifted(self, seconds: float) -> Iterator[None]:
        self.offset = seconds
        try:
            yield
        finally:
            self.offset = 0.0


class Sandbox:
    def __init__(
        self,
        *,
        seed: int = 0,
        knobs: Knobs | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        fast: bool = True,
    ) -> None:
        """``fast`` raises the simulated rate limits (the demo's hundreds of orders would take
        minutes at Amazon's documented 0.5 getOrderItems/s); the limits stay enforced."""
        self.knobs = knobs or Knobs(seed=seed)
        self.host = host
        self.port = port
        self.amazon_clock = ShiftableClock()
        self.shopify = (
            shopify.ShopifySimulator(self.knobs, seed=seed, restore_rate=500.0, bucket_max=4000.0)
            if fast
            else shopify.ShopifySimulator(self.knobs, seed=seed)
        )
        self.payments = payments.PaymentsSimulator(self.knobs, seed=seed)
        # the shop's Stripe gateway authorises its card orders at this payment provider
        self.woocommerce = (
            woocommerce.WooCommerceSimulator(
                self.knobs, seed=seed, rate_limit=(200, 1.0), authorizer=self.payments.authorize
            )
            if fast
            else woocommerce.WooCommerceSimulator(
                self.knobs, seed=seed, authorizer=self.payments.authorize
            )
        )
        self.amazon = amazon.AmazonSimulator(
            self.knobs,
            seed=seed,
            clock=self.amazon_clock,
            rate_limits=(
                {"getOrders": (5.0, 20.0), "getOrderItems": (50.0, 60.0)} if fast else None
            ),
        )
        self.ebay = ebay.EbaySimulator(self.knobs, seed=seed)
        self.carrier = carrier.CarrierSimulator(self.knobs, seed=seed)
        self.app = FastAPI(title="ordersync sandbox")
        for prefix, sim in (
            ("/shopify", self.shopify),
            ("/woocommerce", self.woocommerce),
            ("/amazon", self.amazon),
            ("/ebay", self.ebay),
            ("/payments", self.payments),
            ("/carrier", self.carrier),
        ):
            self.app.include_router(sim.build_router(), prefix=prefix)
        self.app.get("/_sandbox/ledger")(self.ledger)
        self.app.get("/_sandbox/stock")(self.channel_stock)
        # the "edited in the admin" knob: POST /_sandbox/admin/{channel}/{sku}?quantity=N
        self.app.post("/_sandbox/admin/{channel}/{sku}")(self._admin_edit)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def accounts(self, webhook_secret: str) -> dict[str, AccountSpec]:
        """Connection settings for each sandbox marketplace (fixed sandbox credentials)."""
        base = self.url
        return {
            "shopify": AccountSpec(
                "shopify",
                self.shopify.shop,
                f"{base}/shopify",
                {"access_token": shopify.SANDBOX_ACCESS_TOKEN},
                webhook_secret,
            ),
            "woocommerce": AccountSpec(
                "woocommerce",
                f"{base}/woocommerce",
                f"{base}/woocommerce",
                {
                    "consumer_key": woocommerce.SANDBOX_CONSUMER_KEY,
                    "consumer_secret": woocommerce.SANDBOX_CONSUMER_SECRET,
                },
                webhook_secret,
            ),
            "amazon": AccountSpec(
                "amazon",
                amazon.SANDBOX_MARKETPLACE_ID,
                f"{base}/amazon",
                {
                    "client_id": amazon.SANDBOX_CLIENT_ID,
                    "client_secret": amazon.SANDBOX_CLIENT_SECRET,
                    "refresh_token": amazon.SANDBOX_REFRESH_TOKEN,
                    "lwa_url": f"{base}/amazon",
                    "marketplace_ids": [amazon.SANDBOX_MARKETPLACE_ID],
                    "seller_id": amazon.SANDBOX_SELLER_ID,
                },
            ),
            "ebay": AccountSpec(
                "ebay",
                "EBAY_US",
                f"{base}/ebay",
                {
                    "client_id": ebay.SANDBOX_CLIENT_ID,
                    "client_secret": ebay.SANDBOX_CLIENT_SECRET,
                    "refresh_token": ebay.SANDBOX_REFRESH_TOKEN,
                },
            ),
        }

    def add_amazon_orders(self, n: int, *, age_s: float = 300.0) -> list[str]:
        """Amazon orders last updated ``age_s`` ago, so the next poll can already see them."""
        with self.amazon_clock.shifted(-age_s):
            return self.amazon.add_orders(n)

    def pay_pending_amazon_orders(self, *, age_s: float = 240.0) -> list[str]:
        """Amazon authorises the payment of every Pending order (→ Unshipped), as happens
        minutes after checkout; the change is ``age_s`` old so the next poll sees it."""
        pending = [i for i, o in self.amazon.orders.items() if o["OrderStatus"] == "Pending"]
        with self.amazon_clock.shifted(-age_s):
            for order_id in pending:
                self.amazon.touch_order(order_id)
        return pending

    def add_listings(self, skus: list[str], quantity: int = 0) -> None:
        """List more SKUs on all four marketplaces (their quantity there: ``quantity``)."""
        self.shopify.add_listings(skus, quantity)
        self.woocommerce.add_listings(skus, quantity)
        self.amazon.add_listings(skus, quantity)
        self.ebay.add_listings(skus, quantity)

    def channel_stock(self) -> dict[str, dict[str, int]]:
        """The quantity each marketplace shows per SKU of ours (merchant-fulfilled listings)."""
        woo = {
            str(p["sku"]): int(p["stock_quantity"])
            for p in self.woocommerce.products.values()
            if p["sku"] and isinstance(p.get("stock_quantity"), int)
        }
        return {
            "shopify": dict(self.shopify.inventory),
            "woocommerce": woo,
            "amazon": dict(self.amazon.listings),
            "ebay": dict(self.ebay.inventory),
        }

    def stock_calls(self) -> dict[str, int]:
        """Bulk stock calls each marketplace answered (the push side of the ledger)."""
        return {
            "shopify": self.shopify.stock_calls,
            "woocommerce": self.woocommerce.stock_calls,
            "amazon": self.amazon.stock_calls,
            "ebay": self.ebay.stock_calls,
        }

    def edit_in_admin(self, channel: str, sku: str, quantity: int) -> None:
        """Someone changes a quantity in a marketplace's own admin, behind our back."""
        edits: dict[str, Callable[[str, int], None]] = {
            "shopify": self.shopify.edit_in_admin,
            "woocommerce": self.woocommerce.edit_in_admin,
            "amazon": self.amazon.edit_in_admin,
            "ebay": self.ebay.edit_in_admin,
        }
        edits[channel](sku, quantity)

    def _admin_edit(self, channel: str, sku: str, quantity: int) -> dict[str, Any]:
        if channel not in self.stock_calls():
            return {"error": f"unknown channel {channel}"}
        self.edit_in_admin(channel, sku, quantity)
        return {"channel": channel, "sku": sku, "quantity": quantity}

    def ledger(self) -> dict[str, Any]:
        """Effects as the outside world counts them."""
        woo = self.woocommerce.ledger

        def woo_count(prefix: str) -> int:
            return sum(len(v) for k, v in list(woo.items()) if k.startswith(prefix))

        carrier = self.carrier.ledger()
        return {
            "shopify": {
                "orders": len(self.shopify.orders),
                "fulfillments": len(self.shopify.fulfillments),
                "cancels": len(self.shopify.cancels),
                "fulfillment_events": len(self.shopify.fulfillment_events),
                "captures": self.shopify.capture_count(),
            },
            "woocommerce": {
                "orders": len(self.woocommerce.orders),
                # a shipment is a customer note with its tracking number; completed with the last
                "tracking_notes": woo_count("note:"),
                "completed": woo_count("fulfillment:"),
                "cancellations": woo_count("cancellation:"),
                # money given back through the shop's gateway (``api_refund``)
                "gateway_refunds": woo_count("refund:"),
            },
            "amazon": {"orders": len(self.amazon.orders), "shipments": len(self.amazon.shipments)},
            "ebay": {
                "orders": len(self.ebay.orders),
                "fulfillments": len(self.ebay.ledger),
                "cancellations": len(self.ebay.cancellations),
            },
            "payments": {"captures": self.payments.capture_count()},
            "carrier": {
                "labels": carrier["labels"],
                "voided": carrier["voided"],
                "delivered": self.carrier.tracking_counts().get("DE", 0),
            },
            "stock_calls": self.stock_calls(),
        }

    def _bind(self) -> socket.socket:
        # IPPROTO_TCP explicitly: only then does asyncio set TCP_NODELAY on accepted connections
        # (without it, back-to-back requests on a kept-alive connection wait ~40 ms each)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        return sock

    def serve_forever(self) -> None:
        sock = self._bind()
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        uvicorn.Server(config).run(sockets=[sock])

    def start(self) -> None:
        sock = self._bind()
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("sandbox server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
