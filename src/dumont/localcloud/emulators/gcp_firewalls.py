"""The GCP emulator's VPC firewall rules: checking an inserted rule, its REST JSON, and whether SSH gets through.

A project starts with no rules at all: as if its ``default`` network had lost (or never had) the
``default-allow-ssh`` rule that GCE adds to an auto-created default network
(https://cloud.google.com/vpc/docs/firewalls#more_rules_default_vpc). What is left is GCE's implied rule that
denies all ingress, so a new VM's port 22 is closed until a rule opens it.

A VM is reachable on its SSH port when the INGRESS rule that decides tcp:22 for it allows it. A rule decides for a
VM when it is enabled, on the VM's network, targets the VM (no ``targetTags``, or one of the VM's ``tags.items``)
and names tcp:22 (``IPProtocol`` ``tcp`` or ``all``, with no ``ports`` or with ``22`` or a range holding it). Of
those, the lowest ``priority`` number wins, and a deny beats an allow of the same priority
(https://cloud.google.com/firewall/docs/firewalls). Sources are not checked: every
machine of the local cloud is 127.0.0.1 to the others, so ``sourceRanges`` are validated and kept but cannot
tell a Vast GPU from anyone else. Rules that target service accounts never match (the emulator's VMs have none).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dumont.localcloud.emulators.gcp_resources import NAME_PATTERN

SSH_PORT = 22
DEFAULT_PRIORITY = 1000
PROTOCOLS = frozenset({"tcp", "udp", "icmp", "esp", "ah", "sctp", "ipip", "all"})
PORTED = frozenset({"tcp", "udp", "sctp"})  # GCE takes ports only for these
_PORTS = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")


class InvalidRule(ValueError):
    """An inserted rule GCE would refuse (400 invalid): ``field`` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"Invalid value for field 'resource.{field}': {message}")
        self.field = field


def network_name(link: object) -> str:
    """The network's name from any of its forms (a URL, ``global/networks/N``, or ``N``)."""
    return str(link or "global/networks/default").rstrip("/").rsplit("/", 1)[-1]


def checked_rule(body: Mapping[str, Any]) -> dict[str, Any]:
    """The rule as stored, defaults filled in as GCE fills them; raises :class:`InvalidRule`."""
    name = str(body.get("name", ""))
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidRule("name", f"'{name}'. Must be a match of regex '{NAME_PATTERN.pattern}'")
    direction = str(body.get("direction") or "INGRESS")
    if direction not in ("INGRESS", "EGRESS"):
        raise InvalidRule("direction", f"'{direction}'. Must be INGRESS or EGRESS")
    priority = body.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 65535:
        raise InvalidRule("priority", f"'{priority}'. Must be a whole number from 0 to 65535")
    allowed, denied = body.get("allowed") or [], body.get("denied") or []
    if bool(allowed) == bool(denied):
        raise InvalidRule("allowed", "exactly one of 'allowed' and 'denied' must list protocols")
    kind = "allowed" if allowed else "denied"
    entries = [_checked_entry(kind, entry) for entry in (allowed or denied)]
    ranges = [_checked_range(r) for r in body.get("sourceRanges") or []]
    if direction == "INGRESS" and not (ranges or body.get("sourceTags") or body.get("sourceServiceAccounts")):
        ranges = ["0.0.0.0/0"]  # GCE's default source for an ingress rule that names none
    rule = {key: value for key, value in body.items() if key in _KEPT}
    rule.update(name=name, direction=direction, priority=priority, network=network_name(body.get("network")),
                disabled=bool(body.get("disabled", False)), **{kind: entries})
    if ranges:
        rule["sourceRanges"] = ranges
    if body.get("targetTags"):
        rule["targetTags"] = [str(tag) for tag in body["targetTags"]]
    return rule


_KEPT = frozenset({"description", "destinationRanges", "sourceTags", "sourceServiceAccounts", "targetServiceAccounts",
                   "logConfig"})


def _checked_entry(kind: str, entry: object) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise InvalidRule(kind, f"{entry!r} is not an object with IPProtocol and ports")
    protocol = str(entry.get("IPProtocol", "")).lower()
    if protocol not in PROTOCOLS and not (protocol.isdigit() and int(protocol) <= 255):
        raise InvalidRule(f"{kind}.IPProtocol", f"'{protocol}'. Must be one of {', '.join(sorted(PROTOCOLS))} or "
                                                "a protocol number")
    ports = [str(port) for port in entry.get("ports") or []]
    if ports and protocol not in PORTED:
        raise InvalidRule(f"{kind}.ports", f"ports are only allowed for tcp, udp and sctp, not {protocol}")
    for port in ports:
        if _port_range(port) is None:
            raise InvalidRule(f"{kind}.ports", f"'{port}'. Must be a port like 22 or a range like 1000-2000")
    return {"IPProtocol": protocol, **({"ports": ports} if ports else {})}


def _checked_range(text: object) -> str:
    try:
        return str(ipaddress.ip_network(str(text), strict=False))
    except ValueError:
        raise InvalidRule("sourceRanges", f"'{text}'. Must be a CIDR range like 203.0.113.0/24") from None


def _port_range(text: str) -> tuple[int, int] | None:
    match = _PORTS.fullmatch(text.strip())
    if match is None:
        return None
    low = int(match.group(1))
    high = int(match.group(2) or low)
    return (low, high) if 0 <= low <= high <= 65535 else None


def names_ssh(entries: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any of a rule's allowed/denied entries covers tcp:22."""
    for entry in entries:
        if entry.get("IPProtocol") not in ("tcp", "all"):
            continue
        ports = entry.get("ports") or []
        if not ports or any((r := _port_range(str(p))) and r[0] <= SSH_PORT <= r[1] for p in ports):
            return True
    return False


def decides_ssh_for(rule: Mapping[str, Any], network: str, tags: Sequence[str]) -> bool:
    """Whether ``rule`` is one that decides tcp:22 into a VM on ``network`` with ``tags``."""
    targets = rule.get("targetTags") or []
    return (rule.get("direction") == "INGRESS" and not rule.get("disabled")
            and network_name(rule.get("network")) == network_name(network)
            and not rule.get("targetServiceAccounts")
            and (not targets or any(tag in targets for tag in tags))
            and names_ssh(rule.get("allowed") or rule.get("denied") or []))


def ssh_allowed(rules: Iterable[Mapping[str, Any]], network: str, tags: Sequence[str]) -> bool:
    """Whether tcp:22 gets into a VM on ``network`` with ``tags``: the deciding rule with the lowest priority
    number, a deny first among equals; no deciding rule leaves GCE's implied deny of all ingress."""
    deciding = [rule for rule in rules if decides_ssh_for(rule, network, tags)]
    if not deciding:
        return False
    winner = min(deciding, key=lambda rule: (int(rule.get("priority", DEFAULT_PRIORITY)), not rule.get("denied")))
    return bool(winner.get("allowed"))


def rule_json(rule: Mapping[str, Any], project_url: str) -> dict[str, Any]:
    """The Firewall resource as ``firewalls.get`` returns it (``rule`` as stored, with its id and creation time)."""
    return {"kind": "compute#firewall", **rule, "network": f"{project_url}/global/networks/{rule['network']}",
            "selfLink": f"{project_url}/global/firewalls/{rule['name']}"}
