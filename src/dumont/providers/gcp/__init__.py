"""GCP Compute Engine: the standby as a spot VM, through Google's own client library (``google-cloud-compute``)."""

from __future__ import annotations

from dumont.providers.gcp.provider import GcpStandbyCloud, standby_resource

__all__ = ["GcpStandbyCloud", "standby_resource"]
