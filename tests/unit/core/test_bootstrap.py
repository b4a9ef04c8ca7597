"""The readiness script's framed answer: parsed from whatever else a login shell prints around it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from dumont.core.bootstrap import MARK, boot_script, parse_readiness, readiness_script


def test_only_framed_lines_count() -> None:
    """A banner or .bashrc chatter (even one that looks like a key=value line) is never taken for the answer."""
    text = (f"Welcome to the GPU!\npython=/evil\n{MARK} python=/opt/conda/bin/python3\n"
            f"  {MARK} rsync=/not/at/line/start\n{MARK} rsync=/usr/bin/rsync\n{MARK} installed=rsync\n"
            f"{MARK} garbage without equals\n{MARK} done=yes\nbye\n")
    found = parse_readiness("gpu", text)
    assert found == {"python": ["/opt/conda/bin/python3"], "rsync": ["/usr/bin/rsync"], "installed": ["rsync"],
                     "done": ["yes"]}


@pytest.mark.parametrize("as_root", [True, False])
def test_the_scripts_are_valid_posix_sh(as_root: bool) -> None:
    """Both scripts parse with the shell every image has (sh -n), with and without sudo."""
    shell = shutil.which("dash") or shutil.which("sh")
    assert shell is not None
    for script in (readiness_script(as_root=as_root), boot_script()):
        result = subprocess.run([shell, "-n"], input=script, text=True, capture_output=True, check=False)
        assert result.returncode == 0, result.stderr


def test_a_non_root_login_installs_with_sudo() -> None:
    assert "sudo -n apt-get install" in readiness_script(as_root=False)
    assert "sudo" not in readiness_script(as_root=True)
