"""The doctor's checks of a pair's GPU: it exists and runs, it answers, the controller's key opens it, and the
standby's disk can hold its workspace."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from dumont.config import Config, PairConfig
from dumont.core.layout import ControllerLayout
from dumont.errors import DumontError
from dumont.providers.base import Instance, InstanceState
from dumont.setup.doctor import Check, all_of, by_run, fail, ok
from dumont.transport.keys import KnownHosts
from dumont.transport.ssh import SshTarget, SshTransport

SNAPSHOT_FACTOR = 2.2  # a snapshot plus the promotion candidate, with room for one pass's staged changes


async def gpu_checks(config: Config, pair: PairConfig) -> list[Check]:
    """The GPU named by ``pair`` exists and runs, answers on its SSH port, lets the controller in, fits."""
    from dumont.providers.vast.provider import VastMarket

    instance_id = pair.primary.instance_id
    if not instance_id:
        return [fail(f"gpu of {pair.name}", "pairs.primary.instance_id is not set",
                     "name the Vast instance to protect (vastai show instances)")]
    try:
        market = VastMarket.from_config(config.vast)
    except DumontError:
        return []  # the credentials check already said why
    found: list[Instance] = []
    try:
        async def exists() -> Check:
            instance = await market.get(instance_id)
            found.append(instance)
            if instance.state == InstanceState.RUNNING and instance.ssh_host:
                return ok(f"gpu {instance_id}", f"running ({instance.gpu_name or 'GPU'}, {instance.raw_state})")
            if instance.state == InstanceState.TERMINATED:
                return fail(f"gpu {instance_id}", "Vast does not know this instance",
                            "check pairs.primary.instance_id against `vastai show instances`")
            return fail(f"gpu {instance_id}", f"it is {instance.state} ({instance.raw_state})",
                        f"start it: vastai start instance {instance_id}")

        checks = await all_of((f"gpu {instance_id}", exists))
        if not found or found[0].state != InstanceState.RUNNING or not found[0].ssh_host:
            return checks
        return checks + await all_of((f"gpu {instance_id} ssh", lambda: _login(config, pair, found[0])))
    finally:
        await market.close()


async def _login(config: Config, pair: PairConfig, instance: Instance) -> list[Check]:
    """TCP to its SSH port, then a login with the controller's key (trusting the key it shows, this once)."""
    name = f"gpu {instance.instance_id}"
    host, port = str(instance.ssh_host), int(instance.ssh_port or 22)
    try:
        async with asyncio.timeout(10):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
    except (OSError, TimeoutError) as exc:
        return [fail(f"{name} answers", f"{host}:{port} does not accept TCP ({exc})",
                     "check the instance's ports in the Vast console; it may still be starting")]
    checks = [ok(f"{name} answers", f"{host}:{port} accepts connections")]
    key = ControllerLayout.of(config).controller_key
    if not key.exists():
        return [*checks, by_run(f"{name} controller key", "the controller has no key yet",
                                "dumont init (or run) creates it; run attaches it to the GPU through the Vast API")]
    with tempfile.TemporaryDirectory(prefix="dumont-doctor-") as scratch:
        from dumont.core.hosts import scan_host_key

        known = KnownHosts(Path(scratch) / "known_hosts")
        known.pin("gpu", await scan_host_key(host, port, 10))
        transport = SshTransport(identity=key, known_hosts=known, connect_timeout=10)
        target = SshTarget("gpu", host, port, instance.ssh_user)
        try:
            await transport.check_reachable(target, timeout=15)
        except DumontError as exc:
            await transport.close()
            return [*checks, by_run(f"{name} controller key", f"the controller's key is not accepted yet "
                                                              f"({exc.message})",
                                    f"dumont run attaches it through the Vast API (POST /api/v0/instances/"
                                    f"{instance.instance_id}/ssh/)")]
        try:
            checks.append(ok(f"{name} controller key", f"{instance.ssh_user} logs in with the controller's key"))
            checks.append(await _disk(config, transport, target))
        finally:
            await transport.close()
    return checks


async def _disk(config: Config, transport: SshTransport, target: SshTarget) -> Check:
    """The standby's disk holds a snapshot of the GPU's workspace, the promotion candidate and the reserve."""
    # The apparent size: what a copy needs when sparse files are not kept sparse (busybox du lacks the option).
    script = ('ws="${DUMONT_WORKSPACE:-/workspace}"; '
              '{ du -sk --apparent-size "$ws" 2>/dev/null || du -sk "$ws" 2>/dev/null; } | cut -f1')
    result = await transport.run(target, ["sh", "-c", script], timeout=120, check=False)
    text = result.text.strip().splitlines()[-1:] or ["0"]
    size_gb = int(text[0]) / 1024**2 if text[0].isdigit() else 0.0
    usable = config.standby.disk_gb * (1 - config.replication.min_free_fraction) - 3  # the image takes ~3 GB
    needed = size_gb * SNAPSHOT_FACTOR
    if needed > usable:
        return fail("standby disk", f"the workspace holds {size_gb:.1f} GB; a standby of "
                                    f"{config.standby.disk_gb} GB has room for about {usable / SNAPSHOT_FACTOR:.1f}",
                    f"raise standby.disk_gb to at least {int(needed / (1 - config.replication.min_free_fraction)) + 4}")
    return ok("standby disk", f"the workspace holds {size_gb:.2f} GB; {config.standby.disk_gb} GB is enough")
