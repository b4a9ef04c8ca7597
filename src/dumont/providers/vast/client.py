"""A thin typed async client for the Vast.ai REST API: auth, per-call deadlines, retries, error classification.

Every call has a deadline (``RetryPolicy.budget_seconds``) that covers all its attempts, and every attempt a
timeout inside it. 429 and 5xx answers, timeouts and refused connections are retried with exponential backoff,
honouring ``Retry-After`` (seconds or an HTTP date) when it fits in what is left of the deadline. Requests that
are not idempotent (renting an offer) are retried only when the server cannot have acted on them: a 429, or a
connection that was never made; a timeout or a 5xx there may have rented a machine, so the caller is told
instead (it looks the instance up by its label).

Errors leave as :mod:`dumont.providers.base` errors, whose ``recovery`` tells the caller what to do:

=============================================  =======================  =========================
answer                                          error                    recovery
=============================================  =======================  =========================
401, 403                                        ProviderAuthError        stop and alert
404, 410, error ``no_such_ask``                 the call's ``gone``      (InstanceNotFound, or
                                                                         OfferUnavailable: next)
other 4xx                                       ProviderRequestError     stop and alert
429, 5xx, timeout, no connection (after retry)  ProviderUnavailable      retry later
2xx that is not JSON                            ProviderUnavailable      retry later
=============================================  =======================  =========================

The API key is sent only in the ``Authorization`` header; messages name where it came from, never the key, and
server text is scrubbed of it before it is quoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from dumont import __version__
from dumont.providers.base import (
    InstanceNotFound,
    ProviderAuthError,
    ProviderError,
    ProviderRequestError,
    ProviderUnavailable,
)
from dumont.providers.vast.credentials import ApiKey

log = logging.getLogger("dumont.providers.vast")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
GONE_STATUSES = frozenset({404, 410})
GONE_ERROR_CODES = frozenset({"no_such_ask", "not_found", "no_such_instance"})

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call may take in all, and how it backs off between attempts."""

    budget_seconds: float = 60.0
    max_attempts: int = 5
    attempt_timeout_seconds: float = 30.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 8.0

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based) when the server gave no Retry-After."""
        return float(min(self.backoff_max_seconds, self.backoff_initial_seconds * 2 ** (attempt - 1)))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class Pacer:
    """Spaces the requests to each endpoint at least ``interval`` seconds apart: Vast enforces a minimum interval
    per endpoint and account, answering 429 without a Retry-After, so waiting here costs less than a refusal.

    The interval counts from the moment an answer came back: the server saw the request before that, so the
    next one reaches it at least ``interval`` later whatever the network's delay."""

    def __init__(self, interval: float, *, clock: Clock, sleep: Sleep) -> None:
        self.interval, self._clock, self._sleep = interval, clock, sleep
        self._due: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.waited = 0.0  # seconds spent waiting, in all

    @contextlib.asynccontextmanager
    async def turn(self, method: str, path: str) -> AsyncIterator[None]:
        """Hold this endpoint's turn for one request (requests to one endpoint go one after another)."""
        if self.interval <= 0:
            yield
            return
        endpoint = f"{method} {endpoint_of(path)}"
        async with self._locks.setdefault(endpoint, asyncio.Lock()):
            wait = self._due.get(endpoint, 0.0) - self._clock()
            if wait > 0:
                self.waited += wait
                await self._sleep(wait)
            try:
                yield
            finally:
                self._due[endpoint] = self._clock() + self.interval


def endpoint_of(path: str) -> str:
    """The route of a path, as Vast limits it: ``/api/v0/instances/123/`` is ``/api/v0/instances/{id}/``."""
    return re.sub(r"/\d+(?=/|$)", "/{id}", path)


class VastClient:
    """The Vast.ai REST API at ``base_url`` (``https://console.vast.ai``, or the local cloud's emulator)."""

    def __init__(
        self,
        base_url: str,
        api_key: ApiKey,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        min_interval: float = 0.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.pacer = Pacer(min_interval, clock=clock, sleep=sleep)
        self._key = api_key
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key.secret}", "Accept": "application/json",
                     "User-Agent": f"dumont/{__version__}"},
            timeout=self.retry.attempt_timeout_seconds,
            transport=transport,
            follow_redirects=False,  # a redirect would carry the key to wherever it points
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        idempotent: bool = True,
        gone: type[ProviderError] = InstanceNotFound,
    ) -> Any:
        """Send one request (retried within the deadline) and return its JSON; raise a ProviderError subclass."""
        what = f"{method} {path}"
        deadline = self._clock() + self.retry.budget_seconds
        attempt = 0
        while True:
            attempt += 1
            cause: Exception | None = None
            try:
                async with self.pacer.turn(method, path):
                    left = deadline - self._clock()
                    response = await self._http.request(
                        method, path, json=body, params=params,
                        timeout=max(0.1, min(self.retry.attempt_timeout_seconds, left)))
            except httpx.TransportError as exc:
                cause = exc
                # A connection never made cannot have rented anything; a lost answer might have.
                retryable = idempotent or isinstance(exc, httpx.ConnectError)
                problem = f"no answer ({type(exc).__name__}: {self._key.scrub(str(exc)) or 'no detail'})"
                delay = self.retry.backoff(attempt)
            else:
                if response.is_success:
                    return self._json(response, what)
                status = response.status_code
                if status not in RETRYABLE_STATUSES:
                    raise self._refusal(response, what, gone)
                retryable = idempotent or status == 429
                problem = f"{status} {self._message(response)}"
                asked = parse_retry_after(response.headers.get("Retry-After"))
                delay = self.retry.backoff(attempt) if asked is None else asked
            left = deadline - self._clock()
            if not retryable:
                raise ProviderUnavailable(
                    f"Vast.ai {what} failed: {problem}; it was not retried because the server may have acted on it",
                    hint="look the instance up by its label before renting again") from cause
            if attempt >= self.retry.max_attempts or delay > left:
                raise ProviderUnavailable(f"Vast.ai {what} failed: {problem} {self._gave_up(attempt, delay, left)}",
                                          hint="Vast.ai is busy or unreachable; try again later") from cause
            log.info("Vast.ai %s: %s; retry %d in %.1f s", what, problem, attempt, delay)
            await self._sleep(delay)

    def _gave_up(self, attempt: int, delay: float, left: float) -> str:
        spent = f"after {attempt} attempt(s) in {self.retry.budget_seconds - left:.1f} s"
        if delay <= left or attempt >= self.retry.max_attempts:
            return spent
        return (f"{spent}; the next try was due in {delay:g} s, past the {self.retry.budget_seconds:g} s budget of "
                f"this call ({max(left, 0):.1f} s left)")

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            kind = response.headers.get("Content-Type", "no content type")
            raise ProviderUnavailable(f"Vast.ai {what} answered {response.status_code} with a body that is not "
                                      f"JSON ({kind})", hint="try again later") from exc

    def _refusal(self, response: httpx.Response, what: str, gone: type[ProviderError]) -> ProviderError:
        status, message = response.status_code, self._message(response)
        if status in (401, 403):
            return ProviderAuthError(
                f"Vast.ai refused {self._key.source} ({status} {message}) on {what}",
                hint=f"check that this key is valid for {self.base_url}, or replace it")
        if status in GONE_STATUSES or self._error_code(response) in GONE_ERROR_CODES:
            return gone(f"Vast.ai {what}: {status} {message}")
        return ProviderRequestError(f"Vast.ai refused {what}: {status} {message}",
                                    hint="this is a bug or a bad setting; the request was not retried")

    def _message(self, response: httpx.Response) -> str:
        """The server's own words: ``msg``/``message``/``error`` of a JSON body, else the start of the text."""
        text = ""
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            text = response.text.strip()[:200]
        else:
            if isinstance(data, dict):
                text = str(data.get("msg") or data.get("message") or data.get("error") or "")
        return self._key.scrub(text) or response.reason_phrase or "no detail"

    @staticmethod
    def _error_code(response: httpx.Response) -> str | None:
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        code = data.get("error") if isinstance(data, dict) else None
        return code if isinstance(code, str) else None
