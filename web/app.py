"""The FastAPI application: webhooks, staff JSON API, dashboard, health and metrics."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from db.session import get_engine
from web import api, dashboard, webhooks

__all__ = ["create_app"]


def create_app() -> FastAPI:
    app = FastAPI(title="ordersync", version="0.1.0")
    app.include_router(webhooks.router)
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
