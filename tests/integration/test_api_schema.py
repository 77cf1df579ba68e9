"""Schemathesis against the running app (a real uvicorn server on a migrated database, with an
operator's token): every generated request to every operation of /openapi.json gets no 500 and
an answer that fits the schema (status code documented, body of the declared model, content
type). Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok

from core.settings import get_settings
from db.migrate import upgrade
from db.session import get_sessionmaker
from domain.states import OrderState
from tests.support.servers import serve_app
from tests.support.shop import Shop
from tests.support.staff import bearer, staff_token
from tests.support.world import module_database_url
from web.app import create_app

Running = tuple[str, dict[str, str]]
#: generated requests per operation
EXAMPLES = 30


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def running_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Running]:
    var_dir = tmp_path_factory.mktemp("schema")
    url = module_database_url(request, var_dir, request.param)
    upgrade(url)
    env = pytest.MonkeyPatch()
    env.setenv("ORDERSYNC_DATABASE_URL", url)
    env.setenv("ORDERSYNC_REDIS_URL", redis_url)
    env.setenv("ORDERSYNC_VAR_DIR", str(var_dir))
    get_settings.cache_clear()
    shop = Shop(url)  # something to find: orders in a few states
    shop.order(OrderState.NEEDS_ATTENTION, failed_step="buy_label", last_error="refused")
    shop.order(OrderState.READY_TO_SHIP)
    shop.order(OrderState.ON_HOLD)
    headers = bearer(staff_token(get_sessionmaker(url), "operator"))
    try:
        with serve_app(create_app()) as base_url:
            yield base_url, headers
    finally:
        shop.engine.dispose()
        env.undo()
        get_settings.cache_clear()


def test_every_generated_request_gets_no_500_and_an_answer_that_fits_the_schema(
    running_api: Running,
) -> None:
    # schemathesis's pytest plugin does not load under this pytest, so its operations are run
    # here, each as its own Hypothesis test, and every failing operation is reported at the end
    base_url, headers = running_api
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)
    failures: dict[str, str] = {}
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # an operation the schema does not describe
        operations.append(result.ok())
    assert {op.path for op in operations} >= {
        "/api/orders",
        "/api/orders/{order_id}/retry",
        "/api/sync",
    }

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(base_url=base_url, headers=headers)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # every operation is tried, all reported
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert failures == {}, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
