"""Packing the agent into one zip file that any Python >= 3.8 runs: ``python3 agent.pyz serve``."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

_PACKAGE = Path(__file__).parent
# Every module of the package but this one (the controller's side) and the package's own entry point.
_MODULES = tuple(sorted(p.name for p in _PACKAGE.glob("*.py") if p.name not in ("bundle.py", "__main__.py")))
_ENTRY = b"import sys\nfrom dumont_agent.entry import main\nmain(sys.argv)\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same sources always give the same bytes and version


def build() -> bytes:
    """The agent as a zip archive (the package is renamed ``dumont_agent`` so it stands alone on the host)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("__main__.py", _EPOCH), _ENTRY)
        for name in _MODULES:
            archive.writestr(zipfile.ZipInfo(f"dumont_agent/{name}", _EPOCH), (_PACKAGE / name).read_bytes())
    return buffer.getvalue()


AGENT_ZIP = build()
AGENT_VERSION = hashlib.sha256(AGENT_ZIP).hexdigest()[:12]
