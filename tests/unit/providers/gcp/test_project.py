"""What the provider reads of a GCP project: OS Login, quotas, whether a rule opens SSH, and merged ssh-keys."""

from __future__ import annotations

from typing import Any

import pytest

from dumont.providers.gcp.project import (
    blocking_denies,
    firewall_rule,
    merged_ssh_keys,
    project_info,
    quotas,
    region_of,
    ssh_open,
    ssh_rule,
)

ANY = ("0.0.0.0/0",)
K1, K2 = "ssh-ed25519 AAAAone ctl@host", "ssh-ed25519 AAAAtwo user@laptop"


def rule(name: str = "r", **fields: Any) -> dict[str, Any]:
    """A firewall rule's JSON: ingress tcp:22 from anywhere on the default network unless ``fields`` differ."""
    return {"name": name, "network": "https://www.googleapis.com/compute/v1/projects/p/global/networks/default",
            "direction": "INGRESS", "priority": 1000, "sourceRanges": ["0.0.0.0/0"],
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}], **fields}


def test_project_wide_os_login_is_seen() -> None:
    """Given enable-oslogin=True in the project's common metadata, then the info says OS Login is on."""
    info = project_info({"name": "p", "commonInstanceMetadata": {"items": [{"key": "enable-oslogin",
                                                                            "value": "True"}]}})
    assert (info.name, info.oslogin_enabled) == ("p", True)
    assert project_info({"name": "p"}).oslogin_enabled is False


def test_quotas_are_read_with_what_is_left() -> None:
    """Given a region's quotas, then each has its limit, usage and what is available."""
    [cpus] = quotas({"quotas": [{"metric": "CPUS", "limit": 24.0, "usage": 26.0}]})
    assert (cpus.metric, cpus.limit, cpus.usage, cpus.available) == ("CPUS", 24.0, 26.0, 0.0)
    assert region_of("us-central1-a") == "us-central1"


@pytest.mark.parametrize(("rules", "sources", "expected"), [
    ([], ANY, False),
    ([rule()], ANY, True),
    ([rule(targetTags=["dumont-standby"])], ANY, True),
    ([rule(targetTags=["web"])], ANY, False),
    ([rule(allowed=[{"IPProtocol": "all"}])], ANY, True),
    ([rule(allowed=[{"IPProtocol": "tcp", "ports": ["1-1000"]}])], ANY, True),
    ([rule(allowed=[{"IPProtocol": "tcp", "ports": ["80"]}])], ANY, False),
    ([rule(sourceRanges=["10.0.0.0/8"])], ANY, False),  # open only to the VPC: not to a Vast GPU
    ([rule(sourceRanges=["10.0.0.0/8"])], ("10.1.0.0/16",), True),
    ([rule(network="global/networks/other")], ANY, False),
    ([rule(disabled=True)], ANY, False),
    ([rule(), rule("no", allowed=None, denied=[{"IPProtocol": "tcp"}], priority=900)], ANY, False),
    ([rule(priority=10), rule("no", allowed=None, denied=[{"IPProtocol": "tcp"}])], ANY, True),
    ([rule(), rule("no", allowed=None, denied=[{"IPProtocol": "tcp"}], sourceRanges=["198.51.100.0/24"])],
     ("203.0.113.0/24",), True),  # a deny that never touches our sources does not matter
    ([rule(sourceRanges=["10.0.0.0/8"]), ssh_rule("dumont-standby", ANY)], ANY, True),  # ours beside a narrow one
])
def test_ssh_is_open_only_as_gce_weighs_the_rules(rules: list[dict[str, Any]], sources: tuple[str, ...],
                                                  expected: bool) -> None:
    """Given a project's rules, then tcp:22 to the tag from the sources is open exactly as GCE would let it in."""
    assert ssh_open([firewall_rule(r) for r in rules], "dumont-standby", sources) is expected


def test_the_deny_that_keeps_ssh_out_is_named() -> None:
    """Given a deny rule of higher precedence, then it is the one named as blocking."""
    rules = [firewall_rule(rule("no", allowed=None, denied=[{"IPProtocol": "all"}], priority=500))]
    assert [r.name for r in blocking_denies(rules, "dumont-standby", ANY)] == ["no"]


def test_our_rule_is_tcp_22_to_the_tag_from_the_sources() -> None:
    """Then the rule Dumont creates opens only tcp:22, only to the tag, only from the given sources."""
    body = ssh_rule("dumont-standby", ("203.0.113.7/32",))
    assert (body["name"], body["targetTags"], body["sourceRanges"], body["allowed"]) == (
        "dumont-allow-ssh", ["dumont-standby"], ["203.0.113.7/32"], [{"IPProtocol": "tcp", "ports": ["22"]}])


def test_ssh_keys_are_merged_once_whatever_their_comment() -> None:
    """Given existing lines, then only keys the user lacks are added (a comment change is the same key); a
    merge that adds nothing is None, so nothing is written."""
    existing = f"other:{K2}\ndumont:{K1}"
    assert merged_ssh_keys(existing, "dumont", [K1.replace("ctl@host", "renamed"), K2, K2]) == (
        f"other:{K2}\ndumont:{K1}\ndumont:{K2}")
    assert merged_ssh_keys(existing, "dumont", [K1]) is None
    assert merged_ssh_keys("", "dumont", [" ", K1]) == f"dumont:{K1}"
