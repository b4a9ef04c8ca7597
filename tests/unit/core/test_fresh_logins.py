"""Which probes make a fresh SSH login: one in ``fresh_login_every``, and every one after a failure until a login
succeeds (so a host that refuses logins gathers its strikes in a row); the others use the shared connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dumont.core import probes
from dumont.core.hosts import SshHosts
from dumont.core.layout import ControllerLayout
from dumont.core.model import Health, HostRef, ProbeResult
from dumont.transport.keys import KnownHosts

REF = HostRef("vast", "1", "127.0.0.1", 22, "root", "gpu", "vast-1")


async def test_one_probe_in_n_logs_in_afresh_and_a_failure_keeps_logging_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = iter([True] * 7 + [False, False, True] + [True] * 5)  # the round trip's verdicts, in order
    fresh: list[bool] = []

    async def probe_ssh(ref: HostRef, **kwargs: Any) -> tuple[ProbeResult, ...]:
        fresh.append(kwargs["fresh"])
        ok = next(script)
        return (ProbeResult("tcp", Health.OK, ""), ProbeResult("ssh", Health.OK if ok else Health.FAIL, ""))

    monkeypatch.setattr(probes, "probe_ssh", probe_ssh)
    hosts = SshHosts(None, KnownHosts(tmp_path / "known_hosts"), ControllerLayout(tmp_path),  # type: ignore[arg-type]
                     bootstrap_timeout=1, clock=lambda: 0.0, fresh_login_every=3)
    for _ in range(15):
        await hosts.probe(REF, timeout=1, command=None)
    # 1st fresh, then every 3rd; the 8th (shared) fails, so the 9th (fails) and the 10th (succeeds) log in afresh,
    # and the count starts again from that login.
    assert fresh == [True, False, False, True, False, False, True, False, True, True, False, False, True, False,
                     False]
