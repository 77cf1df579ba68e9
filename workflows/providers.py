"""Wiring: the outside-world clients the pipeline uses, built from settings (one place)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from core.settings import get_settings
from domain.errors import PermanentError
from integrations.base import AccountConfig, ConnectorSeams, MarketplaceConnector

if TYPE_CHECKING:
    from db.models import ChannelAccount
    from integrations.carriers.client import CarrierClient
    from integrations.payments.client import PaymentsClient
    from integrations.ratelimit import RedisRateLimiter

__all__ = ["account_config", "carrier_client", "connector_for", "payments_client"]


class NotConfigured(PermanentError):
    """A setting the step needs is missing; staff fix the configuration, then retry."""


class NotAHolder(PermanentError):
    """The order's marketplace connector cannot capture an authorization it holds."""


# One client per process, reused by every task: building an httpx.Client costs ~50 ms (it loads
# the TLS trust store), more than the call itself. Clients are thread-safe and created lazily,
# so each prefork child builds its own after the fork.
@functools.cache
def payments_client() -> PaymentsClient:
    from integrations.payments.client import PaymentsClient

    settings = get_settings()
    if not settings.payments_url:
        raise NotConfigured("no payment provider configured (ORDERSYNC_PAYMENTS_URL)")
    return PaymentsClient(settings.payments_url, settings.payments_api_key.get_secret_value())


@functools.cache
def carrier_client() -> CarrierClient:
    from integrations.carriers.client import CarrierClient

    settings = get_settings()
    if not settings.carrier_url:
        raise NotConfigured("no carrier configured (ORDERSYNC_CARRIER_URL)")
    return CarrierClient(settings.carrier_url, settings.carrier_api_key.get_secret_value())


def account_config(account: ChannelAccount) -> AccountConfig:
    """The account as connectors read it. Its ``rate_limits`` are parsed here, so an account
    with invalid limits fails loudly (``RateLimitsError``) instead of running on defaults."""
    from integrations import registry

    return AccountConfig(
        name=account.name,
        channel=account.channel,
        shop=account.shop,
        api_base_url=account.api_base_url,
        credentials=dict(account.credentials or {}),
        webhook_secret=account.webhook_secret,
        rate_limits=registry.parse_rate_limits(
            account.channel, account.rate_limits, account=account.name
        ),
    )


@functools.cache
def shared_limiter() -> RedisRateLimiter:
    """The rate-limit buckets in Redis that every worker shares (per account and operation)."""
    import redis

    from core.runtime import redis_url
    from integrations.ratelimit import RedisRateLimiter

    return RedisRateLimiter(redis.Redis.from_url(redis_url()))


def connector_for(
    account: ChannelAccount, seams: ConnectorSeams | None = None
) -> MarketplaceConnector:
    """A new connector for the account, with the account's rate limits over the documented
    ones; the caller closes it when done (one per task run: built from the row as it is now,
    so a changed credential or limit takes effect on the next run, and nothing is kept per
    ORM object). ``seams``: e.g. ``ConnectorSeams(limiter=shared_limiter())`` to share the
    buckets with every worker (without it the connector has a limiter of its own)."""
    from integrations import registry

    return registry.get(account.channel).connector(account_config(account), seams)
