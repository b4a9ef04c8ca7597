"""routes.json: what a restarted endpoint process serves at once, and the epoch rule that orders routes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from dumont.endpoint.routes import Route, format_listen, load_routes, parse_listen, save_routes
from dumont.errors import EndpointError, StaleRouteRefused, UsageError


def test_every_route_survives_a_save_and_a_load(tmp_path: Path) -> None:
    """Given two routes (one parked), when they are saved and loaded, then they come back equal, in a 0600 file."""
    routes = [
        Route("train", "127.0.0.1:0", 30.0, address=("127.0.0.1", 40022), target=("10.0.0.5", 22), epoch=3,
              reason="failover: gpu-1 unreachable"),
        Route("eval", "[::1]:2222", 5.0, address=("::1", 2222)),
    ]
    path = tmp_path / "routes.json"
    save_routes(path, routes)

    assert sorted(load_routes(path), key=lambda r: r.pair) == sorted(routes, key=lambda r: r.pair)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["pairs"]["train"]["target"] == ["10.0.0.5", 22]


def test_no_file_means_no_routes(tmp_path: Path) -> None:
    assert load_routes(tmp_path / "routes.json") == []


@pytest.mark.parametrize("text", ["{not json", '{"version": 9, "pairs": {}}', '{"version": 1, "pairs": []}',
                                  '{"version": 1, "pairs": {"train": {"listen": "nowhere"}}}',
                                  '{"version": 1, "pairs": {"Bad Name": {"listen": "h:1", "hold_timeout": 1, '
                                  '"epoch": 0}}}'])
def test_an_unreadable_file_is_refused_with_its_name_and_the_fix(tmp_path: Path, text: str) -> None:
    path = tmp_path / "routes.json"
    path.write_text(text)
    with pytest.raises(EndpointError, match=r"routes file .*routes\.json cannot be read") as caught:
        load_routes(path)
    assert caught.value.hint is not None and "move it aside" in caught.value.hint


def test_a_route_from_an_older_epoch_is_refused() -> None:
    """Given a route at epoch 3, a route at epoch 2 is refused, and one at 3 or 4 is taken."""
    route = Route("train", "127.0.0.1:2222", 30.0, target=("10.0.0.5", 22), epoch=3)
    with pytest.raises(StaleRouteRefused, match="epoch 2 was refused; it serves epoch 3"):
        route.routed(("10.0.0.9", 22), epoch=2, reason="an old controller")
    assert route.routed(("10.0.0.6", 22), epoch=3, reason="moved").target == ("10.0.0.6", 22)
    assert route.routed(None, epoch=4, reason="parked").epoch == 4


def test_a_port_0_route_binds_the_port_it_had_so_users_keep_their_address() -> None:
    assert Route("t", "127.0.0.1:0", 1.0, address=("127.0.0.1", 40022)).bind_address() == ("127.0.0.1", 40022)
    assert Route("t", "127.0.0.1:0", 1.0).bind_address() == ("127.0.0.1", 0)
    assert Route("t", "0.0.0.0:2222", 1.0, address=("0.0.0.0", 2222)).bind_address() == ("0.0.0.0", 2222)


@pytest.mark.parametrize(("text", "address"), [("127.0.0.1:2222", ("127.0.0.1", 2222)), ("[::1]:0", ("::1", 0)),
                                               ("localhost:22", ("localhost", 22))])
def test_listen_addresses_parse_and_format_back(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address
    assert format_listen(address) == text


@pytest.mark.parametrize("text", ["2222", ":2222", "host:", "host:65536", "host:-1"])
def test_a_listen_address_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="not a host:port address"):
        parse_listen(text)
