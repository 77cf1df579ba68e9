"""The HTTP seam never waits longer than ``max_wait_s`` inside a worker: a longer Retry-After or
rate-limit pause goes up as ``RateLimited`` with the delay, for the task to park the work."""

from __future__ import annotations

import httpx
import pytest

from domain.errors import RateLimited, TransportError
from integrations.http import ApiClient
from integrations.ratelimit import Bucket, MemoryRateLimiter
from tests.support.fake_time import FakeTime


class ShopClient(ApiClient):
    rate_limits = {"orders": Bucket(rate=10.0, burst=10.0)}


def _client(answers: list[httpx.Response], clock: FakeTime) -> tuple[ApiClient, list[str]]:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return answers.pop(0)

    limiter = MemoryRateLimiter(clock=clock.clock)
    client = ShopClient("http://shop.test", transport=httpx.MockTransport(handler),
                       limiter=limiter, sleep=clock.sleep, max_wait_s=300)  # fmt: skip
    return client, sent


def test_a_retry_after_within_the_bound_is_slept_and_the_call_retried() -> None:
    clock = FakeTime(start=0.0)
    client, sent = _client(
        [httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200, json={})], clock
    )

    assert client.request("orders", "GET", "/orders").status_code == 200
    assert len(sent) == 2 and clock.sleeps[0] == 2.0


def test_a_retry_after_past_the_bound_is_raised_at_once_without_sleeping() -> None:
    clock = FakeTime(start=0.0)
    client, sent = _client([httpx.Response(429, headers={"Retry-After": "7200"})], clock)

    with pytest.raises(RateLimited) as caught:
        client.request("orders", "GET", "/orders")

    assert caught.value.retry_after == 7200.0 and caught.value.status == 429
    assert sent == ["/orders"] and clock.sleeps == []

    # and the bucket the 429 paused is not slept on either: the next call raises unsent
    with pytest.raises(RateLimited) as paused:
        client.request("orders", "GET", "/orders")
    assert paused.value.retry_after is not None and paused.value.retry_after > 7000
    assert sent == ["/orders"] and clock.sleeps == []


def test_a_2xx_whose_json_is_cut_short_is_retried_then_read_once() -> None:
    clock = FakeTime(start=0.0)
    cut = httpx.Response(200, content=b'{"orders": [{"id": 1', headers={
        "content-type": "application/json; charset=utf-8"})  # fmt: skip
    client, sent = _client([cut, httpx.Response(200, json={"orders": [{"id": 1}]})], clock)

    answer = client.request("orders", "GET", "/orders")

    assert len(sent) == 2 and answer.json() == {"orders": [{"id": 1}]}


def test_a_2xx_that_never_parses_ends_as_an_answer_lost_not_a_value_error() -> None:
    clock = FakeTime(start=0.0)
    html = httpx.Response(200, content=b"<html>gateway</html>", headers={
        "content-type": "application/json"})  # fmt: skip
    client, sent = _client([html, html, html], clock)

    with pytest.raises(TransportError, match="not JSON"):
        client.request("orders", "GET", "/orders")
    assert len(sent) == 3  # the client's own attempts; then the task retries with backoff


def test_a_jsonl_export_is_not_read_as_one_json_document() -> None:
    clock = FakeTime(start=0.0)
    lines = httpx.Response(200, content=b'{"id": 1}\n{"id": 2}\n', headers={
        "content-type": "application/jsonl"})  # fmt: skip
    client, _ = _client([lines], clock)

    assert client.request("orders", "GET", "/export").content.count(b"\n") == 2


def _dropping(answers: list[httpx.Response | None], sent: list[str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        answer = answers.pop(0)
        if answer is None:  # applied, then the connection broke before the answer
            raise httpx.RemoteProtocolError("peer closed connection", request=request)
        return answer

    return httpx.MockTransport(handler)


def test_a_write_without_replay_is_not_sent_again_after_a_lost_answer() -> None:
    clock, sent = FakeTime(start=0.0), list[str]()
    answers: list[httpx.Response | None] = [None, httpx.Response(201, json={})]
    client = ShopClient("http://shop.test", transport=_dropping(answers, sent),
                        sleep=clock.sleep, max_wait_s=300)  # fmt: skip

    with pytest.raises(TransportError):
        client.request("orders", "POST", "/orders/1/notes", replay=False)

    assert sent == ["POST"]  # once: the caller reads back before it writes again


def test_a_write_without_replay_is_still_retried_after_a_5xx() -> None:
    clock, sent = FakeTime(start=0.0), list[str]()
    answers: list[httpx.Response | None] = [httpx.Response(503), httpx.Response(201, json={})]
    client = ShopClient("http://shop.test", transport=_dropping(answers, sent),
                        sleep=clock.sleep, max_wait_s=300)  # fmt: skip

    assert client.request("orders", "POST", "/orders/1/notes", replay=False).status_code == 201
    assert sent == ["POST", "POST"]


def test_a_read_is_sent_again_after_a_lost_answer() -> None:
    clock, sent = FakeTime(start=0.0), list[str]()
    answers: list[httpx.Response | None] = [None, httpx.Response(200, json={})]
    client = ShopClient("http://shop.test", transport=_dropping(answers, sent),
                        sleep=clock.sleep, max_wait_s=300)  # fmt: skip

    assert client.request("orders", "GET", "/orders").status_code == 200
    assert sent == ["GET", "GET"]


def test_a_write_without_replay_answered_2xx_with_broken_json_is_not_sent_again() -> None:
    clock, sent = FakeTime(start=0.0), list[str]()
    cut = httpx.Response(201, content=b'{"id": 4', headers={"content-type": "application/json"})
    answers: list[httpx.Response | None] = [cut, httpx.Response(201, json={})]
    client = ShopClient("http://shop.test", transport=_dropping(answers, sent),
                        sleep=clock.sleep, max_wait_s=300)  # fmt: skip

    with pytest.raises(TransportError, match="cut short"):
        client.request("orders", "POST", "/orders/1/notes", replay=False)
    assert sent == ["POST"]  # applied once: the caller reads back before writing again
