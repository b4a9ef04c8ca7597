"""The images the local cloud can "pull": a small catalogue of tags that really are published on Docker Hub.

A Vast instance runs a Docker image; an image whose tag does not exist is never pulled, so the instance never
runs (research/real-instances.md B4). The Vast emulator looks every rented image up here, and the registry
emulator (``registry.py``) answers Docker Hub's tag API from the same list, so a check made before renting and
the rent itself agree.

Every tag below is a real one. PyTorch publishes each release as a ``-runtime`` and a ``-devel`` image,
``pytorch/pytorch:<version>-cuda<cuda>-cudnn<cudnn>-{runtime,devel}`` (pytorch/pytorch ``docker.Makefile``,
targets ``runtime-image``/``devel-image``, pushed by ``.github/workflows/docker-release.yml``); there is no tag
without the suffix. Each entry names its source. ``last_updated`` is the day PyTorch released that version
(GitHub releases of pytorch/pytorch), close to when the tag was pushed.

Each image maps to the host profile the local cloud's pool lays out for it (what a machine booted from that
image has and lacks: no rsync, Python only under /opt/conda, tmux on login).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PYTORCH_PROFILE = "vast-pytorch"  # the pool's profile of a pytorch/pytorch container
DOCKER_HUB = "docker.io"
OFFICIAL_NAMESPACE = "library"  # Docker Hub's namespace for official images ("ubuntu" is "library/ubuntu")


@dataclass(frozen=True)
class PublishedImage:
    """One published ``namespace/repository:tag``."""

    namespace: str
    repository: str
    tag: str
    profile: str
    last_updated: str  # ISO 8601, UTC

    @property
    def reference(self) -> str:
        """``namespace/repository:tag``, as a renter names it."""
        return f"{self.namespace}/{self.repository}:{self.tag}"

    @property
    def digest(self) -> str:
        """A stable stand-in for the manifest digest (the emulator has no layers to hash)."""
        return "sha256:" + hashlib.sha256(self.reference.encode()).hexdigest()


def _pytorch(tag: str, released: str) -> PublishedImage:
    return PublishedImage("pytorch", "pytorch", tag, PYTORCH_PROFILE, f"{released}T00:00:00Z")


CATALOGUE: tuple[PublishedImage, ...] = (
    # Observed in a recorded create body (research/cloud-apis.md §1.5); public Dockerfiles use it as FROM.
    _pytorch("2.1.0-cuda12.1-cudnn8-runtime", "2023-10-04"),
    # Its -devel twin (the same docker.Makefile run); used as FROM by many public Dockerfiles.
    _pytorch("2.1.0-cuda12.1-cudnn8-devel", "2023-10-04"),
    # PyTorch 2.1.0 was also built for CUDA 11.8 (its release matrix: 11.8 and 12.1); both flavours are pulled
    # by public Dockerfiles and scripts.
    _pytorch("2.1.0-cuda11.8-cudnn8-runtime", "2023-10-04"),
    _pytorch("2.1.0-cuda11.8-cudnn8-devel", "2023-10-04"),
    # A later release with CUDA 12.4 and cuDNN 9, named in Vast create commands of public repositories.
    _pytorch("2.4.0-cuda12.4-cudnn9-runtime", "2024-07-24"),
    _pytorch("2.4.0-cuda12.4-cudnn9-devel", "2024-07-24"),
    # Docker Hub's pytorch/pytorch also has "latest" (what `--image pytorch/pytorch` pulls); here it is 2.4.0's
    # runtime image, the newest release in this catalogue.
    _pytorch("latest", "2024-07-24"),
)


@dataclass(frozen=True)
class ImageName:
    """An image reference split the way Docker splits it."""

    registry: str
    namespace: str
    repository: str
    tag: str

    @property
    def reference(self) -> str:
        """``namespace/repository:tag`` (Docker Hub) or ``registry/namespace/repository:tag``."""
        path = f"{self.namespace}/{self.repository}:{self.tag}"
        return path if self.registry == DOCKER_HUB else f"{self.registry}/{path}"


def parse(image: str) -> ImageName:
    """Split ``[registry/][namespace/]repository[:tag][@digest]``: no registry is Docker Hub, no namespace is
    ``library`` (official images), no tag is ``latest``."""
    name = image.strip().split("@", 1)[0]
    parts = name.split("/")
    registry = DOCKER_HUB
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry = parts.pop(0)
    repository, _, tag = parts[-1].partition(":")
    namespace = "/".join(parts[:-1]) or OFFICIAL_NAMESPACE
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    return ImageName(registry, namespace, repository, tag or "latest")


def find(image: str) -> PublishedImage | None:
    """The published image ``image`` names, or None when no such tag exists."""
    name = parse(image)
    if name.registry != DOCKER_HUB:
        return None
    return lookup(name.namespace, name.repository, name.tag)


def lookup(namespace: str, repository: str, tag: str) -> PublishedImage | None:
    """The published ``namespace/repository:tag``, or None."""
    return next((i for i in CATALOGUE if (i.namespace, i.repository, i.tag) == (namespace, repository, tag)), None)


def pull_error(image: str) -> str:
    """What Docker says when the tag does not exist (Vast shows it as the instance's status_msg)."""
    return f"Error response from daemon: manifest for {image} not found: manifest unknown: manifest unknown"
