"""``dumont init``: a checked config and the controller's keys for one real pair; nothing started, nothing spent.

It asks for (or takes as flags) what only the user knows: the Vast instance to protect, the GCP project and
zone, where the two credentials live. It writes the config atomically and never over an existing file, creates
the controller's key and the pair keys in the state directory (0700/0600), and says what to run next.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dumont.config import load_config, to_toml
from dumont.errors import ConfigError, UsageError
from dumont.transport.keys import read_public_key, write_private


@dataclass(frozen=True)
class InitAnswers:
    """What ``dumont init`` needs to know (flags or answers at the prompt)."""

    vast_instance: str
    gcp_project: str
    gcp_zone: str
    vast_api_key_file: Path | None = None
    gcp_credentials_file: Path | None = None
    pair: str = "main"
    endpoint: str = "127.0.0.1:2222"
    state_dir: Path | None = None
    user_keys_file: Path | None = None
    api_listen: str | None = None
    vast_url: str | None = None  # the local cloud's emulators, for trying it out
    gcp_endpoint: str | None = None
    registry_url: str | None = None


def config_data(answers: InitAnswers) -> dict[str, Any]:
    """The config's TOML tables for these answers (defaults for everything else)."""
    data: dict[str, Any] = {}
    if answers.state_dir is not None:
        data["state_dir"] = str(answers.state_dir)
    controller: dict[str, Any] = {}
    if answers.user_keys_file is not None:
        controller["user_keys_file"] = str(answers.user_keys_file)
    if answers.api_listen:
        controller["api_listen"] = answers.api_listen
    if controller:
        data["controller"] = controller
    vast: dict[str, Any] = {}
    if answers.vast_api_key_file is not None:
        vast["api_key_file"] = str(answers.vast_api_key_file)
    if answers.vast_url:
        vast["api_url"] = answers.vast_url
    if answers.registry_url:
        vast["image_registry_url"] = answers.registry_url
    gcp: dict[str, Any] = {"project": answers.gcp_project, "zone": answers.gcp_zone}
    if answers.gcp_credentials_file is not None:
        gcp["credentials_file"] = str(answers.gcp_credentials_file)
    if answers.gcp_endpoint:
        gcp["api_endpoint"] = answers.gcp_endpoint
    data.update(vast=vast, gcp=gcp, pairs=[{
        "name": answers.pair, "endpoint_listen": answers.endpoint,
        "primary": {"provider": "vast", "instance_id": answers.vast_instance},
        "standby": {"provider": "gcp"},
    }])
    return data


def write_config(path: Path, answers: InitAnswers) -> dict[str, Any]:
    """Write a checked config at ``path`` (never over an existing file) and the controller's keys."""
    from dumont.core.startup import prepare_state

    if path.exists():
        raise UsageError(f"{path} already exists; nothing was changed",
                         hint="pass another --config path, or move that file away first")
    text = to_toml(config_data(answers))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".dumont-init-", suffix=".toml")
    os.close(fd)
    try:
        write_private(Path(tmp), text, mode=0o644)
        config = load_config(Path(tmp))  # every problem is reported before anything is written for real
    except ConfigError:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.link(tmp, path)  # fails rather than replace a file that appeared meanwhile
    Path(tmp).unlink()
    layout = prepare_state(config)
    return {"config": str(path), "state_dir": str(config.state_dir),
            "controller_public_key": read_public_key(layout.controller_key),
            "next": [f"dumont doctor --config {path}", f"dumont run --config {path}"]}
