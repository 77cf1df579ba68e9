"""One local HTTP server that simulates the outside world: each marketplace under its own
prefix (``/shopify``, …) with the real API's paths, so a client whose base URL is
``{sandbox}/shopify`` talks to it exactly as to the real thing.

``Sandbox`` runs it in a background thread (the demo, tests, benchmarks); ``ordersync sandbox``
runs it in the foreground for a merchant to try ordersync before connecting a real shop.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from sandbox.knobs import Knobs
from sandbox.shopify import ShopifySimulator

__all__ = ["Sandbox"]


class Sandbox:
    def __init__(
        self, *, seed: int = 0, knobs: Knobs | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.knobs = knobs or Knobs(seed=seed)
        self.shopify = ShopifySimulator(self.knobs, seed=seed)
        self.host = host
        self.port = port
        self.app = FastAPI(title="ordersync sandbox")
        self.app.include_router(self.shopify.build_router(), prefix="/shopify")
        self.app.get("/_sandbox/ledger")(self.ledger)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ledger(self) -> dict[str, Any]:
        """Effects as the outside world counts them."""
        return {
            "shopify": {
                "orders": len(self.shopify.orders),
                "fulfillments": len(self.shopify.fulfillments),
                "inventory_sets": len(self.shopify.inventory_sets),
                "cancels": len(self.shopify.cancels),
            },
        }

    def _bind(self) -> socket.socket:
        sock = socket.socket()
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
