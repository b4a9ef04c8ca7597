"""Notifications: which events are told, how a flapping pair is kept from flooding, and URLs kept secret."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from dumont.errors import ConfigError
from dumont.telemetry.notify import (
    AppriseSender,
    Notification,
    NotificationRules,
    Notifier,
    Throttle,
    notification_urls,
)
from dumont.telemetry.redact import url_parts
from tests.unit.telemetry.conftest import Clock

TOKEN = "xoxb-very-secret-token"


def note(event: str = "failover", at: float = 0.0, reason: str = "the GPU is gone") -> Notification:
    return Notification("main", event, reason, "failure", at)


# ------------------------------------------------------------------------------------------------ what is told


@pytest.mark.parametrize(("kind", "data", "expected"), [
    ("failover", {}, ("failover", "failure")),
    ("recovery_started", {"operation": 3}, ("recovery_started", "warning")),
    ("recovered", {}, ("recovered", "success")),
    ("alert", {"alert": "sync_failures"}, ("sync_failures", "warning")),
    ("alert", {"alert": "recovery_failed"}, ("recovery_failed", "failure")),
    ("alert", {"alert": "both_lost"}, ("both_lost", "failure")),
    ("state", {"from": "syncing", "to": "standby_lost"}, ("standby_lost", "warning")),
    ("action_failed", {}, ("action_failed", "failure")),
])
def test_these_events_are_told_with_their_reason(kind: str, data: dict[str, str], expected: tuple[str, str]) -> None:
    told = NotificationRules().notification_for("main", kind, "the reason sentence", data, 5.0)
    assert told is not None
    assert (told.event, told.level) == expected
    assert told.title == f"dumont: main {expected[0]}" and told.body == "the reason sentence"


@pytest.mark.parametrize(("pair", "kind", "data"), [
    ("main", "state", {"from": "syncing", "to": "degraded"}),  # one failed check is not news
    ("main", "state", {"from": "starting", "to": "standby_lost"}),  # creating the first standby is not a loss
    ("main", "sync_failed", {}),
    ("main", "standby_replaced", {}),  # a replacement nobody was told was needed
    (None, "controller_started", {}),
])
def test_routine_events_are_not_told(pair: str | None, kind: str, data: dict[str, str]) -> None:
    assert NotificationRules().notification_for(pair, kind, "why", data, 0.0) is None


def test_a_replaced_standby_is_told_after_its_loss_was() -> None:
    rules = NotificationRules()
    assert rules.notification_for("main", "state", "lost", {"from": "syncing", "to": "standby_lost"}, 0) is not None
    replaced = rules.notification_for("main", "standby_replaced", "the new standby holds a snapshot", {}, 1)
    assert replaced is not None and (replaced.event, replaced.level) == ("standby_replaced", "success")


def test_the_configured_events_choose_by_name_or_by_group() -> None:
    rules = NotificationRules(lambda event: event in ("failover", "recovery"))
    assert rules.notification_for("main", "failover", "r", {}, 0) is not None
    assert rules.notification_for("main", "recovered", "r", {}, 0) is not None
    assert rules.notification_for("main", "alert", "r", {"alert": "standby_disk"}, 0) is None
    assert NotificationRules(lambda e: e == "alert").notification_for("main", "alert", "r", {"alert": "x"}, 0)


# ------------------------------------------------------------------------------------------------ flooding


def test_a_flapping_pair_is_told_once_a_minute_with_what_was_held_back() -> None:
    """Given failovers at 0, 5, 10 and 20 s, the first goes out at once; the other three wait for the minute and go
    out as one, the newest, which says that the two before it were held back."""
    clock = Clock(now=0.0)
    throttle = Throttle(per_key_seconds=60, per_minute=10, clock=clock)
    throttle.offer(note(at=0.0, reason="first"))
    assert [n.reason for n in throttle.due()] == ["first"]
    for at, reason in ((5.0, "second"), (10.0, "third"), (20.0, "fourth")):
        clock.now = at
        throttle.offer(note(at=at, reason=reason))
        assert throttle.due() == []
    assert throttle.next_due_at() == 60.0
    clock.now = 60.0
    (held,) = throttle.due()
    assert held.reason == "fourth" and held.folded == 2 and held.folded_since == 5.0
    assert held.body.startswith("fourth\n(2 earlier failover notification(s) for main since ")
    assert "held back to avoid flooding; this is the latest)" in held.body
    assert throttle.next_due_at() is None


def test_different_events_are_not_held_back_by_each_other() -> None:
    clock = Clock(now=0.0)
    throttle = Throttle(clock=clock)
    throttle.offer(note("failover"))
    throttle.offer(note("recovery_started"))
    throttle.offer(note("recovered"))
    assert [n.event for n in throttle.due()] == ["failover", "recovery_started", "recovered"]


def test_a_global_cap_spreads_a_burst_over_minutes_without_losing_any() -> None:
    clock = Clock(now=0.0)
    throttle = Throttle(per_key_seconds=60, per_minute=3, clock=clock)
    for number in range(5):
        throttle.offer(Notification(f"pair{number}", "failover", "gone", "failure", 0.0))
    assert [n.pair for n in throttle.due()] == ["pair0", "pair1", "pair2"]
    assert throttle.next_due_at() == 60.0
    clock.now = 60.0
    assert [n.pair for n in throttle.due()] == ["pair3", "pair4"]


# ------------------------------------------------------------------------------------------------ delivery


async def test_delivery_runs_beside_the_loop_and_a_hung_destination_only_costs_its_timeout() -> None:
    release = threading.Event()
    sent: list[Notification] = []
    outcomes: list[tuple[str, str]] = []

    def send(notification: Notification) -> bool:
        if notification.event == "failover":
            release.wait(10)  # a destination that hangs (in its thread)
        sent.append(notification)
        return True

    notifier = Notifier(send, send_timeout=0.2, on_outcome=lambda e, o: outcomes.append((e, o)))
    notifier.on_event("main", "failover", "gone", {})
    notifier.on_event("main", "recovered", "back", {})
    assert await notifier.deliver_due() == 1
    release.set()
    assert outcomes == [("failover", "failed"), ("recovered", "sent")]


async def test_a_destination_that_raises_is_logged_without_its_message(caplog: pytest.LogCaptureFixture) -> None:
    def send(notification: Notification) -> bool:
        raise RuntimeError(f"cannot reach https://hooks.example/{TOKEN}")

    notifier = Notifier(send)
    notifier.on_event("main", "failover", "gone", {})
    assert await notifier.deliver_due() == 0
    assert "failover notification failed (RuntimeError)" in caplog.text
    assert TOKEN not in caplog.text


async def test_the_delivery_task_sends_as_soon_as_an_event_arrives() -> None:
    delivered = asyncio.Event()

    def send(notification: Notification) -> bool:
        loop.call_soon_threadsafe(delivered.set)
        return True

    loop = asyncio.get_running_loop()
    notifier = Notifier(send)
    task = asyncio.create_task(notifier.run())
    notifier.on_event("main", "failover", "gone", {})
    await asyncio.wait_for(delivered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------------------------------------ secrets


def test_urls_come_from_a_private_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "urls"
    path.write_text(f"# team chat\nslack://{TOKEN}/B/C\n\njson://127.0.0.1:9/hook\n")
    path.chmod(0o600)
    assert notification_urls(path, "json://127.0.0.1:8/a  json://127.0.0.1:8/b") == [
        f"slack://{TOKEN}/B/C", "json://127.0.0.1:9/hook", "json://127.0.0.1:8/a", "json://127.0.0.1:8/b"]
    path.chmod(0o644)
    with pytest.raises(ConfigError) as refused:
        notification_urls(path)
    assert "chmod 600" in str(refused.value.hint) and TOKEN not in str(refused.value)


def test_a_bad_url_is_named_by_its_position_never_by_its_text() -> None:
    with pytest.raises(ConfigError) as refused:
        AppriseSender(["json://127.0.0.1:9/ok", f"nonsense://{TOKEN}"])
    assert "URL #2" in str(refused.value) and TOKEN not in f"{refused.value} {refused.value.hint}"


def test_apprise_never_logs_a_url_s_secrets(caplog: pytest.LogCaptureFixture) -> None:
    """Apprise and urllib3 log URLs at debug level; every part of ours is masked before any handler sees it."""
    caplog.set_level(logging.DEBUG)
    urls = [f"json://user:{TOKEN}@127.0.0.1:9/hooks/{TOKEN}-path?key={TOKEN}-query", f"form://127.0.0.1:9/{TOKEN}"]
    sender = AppriseSender(urls)
    assert sender(note()) is False  # nothing listens on port 9
    assert caplog.records, "apprise logged nothing: the test would prove nothing"
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(sender)


def test_every_part_of_a_url_that_may_carry_a_secret_is_masked() -> None:
    parts = url_parts(f"discord://1234567890/{TOKEN}?avatar=no#x")
    assert {"1234567890", TOKEN, f"1234567890/{TOKEN}?avatar=no#x"} <= parts
    assert "127.0.0.1" not in url_parts("json://127.0.0.1:8080/a"), "addresses are not secrets"
    assert "8080" not in url_parts("json://127.0.0.1:8080/a"), "nor ports"
