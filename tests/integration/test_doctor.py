"""dumont doctor against the local cloud's emulators: every check, once passing and once failing with its fix."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dumont.config import Config, load_config, to_toml
from dumont.localcloud import layout
from dumont.localcloud.daemon import LocalCloud
from dumont.localcloud.ready import ensure_ready_config
from dumont.setup.doctor import Check, run_doctor
from dumont.transport.keys import ensure_keypair, write_private

pytestmark = pytest.mark.integration


@dataclass
class Setup:
    """A running local cloud and the ready config protecting its GPU (no controller has run)."""

    cloud: LocalCloud
    path: Path

    def config(self, **changes: Any) -> Config:
        """The config with some tables changed (``vast={"max_attempts": 2}``, ``gpu_image=...``)."""
        data = tomllib.loads(self.path.read_text())
        for key, value in changes.items():
            if isinstance(value, dict):
                data.setdefault(key, {}).update(value)
            else:
                data[key] = value
        changed = self.path.with_name("changed.toml")
        changed.write_text(to_toml(data))
        return load_config(changed)

    @property
    def gpu(self) -> str:
        return str(tomllib.loads(self.path.read_text())["pairs"][0]["primary"]["instance_id"])

    async def gcp(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(base_url=self.cloud.urls["gcp_url"]) as client:
            response = await client.request(method, path, json=body)
        assert response.status_code < 300, response.text
        return response.json()


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    os.environ.setdefault("DUMONT_LOCAL_VAST_DELAY_SECONDS", "0")
    state = tmp_path / "local"
    state.mkdir()
    cloud = LocalCloud(state)
    ensure_keypair(layout.user_key(state), "dumont-test-user")
    await cloud.start_emulators()
    try:
        yield Setup(cloud, await ensure_ready_config(state, cloud.urls))
    finally:
        await cloud.stop_emulators()
        await cloud.pool.shutdown()
        assert not cloud.pool.leftover_processes()


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def check(checks: list[Check], prefix: str) -> Check:
    found = [c for c in checks if c.name.startswith(prefix)]
    assert found, f"no check named {prefix!r} in {[c.name for c in checks]}"
    return found[0]


async def test_a_fresh_local_setup_passes_and_names_what_run_will_do(setup: Setup) -> None:
    """The ready config: nothing fails; the controller key and the firewall rule are left to `dumont run`."""
    checks = await run_doctor(setup.config())
    assert [c.line() for c in checks if c.status == "fail"] == []
    statuses = {c.name: c.status for c in checks}
    assert statuses["vast credentials"] == "ok" and statuses["gpu image"] == "ok"
    assert statuses["gcp credentials"] == "ok" and statuses["gcp zone"] == "ok" and statuses["gcp quota"] == "ok"
    assert statuses["gcp firewall"] == "run"
    assert check(checks, f"gpu {setup.gpu} controller key").status == "run"
    assert statuses[f"gpu {setup.gpu}"] == "ok" and statuses[f"gpu {setup.gpu} answers"] == "ok"
    assert statuses["endpoint main"] == "ok" and statuses["API address"] == "ok"
    assert statuses["state directory"] == "ok" and statuses["gcp os login"] == "ok"


async def test_a_wrong_vast_key_fails_with_the_fix(setup: Setup, tmp_path: Path) -> None:
    bad = tmp_path / "bad_key"
    write_private(bad, "not-the-key\n")
    checks = await run_doctor(setup.config(vast={"api_key_file": str(bad)}))
    found = check(checks, "vast credentials")
    assert found.status == "fail" and "key" in found.fix.lower()


async def test_an_unpublished_image_fails(setup: Setup) -> None:
    found = check(await run_doctor(setup.config(gpu_image="pytorch/pytorch:2.1.0-cuda12.1-cudnn8")), "gpu image")
    assert found.status == "fail" and "-runtime or -devel" in found.fix


async def test_an_unknown_gpu_and_a_stopped_gpu_fail(setup: Setup) -> None:
    unknown = check(await run_doctor(setup.config(pairs=[_pair(setup, "39999999")])), "gpu 39999999")
    assert unknown.status == "fail" and "does not know" in unknown.detail
    vast = next(e for e in setup.cloud.emulators if e.name == "vast")
    key = (setup.path.parent / "vast_api_key").read_text().strip()
    async with httpx.AsyncClient(base_url=setup.cloud.urls["vast_url"],
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        response = await client.put(f"/api/v0/instances/{setup.gpu}/", json={"state": "stopped"})
    assert response.status_code == 200 and vast is not None
    stopped = check(await run_doctor(setup.config()), f"gpu {setup.gpu}")
    assert stopped.status == "fail" and "vastai start instance" in stopped.fix


async def test_a_gpu_whose_sshd_is_gone_does_not_answer(setup: Setup) -> None:
    host = setup.cloud.pool.get(setup.gpu)
    assert host.pid is not None
    os.kill(host.pid, signal.SIGKILL)  # the machine runs, as far as Vast can tell; nothing listens on its port
    found = check(await run_doctor(setup.config()), f"gpu {setup.gpu} answers")
    assert found.status == "fail" and "does not accept TCP" in found.detail


async def test_the_controller_key_is_ok_once_attached(setup: Setup) -> None:
    config = setup.config()
    from dumont.core.startup import prepare_state
    from dumont.providers.vast.provider import VastMarket
    from dumont.transport.keys import read_public_key

    layout_ = prepare_state(config)
    market = VastMarket.from_config(config.vast)
    try:
        await market.attach_keys(setup.gpu, [read_public_key(layout_.controller_key)])
    finally:
        await market.close()
    checks = await run_doctor(config)
    assert check(checks, f"gpu {setup.gpu} controller key").status == "ok"
    assert check(checks, "standby disk").status == "ok"


async def test_a_workspace_too_big_for_the_standby_disk_fails(setup: Setup) -> None:
    config = setup.config()
    from dumont.core.startup import prepare_state
    from dumont.providers.vast.provider import VastMarket
    from dumont.transport.keys import read_public_key

    layout_ = prepare_state(config)
    market = VastMarket.from_config(config.vast)
    try:
        await market.attach_keys(setup.gpu, [read_public_key(layout_.controller_key)])
    finally:
        await market.close()
    big = setup.cloud.pool.get(setup.gpu).workspace / "checkpoint.pt"
    with big.open("wb") as handle:
        handle.truncate(12 * 1024**3)  # 12 GB as the file system reports it (a sparse file costs no disk here)
    found = check(await run_doctor(config), "standby disk")
    assert found.status == "fail" and "raise standby.disk_gb" in found.fix


async def test_an_unknown_zone_fails(setup: Setup) -> None:
    found = check(await run_doctor(setup.config(gcp={"zone": "nowhere-9z"})), "gcp zone")
    assert found.status == "fail" and "gcp.zone" in found.fix


async def test_a_gcp_api_that_does_not_answer_fails(setup: Setup) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    found = check(await run_doctor(setup.config(gcp={"api_endpoint": f"http://127.0.0.1:{port}"})), "gcp")
    assert found.status == "fail"


async def test_a_spent_quota_fails(setup: Setup) -> None:
    await setup.gcp("POST", "/_dumont/projects/dumont-local/quotas", {"CPUS": 1, "PREEMPTIBLE_CPUS": 1})
    found = check(await run_doctor(setup.config()), "gcp quota")
    assert found.status == "fail" and "the standby needs 2" in found.detail


async def test_the_firewall_is_ok_once_open_and_fails_behind_a_deny(setup: Setup) -> None:
    rules = "/compute/v1/projects/dumont-local/global/firewalls"
    await setup.gcp("POST", rules, {"name": "allow-ssh", "network": "global/networks/default", "direction": "INGRESS",
                                    "sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]})
    assert check(await run_doctor(setup.config()), "gcp firewall").status == "ok"
    await setup.gcp("POST", rules, {"name": "deny-ssh", "network": "global/networks/default", "direction": "INGRESS",
                                    "priority": 10, "sourceRanges": ["0.0.0.0/0"],
                                    "denied": [{"IPProtocol": "tcp", "ports": ["22"]}]})
    found = check(await run_doctor(setup.config()), "gcp firewall")
    assert found.status == "fail" and "deny-ssh" in found.detail


async def test_os_login_on_the_project_is_named(setup: Setup) -> None:
    project = await setup.gcp("GET", "/compute/v1/projects/dumont-local")
    fingerprint = project["commonInstanceMetadata"]["fingerprint"]
    await setup.gcp("POST", "/compute/v1/projects/dumont-local/setCommonInstanceMetadata",
                    {"fingerprint": fingerprint, "items": [{"key": "enable-oslogin", "value": "TRUE"}]})
    found = check(await run_doctor(setup.config()), "gcp os login")
    assert "enables OS Login" in found.detail


async def test_a_taken_endpoint_or_api_address_fails(setup: Setup) -> None:
    config = setup.config()
    host, port = config.pairs[0].endpoint_listen.rsplit(":", 1)
    with socket.create_server((host, int(port))):
        found = check(await run_doctor(config), "endpoint main")
    assert found.status == "fail" and "cannot be bound" in found.detail
    api_host, api_port = config.controller.api_listen.rsplit(":", 1)
    with socket.create_server((api_host, int(api_port))):
        assert check(await run_doctor(config), "API address").status == "fail"


async def test_a_state_directory_that_cannot_be_written_fails(setup: Setup, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    found = check(await run_doctor(setup.config(state_dir=str(blocker / "state"))), "state directory")
    assert found.status == "fail" and "mkdir -p" in found.fix


def test_doctor_exits_1_and_prints_json_for_a_failing_setup(tmp_path: Path) -> None:
    """The command line: exit 1 when a check fails, one JSON document with every check."""
    config = tmp_path / "dumont.toml"
    config.write_text(to_toml({"gcp": {"project": "p", "api_endpoint": "http://127.0.0.1:9"},
                               "vast": {"api_url": "http://127.0.0.1:9"}}))
    env = {**os.environ, "VAST_API_KEY": "k" * 64}
    result = subprocess.run([sys.executable, "-m", "dumont", "doctor", "--config", str(config), "--json"],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 1, result.stderr
    import json

    report = json.loads(result.stdout)
    assert report["ok"] is False and any(c["status"] == "fail" for c in report["checks"])


def _pair(setup: Setup, instance_id: str) -> dict[str, Any]:
    pair = tomllib.loads(setup.path.read_text())["pairs"][0]
    pair["primary"]["instance_id"] = instance_id
    return pair


async def test_run_refuses_to_create_anything_while_a_check_fails(setup: Setup) -> None:
    """`dumont run` on a setup the doctor fails: it says which check and creates no standby VM."""
    from dumont.errors import DumontError
    from dumont.service import serve

    config = setup.config(gpu_image="pytorch/pytorch:2.1.0-cuda12.1-cudnn8")
    with pytest.raises(DumontError) as caught:
        await serve(config)
    assert "nothing was created" in str(caught.value) and "gpu image" in str(caught.value)
    vms = await setup.gcp("GET", "/compute/v1/projects/dumont-local/zones/local-a/instances")
    assert vms.get("items", []) == []
