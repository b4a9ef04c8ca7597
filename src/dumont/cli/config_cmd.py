"""``dumont config ...``: check a configuration file, or print the defaults."""

from __future__ import annotations

from pathlib import Path

import click

from dumont.cli.common import emit, json_option
from dumont.errors import ConfigError


@click.group("config")
def config_group() -> None:
    """Check or print configuration."""


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@json_option
def check(path: Path, as_json: bool) -> None:
    """Report every problem in the config file PATH (exit 2 if there is any)."""
    from dumont.config import check_config_file, config_warnings, load_config

    problems = check_config_file(path)
    warnings = [] if problems else config_warnings(load_config(path))
    emit({"path": str(path), "ok": not problems, "problems": problems, "warnings": warnings}, as_json=as_json,
         human=lambda d: "\n".join([f"{d['path']}: ok", *(f"warning: {w}" for w in d["warnings"])])
         if d["ok"] else "")
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s)", problems,
                          hint="nothing was started or changed; fix them and check again")


@config_group.command("defaults")
@json_option
def defaults(as_json: bool) -> None:
    """Print the default configuration (the seed's recommended production values)."""
    from dumont.config import config_to_dict, default_config, to_toml

    data = config_to_dict(default_config())
    emit(data, as_json=as_json, human=to_toml)
