"""Is an image published? Docker Hub's tag lookup, asked before a GPU is rented with it.

Vast pulls the instance's image from its registry; a tag that does not exist is never pulled, and the instance
never runs while it is billed for its disk (research/real-instances.md B4). Docker Hub answers
``GET /v2/namespaces/{namespace}/repositories/{repository}/tags/{tag}`` with 200 and the tag, or 404 (its
documented API, "Read repository tag"); public repositories need no login. Official images live in the
``library`` namespace (``ubuntu:22.04`` is ``library/ubuntu``), and a reference without a tag means ``latest``.

Only Docker Hub is asked: an image on another registry (``nvcr.io/...``, ``ghcr.io/...``) cannot be checked
here, and :func:`image_exists` says so with None.

=============================================  ===================================
answer                                          result
=============================================  ===================================
200                                             True
404                                             False
429, 5xx, timeout, no connection, no tag       ProviderUnavailable (retry later)
other 4xx                                       ProviderRequestError (a bad setting)
=============================================  ===================================
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from dumont import __version__
from dumont.providers.base import ProviderRequestError, ProviderUnavailable

DOCKER_HUB_REGISTRIES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DEFAULT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class HubTag:
    """An image reference on Docker Hub: ``namespace/repository:tag``."""

    namespace: str
    repository: str
    tag: str

    @property
    def path(self) -> str:
        """The tag's path in Docker Hub's API."""
        parts = (quote(p, safe="") for p in (self.namespace, self.repository, self.tag))
        return "/v2/namespaces/{}/repositories/{}/tags/{}".format(*parts)


def hub_tag(image: str) -> HubTag | None:
    """The Docker Hub tag ``image`` names (``library/`` for official images, ``latest`` by default), or None when
    it lives on another registry."""
    name = image.strip().split("@", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if parts[0] not in DOCKER_HUB_REGISTRIES:
            return None
        parts = parts[1:]
    repository, _, tag = parts[-1].partition(":")
    return HubTag("/".join(parts[:-1]) or "library", repository, tag or "latest")


async def image_exists(image: str, registry_url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                       transport: httpx.AsyncBaseTransport | None = None) -> bool | None:
    """Whether ``image``'s tag is published on Docker Hub (at ``registry_url``); None for another registry.

    One request with a deadline of ``timeout_seconds``; raises ProviderUnavailable when Docker Hub cannot be
    asked (the caller may retry), ProviderRequestError when it refuses the question.
    """
    tag = hub_tag(image)
    if tag is None:
        return None
    url = registry_url.rstrip("/") + tag.path
    async with httpx.AsyncClient(timeout=timeout_seconds, transport=transport, follow_redirects=True,
                                 headers={"Accept": "application/json", "User-Agent": f"dumont/{__version__}"}) as http:
        try:
            async with asyncio.timeout(timeout_seconds):
                response = await http.get(url)
        except (httpx.TransportError, TimeoutError) as exc:
            raise ProviderUnavailable(f"Docker Hub at {registry_url} did not answer whether {image} exists "
                                      f"({type(exc).__name__}: {exc or 'no detail'})",
                                      hint="check the network, or vast.image_registry_url; try again later") from exc
    return _verdict(response, image, registry_url)


def _verdict(response: httpx.Response, image: str, registry_url: str) -> bool:
    status = response.status_code
    if status == 404:
        return False
    message = _message(response)
    if status == 429 or status >= 500:
        raise ProviderUnavailable(f"Docker Hub at {registry_url} could not say whether {image} exists: "
                                  f"{status} {message}", hint="try again later")
    if status >= 400:
        raise ProviderRequestError(f"Docker Hub at {registry_url} refused the lookup of {image}: {status} {message}",
                                   hint="check gpu_image and vast.image_registry_url")
    try:
        data = response.json()
    except ValueError:
        data = None
    if status != 200 or not isinstance(data, dict):
        raise ProviderUnavailable(f"Docker Hub at {registry_url} answered the lookup of {image} with {status} and "
                                  "no tag record", hint="check vast.image_registry_url; try again later")
    return True


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(data, dict):
        return str(data.get("message") or data.get("detail") or data.get("msg") or response.reason_phrase)
    return response.reason_phrase
