"""The doctor's checks of the two clouds: credentials (a read-only call each), the image, the GCP project."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dumont.config import Config
from dumont.errors import DumontError
from dumont.providers.gcp.project import SSH_RULE_NAME, Quota, blocking_denies, ssh_open
from dumont.setup.doctor import Check, all_of, by_run, fail, ok

STANDBY_CPUS = {"e2-micro": 2, "e2-small": 2, "e2-medium": 2, "e2-standard-2": 2, "e2-standard-4": 4}
CPU_QUOTAS = ("PREEMPTIBLE_CPUS", "CPUS")  # a spot VM counts against the first that the region has


async def vast_checks(config: Config) -> list[Check]:
    """The Vast key works, and the GPU image is published."""
    from dumont.providers.vast.images import image_exists
    from dumont.providers.vast.provider import VastMarket

    try:
        market = VastMarket.from_config(config.vast)
    except DumontError as exc:
        return [fail("vast credentials", str(exc), "put the key in a 0600 file named by vast.api_key_file, "
                                                   "or export VAST_API_KEY")]
    try:
        async def credentials() -> Check:
            user = await market.client.call("GET", "/api/v0/users/current")
            name = user.get("username") or user.get("email") or "?" if isinstance(user, Mapping) else "?"
            return ok("vast credentials", f"the API key works (account {name})")

        async def image() -> Check:
            found = await image_exists(config.gpu_image, registry_url=config.vast.image_registry_url)
            if found is None:
                return ok("gpu image", f"{config.gpu_image} is not on Docker Hub, so it cannot be checked here")
            if found:
                return ok("gpu image", f"{config.gpu_image} is published")
            return fail("gpu image", f"{config.gpu_image} is not published in {config.vast.image_registry_url}",
                        "use a published tag (pytorch's end in -runtime or -devel), e.g. "
                        "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime")

        return await all_of(("vast credentials", credentials), ("gpu image", image))
    finally:
        await market.close()


async def gcp_checks(config: Config) -> list[Check]:
    """The GCP credentials and project, the zone, the quota, the firewall rule and OS Login."""
    from dumont.providers.gcp.provider import GcpStandbyCloud

    if not config.gcp.project:
        return [fail("gcp project", "gcp.project is not set", "set gcp.project (and gcp.zone) in the config")]
    try:
        cloud = await GcpStandbyCloud.connect(config.gcp)
    except (DumontError, TimeoutError) as exc:
        return [fail("gcp credentials", str(exc), "point gcp.credentials_file at a 0600 service-account key with "
                                                 "the Compute Instance Admin role, or set up ADC")]
    tag = config.standby.network_tag

    async def project() -> list[Check]:
        info = await cloud.project_info()
        checks = [ok("gcp credentials", f"project {config.gcp.project} can be read")]
        detail = ("the project enables OS Login; the standby turns it off for itself (enable-oslogin=FALSE), "
                  "which works unless an organisation policy requires OS Login"
                  if info.oslogin_enabled else "off; the standby also sets enable-oslogin=FALSE on itself")
        checks.append(ok("gcp os login", detail))
        return checks

    async def zone() -> Check:
        if await cloud.zone_exists():
            return ok("gcp zone", f"{config.gcp.zone} exists")
        return fail("gcp zone", f"{config.gcp.zone} is not a zone of the project",
                    "set gcp.zone to one of `gcloud compute zones list`")

    async def quota() -> Check:
        return quota_check(await cloud.quotas(), config)

    async def firewall() -> Check:
        rules = await cloud.firewall_rules()
        ranges = config.standby.ssh_source_ranges
        if ssh_open(rules, tag, ranges):
            return ok("gcp firewall", f"tcp:22 is open to the tag {tag} from {', '.join(ranges)}")
        denies = blocking_denies(rules, tag, ranges)
        if denies:
            return fail("gcp firewall", f"rule {denies[0].name} denies tcp:22 to the tag {tag}",
                        "give dumont-allow-ssh a higher priority than that rule, or narrow the deny")
        return by_run("gcp firewall", f"no rule opens tcp:22 to the network tag {tag}",
                      f"dumont run creates {SSH_RULE_NAME} (it needs the Compute Security Admin role), or "
                      "create one for that tag yourself")

    try:
        return await all_of(("gcp credentials", project), ("gcp zone", zone), ("gcp quota", quota),
                            ("gcp firewall", firewall))
    finally:
        await cloud.close()


def quota_check(quotas: Sequence[Quota], config: Config) -> Check:
    """Room for one standby VM: its vCPUs and one external address."""
    by_metric = {q.metric: q for q in quotas}
    need_cpus = STANDBY_CPUS.get(config.standby.machine_type, 2)
    short = []
    cpu = next((by_metric[m] for m in CPU_QUOTAS if m in by_metric), None)
    if cpu is not None and cpu.available < need_cpus:
        short.append(f"{cpu.metric} has {cpu.available:g} free of {cpu.limit:g}, the standby needs {need_cpus}")
    address = by_metric.get("IN_USE_ADDRESSES")
    if address is not None and address.available < 1:
        short.append("IN_USE_ADDRESSES has none free, the standby needs 1")
    if short:
        return fail("gcp quota", "; ".join(short), "ask for more quota in the console (IAM & Admin > Quotas) or "
                                                  "pick another region")
    return ok("gcp quota", f"room for a {config.standby.machine_type} and its external address")
