"""Direct mode's trust: the primary pushes to the standby with the pair key, and only into the staging area.

The standby accepts the pair key through a forced command bound to one epoch (the agent's ``receive``), so a
former primary can never write anything once the epoch has moved on, even over a connection it still holds.
Fencing is part of the standby's take-over (``HostAgent.take_over``): the key revoked and every receive killed
before the promotion, the epoch moved on after it.
"""

from __future__ import annotations

from pathlib import Path

from dumont.replication.hostagent import HostAgent
from dumont.transport.keys import read_public_key
from dumont.transport.ssh import SshTarget


def read_pair_key(pair_key: Path) -> tuple[str, str]:
    """The pair key's public line and private text."""
    return read_public_key(pair_key), pair_key.read_text()


async def pair_hosts(
    *,
    pair: str,
    epoch: int,
    primary: HostAgent,
    standby: HostAgent,
    standby_address: SshTarget,
    standby_host_key: str,
    pair_key: Path,
) -> None:
    """Let ``primary`` push to ``standby`` for ``epoch``: authorize the pair key there, install it here."""
    await standby.set_epoch(epoch)
    public_key, private_key = read_pair_key(pair_key)
    await standby.authorize_pair(pair=pair, public_key=public_key, epoch=epoch)
    await primary.install_pair_client(
        private_key=private_key, standby=standby_address, standby_host_key=standby_host_key
    )

