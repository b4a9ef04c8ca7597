"""The shipped endpoint unit: it runs `dumont endpoint serve`, always comes back, and is confined like the
controller's unit."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[3] / "deploy" / "systemd" / "dumont-endpoint.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_it_runs_the_endpoint_process_in_its_state_directory_and_always_restarts_it() -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/dumont") and argv[1:] == ["endpoint", "serve", "--dir", "/var/lib/dumont/endpoint"]
    assert service["Restart"] == "always" and service["KillSignal"] == "SIGTERM"
    assert unit()["Unit"]["StartLimitIntervalSec"] == "0"
    assert service["User"] != "root"
    assert "dumont/endpoint" in service["StateDirectory"].split()


def test_it_is_confined_to_its_directory_and_the_network() -> None:
    service = unit()["Service"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
                       "UMask": "0077", "MemoryDenyWriteExecute": "yes"}.items():
        assert service[key] == value, key
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service["ReadWritePaths"] == "/var/lib/dumont/endpoint"


def test_it_tells_the_controller_unit_to_want_it_and_start_after_it() -> None:
    text = UNIT.read_text()
    assert "#   Wants=dumont-endpoint.service" in text and "#   After=dumont-endpoint.service" in text


def test_the_cli_it_names_exists() -> None:
    from click.testing import CliRunner

    from dumont.cli import cli

    result = CliRunner().invoke(cli, ["endpoint", "serve", "--help"])
    assert result.exit_code == 0 and "--dir" in result.output


def test_systemd_analyze_accepts_it_where_systemd_is_installed() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine (the unit's keys are checked above)")
    result = subprocess.run([analyze, "verify", "--man=no", str(UNIT)], capture_output=True, text=True,
                            timeout=60, check=False)
    problems = [line for line in result.stderr.splitlines() if "dumont-endpoint.service" in line
                and "Command /opt/dumont" not in line and "User" not in line]
    assert not problems, result.stderr
