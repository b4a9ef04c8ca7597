"""The Vast.ai API key: from a 0600 file or from ``$VAST_API_KEY``, and never shown anywhere.

An explicitly configured file (``vast.api_key_file``) wins over the environment, because it is the more specific
instruction; without one, ``$VAST_API_KEY`` is used. The key travels inside :class:`ApiKey`, whose ``repr`` and
``str`` show only where the key came from, so a key that ends up in a log line or an error message by accident
still shows nothing secret.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dumont.errors import ConfigError

ENV_VAR = "VAST_API_KEY"


@dataclass(frozen=True)
class ApiKey:
    """A Vast.ai API key and a description of where it came from (safe to show; the key is not)."""

    secret: str = field(repr=False)
    source: str  # "the key from $VAST_API_KEY" or "the key in /path/to/file"

    def __str__(self) -> str:
        return self.source

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the key replaced, for messages built from server answers."""
        return text.replace(self.secret, "<api key>") if self.secret else text


def load_api_key(key_file: Path | None = None, environ: Mapping[str, str] | None = None) -> ApiKey:
    """The API key from ``key_file`` if given, else from ``$VAST_API_KEY``; ConfigError names what to fix."""
    if key_file is not None:
        return _read_key_file(key_file)
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip()
    if value:
        return ApiKey(value, f"the key from ${ENV_VAR}")
    raise ConfigError(f"no Vast.ai API key: ${ENV_VAR} is not set and no key file is configured",
                      hint=f"set vast.api_key_file to a 0600 file holding the key, or export {ENV_VAR}")


def _read_key_file(path: Path) -> ApiKey:
    path = path.expanduser()
    source = f"the key in {path}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"Vast.ai API key file {path} does not exist",
                          hint="create it with mode 0600, or point vast.api_key_file elsewhere") from None
    except OSError as exc:
        raise ConfigError(f"Vast.ai API key file {path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"Vast.ai API key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(f"Vast.ai API key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                          "others could read the key", hint=f"run chmod 600 {shlex.quote(str(path))}")
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"Vast.ai API key file {path} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Vast.ai API key file {path} is not text", hint="write only the key into it") from None
    if not value or any(ch.isspace() for ch in value):
        # Never echo the content: it is (or was meant to be) the key.
        raise ConfigError(f"Vast.ai API key file {path} does not hold one key on one line",
                          hint="write only the key into it")
    return ApiKey(value, source)
