"""Asking Docker Hub whether a tag exists: references read as Docker reads them, every answer classified."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from dumont.providers.base import ProviderRequestError, ProviderUnavailable
from dumont.providers.vast.images import HubTag, hub_tag, image_exists

HUB = "https://hub.docker.com"


@pytest.mark.parametrize(("image", "expected"), [
    ("pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime", HubTag("pytorch", "pytorch", "2.1.0-cuda12.1-cudnn8-runtime")),
    ("ubuntu", HubTag("library", "ubuntu", "latest")),
    ("ubuntu:22.04@sha256:0123", HubTag("library", "ubuntu", "22.04")),
    ("docker.io/pytorch/pytorch:latest", HubTag("pytorch", "pytorch", "latest")),
    ("registry-1.docker.io/library/debian:12", HubTag("library", "debian", "12")),
    ("nvcr.io/nvidia/pytorch:24.01-py3", None),
    ("ghcr.io/me/app", None),
    ("localhost:5000/app:1", None),
])
def test_references_name_docker_hub_tags(image: str, expected: HubTag | None) -> None:
    """No registry is Docker Hub, no namespace is library, no tag is latest; other registries are not ours."""
    assert hub_tag(image) == expected


def test_the_path_escapes_each_part() -> None:
    """A tag goes into a URL path: each part is quoted on its own."""
    assert HubTag("a b", "c/d", "e?f").path == "/v2/namespaces/a%20b/repositories/c%2Fd/tags/e%3Ff"


def _hub(status: int, body: object = None, text: str | None = None) -> tuple[httpx.MockTransport, list[str]]:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if text is not None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(answer), asked


async def test_a_published_tag_is_true_and_a_missing_one_false() -> None:
    """200 with the tag record is True; 404 is False; the URL is Docker Hub's tag lookup under the given base."""
    found, asked = _hub(200, {"name": "2.1.0-cuda12.1-cudnn8-runtime", "digest": "sha256:ab"})
    assert await image_exists("pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime", HUB + "/", transport=found) is True
    assert asked == [f"{HUB}/v2/namespaces/pytorch/repositories/pytorch/tags/2.1.0-cuda12.1-cudnn8-runtime"]
    missing, _ = _hub(404, {"message": "httperror 404: tag '2.1.0-cuda12.1-cudnn8' not found"})
    assert await image_exists("pytorch/pytorch:2.1.0-cuda12.1-cudnn8", HUB, transport=missing) is False
    unasked, asked = _hub(200, {})
    assert await image_exists("nvcr.io/nvidia/pytorch:24.01-py3", HUB, transport=unasked) is None
    assert asked == [], "another registry is not asked Docker Hub's question"


@pytest.mark.parametrize(("status", "body", "text", "error", "words"), [
    (503, {"message": "maintenance"}, None, ProviderUnavailable, "503 maintenance"),
    (429, None, "Too Many Requests", ProviderUnavailable, "429 Too Many Requests"),
    (200, None, "<html>captive portal</html>", ProviderUnavailable, "no tag record"),
    (401, {"detail": "unauthorized"}, None, ProviderRequestError, "refused the lookup of img:1: 401 unauthorized"),
])
async def test_answers_that_are_no_verdict_raise(status: int, body: object, text: str | None,
                                                 error: type[Exception], words: str) -> None:
    """Busy, broken or refusing registries raise with the image, the registry and the server's words."""
    transport, _ = _hub(status, body, text)
    with pytest.raises(error, match=words) as raised:
        await image_exists("img:1", HUB, transport=transport)
    assert HUB in str(raised.value)


async def test_a_registry_that_cannot_be_reached_is_unavailable() -> None:
    """A refused connection (here: a closed port on 127.0.0.1) is ProviderUnavailable within the deadline."""
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ProviderUnavailable, match=r"did not answer whether img:1 exists \(ConnectError"):
        await image_exists("img:1", "http://127.0.0.1:9", transport=httpx.MockTransport(refuse))


async def test_a_registry_that_never_answers_is_given_up_at_the_deadline() -> None:
    """A lookup that hangs ends at timeout_seconds as ProviderUnavailable, never waiting for ever."""
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    with pytest.raises(ProviderUnavailable, match="did not answer whether img:1 exists"):
        await asyncio.wait_for(image_exists("img:1", HUB, timeout_seconds=0.2, transport=httpx.MockTransport(hang)),
                               5)
