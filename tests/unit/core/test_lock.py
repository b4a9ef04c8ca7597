"""One controller per state directory: a second one is refused, naming the first; a dead one leaves no lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dumont.core.lock import hold_state
from dumont.errors import ControllerAlreadyRunning


def test_a_second_controller_on_the_same_state_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    with hold_state(tmp_path, api="127.0.0.1:8787"), pytest.raises(ControllerAlreadyRunning) as caught, \
            hold_state(tmp_path):
        pass
    text = str(caught.value)
    assert f"pid {os.getpid()}" in text and "API at 127.0.0.1:8787" in text and "own state_dir" in text
    with hold_state(tmp_path):  # released on exit
        pass


def test_a_killed_controller_leaves_the_state_free(tmp_path: Path) -> None:
    """The lock dies with its process, even by SIGKILL: the next controller starts without a stale lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from dumont.core.lock import hold_state\n"
         "with hold_state(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ControllerAlreadyRunning, match=f"pid {holder.pid}"), hold_state(tmp_path):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    with hold_state(tmp_path) as holder_info:
        assert holder_info["pid"] == os.getpid()
