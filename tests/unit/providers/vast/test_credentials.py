"""The API key comes from a 0600 file or $VAST_API_KEY, and never shows itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dumont.errors import ConfigError
from dumont.providers.vast.credentials import load_api_key

SECRET = "k3y-0123456789abcdef"


def _key_file(tmp_path: Path, text: str = SECRET + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "vast_api_key"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_the_environment_gives_the_key_when_no_file_is_set() -> None:
    """$VAST_API_KEY is used, and the key says where it came from."""
    key = load_api_key(None, {"VAST_API_KEY": f"  {SECRET} "})
    assert key.secret == SECRET
    assert key.source == "the key from $VAST_API_KEY"


def test_a_configured_file_wins_over_the_environment(tmp_path: Path) -> None:
    """An explicit file is the more specific instruction."""
    key = load_api_key(_key_file(tmp_path), {"VAST_API_KEY": "other"})
    assert key.secret == SECRET
    assert key.source == f"the key in {tmp_path / 'vast_api_key'}"


def test_the_key_never_shows_in_repr_or_str(tmp_path: Path) -> None:
    """Printing or logging the key object shows only its source."""
    key = load_api_key(_key_file(tmp_path))
    assert SECRET not in repr(key) and SECRET not in str(key) and SECRET not in f"{key}"
    assert key.scrub(f"server said: bad key {SECRET}") == "server said: bad key <api key>"


@pytest.mark.parametrize(("text", "mode", "problem"), [
    (SECRET, 0o644, "has mode 0644; others could read the key"),
    (SECRET, 0o640, "has mode 0640"),
    ("", 0o600, "does not hold one key on one line"),
    (f"{SECRET}\n{SECRET}", 0o600, "does not hold one key on one line"),
])
def test_bad_key_files_are_refused_without_showing_the_content(tmp_path: Path, text: str, mode: int,
                                                                problem: str) -> None:
    """A readable-by-others, empty or multi-line file is refused; the message names the file and the fix."""
    with pytest.raises(ConfigError, match=problem) as error:
        load_api_key(_key_file(tmp_path, text, mode))
    assert str(tmp_path / "vast_api_key") in str(error.value)
    assert SECRET not in str(error.value)


def test_a_missing_file_or_key_says_what_to_set(tmp_path: Path) -> None:
    """No file, a directory, or nothing at all: each error names the fix."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_api_key(tmp_path / "nope", {})
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_api_key(tmp_path, {})
    with pytest.raises(ConfigError, match=r"\$VAST_API_KEY is not set") as error:
        load_api_key(None, {"VAST_API_KEY": "  "})
    assert "vast.api_key_file" in str(error.value)
