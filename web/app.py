"""The FastAPI application: webhooks (``web.webhooks.WebhookIntake``, a plain ASGI layer in
front of everything else), staff JSON API, dashboard, login, health and metrics.

Everything but the webhooks, ``/healthz``, ``/login`` and the static files is behind
``web.auth.StaffGate`` (default deny: a route added later is closed until it is made public
there). The HTML pages are left out of the OpenAPI schema; every JSON route declares its
response model.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from core.logging import configure_logging
from core.settings import get_settings
from db.session import get_engine
from web import admin, api, dashboard, login, sync_pages, webhooks
from web.auth import STAFF_RESPONSES, StaffGate
from web.metrics import scrape_registry

__all__ = ["create_app", "served_app"]


class Health(BaseModel):
    status: str


def create_app() -> FastAPI:
    app = FastAPI(title="ordersync", version="0.1.0")
    app.add_middleware(StaffGate)
    # outermost: webhooks are answered before the gate, any other middleware or routing runs
    app.add_middleware(webhooks.WebhookIntake)
    app.include_router(login.router)
    app.include_router(api.router)
    app.include_router(admin.api)
    app.include_router(admin.pages)
    app.include_router(sync_pages.api)
    app.include_router(sync_pages.pages)
    app.include_router(dashboard.router)

    @app.get("/healthz", tags=["ops"], response_model=Health)
    def healthz() -> dict[str, str]:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse, responses=STAFF_RESPONSES)
    def metrics() -> PlainTextResponse:
        """Prometheus text format (a token of any role, or WEB_METRICS_PORT without one)."""
        body = generate_latest(scrape_registry()).decode()
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    return app


def served_app() -> FastAPI:
    """The app as ``ordersync web`` serves it, built in each of its processes: logging set up
    first (level, JSON, and the redaction of secrets and buyer data), because ``--workers N``
    starts N fresh interpreters that inherit none of the command's configuration."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app()
