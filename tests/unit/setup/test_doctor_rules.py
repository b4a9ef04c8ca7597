"""The doctor's pure judgement of a region's quota: room for the standby's vCPUs and its external address."""

from __future__ import annotations

from dumont.config import default_config
from dumont.providers.gcp.project import Quota
from dumont.setup.doctor_clouds import quota_check


def test_the_quota_needs_two_cpus_and_an_address() -> None:
    config = default_config()
    roomy = quota_check([Quota("CPUS", 24, 4), Quota("IN_USE_ADDRESSES", 8, 1)], config)
    assert roomy.status == "ok"
    short = quota_check([Quota("CPUS", 24, 23), Quota("IN_USE_ADDRESSES", 8, 8)], config)
    assert short.status == "fail" and "CPUS has 1 free" in short.detail and "IN_USE_ADDRESSES" in short.detail
