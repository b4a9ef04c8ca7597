"""``dumont doctor``: before anything is spent, check what a real pair needs, one line each, ok or the fix.

Every check is read-only: a provider call that lists or reads, a TCP connect, an SSH login that runs ``true``, a
bind that is closed at once. A check ends ``ok``, ``fail`` (something only the user can fix; ``dumont run``
refuses to adopt a pair while one fails) or ``run`` (missing, and ``dumont run`` sets it up itself: the
controller's key on the GPU, the firewall rule, the standby VM). Each has a deadline, and one that raises
becomes a ``fail`` naming what went wrong, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dumont.config import Config, PairConfig, split_host_port
from dumont.core.layout import ControllerLayout
from dumont.errors import DumontError

Status = Literal["ok", "fail", "run"]
CHECK_TIMEOUT = 30.0
SYMBOL = {"ok": "ok  ", "fail": "FAIL", "run": "run "}


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}

    def line(self) -> str:
        """The human line: status, name, what was found, and the fix when there is one."""
        return f"{SYMBOL[self.status]} {self.name}: {self.detail}" + (f" -> {self.fix}" if self.fix else "")


def ok(name: str, detail: str) -> Check:
    """A check that passed."""
    return Check(name, "ok", detail)


def fail(name: str, detail: str, fix: str) -> Check:
    """A check that failed, with the fix."""
    return Check(name, "fail", detail, fix)


def by_run(name: str, detail: str, fix: str) -> Check:
    """Something missing that ``dumont run`` sets up itself."""
    return Check(name, "run", detail, fix)


async def guarded(name: str, check: Awaitable[Check | list[Check]]) -> list[Check]:
    """Run one check with a deadline; an error becomes a failed check that names it."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            result = await check
    except TimeoutError:
        return [fail(name, f"no answer within {CHECK_TIMEOUT:g} s", "check the network and try again")]
    except DumontError as exc:
        return [fail(name, exc.message, exc.hint or "see the message")]
    return result if isinstance(result, list) else [result]


async def run_doctor(config: Config) -> list[Check]:
    """Every check of a config's setup, in the order a person would fix them."""
    from dumont.setup import doctor_clouds, doctor_hosts

    checks: list[Check] = [_state_dir(config)]
    checks += await doctor_clouds.vast_checks(config)
    checks += await doctor_clouds.gcp_checks(config)
    for pair in config.pairs:
        checks += [endpoint_check(pair, config)]
        checks += await doctor_hosts.gpu_checks(config, pair)
    checks.append(_api_address(config))
    return checks


def _state_dir(config: Config) -> Check:
    name = "state directory"
    path = config.state_dir
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return fail(name, f"{path} cannot be written ({exc.strerror})",
                    f"create it for this user: mkdir -p {path} && chmod 700 {path}")
    keys = ControllerLayout.of(config).controller_key
    detail = f"{path} is writable" + ("" if keys.exists() else "; the keys are created by dumont init or run")
    return ok(name, detail)


def endpoint_check(pair: PairConfig, config: Config) -> Check:
    """The pair's endpoint address can be bound (or a running controller holds it)."""
    return _bindable(f"endpoint {pair.name}", pair.endpoint_listen, config)


def _api_address(config: Config) -> Check:
    return _bindable("API address", config.controller.api_listen, config)


def _bindable(name: str, address: str, config: Config) -> Check:
    host, port = split_host_port(address)
    running = _running_controller(config)
    try:
        with socket.create_server((host, port), reuse_port=False):
            pass
    except OSError as exc:
        if running is not None:
            return ok(name, f"{address} is held by the running controller (pid {running})")
        return fail(name, f"{address} cannot be bound ({exc.strerror})",
                    "pick a free address and port, or stop what holds it")
    return ok(name, f"{address} can be bound")


def _running_controller(config: Config) -> int | None:
    ready = ControllerLayout.of(config).ready
    with contextlib.suppress(OSError, ValueError, KeyError):
        pid = int(json.loads(ready.read_text())["pid"])
        if Path(f"/proc/{pid}").exists():
            return pid
    return None


def have_tool(name: str) -> bool:
    """Whether a local program the controller runs (ssh, rsync, ssh-keyscan) is installed."""
    return shutil.which(name) is not None


CheckFactory = Callable[[], Awaitable[Check | list[Check]]]


async def all_of(*checks: tuple[str, CheckFactory]) -> list[Check]:
    """Run named checks in order, each guarded."""
    found: list[Check] = []
    for name, factory in checks:
        found += await guarded(name, factory())
    return found


def summary(checks: list[Check]) -> dict[str, Any]:
    """How many checks ended each way."""
    return {status: sum(1 for c in checks if c.status == status) for status in ("ok", "fail", "run")}
