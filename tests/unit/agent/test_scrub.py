"""The scrub on a host, in-process: a byte changed in a stored copy is found, mended from a copy that still
verifies, or sent again by the next pass; the candidate is never promoted wrong (hostile-review.md #6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dumont.agent import common, promotion, scrub, server, snapshots
from tests.unit.agent.test_promotion import build, commit_source


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "source").mkdir()
    monkeypatch.setenv("DUMONT_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("DUMONT_DATA_DIR", str(tmp_path / "data"))
    build(tmp_path / "source")
    commit_source(tmp_path, 1)
    (tmp_path / "source" / "sub" / "notes.txt").write_text("v2")
    commit_source(tmp_path, 2)
    return tmp_path


def corrupt(path: Path) -> None:
    """Change 7 bytes in place, keeping the size and the mtime (what no scan notices)."""
    st = path.stat()
    with open(path, "r+b") as handle:
        handle.write(b"CORRUPT")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def newest(seq: int = 2) -> Path:
    return Path(common.snapshot_path(seq)) / "tree"


def test_a_clean_host_scrubs_clean_and_completes_its_round(host: Path) -> None:
    result = scrub.scrub({"budget_bytes": 1 << 30})
    assert result["corrupt"] == [] and result["round_complete"] and result["checked_bytes"] > 0


def test_a_corrupt_snapshot_file_is_mended_in_place_from_the_candidate(host: Path) -> None:
    corrupt(newest() / "model.pt")  # hard-linked into snapshot 1 too
    [found] = scrub.scrub({"budget_bytes": 1 << 30})["corrupt"]
    # model.hard and model.pt are one inode; the manifest names the group by its first name.
    assert found == {"path": "model.hard", "where": "snapshot 2", "repaired_from": "candidate"}
    assert (newest() / "model.pt").read_bytes() == b"weights v1" * 1000
    assert (newest(1) / "model.pt").read_bytes() == b"weights v1" * 1000, "one inode, both snapshots mended"
    assert server.verify({"seq": 2})["ok"] and server.verify({"seq": 1})["ok"]


def test_a_corrupt_candidate_is_mended_from_a_snapshot(host: Path) -> None:
    corrupt(Path(promotion.candidate_dir()) / "model.pt")
    [found] = scrub.scrub({"budget_bytes": 1 << 30})["corrupt"]
    assert found["where"] == "candidate" and found["repaired_from"] == "snapshot 2"
    assert promotion.candidate_seq() == 2
    assert (Path(promotion.candidate_dir()) / "model.pt").read_bytes() == b"weights v1" * 1000


def test_with_every_copy_wrong_the_path_is_sent_again_and_the_candidate_not_promoted(host: Path) -> None:
    corrupt(newest() / "model.pt")
    corrupt(newest(1) / "model.pt")  # this harness copies each snapshot whole: one more copy to spoil
    corrupt(Path(promotion.candidate_dir()) / "model.pt")
    found = scrub.scrub({"budget_bytes": 1 << 30})["corrupt"]
    assert {f["repaired_from"] for f in found} == {None}
    assert common.suspects() == ["model.hard", "model.pt"] and promotion.candidate_seq() is None
    assert server.status({})["suspects"] == ["model.hard", "model.pt"]
    # The next pass sends them again (the engine adds suspects to what it copies): snapshot 3 and candidate clean.
    commit_source_resending(host, 3, ["model.hard", "model.pt"])
    assert common.suspects() == []
    assert server.verify({"seq": 3})["ok"] and promotion.candidate_seq() == 3
    assert (Path(promotion.candidate_dir()) / "model.pt").read_bytes() == b"weights v1" * 1000


def test_a_small_budget_resumes_where_it_stopped_and_still_finds_it(host: Path) -> None:
    corrupt(newest() / "model.pt")
    rounds, found = 0, []
    while True:
        rounds += 1
        result = scrub.scrub({"budget_bytes": 1})  # one file per call
        found += result["corrupt"]
        if result["round_complete"]:
            break
    assert rounds > 1 and [f["path"] for f in found] == ["model.hard"]


def commit_source_resending(host: Path, seq: int, paths: list[str]) -> None:
    """A pass that copies ``paths`` again though unchanged, as the engine does for suspects."""
    import shutil

    base = snapshots.list_snapshots()[-1]
    entries = server.scan({"root": str(host / "source"), "use_cache": False})["entries"]
    snapshots.stage({"epoch": 1, "base_seq": base, "replace": paths, "delete": []})
    tree = Path(common.incoming_dir(1)) / "tree"
    shutil.copy2(host / "source" / paths[0], tree / paths[0])
    for name in paths[1:]:
        os.link(tree / paths[0], tree / name)  # as rsync -H recreates the group
    server.commit({"epoch": 1, "seq": seq, "entries": entries, "keep": 3, "record": {}})
