"""The CLI answers at once: a command imports only what it runs, never the GCP SDK or the servers' libraries.

Each case runs the real command in a fresh interpreter under ``-X importtime`` and reads, from what that
writes to stderr, every module the command loaded. The commands that talk HTTP run against a small fake
controller API or local cloud control API served from this test, so they go all the way to their output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest

# What costs seconds to import and serves only the controller, the providers and the emulators.
HEAVY = ("google.cloud", "aiohttp", "apprise", "prometheus_client")
HTTP_CLIENT = "httpx"


@dataclass(frozen=True)
class Run:
    """A finished command: its exit code, output, and the top-level packages of every module it imported."""

    code: int
    out: str
    err: str
    modules: frozenset[str]

    def loaded(self, package: str) -> bool:
        """Whether ``package`` or any module inside it was imported."""
        return any(m == package or m.startswith(package + ".") for m in self.modules)

    def heavy(self) -> list[str]:
        """The heavy packages this command imported (none, for the commands checked here)."""
        return [p for p in HEAVY if self.loaded(p)]


def run_python(*args: str, env: dict[str, str] | None = None) -> Run:
    """Run ``python -X importtime ARGS`` and collect what it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], check=False, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=60, env={**os.environ, **(env or {})})
    modules, err = set(), []
    for line in result.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name != "imported package":  # the header line
                modules.add(name)
        else:
            err.append(line)
    return Run(result.returncode, result.stdout, "\n".join(err), frozenset(modules))


def dumont(*args: str) -> Run:
    """``python -m dumont ARGS``, as a user runs it."""
    return run_python("-m", "dumont", *args)


def test_importing_the_cli_loads_nothing_heavy() -> None:
    run = run_python("-c", "import dumont.cli")
    assert run.code == 0, run.err
    assert run.loaded("dumont.cli") and run.loaded("click")
    assert run.heavy() == [] and not run.loaded(HTTP_CLIENT)


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["local", "--help"], ["--version"]])
def test_help_loads_nothing_heavy(args: list[str]) -> None:
    run = dumont(*args)
    assert run.code == 0, run.err
    assert run.out.strip()
    assert run.heavy() == [] and not run.loaded(HTTP_CLIENT)


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command under ``group``, as the words that name it."""
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


# Prints every command's help in one interpreter, then the modules all of them loaded together.
EVERY_HELP = """
import json, sys
from dumont.cli import cli
for words in json.loads(sys.argv[1]):
    try:
        cli.main([*words, "--help"], prog_name="dumont", standalone_mode=False)
    except SystemExit:
        pass
print(json.dumps(sorted(sys.modules)))
"""


def test_the_help_of_every_command_loads_nothing_heavy() -> None:
    from dumont.cli import cli

    paths = list(command_paths(cli))
    assert ("local", "kill") in paths and ("status",) in paths
    result = subprocess.run([sys.executable, "-c", EVERY_HELP, json.dumps(paths)], check=True, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=60)
    run = Run(0, result.stdout, result.stderr, frozenset(json.loads(result.stdout.splitlines()[-1])))
    assert run.heavy() == [] and not run.loaded(HTTP_CLIENT)


class FakeApi(ThreadingHTTPServer):
    """Answers GET and POST with canned JSON by path, and remembers what it was asked."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers = answers
        self.requests: list[tuple[str, str]] = []

    @property
    def address(self) -> str:
        """``host:port`` it listens on."""
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeApi

    def _answer(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.requests.append((self.command, path))
        found = path in self.server.answers
        body = json.dumps(self.server.answers[path] if found else {"error": f"no {path}"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test's output quiet."""


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    server = FakeApi({})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def controller_config(tmp_path: Path, fake_api: FakeApi) -> Path:
    """A config whose controller API is the fake, with the token a controller that ran would have left."""
    state = tmp_path / "controller"
    state.mkdir(mode=0o700)
    (state / "api_token").write_text("token\n")
    path = tmp_path / "dumont.toml"
    path.write_text(f'state_dir = "{state}"\n[controller]\napi_listen = "{fake_api.address}"\n'
                    '[[pairs]]\nname = "main"\nendpoint_listen = "127.0.0.1:2222"\n'
                    '[pairs.primary]\nprovider = "vast"\n[pairs.standby]\nprovider = "vast"\n')
    return path


@pytest.fixture
def local_cloud(tmp_path: Path, fake_api: FakeApi) -> Path:
    """A local cloud state dir whose control API is the fake (its "daemon" is this test's process)."""
    state = tmp_path / "local"
    state.mkdir(mode=0o700)
    (state / "localcloud.json").write_text(json.dumps({"pid": os.getpid(),
                                                       "control_url": f"http://{fake_api.address}"}))
    (state / "control_token").write_text("token\n")
    return state


def test_status_json_loads_nothing_heavy(fake_api: FakeApi, controller_config: Path) -> None:
    fake_api.answers["/api/status"] = {"pairs": [{"name": "main", "state": "syncing"}]}
    run = dumont("status", "--json", "--config", str(controller_config))
    assert run.code == 0, run.err
    assert json.loads(run.out) == fake_api.answers["/api/status"]
    assert run.heavy() == []


def test_status_without_a_controller_fails_fast_and_loads_nothing_heavy(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    path.write_text(f'state_dir = "{tmp_path / "never-ran"}"\n')
    run = dumont("status", "--json", "--config", str(path))
    assert run.code == 1
    assert "no controller has run with this config yet" in run.err
    assert run.heavy() == [] and not run.loaded(HTTP_CLIENT)


def test_events_and_intents_load_nothing_heavy(fake_api: FakeApi, controller_config: Path) -> None:
    event = {"id": 7, "at": 0, "pair": "main", "kind": "intent", "reason": "an operator asked for a failover"}
    fake_api.answers["/api/events"] = {"events": [event]}
    fake_api.answers["/api/pairs/main/intents/failover"] = {"intent": 3, "pair": "main", "kind": "failover"}
    run = dumont("events", "--json", "--config", str(controller_config))
    assert run.code == 0, run.err
    assert json.loads(run.out) == event
    assert run.heavy() == []
    run = dumont("failover", "--wait", "0", "--json", "--config", str(controller_config))
    assert run.code == 0, run.err
    assert json.loads(run.out)["intent"] == 3
    assert ("POST", "/api/pairs/main/intents/failover") in fake_api.requests
    assert run.heavy() == []


def test_local_hosts_and_kill_load_nothing_heavy(fake_api: FakeApi, local_cloud: Path) -> None:
    fake_api.answers["/hosts"] = {"hosts": [{"name": "gpu-1", "state": "running"}]}
    fake_api.answers["/hosts/gpu-1/kill"] = {"name": "gpu-1", "state": "killed"}
    run = dumont("local", "hosts", "--json", "--state-dir", str(local_cloud))
    assert run.code == 0, run.err
    assert json.loads(run.out) == fake_api.answers["/hosts"]["hosts"]
    assert run.heavy() == []
    run = dumont("local", "kill", "gpu-1", "--state-dir", str(local_cloud))
    assert run.code == 0, run.err
    assert run.out.strip() == "gpu-1: killed"
    assert run.heavy() == []


def test_config_check_loads_nothing_heavy(controller_config: Path) -> None:
    run = dumont("config", "check", str(controller_config))
    assert run.code == 0, run.err
    assert run.out.strip().endswith(": ok")
    assert run.heavy() == [] and not run.loaded(HTTP_CLIENT)
