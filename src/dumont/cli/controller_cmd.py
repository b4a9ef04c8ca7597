"""``dumont run``, ``status``, ``events`` and the intents (``failover``, ``recover``, ``pause``, ``resume``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dumont.cli.common import emit, json_option
from dumont.errors import DumontError, UsageError

if TYPE_CHECKING:
    from dumont.config import Config

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The controller's config file (default: $DUMONT_CONFIG).",
)
pair_option = click.option("--pair", default=None, help="The pair (default: the only one configured).")


def resolve_config(config_path: Path | None) -> Config:
    """The config named by --config or $DUMONT_CONFIG; a usage error if neither is given."""
    path = config_path or (Path(os.environ["DUMONT_CONFIG"]) if os.environ.get("DUMONT_CONFIG") else None)
    if path is None:
        raise UsageError("no config given", hint="pass --config FILE or set DUMONT_CONFIG "
                                                 "(`dumont local up` writes one for the local cloud)")
    from dumont.config import load_config

    return load_config(path)


class ControllerClient:
    """The running controller's API, found from its config."""

    def __init__(self, config: Config) -> None:
        from dumont.config import split_host_port
        from dumont.core.layout import ControllerLayout

        host, port = split_host_port(config.controller.api_listen)
        token_file = config.controller.api_token_file or ControllerLayout.of(config).api_token
        if not token_file.exists():
            raise DumontError(f"no controller has run with this config yet (no token at {token_file})",
                              hint="start one with: dumont run --config FILE")
        import httpx  # only once there is a controller to call: every other path needs no HTTP client

        self.config = config
        self.url = f"http://{host}:{port}"
        self._http = httpx.Client(base_url=self.url, timeout=90,
                                  headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})

    def get(self, path: str, **params: Any) -> Any:
        """GET a JSON document."""
        return self._call("GET", path, params)

    def post(self, path: str) -> Any:
        """POST and return the JSON answer."""
        return self._call("POST", path, {})

    def _call(self, method: str, path: str, params: dict[str, Any]) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, params=params)
        except httpx.HTTPError as exc:
            raise DumontError(f"the controller at {self.url} did not answer ({type(exc).__name__})",
                              hint="is `dumont run` running with this config?") from exc
        data = response.json()
        if response.status_code in (400, 404):
            raise UsageError(str(data.get("error")), hint=data.get("hint"))
        if response.status_code >= 400:
            raise DumontError(f"the controller refused: {data.get('error', response.text)}")
        return data

    def pair(self, name: str | None) -> str:
        """The pair named, or the only configured one."""
        names = [p.name for p in self.config.pairs]
        if name is None:
            if len(names) != 1:
                raise UsageError("several pairs are configured", hint=f"pick one with --pair ({', '.join(names)})")
            return names[0]
        if name not in names:
            raise UsageError(f"--pair {name!r}: no such pair", hint=f"pairs: {', '.join(names)}")
        return name


@click.command("run")
@config_option
def run_command(config_path: Path | None) -> None:
    """Run the controller in the foreground: protect every configured pair until Ctrl-C."""
    from dumont.config import config_warnings
    from dumont.service import serve

    config = resolve_config(config_path)
    # A running controller's log is its transitions, one line each at INFO: shown without -v (which adds detail).
    logging.getLogger("dumont").setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
    for warning in config_warnings(config):
        logging.getLogger("dumont").warning("config: %s", warning)

    def ready(api: Any) -> None:
        click.echo(f"dumont controller protecting {len(config.pairs)} pair(s); API {api.url}; Ctrl-C stops it",
                   err=True)

    async def main() -> None:
        watch_children_by_pidfd()
        await serve(config, on_ready=ready)

    asyncio.run(main())


def watch_children_by_pidfd() -> None:
    """Have the running loop learn of its children's exits through pidfds, where Linux and Python allow it.

    Python 3.11's default child watcher starts a thread for every subprocess and waits on the event loop for that
    thread to start. A fleet's controller starts ssh clients for its probes every tick, and on a 2-core machine
    running 100 hosts each wait is a trip through a crowded scheduler: py-spy found the loop there at 50 pairs,
    whose ticks took 7-8 s against their 1 s interval. Python 3.12 picks pidfds by itself.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel older than 5.3, or a sandbox refusing the call
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


@click.command("status")
@config_option
@json_option
def status_command(config_path: Path | None, as_json: bool) -> None:
    """Show every pair: state, epoch, endpoint, hosts, last sync and lag."""
    data = ControllerClient(resolve_config(config_path)).get("/api/status")
    emit(data, as_json=as_json, human=_human_status)


def _human_status(data: dict[str, Any]) -> str:
    from dumont.core.progress import describe_progress

    lines = [f"API {data['api_url']}  metrics {data['metrics_url']}  dashboard {data['dashboard_url']}"]
    me = data.get("controller") or {}
    others = int(me.get("pairs_configured", len(data["pairs"]))) - len(data["pairs"])
    if others > 0:  # a fleet: the other pairs' leases are held by other controllers, whose status shows them
        lines.append(f"controller {me.get('name', '?')} holds {len(data['pairs'])} of the "
                     f"{me['pairs_configured']} pairs; the other controllers hold the rest")
    for p in data["pairs"]:
        lag = f"{p['lag_seconds']:.0f} s" if p["lag_seconds"] is not None else "no pass yet"
        lines.append(f"{p['name']}: {p['state']} (epoch {p['epoch']}), endpoint {p['endpoint']}, lag {lag}")
        for role in ("primary", "standby"):
            host = p[role]
            lines.append(f"  {role:<8} " + (f"{host['provider']} {host['instance_id']} {host['ssh_host']}:"
                                            f"{host['ssh_port']} ({host['role']})" if host else "none"))
        if p["operation"]:
            op = p["operation"]
            lines.append(f"  {op['kind']}: {op['step']}" + (f" ({op['error']})" if op.get("error") else "")
                         + (f", {describe_progress(op['progress'])}" if op.get("progress") else ""))
        lines.append(f"  {p['reason']}")
    return "\n".join(lines)


@click.command("events")
@config_option
@pair_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--last", type=click.IntRange(1, 500), default=50, show_default=True,
              help="Show the newest N events (ignored with --all or --after).")
@click.option("--all", "show_all", is_flag=True, help="Show every event, oldest first, page by page.")
@click.option("--after", type=click.IntRange(min=0), default=None, help="Only events after this id, oldest first.")
@json_option
def events_command(config_path: Path | None, pair: str | None, follow: bool, last: int, show_all: bool,
                   after: int | None, as_json: bool) -> None:
    """Print the event log, newest last (one reason sentence per event); --json prints one JSON object per line.

    By default the newest 50; --all or --after ID pages through the log in order.
    """
    client = ControllerClient(resolve_config(config_path))
    params: dict[str, Any] = {}
    if pair is not None:
        params["pair"] = client.pair(pair)
    paging = show_all or after is not None
    if paging:
        params["after"] = after or 0
    else:
        data = client.get("/api/events", **params, last=last)
        params["after"] = _print_events(data["events"], as_json) or 0
        if not data["events"]:
            params["after"] = data["last_id"]
        if not follow:
            return
    while True:
        data = client.get("/api/events", **params, wait=30 if follow else 0)
        params["after"] = _print_events(data["events"], as_json) or params["after"]
        if not follow and len(data["events"]) < data.get("page_size", 500):
            return


def _print_events(events: list[dict[str, Any]], as_json: bool) -> int | None:
    """Print ``events``; return the last one's id."""
    for event in events:
        click.echo(json.dumps(event) if as_json else _human_event(event))
    return int(events[-1]["id"]) if events else None


def _human_event(event: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
    return f"{stamp} #{event['id']} {event['pair'] or '-'} {event['kind']}: {event['reason']}"


def _intent_command(kind: str, summary: str) -> click.Command:
    @click.command(kind, help=summary)
    @config_option
    @pair_option
    @click.option("--wait", "wait_seconds", type=click.FloatRange(min=0), default=30.0, show_default=True,
                  help="Seconds to wait for the loop to take the request (0: do not wait).")
    @json_option
    def command(config_path: Path | None, pair: str | None, wait_seconds: float, as_json: bool) -> None:
        client = ControllerClient(resolve_config(config_path))
        answer = client.post(f"/api/pairs/{client.pair(pair)}/intents/{kind}")
        deadline = time.monotonic() + wait_seconds
        state = answer
        while wait_seconds and time.monotonic() < deadline:
            state = client.get(f"/api/intents/{answer['intent']}")
            if state.get("consumed_at"):
                break
            time.sleep(0.2)  # the loop takes intents on its next tick; bounded by --wait
        emit({**answer, **state}, as_json=as_json,
             human=lambda d: f"{kind} requested for {d['pair']}: {d.get('outcome') or 'recorded, not yet taken'}")

    return command


INTENT_COMMANDS = [
    _intent_command("failover", "Ask the controller to fail the pair over to its standby now."),
    _intent_command("recover", "Ask the controller to rent a new GPU and fail back (after a failover)."),
    _intent_command("pause", "Pause the pair: no syncs and no failover until resumed."),
    _intent_command("resume", "Resume a paused pair."),
]


def request_sync(config_path: Path | None, pair: str | None, as_json: bool) -> None:
    """``dumont sync`` without --from/--to: ask the running controller for a pass now."""
    client = ControllerClient(resolve_config(config_path))
    answer = client.post(f"/api/pairs/{client.pair(pair)}/intents/sync")
    emit(answer, as_json=as_json, human=lambda d: f"sync requested for {d['pair']} (intent {d['intent']})")
