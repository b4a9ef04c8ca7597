"""The GCP emulator's firewall rules: what an insert may hold, and whether tcp:22 reaches a VM."""

from __future__ import annotations

from typing import Any

import pytest

from dumont.localcloud.emulators.gcp_firewalls import InvalidRule, checked_rule, rule_json, ssh_allowed

NET = "global/networks/default"


def rule(name: str = "r", **fields: Any) -> dict[str, Any]:
    """A checked rule: ingress tcp:22 on the default network unless ``fields`` say otherwise."""
    return checked_rule({"name": name, "network": NET, "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}], **fields})


def test_an_inserted_rule_gets_gces_defaults() -> None:
    """Given a rule naming only a protocol, then it is INGRESS at priority 1000 from 0.0.0.0/0, enabled."""
    stored = checked_rule({"name": "allow-ssh", "allowed": [{"IPProtocol": "TCP", "ports": ["22"]}]})
    assert stored == {"name": "allow-ssh", "direction": "INGRESS", "priority": 1000, "network": "default",
                      "disabled": False, "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
                      "sourceRanges": ["0.0.0.0/0"]}
    shown = rule_json({**stored, "id": "1", "creationTimestamp": "t"}, "http://h/compute/v1/projects/p")
    assert (shown["kind"], shown["network"], shown["selfLink"]) == (
        "compute#firewall", "http://h/compute/v1/projects/p/global/networks/default",
        "http://h/compute/v1/projects/p/global/firewalls/allow-ssh")


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "Bad_Name", "allowed": [{"IPProtocol": "tcp"}]}, "name"),
    ({"name": "r"}, "allowed"),
    ({"name": "r", "allowed": [{"IPProtocol": "tcp"}], "denied": [{"IPProtocol": "tcp"}]}, "allowed"),
    ({"name": "r", "allowed": [{"IPProtocol": "gopher"}]}, "allowed.IPProtocol"),
    ({"name": "r", "allowed": [{"IPProtocol": "icmp", "ports": ["22"]}]}, "allowed.ports"),
    ({"name": "r", "allowed": [{"IPProtocol": "tcp", "ports": ["22-20"]}]}, "allowed.ports"),
    ({"name": "r", "allowed": [{"IPProtocol": "tcp", "ports": ["70000"]}]}, "allowed.ports"),
    ({"name": "r", "allowed": [{"IPProtocol": "tcp"}], "sourceRanges": ["not-a-cidr"]}, "sourceRanges"),
    ({"name": "r", "allowed": [{"IPProtocol": "tcp"}], "priority": 70000}, "priority"),
    ({"name": "r", "allowed": [{"IPProtocol": "tcp"}], "direction": "SIDEWAYS"}, "direction"),
])
def test_a_rule_gce_would_refuse_is_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    """Given a rule GCE answers 400 to, then the error names the field at fault."""
    with pytest.raises(InvalidRule, match=rf"'resource\.{field}'"):
        checked_rule(body)


@pytest.mark.parametrize(("rules", "tags", "expected"), [
    ([], [], False),  # no rules: GCE's implied deny of all ingress
    ([rule()], [], True),
    ([rule(allowed=[{"IPProtocol": "tcp", "ports": ["20-30"]}])], [], True),
    ([rule(allowed=[{"IPProtocol": "tcp"}])], [], True),  # no ports: every port
    ([rule(allowed=[{"IPProtocol": "all"}])], [], True),
    ([rule(allowed=[{"IPProtocol": "tcp", "ports": ["80", "443"]}])], [], False),
    ([rule(allowed=[{"IPProtocol": "udp", "ports": ["22"]}])], [], False),
    ([rule(targetTags=["dumont-standby"])], ["dumont-standby"], True),
    ([rule(targetTags=["web"])], ["dumont-standby"], False),
    ([rule(network="global/networks/other")], [], False),
    ([rule(direction="EGRESS", destinationRanges=["0.0.0.0/0"])], [], False),
    ([rule(disabled=True)], [], False),
    ([rule(targetServiceAccounts=["sa@p.iam.gserviceaccount.com"])], [], False),
    ([rule("allow"), rule("deny", denied=[{"IPProtocol": "tcp"}], allowed=None, priority=900)], [], False),
    ([rule("allow", priority=100), rule("deny", denied=[{"IPProtocol": "tcp"}], allowed=None)], [], True),
    ([rule("allow"), rule("deny", denied=[{"IPProtocol": "all"}], allowed=None)], [], False),  # deny wins a tie
])
def test_ssh_gets_in_only_when_the_deciding_ingress_rule_allows_it(
        rules: list[dict[str, Any]], tags: list[str], expected: bool) -> None:
    """Given a project's rules and a VM's tags, then tcp:22 gets in exactly as GCE's rule order says."""
    assert ssh_allowed(rules, "https://www.googleapis.com/compute/v1/projects/p/global/networks/default",
                       tags) is expected
