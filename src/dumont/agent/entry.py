"""The agent's command line, dispatched before anything heavy is imported.

Every direct-mode transfer starts two short-lived agents (``clean-ssh`` on the primary, ``receive`` on the
standby), and a pass waits for both; importing the request loop and everything it serves cost them about a tenth
of a second each on a 2-core machine, so those two import only the module they run.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    """``serve`` | ``receive EPOCH`` | ``call OP < args.json`` | ``clean-ssh SSH-ARGV...``."""
    os.umask(0o022)
    if argv[1:2] == ["clean-ssh"] and len(argv) > 2:
        from .cleanchan import main as relay

        sys.exit(relay(argv[2:]))
    if argv[1:2] == ["receive"] and len(argv) == 3:
        from .pairing import receive

        receive(int(argv[2]))
        return
    from .server import main as serve_or_call

    serve_or_call(argv)
