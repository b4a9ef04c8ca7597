"""What the controller asks of a cloud: typed records in and out, every vendor state mapped to ours.

Two roles, two small interfaces. A :class:`GpuMarket` (Vast.ai) rents GPUs from a market of offers; a
:class:`StandbyCloud` (GCP Compute) runs the standby VM. Each provider lives in its own folder
(``providers/vast/``, ``providers/gcp/``), translates vendor errors into :class:`ProviderError` subclasses at
its boundary, and maps every vendor state to :class:`InstanceState` with ``UNKNOWN`` as the default: a state we
have never seen must never crash the loop. The controller only ever sees these records.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from dumont.errors import DumontError, Recovery


class InstanceState(enum.StrEnum):
    """Where an instance is, in our words (the vendor's raw words are kept beside it)."""

    PENDING = "pending"  # created, not running yet (provisioning, staging, loading an image)
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"  # stopped by the user or the provider; disk kept
    OUTBID = "outbid"  # Vast interruptible: paused because a higher bid won; disk kept
    PREEMPTED = "preempted"  # GCP spot: taken back by the provider; disk kept (termination action STOP)
    OFFLINE = "offline"  # the provider lost contact with the machine
    TERMINATED = "terminated"  # destroyed or deleted; nothing left
    FAILED = "failed"  # the provider says it will never run (Vast: its image could not be pulled); still billed
    UNKNOWN = "unknown"  # a state we do not recognise, or could not read

    @property
    def is_lost(self) -> bool:
        """The provider says the instance cannot serve: fail over without waiting for probes."""
        return self in {InstanceState.STOPPED, InstanceState.OUTBID, InstanceState.PREEMPTED, InstanceState.OFFLINE,
                        InstanceState.TERMINATED}

    @property
    def restartable(self) -> bool:
        """Stopped with its disk kept, and started again on request (an outbid Vast instance waits for its bid)."""
        return self in {InstanceState.STOPPED, InstanceState.PREEMPTED}

    @property
    def is_failed(self) -> bool:
        """The provider says the instance will never run: stop waiting for it now (its status message says why)."""
        return self is InstanceState.FAILED


@dataclass(frozen=True)
class Instance:
    """One machine as its provider reports it."""

    provider: str
    instance_id: str
    state: InstanceState
    raw_state: str  # the vendor's own words, for logs and reports
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str = "root"
    label: str | None = None
    price_per_hour: float | None = None
    country: str | None = None
    machine_id: str | None = None
    gpu_name: str | None = None
    status_message: str | None = None


@dataclass(frozen=True)
class OfferQuery:
    """What recovery may rent (SPEC §4.5); ``regions`` are preferences in order, names or country codes."""

    min_gpu_ram_gb: float
    max_price_per_hour: float
    min_reliability: float = 0.98
    regions: Sequence[str] = ()
    num_gpus: int = 1
    gpu_name: str | None = None
    disk_gb: float = 50
    interruptible: bool = True
    exclude_machine_ids: frozenset[str] = frozenset()
    limit: int = 64


@dataclass(frozen=True)
class Offer:
    """One rentable machine on the market."""

    provider: str
    offer_id: str
    machine_id: str
    gpu_name: str
    num_gpus: int
    gpu_ram_gb: float
    price_per_hour: float  # what renting it costs per hour (Vast: dph_total; for a bid, at the minimum bid)
    reliability: float
    country: str
    interruptible: bool
    min_bid: float | None = None
    region_rank: int = 0  # position of its region in the query's preferences (lower is preferred)


@dataclass(frozen=True)
class LaunchRequest:
    """Rent ``offer`` with this image and disk, reachable with these SSH keys, labelled for the pair."""

    offer: Offer
    image: str
    disk_gb: float
    label: str
    ssh_public_keys: Sequence[str]
    bid_price: float | None = None  # interruptible only; defaults to the offer's minimum bid
    onstart: str | None = None  # a shell script the instance runs as root at every start (Vast's onstart)


@dataclass(frozen=True)
class StandbySpec:
    """The standby VM (SPEC §4.6): a spot e2-medium by default, with STOP as its termination action.

    ``ssh_user`` is the login the keys are for: never root, which Google's images refuse over SSH. The VM carries
    ``network_tag``, which the firewall rule opening tcp:22 from ``ssh_source_ranges`` targets (the GPU's address
    is not known in advance, hence anywhere by default). ``startup_script`` runs as root at every boot (the
    product's installs rsync, which the image lacks).
    """

    name: str
    machine_type: str = "e2-medium"
    disk_gb: int = 20
    image: str = "projects/debian-cloud/global/images/family/debian-12"
    spot: bool = True
    termination_action: str = "STOP"
    ssh_user: str = "dumont"
    ssh_public_keys: Sequence[str] = ()
    labels: dict[str, str] = field(default_factory=dict)
    network_tag: str = "dumont-standby"
    ssh_source_ranges: tuple[str, ...] = ("0.0.0.0/0",)
    startup_script: str | None = None


@dataclass(frozen=True)
class RentPolicy:
    """How a market is rented from: what may be asked of it, how often to try, how long a launch may take."""

    min_reliability: float = 0.98
    num_gpus: int = 1
    gpu_name: str | None = None
    interruptible: bool = True
    max_attempts: int = 5
    backoff_initial_seconds: float = 5.0
    backoff_max_seconds: float = 60.0
    launch_timeout_seconds: float = 3600.0  # from the rent until it runs (image pull and boot)


class GpuMarket(Protocol):
    """A market that rents GPU instances (Vast.ai).

    Every method raises only :class:`ProviderError` subclasses: ``ProviderUnavailable`` (retry later),
    ``OfferUnavailable`` (try the next offer), ``ProviderAuthError`` (stop and alert), ``InstanceNotFound`` (the
    instance is gone; ``get`` answers TERMINATED instead) and ``ProviderRequestError`` (a bad request: stop).
    """

    name: str
    policy: RentPolicy

    def bid_for(self, offer: Offer) -> float | None:
        """What to bid for an interruptible offer (None: rent it on demand)."""
        ...

    async def close(self) -> None:
        """Close the market's connections."""
        ...

    async def search_offers(self, query: OfferQuery) -> list[Offer]:
        """Offers that satisfy ``query``, preferred regions first, then cheapest."""
        ...

    async def create(self, request: LaunchRequest) -> Instance:
        """Rent an instance; it is usually PENDING on return."""
        ...

    async def get(self, instance_id: str) -> Instance:
        """The instance's current record (TERMINATED when the provider no longer knows it)."""
        ...

    async def list(self, label: str | None = None) -> list[Instance]:
        """Every instance of this account (only those carrying ``label``, if given)."""
        ...

    async def attach_keys(self, instance_id: str, public_keys: Sequence[str]) -> None:
        """Let ``public_keys`` log in to an existing instance (idempotent: a key it has already is fine)."""
        ...

    async def stop(self, instance_id: str) -> None:
        """Stop the instance (its disk is kept)."""
        ...

    async def start(self, instance_id: str) -> None:
        """Start a stopped instance."""
        ...

    async def destroy(self, instance_id: str) -> None:
        """Destroy the instance and its disk; succeeds if it is already gone."""
        ...


@runtime_checkable
class CopiesBetweenInstances(Protocol):
    """A market that can copy files off one of its instances onto another, even a paused one (Vast's copy)."""

    async def copy_between(self, src_id: str, dst_id: str, src_path: str, dst_path: str) -> None:
        """Start the copy; it may finish after this returns."""
        ...


class StandbyCloud(Protocol):
    """A cloud that runs the standby VM (GCP Compute). Raises only :class:`ProviderError` subclasses."""

    name: str

    async def create_standby(self, spec: StandbySpec) -> Instance:
        """Create the standby VM and return its record."""
        ...

    async def get(self, instance_id: str) -> Instance:
        """The VM's record; PREEMPTED (not STOPPED) when the provider took it back."""
        ...

    async def list(self) -> list[Instance]:
        """Every VM where the standbys are created, each as :meth:`get` gives it (the controller's one look at all
        its standbys per tick; one it does not find there it asks for with :meth:`get`)."""
        ...

    async def stop(self, instance_id: str) -> None:
        """Stop the VM (disk kept)."""
        ...

    async def start(self, instance_id: str) -> None:
        """Start a stopped or preempted VM."""
        ...

    async def delete(self, instance_id: str) -> None:
        """Delete the VM; succeeds if it is already gone."""
        ...

    async def set_ssh_keys(self, instance_id: str, user: str, public_keys: Sequence[str]) -> None:
        """Let ``public_keys`` log in to an existing VM as ``user`` (idempotent)."""
        ...

    async def close(self) -> None:
        """Close the cloud's connections."""
        ...


class ProviderError(DumontError):
    """A provider call failed; ``recovery`` says what to do next. Messages never contain credentials."""

    recovery = Recovery.RETRY


class ProviderUnavailable(ProviderError):
    """The provider's API did not answer usefully (timeout, 5xx, 429 past its retry budget): retry later."""


class ProviderAuthError(ProviderError):
    """The provider refused our credentials: stop and alert (the message says where the key came from)."""

    recovery = Recovery.STOP


class OfferUnavailable(ProviderError):
    """This offer cannot be rented (gone, taken, refused): try the next one."""

    recovery = Recovery.NEXT_OPTION


class InstanceNotFound(ProviderError):
    """The provider does not know this instance (already destroyed, or never existed)."""

    recovery = Recovery.STOP


class ProviderRequestError(ProviderError):
    """The provider rejected a request as invalid: a bug or a bad setting; stop and alert."""

    recovery = Recovery.STOP
