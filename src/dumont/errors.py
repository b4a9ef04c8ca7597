"""Every error Dumont raises, and what the caller should do about it.

The tree, written down once::

    DumontError                      base; ``.recovery`` says retry, try the next option, or stop
    ├── UsageError                   bad command-line input                       (exit 2, STOP)
    ├── ConfigError                  invalid config; carries every problem found  (exit 2, STOP)
    ├── TransportError               reaching a host over SSH failed
    │   ├── HostUnreachable          TCP connect refused or timed out             (RETRY)
    │   ├── HostKeyMismatch          the host presented a key we did not pin      (STOP)
    │   ├── AuthRefused              the host refused our key (revoked, fenced)   (STOP)
    │   ├── CommandTimeout           a remote command passed its deadline         (RETRY)
    │   └── RemoteCommandFailed      a remote command exited non-zero             (RETRY)
    ├── ReplicationError             a replication pass could not complete
    │   ├── GuardRefused             a safety guard refused the pass; nothing was changed (STOP)
    │   │   ├── EmptySourceRefused   the source is empty or near-empty, the standby is not
    │   │   ├── MassDeletionRefused  the pass would delete more than the allowed share
    │   │   ├── StaleEpochRefused    the source's epoch is older than the standby's
    │   │   └── InsufficientSpace    the standby lacks the free space the pass needs
    │   ├── AgentError               the host agent reported an error              (RETRY)
    │   └── IntegrityError           a tree does not match its manifest           (STOP)
    ├── HostNotReady                 a host lacks a tool Dumont needs and it could not be set up (RETRY)
    ├── ProviderError                a cloud API call failed (providers/base.py)  (RETRY unless below)
    │   ├── ProviderUnavailable      timeout, 5xx, 429 past its budget            (RETRY)
    │   ├── ProviderAuthError        the provider refused our credentials         (STOP)
    │   ├── OfferUnavailable         this offer cannot be rented                  (NEXT_OPTION)
    │   ├── InstanceNotFound         the provider does not know the instance      (STOP)
    │   └── ProviderRequestError     the provider rejected the request as invalid (STOP)
    ├── RentingFailed                no offer could be rented and reached (core/renting.py) (STOP)
    ├── EpochConflict                another writer took the pair's next epoch first          (STOP)
    ├── ControllerAlreadyRunning     another controller holds this state directory            (STOP)
    ├── EndpointError                the endpoint process refused a request (endpoint/) (STOP)
    │   ├── EndpointUnavailable      its control socket did not answer in time    (RETRY)
    │   └── StaleRouteRefused        a route older (lower epoch) than the one served (STOP)
    └── LocalCloudError              the embedded local cloud cannot do what was asked (STOP)

Vendor and subprocess errors are translated where they enter (``raise ... from exc``). Messages name the
thing, the value and the fix; they never contain secrets.
"""

from __future__ import annotations

import enum


class Recovery(enum.Enum):
    """What a caller should do after an error."""

    RETRY = "retry"
    NEXT_OPTION = "next_option"
    STOP = "stop"


class DumontError(Exception):
    """Base of every error Dumont raises on purpose."""

    recovery: Recovery = Recovery.STOP
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(DumontError):
    """Bad command-line input."""

    exit_code = 2


class ConfigError(DumontError):
    """A configuration file or value is invalid; ``problems`` lists every one found."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or []

    def __str__(self) -> str:
        if not self.problems:
            return super().__str__()
        return "\n".join([self.message, *(f"  - {p}" for p in self.problems)])


class TransportError(DumontError):
    """Reaching a host over SSH (or running rsync through it) failed."""

    recovery = Recovery.RETRY


class HostUnreachable(TransportError):
    """The host did not accept a connection in time."""


class HostKeyMismatch(TransportError):
    """The host presented a host key other than the pinned one."""

    recovery = Recovery.STOP


class AuthRefused(TransportError):
    """The host refused our key (it was revoked, or the host is fenced)."""

    recovery = Recovery.STOP


class CommandTimeout(TransportError):
    """A remote command ran past its deadline and was stopped."""


class RemoteCommandFailed(TransportError):
    """A remote command exited non-zero."""

    def __init__(self, message: str, *, returncode: int, stderr: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.returncode = returncode
        self.stderr = stderr


class ReplicationError(DumontError):
    """A replication pass could not complete."""

    recovery = Recovery.RETRY


class GuardRefused(ReplicationError):
    """A safety guard refused the pass before anything on the standby changed."""

    recovery = Recovery.STOP


class EmptySourceRefused(GuardRefused):
    """The source workspace is empty or near-empty while the standby holds data."""


class MassDeletionRefused(GuardRefused):
    """The pass would delete more than the configured share of the standby's files."""


class StaleEpochRefused(GuardRefused):
    """The source's epoch is older than the standby's: it is a fenced former primary."""


class InsufficientSpace(GuardRefused):
    """The standby does not have the free space the pass needs."""


class AgentError(ReplicationError):
    """The host agent reported an error it could not handle itself."""

    def __init__(self, message: str, *, kind: str = "AgentError", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind


class IntegrityError(ReplicationError):
    """A tree does not match its manifest."""

    recovery = Recovery.STOP

    def __init__(self, message: str, mismatches: list[str] | None = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.mismatches = mismatches or []


class HostNotReady(DumontError):
    """A host lacks a tool Dumont needs (rsync, Python >= 3.8, a writable workspace) and it could not be set up."""

    recovery = Recovery.RETRY


class StoreUnavailable(DumontError):
    """The state database cannot be reached or used (PostgreSQL down, a schema from a newer Dumont...)."""

    recovery = Recovery.RETRY


class EpochConflict(DumontError):
    """The pair's epoch moved on under us (another controller acted on it): nothing was changed."""


class ControllerAlreadyRunning(DumontError):
    """Another controller already acts on this state directory (the message names its pid and host)."""
class EndpointError(DumontError):
    """The endpoint process refused a request (a bad value, a port it cannot listen on, a second process)."""


class EndpointUnavailable(EndpointError):
    """The endpoint process did not answer on its control socket in time (not running, or stuck)."""

    recovery = Recovery.RETRY


class StaleRouteRefused(EndpointError):
    """A route was published with an epoch older than the one the endpoint serves: its sender is out of date."""


class LocalCloudError(DumontError):
    """The embedded local cloud cannot do what was asked."""
