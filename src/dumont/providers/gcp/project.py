"""What a GCP project must offer the standby, read from its REST JSON: OS Login, quotas, the SSH firewall rule,
and the ``ssh-keys`` metadata lines. Pure: the calls live in ``provider.py``.

The standby must be reachable on tcp:22 from the GPU, whose address on Vast is anyone's guess, through a rule on
its network that targets its tag: a project whose default network lost ``default-allow-ssh``
(https://cloud.google.com/vpc/docs/firewalls#more_rules_default_vpc), or a custom network, has none, and every
VM is then unreachable. Rules are weighed as GCE weighs them: among the enabled INGRESS rules on the network that
target the VM and name tcp:22, the lowest priority number wins, a deny first among equals
(https://cloud.google.com/firewall/docs/firewalls).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SSH_PORT = 22
SSH_RULE_NAME = "dumont-allow-ssh"
DEFAULT_NETWORK = "global/networks/default"
ROOT = "root"
# Quotas a spot standby uses; doctor reads them from the standby's region.
STANDBY_QUOTAS = ("CPUS", "PREEMPTIBLE_CPUS", "IN_USE_ADDRESSES", "DISKS_TOTAL_GB", "SSD_TOTAL_GB")


@dataclass(frozen=True)
class ProjectInfo:
    """The project as ``projects.get`` shows it: its name and common instance metadata."""

    name: str
    common_metadata: Mapping[str, str]

    @property
    def oslogin_enabled(self) -> bool:
        """Whether ``enable-oslogin`` is TRUE project-wide (metadata SSH keys then log nobody in)."""
        return is_true(self.common_metadata.get("enable-oslogin"))


@dataclass(frozen=True)
class Quota:
    """One regional quota: its metric, limit and what is used of it."""

    metric: str
    limit: float
    usage: float

    @property
    def available(self) -> float:
        """How much is left."""
        return max(0.0, self.limit - self.usage)


@dataclass(frozen=True)
class PortRule:
    """One ``allowed`` or ``denied`` entry: a protocol and its ports (none: every port)."""

    protocol: str
    ports: tuple[str, ...] = ()

    def covers(self, port: int) -> bool:
        """Whether this entry names tcp ``port``."""
        if self.protocol not in ("tcp", "all"):
            return False
        return not self.ports or any(_in_range(port, text) for text in self.ports)


@dataclass(frozen=True)
class FirewallRule:
    """A VPC firewall rule, in the fields that decide whether SSH reaches the standby."""

    name: str
    network: str  # the network's name
    direction: str = "INGRESS"
    priority: int = 1000
    source_ranges: tuple[str, ...] = ()
    target_tags: tuple[str, ...] = ()
    allowed: tuple[PortRule, ...] = ()
    denied: tuple[PortRule, ...] = ()
    disabled: bool = False

    def decides_ssh_for(self, tag: str, network: str = DEFAULT_NETWORK) -> bool:
        """Whether this rule is one that decides tcp:22 into a VM tagged ``tag`` on ``network``."""
        return (self.direction == "INGRESS" and not self.disabled and self.network == network_name(network)
                and (not self.target_tags or tag in self.target_tags)
                and any(entry.covers(SSH_PORT) for entry in (self.allowed or self.denied)))

    def admits(self, source_ranges: Sequence[str]) -> bool:
        """Whether every range of ``source_ranges`` lies inside one of this rule's sources."""
        own = [_network(r) for r in self.source_ranges]
        return all(any(_within(_network(r), mine) for mine in own if mine is not None) for r in source_ranges)

    def touches(self, source: str) -> bool:
        """Whether some address of ``source`` is among this rule's sources."""
        theirs = _network(source)
        return theirs is not None and any(
            (mine := _network(r)) is not None and mine.version == theirs.version and mine.overlaps(theirs)
            for r in self.source_ranges)


def is_true(value: str | None) -> bool:
    """A metadata boolean as Google's guest agent reads it."""
    return (value or "").strip().lower() in ("true", "1", "yes", "y")


def network_name(link: object) -> str:
    """A network's name from its URL or partial path."""
    return str(link or DEFAULT_NETWORK).rstrip("/").rsplit("/", 1)[-1]


def metadata_dict(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """Metadata ``items`` as a dict."""
    items = (metadata or {}).get("items") or []
    return {str(i["key"]): str(i.get("value", "")) for i in items if isinstance(i, Mapping) and i.get("key")}


def project_info(project: Mapping[str, Any]) -> ProjectInfo:
    """The :class:`ProjectInfo` of a ``projects.get`` answer."""
    return ProjectInfo(str(project.get("name", "")), metadata_dict(project.get("commonInstanceMetadata")))


def quotas(region: Mapping[str, Any]) -> list[Quota]:
    """The quotas of a ``regions.get`` answer."""
    return [Quota(str(q.get("metric", "")), float(q.get("limit", 0)), float(q.get("usage", 0)))
            for q in region.get("quotas") or [] if isinstance(q, Mapping)]


def region_of(zone: str) -> str:
    """A zone's region: its name less the last ``-x`` (``us-central1-a`` is in ``us-central1``)."""
    return zone.rsplit("-", 1)[0]


def firewall_rule(rule: Mapping[str, Any]) -> FirewallRule:
    """The :class:`FirewallRule` of a ``firewalls.get`` or list item."""
    def entries(kind: str) -> tuple[PortRule, ...]:
        return tuple(PortRule(str(e.get("IPProtocol", "")).lower(), tuple(str(p) for p in e.get("ports") or []))
                     for e in rule.get(kind) or [] if isinstance(e, Mapping))
    return FirewallRule(
        name=str(rule.get("name", "")), network=network_name(rule.get("network")),
        direction=str(rule.get("direction") or "INGRESS"), priority=int(rule.get("priority", 1000)),
        source_ranges=tuple(str(r) for r in rule.get("sourceRanges") or []),
        target_tags=tuple(str(t) for t in rule.get("targetTags") or []),
        allowed=entries("allowed"), denied=entries("denied"), disabled=bool(rule.get("disabled", False)))


def ssh_open(rules: Iterable[FirewallRule], tag: str, source_ranges: Sequence[str],
             network: str = DEFAULT_NETWORK) -> bool:
    """Whether tcp:22 reaches a VM tagged ``tag`` from every address of ``source_ranges``: for each range, an
    allow that admits all of it beats every deny that touches it (a deny wins a tie)."""
    deciding = [rule for rule in rules if rule.decides_ssh_for(tag, network)]
    for source in source_ranges:
        allows = [rule.priority for rule in deciding if rule.allowed and rule.admits([source])]
        denies = [rule.priority for rule in deciding if rule.denied and rule.touches(source)]
        if not allows or (denies and min(denies) <= min(allows)):
            return False
    return True


def blocking_denies(rules: Iterable[FirewallRule], tag: str, source_ranges: Sequence[str],
                    network: str = DEFAULT_NETWORK) -> list[FirewallRule]:
    """The deny rules that keep tcp:22 from a VM tagged ``tag`` for some of ``source_ranges``."""
    return [rule for rule in rules if rule.denied and rule.decides_ssh_for(tag, network)
            and any(rule.touches(source) for source in source_ranges)]


def ssh_rule(tag: str, source_ranges: Sequence[str], network: str = DEFAULT_NETWORK) -> dict[str, Any]:
    """The rule Dumont creates: tcp:22 from ``source_ranges`` into VMs tagged ``tag``."""
    return {"name": SSH_RULE_NAME, "network": network, "direction": "INGRESS", "priority": 1000,
            "description": "Dumont: the GPU's replication and the controller reach the standby over SSH",
            "sourceRanges": list(source_ranges), "targetTags": [tag],
            "allowed": [{"IPProtocol": "tcp", "ports": [str(SSH_PORT)]}]}


def merged_ssh_keys(value: str, user: str, keys: Iterable[str]) -> str | None:
    """``value`` (an ``ssh-keys`` item) with a ``user:key`` line for each key it lacks; None if it lacks none."""
    lines = [line for line in value.splitlines() if line.strip()]
    present = {_key_identity(line) for line in lines}
    added = [f"{user}:{key.strip()}" for key in keys if key.strip()]
    added = [line for i, line in enumerate(added) if _key_identity(line) not in present
             and _key_identity(line) not in {_key_identity(a) for a in added[:i]}]
    return "\n".join([*lines, *added]) if added else None


def _key_identity(line: str) -> tuple[str, str]:
    # A key is the same whatever its comment: user, type and blob.
    user, _, key = line.strip().partition(":")
    return user, " ".join(key.split()[:2])


def _in_range(port: int, text: str) -> bool:
    low, _, high = text.strip().partition("-")
    try:
        return int(low) <= port <= int(high or low)
    except ValueError:
        return False


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _within(inner: ipaddress.IPv4Network | ipaddress.IPv6Network | None,
            outer: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if inner is None or inner.version != outer.version:
        return False
    return inner.subnet_of(outer)  # type: ignore[arg-type]
