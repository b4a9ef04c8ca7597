"""The published images catalogue: Docker's way of reading a reference, real tags only, Docker's pull error."""

from __future__ import annotations

import pytest

from dumont.localcloud.emulators import vast_images
from dumont.localcloud.emulators.registry import tag_record


@pytest.mark.parametrize(("image", "parts"), [
    ("pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime",
     ("docker.io", "pytorch", "pytorch", "2.1.0-cuda12.1-cudnn8-runtime")),
    ("pytorch/pytorch", ("docker.io", "pytorch", "pytorch", "latest")),
    ("ubuntu:22.04", ("docker.io", "library", "ubuntu", "22.04")),
    ("docker.io/pytorch/pytorch:latest@sha256:abc", ("docker.io", "pytorch", "pytorch", "latest")),
    ("index.docker.io/library/ubuntu", ("docker.io", "library", "ubuntu", "latest")),
    ("nvcr.io/nvidia/pytorch:24.01-py3", ("nvcr.io", "nvidia", "pytorch", "24.01-py3")),
    ("localhost:5000/team/app:v1", ("localhost:5000", "team", "app", "v1")),
])
def test_references_split_the_way_docker_splits_them(image: str, parts: tuple[str, str, str, str]) -> None:
    """No registry is Docker Hub, no namespace is library, no tag is latest; a digest is not part of the tag."""
    name = vast_images.parse(image)
    assert (name.registry, name.namespace, name.repository, name.tag) == parts


def test_every_pytorch_tag_has_its_suffix_and_the_seed_image_is_published() -> None:
    """PyTorch publishes -runtime and -devel (and latest); the tag without a suffix is not published."""
    tags = [i.tag for i in vast_images.CATALOGUE if i.repository == "pytorch"]
    assert all(t == "latest" or t.endswith(("-runtime", "-devel")) for t in tags)
    assert {t.removesuffix("-runtime") for t in tags if t.endswith("-runtime")} == {
        t.removesuffix("-devel") for t in tags if t.endswith("-devel")}, "each release has both flavours"
    seed = vast_images.find("pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime")
    assert seed is not None and seed.profile == vast_images.PYTORCH_PROFILE
    assert vast_images.find("docker.io/pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel") is not None
    assert vast_images.find("pytorch/pytorch:2.1.0-cuda12.1-cudnn8") is None
    assert vast_images.find("nvcr.io/pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime") is None


def test_a_failed_pull_reads_like_docker_and_a_tag_like_docker_hub() -> None:
    """The pull error is Docker's manifest-unknown sentence; a tag record has Docker Hub's fields."""
    assert vast_images.pull_error("pytorch/pytorch:2.1.0-cuda12.1-cudnn8") == (
        "Error response from daemon: manifest for pytorch/pytorch:2.1.0-cuda12.1-cudnn8 not found: "
        "manifest unknown: manifest unknown")
    image = vast_images.CATALOGUE[0]
    record = tag_record(image)
    assert (record["name"], record["tag_status"], record["last_updated"]) == (image.tag, "active",
                                                                               "2023-10-04T00:00:00Z")
    assert record["digest"].startswith("sha256:") and len(record["digest"]) == 71
    assert record["images"][0]["digest"] == record["digest"] == tag_record(image)["digest"]
