"""A whole Dumont stack in one process: the local cloud (hosts, Vast and GCP emulators) and a controller.

The drill and the integration tests run on it. The controller is the real one (``dumont.service.serve``),
talking to the emulators through the real provider clients over HTTP and to the hosts over real SSH; nothing in
it knows it is on the local cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dumont.api.server import ApiServer
from dumont.config import Config, load_config, to_toml
from dumont.core.controller import Controller
from dumont.core.pair import PairRuntime
from dumont.drill.profiles import FAST
from dumont.localcloud import layout
from dumont.localcloud.daemon import LocalCloud
from dumont.localcloud.hosts import LocalHost
from dumont.localcloud.link import LinkSpec
from dumont.localcloud.ready import controller_dir, ensure_ready_config, free_port, pair_table, rent_gpu
from dumont.service import serve
from dumont.transport.keys import ensure_keypair
from dumont.transport.ssh import quote_remote, run_local


@dataclass
class Stack:
    """The local cloud and a running controller protecting its one pair."""

    root: Path
    cloud: LocalCloud
    config: Config
    config_path: Path
    api: ApiServer | None = None
    task: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def controller(self) -> Controller:
        """The running controller."""
        assert self.api is not None
        return self.api.controller

    @property
    def pair(self) -> PairRuntime:
        """The protected pair's runtime."""
        return self.controller.pairs["main"]

    def status(self) -> dict[str, Any]:
        """What `dumont status --json` shows for the pair."""
        assert self.api is not None
        pairs: list[dict[str, Any]] = self.api.status()["pairs"]
        return pairs[0]

    def host(self, instance_id: str) -> LocalHost:
        """The local host behind a provider instance id."""
        return self.cloud.pool.get(instance_id)

    async def start_controller(self) -> None:
        """Run the controller in this process until :meth:`stop_controller`."""
        self.ready.clear()

        def on_ready(api: ApiServer) -> None:
            self.api = api
            self.ready.set()

        self.task = asyncio.create_task(serve(self.config, on_ready=on_ready))
        done, _ = await asyncio.wait({self.task, asyncio.ensure_future(self.ready.wait())}, timeout=120,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()  # raises what went wrong
        assert self.ready.is_set(), "the controller did not start within 120 s"

    async def stop_controller(self) -> None:
        """Stop the controller the way SIGTERM does."""
        if self.task is not None and not self.task.done():
            self.controller.stop()
            await asyncio.wait_for(self.task, 60)

    async def wait_for(self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """Wait until the pair's status satisfies ``predicate`` (checked after every controller event)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        changed = asyncio.Event()
        self.controller.ctx.listeners.append(lambda *_: changed.set())
        while True:
            status = self.status()
            if predicate(status):
                return status
            if self.task is not None and self.task.done():
                self.task.result()
            left = deadline - loop.time()
            assert left > 0, f"timed out after {timeout:g} s waiting for {what}; status: {status}"
            changed.clear()
            with contextlib.suppress(TimeoutError):  # re-read the status: lag and probes change without events
                await asyncio.wait_for(changed.wait(), min(left, 1.0))

    async def next_ticks(self, count: int, timeout: float = 30) -> None:
        """Wait until the controller has completed ``count`` more ticks."""
        target = self.controller.ticks + count
        reached = asyncio.Event()

        def on_tick(tick: int) -> None:
            if tick >= target:
                reached.set()

        self.controller.tick_listeners.append(on_tick)
        try:
            await asyncio.wait_for(reached.wait(), timeout)
        finally:
            self.controller.tick_listeners.remove(on_tick)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The event log (optionally one kind)."""
        rows = self.controller.ctx.store.events(limit=10_000)
        return [e.as_dict() for e in rows if kind is None or e.kind == kind]

    async def endpoint_ssh(self, *command: str, timeout: float = 30) -> Login:
        """Run a command through the pair's stable endpoint, as the user would (strict host key checking).

        It runs as a separate process without blocking this event loop, which also runs the endpoint.
        """
        ssh_config = controller_dir(self.root) / "ssh" / "main" / "config"
        result = await run_local(["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                                  "dumont-main", "--", quote_remote(command)], timeout=timeout,
                                 what="ssh through the endpoint")
        return Login(result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace"))


@dataclass(frozen=True)
class Login:
    """What a command run through the endpoint printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        """The command's own answer: the last line it printed, after whatever the login shell said first."""
        lines = self.stdout.strip().splitlines()
        return lines[-1].strip() if lines else ""


LOGIN_BANNER = "Welcome to a Dumont local-cloud host.\nThis line stands for every MOTD and chatty ~/.bashrc."


async def build_stack(root: Path, overrides: dict[str, Any] | None = None, profile: dict[str, Any] = FAST, *,
                      link: LinkSpec | None = None) -> Stack:
    """Start the local cloud in-process, rent the first GPU, and write a config (profile + overrides) for it
    (``link``: every host behind one)."""
    os.environ.setdefault("DUMONT_LOCAL_VAST_DELAY_SECONDS", "0")
    os.environ.setdefault("DUMONT_LOCAL_GCP_DELAY_SECONDS", "0")
    state = root / "local"
    state.mkdir(parents=True)
    # Every host greets every login, as real ones with a chatty ~/.bashrc do; the product must not mind. A setting
    # of this cloud only: the process's environment (and so every later local cloud in it) is left as it was.
    cloud = LocalCloud(state, login_banner=LOGIN_BANNER, link=link)
    ensure_keypair(layout.user_key(state), "dumont-test-user")
    await cloud.start_emulators()
    path = await ensure_ready_config(state, cloud.urls)
    data = tomllib.loads(path.read_text())
    merged = _merge(_merge(data, profile), overrides or {})
    merged["controller"]["api_listen"] = f"127.0.0.1:{free_port()}"
    path.write_text(to_toml(merged))
    return Stack(state, cloud, load_config(path), path)


async def add_pairs(stack: Stack, names: list[str]) -> None:
    """Rent a GPU for each further pair and protect it in the same config (the controller creates its standby)."""
    if not names:
        return
    data = tomllib.loads(stack.config_path.read_text())
    for name in names:
        instance_id = await rent_gpu(stack.root, stack.cloud.urls["vast_url"], name)
        taken = {p["endpoint_listen"] for p in data["pairs"]} | {data["controller"]["api_listen"]}
        table = pair_table(name, instance_id)
        while table["endpoint_listen"] in taken:  # a free port is free until bound: the config's are not yet
            table = pair_table(name, instance_id)
        data["pairs"].append(table)
    stack.config_path.write_text(to_toml(data))
    stack.config = load_config(stack.config_path)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


async def tear_down(stack: Stack) -> set[int]:
    """Stop the controller, its endpoint process, the emulators and every host; return the pids that survived."""
    from dumont.endpoint.launch import stop_endpoint_daemon

    try:
        await stack.stop_controller()
    finally:
        await stop_endpoint_daemon(stack.config.controller.endpoint_dir or controller_dir(stack.root) / "endpoint")
        await stack.cloud.stop_emulators()
        await stack.cloud.pool.shutdown()
    return stack.cloud.pool.leftover_processes()
