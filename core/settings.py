"""Effective configuration, read from ``ORDERSYNC_*`` environment variables (and ``.env``).

Defaults are the embedded laptop setup: a SQLite file under ``var/`` and a Redis server that
ordersync starts itself. Production sets ``ORDERSYNC_DATABASE_URL`` (PostgreSQL) and
``ORDERSYNC_REDIS_URL``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["ConfigError", "Settings", "get_settings", "mask_url"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDIS_SCHEMES = ("redis", "rediss", "unix")


class ConfigError(ValueError):
    """The configuration cannot work; the message names the variable and what is wrong, in one
    line (what the CLI prints)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERSYNC_", env_file=".env", extra="ignore")

    var_dir: Path = Field(default=Path("var"), description="state of the embedded setup")
    database_url: str = Field(default="", description="SQLAlchemy URL; default sqlite in var/")
    db_pool_pre_ping: bool | None = Field(
        default=None,
        description="test pooled PostgreSQL connections before use; unset = on in the web app "
        "and CLI, off in workers (a task that lost its connection is retried)",
    )
    redis_url: str | None = Field(
        default=None, description="broker and result backend; unset = embedded redis-server"
    )

    web_host: str = "127.0.0.1"
    # a webhook body is read as a stream up to this size (413 beyond): Shopify's and
    # WooCommerce's real order deliveries are far below 5 MB
    webhook_max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    # how long the webhook receiver keeps an account's id and secret in memory (a changed or
    # new account is seen after this; a delivery whose signature fails drops the entry at once)
    webhook_account_cache_s: float = Field(default=10.0, ge=0)
    web_port: int = Field(default=8000, ge=0, le=65535)  # 0: any free port (the demo)
    # signs the staff session cookies; unset = a random key kept in VAR_DIR/secret_key (set
    # one shared key when several web processes on several machines serve the same staff)
    secret_key: SecretStr = SecretStr("")
    # a staff session ends after this long without a request, and after SESSION_MAX_S anyway
    session_idle_s: int = Field(default=2 * 3600, ge=60)
    session_max_s: int = Field(default=12 * 3600, ge=60)
    # /metrics without a token on another port (bind it where only Prometheus reaches);
    # 0 = only the token-protected /metrics of the web app
    web_metrics_port: int = Field(default=0, ge=0, le=65535)
    # each worker serves its task metrics here (workers of `ordersync up`: this port + i);
    # 0 = no exporter
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # Queues of DESIGN.md: short intake, pipeline steps, long syncs, PDFs, pushes out.
    queue_intake: str = "intake"
    queue_orders: str = "orders"
    queue_sync: str = "sync"
    queue_documents: str = "documents"
    queue_outbound: str = "outbound"

    # Retries: exponential backoff with full jitter, capped; then the work is surfaced to staff.
    retry_max_attempts: int = Field(default=8, ge=0)
    # A message handed out again after its worker died (``redelivered``) is counted; past this
    # many deliveries it is set aside as poison (recorded for staff), not run again: a message
    # that kills its worker would otherwise be redelivered forever.
    max_deliveries: int = Field(default=5, ge=1)
    retry_backoff_base_s: float = Field(default=2.0, gt=0)
    retry_backoff_max_s: float = Field(default=600.0, gt=0)
    # One visibility timeout everywhere (broker and result backend); longer than any task or
    # countdown, or Redis hands an unacked message to a second worker while the first still runs.
    visibility_timeout_s: int = Field(default=3600, ge=60)
    task_time_limit_s: int = Field(default=600, ge=1)
    # The longest delay a worker sleeps (an HTTP client's Retry-After, a rate-limit wait) or the
    # broker holds (a retry's countdown). A longer delay parks the work in the database
    # (outbox_messages.not_before), which the sweeper republishes when its time has come: a
    # countdown message sits unacknowledged in Redis, and one still there after the visibility
    # timeout is handed to a second worker.
    park_after_s: int = Field(default=300, ge=1)
    # A committed inbox row still unprocessed after this long is republished by the sweeper.
    sweep_after_s: int = Field(default=60, ge=1)
    worker_concurrency: int = Field(default=2, ge=1)
    # workers run at this CPU niceness (at least; 0 = as started): on a machine they share with
    # ``ordersync web``, the webhook receiver (Shopify waits 5 s for an answer) gets a core
    # first and the pipeline, which waits in its queue, the rest
    worker_nice: int = Field(default=10, ge=0, le=19)
    task_events: bool = Field(default=False, description="Celery task events (for Flower)")
    # an order with no progress for this long in a pipeline state is pushed on by the sweeper
    stuck_after_s: int = Field(default=600, ge=10)
    # an idempotency key locked by an attempt that stopped answering is taken over after this
    idempotency_lock_timeout_s: int = Field(default=90, ge=1)

    # retention (``ordersync purge``, daily on Beat): buyer personal data of orders long done
    # and of handled webhook bodies; finished idempotency keys (far longer than any retry, park
    # or sweep reaches back: a finished key only answers a retry of the same call)
    personal_data_retention_days: int = Field(default=90, ge=1)
    idempotency_retention_days: int = Field(default=30, ge=2)

    # shipped parcels: the carrier's tracking is asked this often until delivered or lost
    track_interval_s: int = Field(default=300, ge=1)

    # polling: webhooks get lost, so every account is also polled (window = cursor - overlap)
    poll_interval_s: int = Field(default=300, ge=5)
    poll_overlap_s: int = Field(default=300, ge=0)
    first_poll_days: int = Field(default=30, ge=1)
    full_sync_days: int = Field(default=30, ge=1)
    full_sync_hour_utc: int = Field(default=3, ge=0, le=23)
    # a poll or full sync is read in slices of at most this many pages or seconds, each page
    # committed with its resume token; well under TASK_TIME_LIMIT_S, so a first sync of any
    # size never meets the task's hard limit
    sync_slice_pages: int = Field(default=50, ge=1)
    sync_slice_s: float = Field(default=120.0, gt=0)
    # a long window's bulk export (Shopify) is read in up to this many byte ranges at once,
    # each by slices of its own (on PostgreSQL; SQLite's one writer reads one)
    sync_lanes: int = Field(default=2, ge=1, le=16)

    # stock out to the channels: changes of one account within this window go out in one
    # flush (bulk calls, the quantity as it is at send time)
    stock_flush_window_s: float = Field(default=1.0, gt=0, le=60)

    # outside services of the pipeline (the demo points them at the sandbox)
    payments_url: str | None = None
    payments_api_key: SecretStr = SecretStr("")
    carrier_url: str | None = None
    carrier_api_key: SecretStr = SecretStr("")
    # the public keys the carrier signs its tracking webhooks with: ShipEngine's JWKS document
    # (https://api.shipengine.com/jwks); unset, /webhooks/carrier/… takes nothing
    carrier_webhook_keys: str | None = None
    seller_name: str = "ordersync demo shop"
    # where parcels leave from (the label's ship-from address)
    ship_from_line1: str = "1 Example Street"
    ship_from_city: str = "Louisville"
    ship_from_region: str = "KY"
    ship_from_postal_code: str = "40202"
    ship_from_country: str = "US"
    invoice_series_prefix: str = "INV"

    log_level: str = "INFO"
    log_json: bool = False

    # more marketplaces: modules exposing MARKETPLACE (see docs/adding-a-marketplace.md)
    marketplace_plugins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="comma-separated import paths of marketplace modules"
    )

    @field_validator("marketplace_plugins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("carrier_webhook_keys")
    @classmethod
    def _jwks(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            keys = json.loads(value).get("keys")
        except (ValueError, AttributeError):
            keys = None
        if not isinstance(keys, list) or not keys:
            raise ValueError('must be a JWKS document: {"keys": [{"kid": …, "n": …, "e": …}]}')
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level ({', '.join(LOG_LEVELS)})")
        return level

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in REDIS_SCHEMES or not (parts.netloc or parts.path):
            raise ValueError(
                f"{mask_url(value)!r} is not a Redis URL (redis://host:6379/0, rediss://…, "
                "unix:///path); unset it for the embedded server"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str) -> str:
        # the driver's own parser checks the rest when the engine is made (db.session)
        scheme, sep, _ = value.partition("://")
        if value and not (sep and scheme and scheme.replace("+", "").isalnum()):
            raise ValueError(
                f"{mask_url(value)!r} is not a database URL "
                "(postgresql+psycopg://user@host/db or sqlite:///path/to/file.db)"
            )
        return value

    @model_validator(mode="after")
    def _sync_slice_within_the_time_limit(self) -> Settings:
        # a slice stops between pages once past SYNC_SLICE_S: half the task's hard limit leaves
        # the last page (Amazon: up to 100 getOrderItems calls) time to finish
        if 2 * self.sync_slice_s > self.task_time_limit_s:
            raise ValueError(
                f"ORDERSYNC_SYNC_SLICE_S ({self.sync_slice_s:g}) must be at most half of "
                f"ORDERSYNC_TASK_TIME_LIMIT_S ({self.task_time_limit_s})"
            )
        return self

    @model_validator(mode="after")
    def _park_before_redelivery(self) -> Settings:
        # a countdown message is unacknowledged from the moment a worker takes it until its
        # task has run: the countdown and the run must both fit in the visibility timeout
        if self.park_after_s + self.task_time_limit_s >= self.visibility_timeout_s:
            raise ValueError(
                f"ORDERSYNC_PARK_AFTER_S ({self.park_after_s}) + ORDERSYNC_TASK_TIME_LIMIT_S "
                f"({self.task_time_limit_s}) must be less than ORDERSYNC_VISIBILITY_TIMEOUT_S "
                f"({self.visibility_timeout_s}), or Redis redelivers a waiting retry"
            )
        return self

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            path = (self.var_dir / "ordersync.db").resolve()
            self.database_url = f"sqlite:///{path}"
        return self

    @property
    def queues(self) -> list[str]:
        return [
            self.queue_intake,
            self.queue_orders,
            self.queue_sync,
            self.queue_documents,
            self.queue_outbound,
        ]

    def masked(self) -> dict[str, Any]:
        """The effective settings for display: passwords in URLs and secrets hidden."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "********" if value.get_secret_value() else ""
            elif name.endswith("_url") and isinstance(value, str):
                value = mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        if self.redis_url is None:
            out["redis_url"] = "(embedded redis-server under var/)"
        return out


def mask_url(url: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host``; anything else unchanged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def describe_validation_error(exc: ValidationError) -> str:
    """A settings ``ValidationError`` as one line: ``ORDERSYNC_WEB_PORT: Input should be a
    valid integer`` (never the value of a secret)."""
    parts = []
    for error in exc.errors():
        name = "_".join(str(p) for p in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"ORDERSYNC_{name}: {message}" if name else message)
    return "; ".join(parts)


@functools.cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"configuration: {describe_validation_error(exc)}") from None
