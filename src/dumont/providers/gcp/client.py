"""The boundary with google-cloud-compute: building clients, calling them with deadlines, translating errors.

The library is synchronous, so every call runs in a thread (``asyncio.to_thread``) with the library's own
``timeout=`` and ``retry=None`` (its default retries run for up to 600 s; the controller's loop retries
instead), inside an asyncio deadline.

Operations are never waited on through the library's ``ExtendedOperation``: its poller is a
``ZoneOperationsClient`` built *without* our ``client_options``, so with a custom endpoint it would poll
``https://compute.googleapis.com`` (``research/cloud-apis.md`` §2.4). We call the ``*_unary`` methods, which
return the raw ``Operation``, and wait with our own ``ZoneOperationsClient`` built with the same endpoint and
credentials, so with an endpoint configured no request goes anywhere else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import google.auth
import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import compute_v1
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from dumont.config import GcpConfig
from dumont.providers.base import (
    InstanceNotFound,
    ProviderAuthError,
    ProviderError,
    ProviderRequestError,
    ProviderUnavailable,
)

T = TypeVar("T")

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
LOCAL_CREDENTIALS_TYPE = "dumont_local_emulator"  # what the local cloud writes to <state_dir>/gcp_credentials.json
CALL_TIMEOUT = 30.0  # one HTTP request
WAIT_CALL_TIMEOUT = 130.0  # operations.wait: the server holds the request for up to about 2 minutes
RETRY_PAUSE, MAX_RETRY_PAUSE = 0.5, 10.0  # between failed waits
DONE = compute_v1.Operation.Status.DONE
# Spot capacity errors a zone operation can end with: not our fault, and gone later.
CAPACITY_ERRORS = ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "STOCKOUT")


@dataclass(frozen=True)
class Access:
    """Where Compute calls go and with what credentials (``source`` says where they came from; no secret)."""

    project: str
    zone: str
    api_endpoint: str | None
    credentials: Credentials
    source: str


def is_loopback_endpoint(url: str | None) -> bool:
    """Whether ``url`` is an http(s) URL on 127.0.0.0/8 (the local cloud's emulator)."""
    if not url:
        return False
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_access(config: GcpConfig) -> Access:
    """Project, zone, endpoint and credentials from config, a credentials file, or Application Default Credentials.

    A loopback endpoint gets ``AnonymousCredentials`` and no credential lookup at all, so nothing but the
    emulator is ever contacted; otherwise the credentials file wins over ADC.
    """
    path = config.credentials_file.expanduser() if config.credentials_file else None
    data = _read_json(path) if path else None
    endpoint, file_project = config.api_endpoint, None
    if data is not None and data.get("type") == LOCAL_CREDENTIALS_TYPE:
        endpoint = endpoint or str(data.get("api_endpoint") or "")
        file_project = data.get("project")
        if not is_loopback_endpoint(endpoint):
            raise ProviderAuthError(
                f"gcp.credentials_file {path} describes the local cloud's emulator, but the endpoint is {endpoint}",
                hint="point gcp.credentials_file at a service-account JSON for a real project")
    if is_loopback_endpoint(endpoint):
        credentials: Credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        source = f"no credentials (local emulator at {endpoint})"
    elif path is not None:
        credentials, file_project = _from_file(path, data)
        source = f"the credentials in {path}"
    else:
        credentials, file_project = _load_adc()
        source = "Application Default Credentials"
    project = config.project or file_project
    if not project:
        raise ProviderRequestError(f"no GCP project: gcp.project is not set and {source} name none",
                                   hint='set gcp.project = "my-project" in the config')
    return Access(str(project), config.zone, endpoint or None, credentials, source)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _from_file(path: Path, data: dict[str, Any] | None) -> tuple[Credentials, str | None]:
    # Only the two key types a person downloads or gcloud writes; google.auth's catch-all loader is deprecated
    # because it would also run whatever an external_account file tells it to.
    kind = data.get("type") if data else None
    fix = ("use a service-account key JSON (mode 0600), or the authorized_user file that "
           "`gcloud auth application-default login` writes, or leave gcp.credentials_file unset to use ADC")
    try:
        if data is not None and kind == "service_account":
            sa = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                data, scopes=SCOPES)
            return sa, data.get("project_id")
        if data is not None and kind == "authorized_user":
            user = user_credentials.Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
                data, scopes=SCOPES)
            return user, data.get("quota_project_id")
    except (ValueError, auth_exc.GoogleAuthError) as exc:
        # The library's message may quote the file; say only which fields are at fault by kind.
        raise ProviderAuthError(f"gcp.credentials_file {path} is an incomplete {kind} key ({type(exc).__name__})",
                                hint=fix) from exc
    what = "is not a JSON object" if data is None else f"holds credentials of type {kind!r}"
    raise ProviderAuthError(f"gcp.credentials_file {path} {what}", hint=fix)


def _load_adc() -> tuple[Credentials, str | None]:
    try:
        credentials, project = google.auth.default(scopes=SCOPES)
    except auth_exc.DefaultCredentialsError as exc:
        raise ProviderAuthError(
            "no GCP credentials: gcp.credentials_file is not set and Application Default Credentials were not found",
            hint="set gcp.credentials_file to a service-account JSON (0600), or run "
                 "`gcloud auth application-default login`") from exc
    return credentials, project


class MetadataChanged(ProviderUnavailable):
    """A metadata write lost a race (412 conditionNotMet: a stale fingerprint): read it again and retry."""


class ComputeApi:
    """Every Compute client the standby needs, all built with the same endpoint and credentials."""

    def __init__(self, access: Access, *, call_timeout: float = CALL_TIMEOUT) -> None:
        self.access = access
        self.project, self.zone = access.project, access.zone
        self.call_timeout = call_timeout
        options = ClientOptions(api_endpoint=access.api_endpoint) if access.api_endpoint else None
        c, o = access.credentials, options
        self.instances = compute_v1.InstancesClient(credentials=c, client_options=o, transport="rest")
        self.operations = compute_v1.ZoneOperationsClient(credentials=c, client_options=o, transport="rest")
        self.global_operations = compute_v1.GlobalOperationsClient(credentials=c, client_options=o, transport="rest")
        self.firewalls = compute_v1.FirewallsClient(credentials=c, client_options=o, transport="rest")
        self.projects = compute_v1.ProjectsClient(credentials=c, client_options=o, transport="rest")
        self.zones = compute_v1.ZonesClient(credentials=c, client_options=o, transport="rest")
        self.regions = compute_v1.RegionsClient(credentials=c, client_options=o, transport="rest")

    def close(self) -> None:
        """Close every client's HTTP session."""
        for client in (self.instances, self.operations, self.global_operations, self.firewalls, self.projects,
                       self.zones, self.regions):
            client.transport.close()  # type: ignore[no-untyped-call]

    async def call(self, what: str, method: Callable[..., T], /, *, timeout: float | None = None,
                   zonal: bool = True, **kwargs: Any) -> T:
        """Run one blocking library call in a thread with its timeout; translate every failure.

        The call gets the project, and the zone too unless ``zonal`` is False (project-level resources).
        """
        limit = timeout or self.call_timeout
        where = {"project": self.project, **({"zone": self.zone} if zonal else {})}
        try:
            async with asyncio.timeout(limit + 5):  # the library's timeout should fire first
                return await asyncio.to_thread(method, retry=None, timeout=limit, **where, **kwargs)
        except TimeoutError as exc:
            raise ProviderUnavailable(f"GCP did not answer {what} within {limit:g} s",
                                      hint="retry later") from exc
        except gexc.GoogleAPICallError as exc:
            raise translate(exc, what) from exc
        except auth_exc.RefreshError as exc:
            raise ProviderAuthError(f"GCP refused to refresh {self.access.source} during {what}",
                                    hint="check that the account exists and has the Compute Instance Admin role"
                                    ) from exc
        except (requests.RequestException, auth_exc.TransportError, ConnectionError) as exc:
            raise ProviderUnavailable(f"could not reach the GCP Compute API for {what}: {type(exc).__name__}",
                                      hint="retry later; check the network or gcp.api_endpoint") from exc

    async def wait_done(self, operation: compute_v1.Operation, what: str, *, deadline: float) -> None:
        """Wait (about ``deadline`` seconds at most) until ``operation`` is DONE; raise its error if it failed."""
        loop = asyncio.get_running_loop()
        end, pause = loop.time() + deadline, RETRY_PAUSE
        while operation.status != DONE:
            remaining = end - loop.time()
            if remaining <= 0:
                raise ProviderUnavailable(
                    f"GCP {what} (operation {operation.name}) was still {operation.status.name} after {deadline:g} s",
                    hint="it may still finish: read the VM's state before trying again")
            zonal = bool(operation.zone)  # a firewall's or the project's operation is global
            waiter = self.operations.wait if zonal else self.global_operations.wait
            try:
                operation = await self.call(f"wait for {what}", waiter, operation=operation.name, zonal=zonal,
                                            timeout=min(remaining, WAIT_CALL_TIMEOUT))
            except ProviderUnavailable:
                # A failed wait says nothing about the operation: ask again, backing off so that an API that
                # refuses at once is not hammered until the deadline.
                if loop.time() + pause >= end:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_PAUSE)
        raise_for_operation(operation, what)


def translate(exc: gexc.GoogleAPICallError, what: str) -> ProviderError:
    """The ProviderError for a google.api_core error (the caller chains it with ``from exc``)."""
    detail = exc.message or type(exc).__name__
    if isinstance(exc, gexc.NotFound):
        return InstanceNotFound(f"GCP {what}: not found ({detail})", hint="the VM was deleted or never existed")
    if "QUOTA_EXCEEDED" in detail:  # a 403 like a refused credential, but the fix is a quota, not a key
        return ProviderRequestError(f"GCP refused {what}: {detail}",
                                    hint="raise the quota (IAM & Admin > Quotas) or use a gcp.zone in another "
                                         "region; `dumont doctor` shows the region's quotas")
    if isinstance(exc, gexc.PreconditionFailed):
        return MetadataChanged(f"GCP refused {what}: the metadata changed since it was read ({detail})",
                               hint="read it again and retry")
    if isinstance(exc, (gexc.Unauthorized, gexc.Forbidden)):  # REST gives these for 401/403
        return ProviderAuthError(f"GCP refused {what} ({exc.code}): {detail}",
                                 hint="check gcp.credentials_file or ADC and the account's Compute roles")
    if isinstance(exc, (gexc.TooManyRequests, gexc.ServerError, gexc.DeadlineExceeded)) or any(
            code in detail for code in CAPACITY_ERRORS):
        return ProviderUnavailable(f"GCP could not do {what} now ({exc.code}): {detail}",
                                   hint="retry later; for spot capacity, another gcp.zone may have room")
    return ProviderRequestError(f"GCP rejected {what} ({exc.code}): {detail}",
                                hint="a bad setting or a bug: check the [gcp] and [standby] settings")


def raise_for_operation(operation: compute_v1.Operation, what: str) -> None:
    """Raise the translated error of a DONE operation that failed; return if it succeeded."""
    errors = list(operation.error.errors)
    if not errors and not operation.http_error_status_code:
        return
    codes = ", ".join(e.code for e in errors if e.code)
    message = "; ".join(e.message for e in errors if e.message) or operation.http_error_message
    status = operation.http_error_status_code or 500
    error = gexc.from_http_status(status, f"{codes}: {message}" if codes else message)  # type: ignore[no-untyped-call]
    raise translate(error, what)


def to_json(message: Any) -> dict[str, Any]:
    """A proto-plus message as the REST API's JSON (camelCase names, int64 as strings)."""
    data: dict[str, Any] = type(message).to_dict(message, preserving_proto_field_name=False,
                                                  use_integers_for_enums=False,
                                                  always_print_fields_with_no_presence=False)
    return data
