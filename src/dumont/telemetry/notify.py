"""Notifications through apprise URLs (Slack, Discord, email, a JSON webhook...): told once, with the reason.

What is sent: failover, recovery start and end, standby loss (and its replacement), a failed action, and every
alert (the seed's: sync failures, health-check failures, repeated recoveries, standby disk, SSH connectivity, GPU
price; and the controller's own: both machines lost, its network down...). Each message has the title
``dumont: <pair> <event>`` and the event's reason sentence as its body, the same sentence as the log and the
dashboard.

Flooding is prevented by :class:`Throttle`: at most one message per (pair, event) per ``per_key_seconds`` and
``per_minute`` in all. A message that has to wait is not lost: later ones of the same (pair, event) fold into it,
and the newest goes out when its turn comes, saying how many were folded.

Apprise URLs carry tokens. They come from ``notifications.urls_file`` (0600) and ``DUMONT_NOTIFY_URLS``, and
never reach a log line, an event or an exception: our messages name a URL by its position, and ``redact`` masks
them in the records of apprise and urllib3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dumont.config import Config
from dumont.errors import ConfigError
from dumont.telemetry.redact import REDACTOR

log = logging.getLogger("dumont.telemetry")

URLS_ENV = "DUMONT_NOTIFY_URLS"
SEND_TIMEOUT = 30.0
FAILURE, WARNING, SUCCESS, INFO = "failure", "warning", "success", "info"
# Alerts that mean the workspace is at risk now; the others are warnings.
SEVERE_ALERTS = frozenset({"both_lost", "cpu_lost", "gpu_down", "gpu_down_without_standby", "recovery_failed"})
EVENTS = {  # event kind -> (what the notification calls it, its level)
    "failover": ("failover", FAILURE),
    "recovery_started": ("recovery_started", WARNING),
    "recovered": ("recovered", SUCCESS),
    "action_failed": ("action_failed", FAILURE),
}
GROUPS = {"failover": "failover", "recovery_started": "recovery", "recovered": "recovery",
          "recovery_failed": "recovery", "standby_lost": "standby", "standby_replaced": "standby"}


@dataclass(frozen=True)
class Notification:
    """One message for the operator."""

    pair: str
    event: str
    reason: str
    level: str
    at: float
    folded: int = 0  # earlier messages of the same (pair, event) that were folded into this one
    folded_since: float | None = None

    @property
    def title(self) -> str:
        """``dumont: <pair> <event>``."""
        return f"dumont: {self.pair} {self.event}"

    @property
    def body(self) -> str:
        """The reason sentence, and how many messages were folded into this one."""
        if not self.folded:
            return self.reason
        since = time.strftime("%H:%M:%S", time.localtime(self.folded_since or self.at))
        return (f"{self.reason}\n({self.folded} earlier {self.event} notification(s) for {self.pair} since {since} "
                f"were held back to avoid flooding; this is the latest)")


class NotificationRules:
    """Which controller events become notifications (and remembers what it needs to decide that)."""

    def __init__(self, wants: Callable[[str], bool] = lambda _: True) -> None:
        self.wants = wants
        self._standby_lost: set[str] = set()

    def notification_for(self, pair: str | None, kind: str, reason: str, data: dict[str, Any],
                         now: float) -> Notification | None:
        """The notification an event calls for, or None."""
        if pair is None:
            return None
        event, level = self._classify(pair, kind, data)
        if event is None:
            return None
        group = GROUPS.get(event) or ("alert" if kind == "alert" else event)
        if not (self.wants(event) or self.wants(group)):
            return None
        return Notification(pair, event, reason, level, now)

    def _classify(self, pair: str, kind: str, data: dict[str, Any]) -> tuple[str | None, str]:
        if kind in EVENTS:
            return EVENTS[kind]
        if kind == "alert":
            alert = str(data.get("alert", "alert"))
            return alert, FAILURE if alert in SEVERE_ALERTS else WARNING
        if kind == "state" and data.get("to") == "standby_lost" and data.get("from") != "starting":
            self._standby_lost.add(pair)  # a pair's first standby being created is not a loss
            return "standby_lost", WARNING
        if kind == "standby_replaced" and pair in self._standby_lost:
            self._standby_lost.discard(pair)
            return "standby_replaced", SUCCESS
        return None, INFO


@dataclass
class _Waiting:
    note: Notification
    folded: int
    since: float


class Throttle:
    """At most one message per (pair, event) per ``per_key_seconds``, and ``per_minute`` in all; none lost."""

    def __init__(self, *, per_key_seconds: float = 60.0, per_minute: int = 10,
                 clock: Callable[[], float] = time.time) -> None:
        self.per_key_seconds = per_key_seconds
        self.per_minute = per_minute
        self.clock = clock
        self._last_sent: dict[tuple[str, str], float] = {}
        self._sent: deque[float] = deque()
        self._waiting: dict[tuple[str, str], _Waiting] = {}

    def offer(self, note: Notification) -> None:
        """Queue a message; a waiting one of the same (pair, event) is replaced by it and counted as folded."""
        key = (note.pair, note.event)
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = _Waiting(note, 0, note.at)
        else:
            self._waiting[key] = _Waiting(note, waiting.folded + 1, waiting.since)

    def due(self) -> list[Notification]:
        """The messages that may go out now, oldest first (each counted as sent)."""
        now = self.clock()
        while self._sent and now - self._sent[0] >= 60.0:
            self._sent.popleft()
        out = []
        for key, waiting in list(self._waiting.items()):
            if len(self._sent) >= self.per_minute:
                break
            if now - self._last_sent.get(key, float("-inf")) < self.per_key_seconds:
                continue
            del self._waiting[key]
            self._last_sent[key] = now
            self._sent.append(now)
            out.append(replace(waiting.note, folded=waiting.folded, folded_since=waiting.since))
        return out

    def next_due_at(self) -> float | None:
        """When the next waiting message may go out (None when nothing waits)."""
        if not self._waiting:
            return None
        per_key = min(self._last_sent.get(key, float("-inf")) + self.per_key_seconds for key in self._waiting)
        overall = self._sent[0] + 60.0 if len(self._sent) >= self.per_minute else float("-inf")
        return max(per_key, overall)


Send = Callable[[Notification], bool]


class Notifier:
    """Turns controller events into notifications and delivers them without blocking the loop."""

    def __init__(self, send: Send, *, rules: NotificationRules | None = None, throttle: Throttle | None = None,
                 on_outcome: Callable[[str, str], None] | None = None, send_timeout: float = SEND_TIMEOUT) -> None:
        self.send = send
        self.rules = rules or NotificationRules()
        self.throttle = throttle or Throttle()
        self.on_outcome = on_outcome
        self.send_timeout = send_timeout
        self._wake = asyncio.Event()

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> Notifier | None:
        """A notifier for the configured URLs, or None when there are none."""
        urls = notification_urls(config.notifications.urls_file, os.environ.get(URLS_ENV, ""))
        if not urls:
            return None
        return cls(AppriseSender(urls), rules=NotificationRules(config.notifications.wants), **kwargs)

    def on_event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any]) -> None:
        """Queue the notification an event calls for (a ``ControllerContext`` listener; returns at once)."""
        note = self.rules.notification_for(pair, kind, reason, data, self.throttle.clock())
        if note is not None:
            self.throttle.offer(note)
            self._wake.set()

    async def run(self) -> None:
        """Deliver queued notifications as the throttle allows, until cancelled."""
        while True:
            self._wake.clear()
            await self.deliver_due()
            next_at = self.throttle.next_due_at()
            wait = None if next_at is None else max(0.0, next_at - self.throttle.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def deliver_due(self) -> int:
        """Send every notification the throttle lets out now; return how many were delivered."""
        delivered = 0
        for note in self.throttle.due():
            delivered += await self._deliver(note)
        return delivered

    async def _deliver(self, note: Notification) -> bool:
        try:
            # apprise is synchronous (HTTP, SMTP): a thread keeps the loop free; the timeout bounds our wait.
            async with asyncio.timeout(self.send_timeout):
                ok = await asyncio.to_thread(self.send, note)
        except TimeoutError:
            ok = False
            log.warning("%s: the %s notification was not confirmed within %g s", note.pair, note.event,
                        self.send_timeout)
        except Exception as exc:  # a broken destination must never stop the controller
            ok = False
            log.warning("%s: the %s notification failed (%s)", note.pair, note.event, type(exc).__name__)
        else:
            if not ok:
                log.warning("%s: the %s notification did not reach every destination", note.pair, note.event)
        if self.on_outcome is not None:
            self.on_outcome(note.event, "sent" if ok else "failed")
        return ok


def notification_urls(urls_file: Path | None, env: str = "") -> list[str]:
    """The apprise URLs: one per line of ``urls_file`` (0600; ``#`` comments), then those in ``env``."""
    urls: list[str] = []
    if urls_file is not None:
        try:
            mode = urls_file.stat().st_mode
            lines = urls_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"notifications.urls_file {urls_file} cannot be read: {exc.strerror}",
                              hint="create it with one apprise URL per line, mode 0600") from None
        if mode & 0o077:
            raise ConfigError(f"notifications.urls_file {urls_file} is readable by others (mode {mode & 0o777:o}); "
                              "its URLs carry tokens", hint=f"chmod 600 {urls_file}")
        urls += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    urls += env.split()
    return urls


class AppriseSender:
    """Sends a notification to every URL through apprise."""

    def __init__(self, urls: Iterable[str]) -> None:
        apprise = load_apprise()
        self.urls = list(urls)
        REDACTOR.add(self.urls)
        self._apprise = apprise.Apprise()
        for number, url in enumerate(self.urls, 1):
            if not self._apprise.add(url):
                raise ConfigError(f"notification URL #{number} is not one apprise understands",
                                  hint="see https://github.com/caronc/apprise/wiki for the URL forms")
        self._types = {FAILURE: apprise.NotifyType.FAILURE, WARNING: apprise.NotifyType.WARNING,
                       SUCCESS: apprise.NotifyType.SUCCESS, INFO: apprise.NotifyType.INFO}

    def __call__(self, note: Notification) -> bool:
        """Send ``note``; True when every destination took it."""
        return bool(self._apprise.notify(body=note.body, title=note.title, notify_type=self._types[note.level]))

    def __repr__(self) -> str:
        return f"AppriseSender({len(self.urls)} URL(s))"  # never the URLs themselves


def load_apprise() -> Any:
    """The apprise module with its plugins loaded."""
    with warnings.catch_warnings():
        # apprise's PGP helper imports the deprecated ``imghdr`` on purpose while loading its plugins (apprise
        # 1.9+ on Python 3.11/3.12); nothing of ours uses it, and warnings are errors in our tests.
        warnings.filterwarnings("ignore", message="'imghdr' is deprecated", category=DeprecationWarning)
        import apprise

        apprise.Apprise().add("json://localhost")  # loads every plugin module now, under this filter
    return apprise
