"""dumont init: a checked config and the keys, never over an existing file, nothing started."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dumont.config import load_config
from dumont.errors import ConfigError, UsageError
from dumont.setup.init import InitAnswers, write_config


def answers(tmp_path: Path, **extra: object) -> InitAnswers:
    fields: dict[str, object] = {"vast_instance": "12345678", "gcp_project": "my-project",
                                 "gcp_zone": "europe-west4-a", "state_dir": tmp_path / "state"}
    fields.update(extra)
    return InitAnswers(**fields)  # type: ignore[arg-type]


def test_init_writes_a_config_that_loads_and_the_controller_keys(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "dumont.toml"
    result = write_config(path, answers(tmp_path))
    config = load_config(path)
    assert config.pairs[0].primary.instance_id == "12345678"
    assert (config.gcp.project, config.gcp.zone) == ("my-project", "europe-west4-a")
    key = tmp_path / "state" / "keys" / "controller"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert result["controller_public_key"].startswith("ssh-ed25519 ")
    assert result["next"][0] == f"dumont doctor --config {path}"


def test_init_never_overwrites_a_config(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    path.write_text("# mine\n")
    with pytest.raises(UsageError) as caught:
        write_config(path, answers(tmp_path))
    assert caught.value.exit_code == 2 and "already exists" in str(caught.value)
    assert path.read_text() == "# mine\n"


def test_a_bad_answer_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "dumont.toml"
    with pytest.raises(ConfigError) as caught:
        write_config(path, answers(tmp_path, endpoint="nowhere"))
    assert "endpoint_listen" in str(caught.value)
    assert not path.exists() and not (tmp_path / "state").exists()
    assert list(tmp_path.iterdir()) == []
