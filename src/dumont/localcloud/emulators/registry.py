"""The local cloud's Docker Hub: the one tag lookup of Docker Hub's API, over the published images catalogue.

Served on 127.0.0.1 (its URL is ``registry_url`` in the daemon's ready record), with no key, as Docker Hub
serves public repositories::

    GET /v2/namespaces/{namespace}/repositories/{repository}/tags/{tag}
        200 the tag (Docker Hub's ``tag`` schema: name, digest, last_updated, images, tag_status, ...)
        404 {"message": "httperror 404: tag '...' not found", "errinfo": {...}} when there is no such tag

This is Docker Hub's documented API ("Read repository tag", docs.docker.com/reference/api/hub/latest); official
images live in the ``library`` namespace (``ubuntu`` is ``library/ubuntu``). The answers come from
:mod:`~dumont.localcloud.emulators.vast_images`, the same list the Vast emulator pulls from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from dumont.errors import UsageError
from dumont.localcloud.emulators import vast_images
from dumont.localcloud.emulators.vast_http import reply

if TYPE_CHECKING:
    from dumont.localcloud.daemon import LocalCloud
    from dumont.localcloud.hosts import LocalHost


def tag_record(image: vast_images.PublishedImage) -> dict[str, Any]:
    """A published image as Docker Hub's ``tag`` schema describes it (one linux/amd64 image)."""
    platform = {"architecture": "amd64", "os": "linux", "variant": None, "features": None, "os_features": None,
                "os_version": None, "digest": image.digest, "size": 0, "status": "active",
                "last_pushed": image.last_updated, "last_pulled": None}
    return {"creator": 1, "id": int(image.digest[7:15], 16), "images": [platform],
            "last_updated": image.last_updated, "last_updater": 1, "last_updater_username": image.namespace,
            "name": image.tag, "repository": 1, "full_size": 0, "v2": True, "tag_status": "active",
            "tag_last_pulled": None, "tag_last_pushed": image.last_updated,
            "media_type": "application/vnd.oci.image.index.v1+json",
            "content_type": "image", "digest": image.digest}


class RegistryEmulator:
    """Docker Hub's tag lookup on 127.0.0.1."""

    name = "registry"
    fault_actions: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Serve on a free 127.0.0.1 port; return the base URL."""
        app = web.Application()
        app.router.add_get("/v2/namespaces/{namespace}/repositories/{repository}/tags/{tag}", self._tag)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def fault(self, action: str, host: LocalHost) -> dict[str, Any]:
        """The registry has no hosts and no faults."""
        raise UsageError(f"{action!r} does not apply to the registry", hint="it has no hosts")

    async def _tag(self, request: web.Request) -> web.Response:
        namespace, repository, tag = (request.match_info[k] for k in ("namespace", "repository", "tag"))
        image = vast_images.lookup(namespace, repository, tag)
        if image is None:
            return reply({"message": f"httperror 404: tag '{tag}' not found",
                          "errinfo": {"namespace": namespace, "repository": repository, "tag": tag}}, 404)
        return reply(tag_record(image))


def create(cloud: LocalCloud) -> RegistryEmulator:
    """The registry emulator (the same for every local cloud: it holds no state)."""
    return RegistryEmulator()
