"""The shipped systemd unit: it runs the controller's real command line, restarts it, and confines it."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[3] / "deploy" / "systemd" / "dumont.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_it_runs_dumont_run_and_restarts_on_failure() -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/dumont") and argv[1:3] == ["run", "--config"]
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert service["User"] != "root"


def test_it_is_confined_to_its_state_and_the_network() -> None:
    service = unit()["Service"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "CapabilityBoundingSet": "", "UMask": "0077"}.items():
        assert service[key] == value, key
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "/var/lib/dumont" in service["ReadWritePaths"]


def test_the_cli_it_names_exists() -> None:
    """The options the unit passes are the ones `dumont run` takes."""
    from click.testing import CliRunner

    from dumont.cli import cli

    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0 and "--config" in result.output


def test_systemd_analyze_accepts_it_where_systemd_is_installed() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine (the unit's keys are checked above)")
    result = subprocess.run([analyze, "verify", "--man=no", str(UNIT)], capture_output=True, text=True,
                            timeout=60, check=False)
    problems = [line for line in result.stderr.splitlines() if "dumont.service" in line
                and "Command /opt/dumont" not in line and "User" not in line]
    assert not problems, result.stderr
