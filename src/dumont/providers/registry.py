"""Providers are plug-ins: each registers here by name, with its role, its config table and how to open it.

The core never names a provider. It opens the providers a config uses (``open_providers``), reaches a host through
the provider that host came from (``HostRef.provider``), rents from the markets of ``gpu_markets`` in order, and
creates standbys with the pair's standby provider. Adding a provider (RunPod, AWS spot) means a folder
``providers/<name>/`` and one :class:`Plugin` registered below, or by the code that wants it (a test registers a
market of its own): its config table is read from ``[<name>]`` by the same loader as every other table.

Modules are imported only when a provider is opened, so loading a config (or ``dumont --help``) never pulls in a
cloud SDK.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dumont.errors import ConfigError

if TYPE_CHECKING:
    from dumont.config import Config
    from dumont.providers.base import GpuMarket, StandbyCloud

Role = Literal["gpu", "cpu"]  # rents GPUs from a market of offers, or runs standby VMs
Opener = Callable[["Config", Any], Awaitable[Any]]


@dataclass(frozen=True)
class Plugin:
    """One provider: its name (the config's ``provider = "..."``), its role, its ``[<name>]`` table, its opener."""

    name: str
    role: Role
    open: Opener  # (config, its table) -> a GpuMarket (role gpu) or a StandbyCloud (role cpu); closed with close()
    table: type[Any] | None = None  # the dataclass of its [<name>] table (the config's own fields for built-ins)
    builtin: bool = False  # its table is a field of Config (vast, gcp) rather than read by the registry


_PLUGINS: dict[str, Plugin] = {}


def register(plugin: Plugin) -> None:
    """Make ``plugin`` available to configs by its name (replacing one of the same name)."""
    _PLUGINS[plugin.name] = plugin


def unregister(name: str) -> None:
    """Forget a plug-in (tests that registered one)."""
    _PLUGINS.pop(name, None)


def plugins(role: Role | None = None) -> list[Plugin]:
    """The registered plug-ins (of one role), by name."""
    return [p for _, p in sorted(_PLUGINS.items()) if role is None or p.role == role]


def plugin(name: str, role: Role | None = None) -> Plugin:
    """The plug-in called ``name`` (of ``role``), or a ConfigError naming the known ones."""
    found = _PLUGINS.get(name)
    if found is None or (role is not None and found.role != role):
        known = ", ".join(p.name for p in plugins(role)) or "none"
        what = {"gpu": "GPU market", "cpu": "standby cloud", None: "provider"}[role]
        raise ConfigError(f"no {what} called {name!r}", hint=f"known: {known}")
    return found


def table_of(config: Config, name: str) -> Any:
    """A provider's config table: ``config.<name>`` for a built-in, else the one the loader read for it."""
    chosen = plugin(name)
    return getattr(config, name) if chosen.builtin else config.provider_tables.get(name)


async def open_market(config: Config, name: str) -> GpuMarket:
    """Open the GPU market ``name`` with its table."""
    market: GpuMarket = await plugin(name, "gpu").open(config, table_of(config, name))
    return market


async def open_cloud(config: Config, name: str) -> StandbyCloud:
    """Open the standby cloud ``name`` with its table."""
    cloud: StandbyCloud = await plugin(name, "cpu").open(config, table_of(config, name))
    return cloud


async def _open_vast(config: Config, table: Any) -> Any:
    from dumont.providers.vast.provider import VastMarket

    return VastMarket.from_config(table, max_price_per_hour=config.gpu_max_price)


async def _open_gcp(config: Config, table: Any) -> Any:
    from dumont.providers.gcp.provider import GcpStandbyCloud

    return await GcpStandbyCloud.connect(table)


register(Plugin("vast", "gpu", _open_vast, builtin=True))
register(Plugin("gcp", "cpu", _open_gcp, builtin=True))
