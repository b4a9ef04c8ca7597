"""Checking an exposition the way Prometheus would: a scrape of ``/metrics`` fed to ``promtool check metrics``.

The tests run it on scrapes taken during a failover, and the drill on the scrapes of its run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import httpx

from dumont.errors import DumontError
from dumont.transport.ssh import run_local


@dataclass(frozen=True)
class PromtoolVerdict:
    """What ``promtool check metrics`` said: nothing when the exposition is clean."""

    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        """True when promtool found no problem."""
        return self.returncode == 0 and not self.output.strip()


async def scrape_metrics(api_url: str, token: str, *, timeout: float = 10.0) -> bytes:
    """One scrape of the controller's ``/metrics``, authenticated as Prometheus does (bearer token)."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.get(f"{api_url}/metrics", headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        raise DumontError(f"GET {api_url}/metrics answered {response.status_code}", hint="is the API token right?")
    return response.content


async def check_metrics(exposition: bytes, *, timeout: float = 30.0) -> PromtoolVerdict:
    """Run ``promtool check metrics`` on an exposition (without blocking the event loop)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise DumontError("promtool is not installed", hint="install Debian's `prometheus` package (make system-deps)")
    result = await run_local([promtool, "check", "metrics"], input=exposition, timeout=timeout,
                             what="promtool check metrics")
    return PromtoolVerdict(result.returncode, (result.stdout + result.stderr).decode(errors="replace"))
