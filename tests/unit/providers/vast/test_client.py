"""The HTTP client: auth header, retries within a deadline honouring Retry-After, and error classification."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from dumont.errors import Recovery
from dumont.providers.base import (
    InstanceNotFound,
    OfferUnavailable,
    ProviderAuthError,
    ProviderRequestError,
    ProviderUnavailable,
)
from dumont.providers.vast.client import RetryPolicy, VastClient, endpoint_of, parse_retry_after
from dumont.providers.vast.credentials import ApiKey

SECRET = "s3cret-key-value-123"
KEY = ApiKey(SECRET, "the key in /home/me/.config/dumont/vast_api_key")

Reply = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeTime:
    """A clock that only moves when the client sleeps: retries take no real time."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _client(replies: list[Reply], time: FakeTime, **policy: float) -> tuple[VastClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return replies[min(len(seen), len(replies)) - 1](request)

    retry = RetryPolicy(**policy)  # type: ignore[arg-type]
    client = VastClient("http://vast.test/", KEY, retry=retry, transport=httpx.MockTransport(handle),
                        sleep=time.sleep, clock=time.clock)
    return client, seen


def _json(status: int, data: object, headers: dict[str, str] | None = None) -> Reply:
    return lambda _request: httpx.Response(status, json=data, headers=headers)


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> Reply:
    return lambda _request: httpx.Response(status, text=text, headers=headers)


async def test_requests_carry_the_bearer_key_and_json_bodies() -> None:
    """The key goes in the Authorization header (never the URL); bodies are JSON."""
    time = FakeTime()
    client, seen = _client([_json(200, {"success": True})], time)
    assert await client.call("PUT", "/api/v0/instances/5/", body={"state": "stopped"}) == {"success": True}
    request = seen[0]
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(request.url)
    assert str(request.url) == "http://vast.test/api/v0/instances/5/"
    assert json.loads(request.content) == {"state": "stopped"}
    await client.close()


async def test_429_then_success_waits_as_long_as_retry_after_says() -> None:
    """Given a 429 with Retry-After: 2, the client waits 2 s (on its clock) and the retry succeeds."""
    time = FakeTime()
    client, seen = _client([_text(429, "API requests too frequent", {"Retry-After": "2"}),
                            _json(200, {"offers": []})], time)
    assert await client.call("POST", "/api/v0/bundles/", body={}) == {"offers": []}
    assert len(seen) == 2 and time.slept == [2.0]


async def test_5xx_is_retried_with_exponential_backoff_then_gives_up() -> None:
    """Without Retry-After, waits double; after max_attempts the error says retry later."""
    time = FakeTime()
    client, seen = _client([_json(503, {"msg": "busy"})], time, max_attempts=4, backoff_initial_seconds=0.5)
    with pytest.raises(ProviderUnavailable, match=r"503 busy after 4 attempt\(s\)") as error:
        await client.call("GET", "/api/v0/instances/5/")
    assert len(seen) == 4 and time.slept == [0.5, 1.0, 2.0]
    assert error.value.recovery is Recovery.RETRY


async def test_a_retry_after_beyond_the_deadline_fails_at_once() -> None:
    """A server asking for more time than the call has left gets no sleep: the caller hears it now."""
    time = FakeTime()
    client, seen = _client([_text(429, "slow down", {"Retry-After": "120"})], time, budget_seconds=30)
    with pytest.raises(ProviderUnavailable, match=r"next try was due in 120 s, past the 30 s budget"):
        await client.call("GET", "/api/v1/instances/")
    assert len(seen) == 1 and time.slept == []


async def test_the_deadline_bounds_all_attempts_together() -> None:
    """Backoff stops when the next wait would pass the call's budget, whatever max_attempts allows."""
    time = FakeTime()
    client, seen = _client([_json(502, {})], time, budget_seconds=5, max_attempts=50, backoff_initial_seconds=1,
                           backoff_max_seconds=8)
    with pytest.raises(ProviderUnavailable):
        await client.call("GET", "/api/v0/instances/1/")
    assert time.slept == [1.0, 2.0] and len(seen) == 3  # a third wait of 4 s would pass the 5 s budget


async def test_a_rent_is_not_retried_when_the_server_may_have_acted() -> None:
    """A 503 to a non-idempotent request is not repeated (it may have rented a machine); a 429 is."""
    time = FakeTime()
    client, seen = _client([_json(503, {"msg": "oops"})], time)
    with pytest.raises(ProviderUnavailable, match=r"not retried because the server may have acted on it"):
        await client.call("PUT", "/api/v0/asks/1/", body={}, idempotent=False)
    assert len(seen) == 1
    client, seen = _client([_text(429, "too many", {"Retry-After": "0"}), _json(200, {"new_contract": 9})], time)
    assert await client.call("PUT", "/api/v0/asks/1/", body={}, idempotent=False) == {"new_contract": 9}
    assert len(seen) == 2


async def test_connection_failures_are_retried() -> None:
    """A refused connection (nothing was sent) is retried even for a rent."""
    time = FakeTime()
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"new_contract": 3})

    client, _ = _client([flaky], time)
    assert await client.call("PUT", "/api/v0/asks/1/", body={}, idempotent=False) == {"new_contract": 3}
    assert calls == 2


async def test_a_timeout_is_retried_when_idempotent_and_reported_with_its_kind() -> None:
    """Read timeouts count as failed attempts; the final error names what happened."""
    time = FakeTime()

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client, _ = _client([hang], time, max_attempts=2)
    with pytest.raises(ProviderUnavailable, match=r"no answer .ReadTimeout") as error:
        await client.call("GET", "/api/v0/instances/1/")
    assert isinstance(error.value.__cause__, httpx.ReadTimeout)


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_names_its_source_never_the_key(status: int) -> None:
    """401/403 stop and alert; the message says where the key came from and hides the key, even if echoed."""
    time = FakeTime()
    client, seen = _client([_json(status, {"msg": f"Invalid user key {SECRET}"})], time)
    with pytest.raises(ProviderAuthError) as error:
        await client.call("GET", "/api/v1/instances/")
    message = str(error.value)
    assert "the key in /home/me/.config/dumont/vast_api_key" in message
    assert SECRET not in message and "<api key>" in message
    assert error.value.recovery is Recovery.STOP and len(seen) == 1


async def test_gone_answers_raise_the_error_the_call_names() -> None:
    """404/410 or error no_such_ask: InstanceNotFound by default, OfferUnavailable (next offer) for a rent."""
    time = FakeTime()
    client, _ = _client([_json(404, {"success": False, "error": "no_such_ask", "msg": "not available"})], time)
    with pytest.raises(OfferUnavailable, match=r"404 not available") as error:
        await client.call("PUT", "/api/v0/asks/1/", body={}, idempotent=False, gone=OfferUnavailable)
    assert error.value.recovery is Recovery.NEXT_OPTION
    client, _ = _client([_json(410, {"msg": "gone"})], time)
    with pytest.raises(InstanceNotFound):
        await client.call("GET", "/api/v0/instances/1/")
    client, _ = _client([_json(400, {"error": "no_such_ask", "msg": "taken"})], time)
    with pytest.raises(OfferUnavailable):
        await client.call("PUT", "/api/v0/asks/1/", body={}, idempotent=False, gone=OfferUnavailable)


async def test_other_client_errors_are_not_retried() -> None:
    """A 400 is a bug or a bad setting: stop and alert, one request only."""
    time = FakeTime()
    client, seen = _client([_json(400, {"success": False, "error": "invalid_args", "msg": "image missing"})], time)
    with pytest.raises(ProviderRequestError, match=r"400 image missing") as error:
        await client.call("PUT", "/api/v0/asks/1/", body={})
    assert error.value.recovery is Recovery.STOP and len(seen) == 1


async def test_a_success_that_is_not_json_is_a_provider_glitch() -> None:
    """200 with HTML (a proxy page) means: retry later, not a crash."""
    time = FakeTime()
    client, _ = _client([_text(200, "<html>maintenance</html>", {"Content-Type": "text/html"})], time)
    with pytest.raises(ProviderUnavailable, match=r"not JSON .text/html"):
        await client.call("GET", "/api/v0/instances/1/")


async def test_plain_text_errors_are_quoted_briefly() -> None:
    """Vast's 429 bodies are often plain text; the message quotes the start of it."""
    time = FakeTime()
    client, _ = _client([_text(500, "x" * 500)], time, max_attempts=1)
    with pytest.raises(ProviderUnavailable) as error:
        await client.call("GET", "/api/v0/instances/1/")
    assert "x" * 200 in str(error.value) and "x" * 201 not in str(error.value)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Delta-seconds and HTTP dates are understood; garbage and the past mean no wait or none given."""
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


async def test_requests_to_one_endpoint_are_spaced_by_the_minimum_interval_others_are_not() -> None:
    """Vast limits each endpoint (method and route, whatever the id) per account: the client waits its turn."""
    time = FakeTime()
    seen: list[tuple[float, str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((time.now, f"{request.method} {request.url.path}"))
        return httpx.Response(200, json={})

    client = VastClient("http://vast.test/", KEY, transport=httpx.MockTransport(handle), sleep=time.sleep,
                        clock=time.clock, min_interval=0.25)
    await client.call("GET", "/api/v0/instances/1/")
    await client.call("GET", "/api/v0/instances/2/")  # the same route: waits
    await client.call("PUT", "/api/v0/instances/2/")  # another method: its own endpoint
    await client.call("GET", "/api/v1/instances/")
    await client.call("GET", "/api/v0/instances/3/")
    assert seen == [(1000.0, "GET /api/v0/instances/1/"), (1000.25, "GET /api/v0/instances/2/"),
                    (1000.25, "PUT /api/v0/instances/2/"), (1000.25, "GET /api/v1/instances/"),
                    (1000.5, "GET /api/v0/instances/3/")]
    assert client.pacer.waited == pytest.approx(0.5)
    await client.close()


def test_a_route_is_its_path_with_ids_as_placeholders() -> None:
    assert endpoint_of("/api/v0/instances/30000001/") == "/api/v0/instances/{id}/"
    assert endpoint_of("/api/v0/instances/3/ssh/7/") == "/api/v0/instances/{id}/ssh/{id}/"
    assert endpoint_of("/api/v1/instances/") == "/api/v1/instances/"
