"""The ready-to-run config ``dumont local up`` writes: one pair protected on the local cloud.

Like a person starting out, it rents a GPU on the local Vast market (through our own Vast client, against the
emulator) with nothing but the account's key (the local user's), and writes a config naming that instance as
the primary. The GPU does not know the controller's key: `dumont run` attaches it through the Vast API, as it
must on the real Vast. The standby is left to the controller, which creates it on the local GCP on its first run.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from dumont.config import VastConfig, default_config, to_toml
from dumont.errors import LocalCloudError
from dumont.localcloud import layout
from dumont.providers.base import InstanceState, LaunchRequest, OfferQuery
from dumont.providers.vast.provider import VastMarket
from dumont.transport.keys import ensure_keypair, write_private

PAIR = "main"
LOCAL_PROJECT, LOCAL_ZONE = "dumont-local", "local-a"


def config_path(state_dir: Path) -> Path:
    """Where the ready config lives."""
    return state_dir / "dumont.toml"


def controller_dir(state_dir: Path) -> Path:
    """The state dir of the controller that protects the local pair."""
    return state_dir / "controller"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def ensure_ready_config(state_dir: Path, ready: dict[str, Any]) -> Path:
    """Write the ready config unless it exists (a second ``up`` changes nothing); return its path."""
    path = config_path(state_dir)
    if path.exists():
        return path
    controller_dir(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    ensure_keypair(layout.user_key(state_dir), "dumont-local-user")  # the account's key on the local Vast
    instance_id = await rent_gpu(state_dir, ready["vast_url"], PAIR)
    write_private(path, to_toml(_config(state_dir, ready, instance_id)), mode=0o644)
    return path


async def rent_gpu(state_dir: Path, vast_url: str, pair: str) -> str:
    """Rent a GPU for ``pair`` on the local Vast (labelled as the controller labels its own) and wait until it
    runs; its instance id."""
    defaults = default_config()
    vast = VastConfig(api_url=vast_url, api_key_file=state_dir / "vast_api_key")
    market = VastMarket.from_config(vast, environ={})
    try:
        offers = await market.search_offers(OfferQuery(
            min_gpu_ram_gb=defaults.gpu_min_ram_gb, max_price_per_hour=defaults.gpu_max_price,
            regions=tuple(defaults.gpu_preferred_regions), disk_gb=defaults.gpu_disk_gb))
        instance = await market.create(LaunchRequest(offers[0], defaults.gpu_image, defaults.gpu_disk_gb,
                                                     f"dumont-{pair}", ssh_public_keys=[]))
        for _ in range(300):  # the emulator brings the instance up; at most 60 s
            current = await market.get(instance.instance_id)
            if current.state == InstanceState.RUNNING and current.ssh_port is not None:
                return instance.instance_id
            await asyncio.sleep(0.2)
        raise LocalCloudError(f"the GPU {instance.instance_id} for {pair} did not start within 60 s")
    finally:
        await market.close()


def pair_table(name: str, instance_id: str) -> dict[str, Any]:
    """One [[pairs]] entry: the GPU ``instance_id`` on the local Vast, a standby the controller creates on GCP."""
    return {"name": name, "endpoint_listen": f"127.0.0.1:{free_port()}",
            "primary": {"provider": "vast", "instance_id": instance_id}, "standby": {"provider": "gcp"}}


def _config(state_dir: Path, ready: dict[str, Any], instance_id: str) -> dict[str, Any]:
    return {
        "state_dir": str(controller_dir(state_dir)),
        "controller": {"api_listen": f"127.0.0.1:{free_port()}",
                       "user_keys_file": str(layout.user_key(state_dir)) + ".pub"},
        "vast": {"api_url": ready["vast_url"], "api_key_file": str(state_dir / "vast_api_key"),
                 "image_registry_url": ready["registry_url"]},  # the local Docker Hub: no internet here
        "gcp": {"project": LOCAL_PROJECT, "zone": LOCAL_ZONE, "api_endpoint": ready["gcp_url"]},
        "pairs": [pair_table(PAIR, instance_id)],
    }
