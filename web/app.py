"""The FastAPI application: webhooks (``web.webhooks.WebhookIntake``, a plain ASGI layer in
front of everything else), staff JSON API, dashboard, health and metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from db.session import get_engine
from web import api, dashboard, webhooks

__all__ = ["create_app"]

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


async def _same_origin_for_staff_actions(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """CSRF guard for the staff API: a browser always sends ``Origin`` on a cross-site POST, so
    a staff action whose Origin is another site is refused (another page cannot make a logged-in
    staff browser press Retry or Ship). Scripts and the CLI send no Origin and pass."""
    if request.method in _UNSAFE and request.url.path.startswith("/api/"):
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return JSONResponse({"detail": "cross-site request refused"}, status_code=403)
    return await call_next(request)


def create_app() -> FastAPI:
    app = FastAPI(title="ordersync", version="0.1.0")
    app.middleware("http")(_same_origin_for_staff_actions)
    # outermost: webhooks are answered before any other middleware or routing runs
    app.add_middleware(webhooks.WebhookIntake)
    app.include_router(api.router)
    app.include_router(dashboard.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"])
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    return app
