"""``dumont init`` and ``dumont doctor``: set a real pair up, and check it before anything is spent."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from dumont.cli.common import emit, json_option
from dumont.errors import DumontError, UsageError


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else path.expanduser().resolve()


def _ask(value: str | None, flag: str, prompt: str) -> str:
    """A required answer: the flag's value, else asked at the terminal, else a usage error naming the flag."""
    if value:
        return value
    if not sys.stdin.isatty():
        raise UsageError(f"{flag} is required", hint=f"pass {flag} (there is no terminal to ask on)")
    answer = str(click.prompt(prompt)).strip()
    if not answer:
        raise UsageError(f"{flag} is required", hint=f"pass {flag}")
    return answer


@click.command("init")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("~/.config/dumont/dumont.toml"), show_default=True, help="Where to write the config.")
@click.option("--vast-instance", help="The id of the Vast instance (your GPU) to protect.")
@click.option("--gcp-project", help="The GCP project the standby VM is created in.")
@click.option("--gcp-zone", help="The GCP zone of the standby VM (e.g. europe-west4-a).")
@click.option("--vast-api-key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="A 0600 file holding your Vast API key (default: $VAST_API_KEY at run time).")
@click.option("--gcp-credentials-file", type=click.Path(dir_okay=False, path_type=Path),
              help="A 0600 service-account JSON key (default: Application Default Credentials).")
@click.option("--pair", default="main", show_default=True, help="The pair's name.")
@click.option("--endpoint", default="127.0.0.1:2222", show_default=True, help="Where the stable SSH endpoint listens.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="The controller's state directory.")
@click.option("--user-keys-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Public keys you log in with (default: ~/.ssh/id_ed25519.pub if it exists).")
@click.option("--api-listen", help="Where the controller's API listens (default 127.0.0.1:8787).")
@click.option("--vast-url", help="Another Vast API (the local cloud's emulator, to try it out).")
@click.option("--gcp-endpoint", help="Another Compute API endpoint (the local cloud's emulator).")
@click.option("--registry-url", help="Another Docker Hub API to check gpu_image against (the local cloud's).")
@json_option
def init_command(config_path: Path, vast_instance: str | None, gcp_project: str | None, gcp_zone: str | None,
                 vast_api_key_file: Path | None, gcp_credentials_file: Path | None, pair: str, endpoint: str,
                 state_dir: Path | None, user_keys_file: Path | None, api_listen: str | None, vast_url: str | None,
                 gcp_endpoint: str | None, registry_url: str | None, as_json: bool) -> None:
    """Write a checked config and the controller's keys for one pair. Starts nothing and spends nothing."""
    from dumont.setup.init import InitAnswers, write_config

    default_keys = Path("~/.ssh/id_ed25519.pub").expanduser()
    answers = InitAnswers(
        vast_instance=_ask(vast_instance, "--vast-instance", "Vast instance id of the GPU to protect"),
        gcp_project=_ask(gcp_project, "--gcp-project", "GCP project for the standby VM"),
        gcp_zone=_ask(gcp_zone, "--gcp-zone", "GCP zone for the standby VM"),
        vast_api_key_file=_absolute(vast_api_key_file), gcp_credentials_file=_absolute(gcp_credentials_file),
        pair=pair, endpoint=endpoint, state_dir=_absolute(state_dir),
        user_keys_file=_absolute(user_keys_file) or (default_keys if default_keys.exists() else None),
        api_listen=api_listen, vast_url=vast_url, gcp_endpoint=gcp_endpoint, registry_url=registry_url)
    result = write_config(config_path.expanduser().resolve(), answers)
    emit(result, as_json=as_json, human=_init_text)


def _init_text(result: dict[str, Any]) -> str:
    return "\n".join([
        f"wrote {result['config']}; keys in {result['state_dir']}/keys",
        f"the controller logs in with: {result['controller_public_key']}",
        "next:", *(f"  {step}" for step in result["next"]),
    ])


@click.command("doctor")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The controller's config file (default: $DUMONT_CONFIG).")
@json_option
def doctor_command(config_path: Path | None, as_json: bool) -> None:
    """Check what a real pair needs, one line each (exit 1 if anything must be fixed first)."""
    import asyncio

    from dumont.cli.controller_cmd import resolve_config
    from dumont.setup.doctor import run_doctor

    config = resolve_config(config_path)
    checks = asyncio.run(run_doctor(config))
    failed = [c for c in checks if c.status == "fail"]
    emit({"ok": not failed, "checks": [c.as_dict() for c in checks]}, as_json=as_json,
         human=lambda _: "\n".join(c.line() for c in checks))
    if failed:
        raise DumontError(f"{len(failed)} check(s) failed: {', '.join(c.name for c in failed)}",
                          hint="fix them and run dumont doctor again; nothing was created")
