"""The host agent's operations, run in-process against temporary directories (no SSH needed)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from dumont.agent import common, pairing, scan, server, snapshots


def age(path: Path, seconds: float = 60) -> None:
    """Make a file look written long ago (its ctime cannot be changed, so only mtime moves)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_scan_lists_every_kind_of_entry_with_raw_names(host: Path) -> None:
    ws = host / "workspace"
    raw = os.path.join(os.fsencode(ws), b"\xffodd")
    with open(raw, "wb") as handle:
        handle.write(b"x")
    (ws / "dir").mkdir()
    os.symlink("/etc", ws / "dir" / "link")
    (ws / "a").write_bytes(b"aa")
    os.link(ws / "a", ws / "b")
    os.mkfifo(ws / "fifo")
    result = server.scan({})
    paths = {e[common.PATH]: e for e in result["entries"]}
    assert set(paths) == {".", "a", "b", "dir", "dir/link", "\udcffodd"}
    assert paths["dir/link"][common.DATA] == "/etc"
    assert paths["b"][common.LINK] == "a" and paths["a"][common.LINK] is None
    assert paths["a"][common.DATA] == paths["b"][common.DATA]
    assert result["skipped"] == ["fifo"]
    assert result["files"] == 3


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """From now on, the names of the files the agent hashes, in order."""
    calls: list[bytes] = []
    real = scan.hash_file

    def counting(path: bytes, before: os.stat_result) -> str | None:
        calls.append(os.path.basename(path))
        return real(path, before)

    monkeypatch.setattr(scan, "hash_file", counting)
    return calls


def test_scan_reuses_hashes_only_for_files_older_than_the_racy_window(host: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ws = host / "workspace"
    (ws / "old").write_bytes(b"old")
    (ws / "fresh").write_bytes(b"fresh")
    calls = count_hashes(monkeypatch)
    monkeypatch.setattr(scan, "CACHE_TRUST_SECONDS", 0.0)
    server.scan({})
    assert sorted(calls) == [b"fresh", b"old"]
    calls.clear()
    server.scan({})
    assert calls == [], "unchanged files are never hashed twice"
    monkeypatch.setattr(scan, "CACHE_TRUST_SECONDS", 3600.0)
    (ws / "fresh").write_bytes(b"FRESH")
    server.scan({})
    calls.clear()
    server.scan({})
    assert calls == [b"fresh"], "a file changed within the racy window is hashed again"


def test_a_file_that_changes_while_being_hashed_has_no_hash(host: Path) -> None:
    path = host / "workspace" / "f"
    path.write_bytes(b"v1")
    before = os.lstat(path)
    path.write_bytes(b"v2-longer")
    assert scan.hash_file(os.fsencode(path), before) is None
    assert scan.hash_file(os.fsencode(path), os.lstat(path)) is not None


def test_epochs_only_move_forward(host: Path) -> None:
    assert common.read_epoch() == 0
    assert server.set_epoch({"epoch": 3}) == {"epoch": 3}
    with pytest.raises(common.Failure, match="epoch 2 is older than this host's epoch 3"):
        server.set_epoch({"epoch": 2})
    assert server.set_epoch({"epoch": 1, "force": True}) == {"epoch": 1}


def stage_and_fill(host: Path, epoch: int, base: int | None, replace: list[str]) -> Path:
    """Stage a pass and copy the replaced paths in, as rsync would."""
    snapshots.stage({"epoch": epoch, "base_seq": base, "replace": replace, "delete": []})
    tree = Path(common.incoming_dir(epoch)) / "tree"
    for name in replace:
        src = host / "workspace" / name
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, tree / name)
    return tree


def commit(seq: int, epoch: int = 1) -> dict[str, object]:
    entries = server.scan({"use_cache": False})["entries"]
    return snapshots.commit({"epoch": epoch, "seq": seq, "entries": entries, "keep": 2, "record": {}})


def test_stage_then_commit_makes_an_immutable_snapshot(host: Path) -> None:
    ws = host / "workspace"
    (ws / "a").write_bytes(b"1")
    (ws / "b").write_bytes(b"2")
    stage_and_fill(host, 1, None, ["a", "b"])
    commit(1)
    (ws / "a").write_bytes(b"changed")
    tree = stage_and_fill(host, 1, 1, ["a"])
    assert os.stat(tree / "b").st_ino == os.stat(Path(common.snapshot_path(1)) / "tree" / "b").st_ino
    commit(2)
    assert (Path(common.snapshot_path(1)) / "tree" / "a").read_bytes() == b"1"
    assert (Path(common.snapshot_path(2)) / "tree" / "a").read_bytes() == b"changed"
    assert server.verify({"seq": 2})["ok"]
    assert snapshots.last_pass()["seq"] == 2  # type: ignore[index]


def test_commit_refuses_a_tree_that_does_not_match(host: Path) -> None:
    ws = host / "workspace"
    (ws / "a").write_bytes(b"1")
    tree = stage_and_fill(host, 1, None, ["a"])
    (tree / "a").write_bytes(b"torn")
    with pytest.raises(common.Failure, match="'a' differs in size, mtime, content"):
        commit(1)
    assert snapshots.list_snapshots() == []


def test_an_interrupted_pass_leaves_the_snapshot_and_is_discarded_next_time(host: Path) -> None:
    ws = host / "workspace"
    (ws / "a").write_bytes(b"1")
    stage_and_fill(host, 1, None, ["a"])
    commit(1)
    (ws / "a").write_bytes(b"2")
    tree = stage_and_fill(host, 1, 1, ["a"])
    (tree / ".a.XyZ123").write_bytes(b"rsync temp file left by a kill")
    stage_and_fill(host, 1, 1, ["a"])  # the next pass starts over
    assert not (tree / ".a.XyZ123").exists()
    assert server.verify({"seq": 1})["ok"]


def test_retention_prunes_the_oldest(host: Path) -> None:
    ws = host / "workspace"
    for seq in range(1, 5):
        (ws / "a").write_bytes(str(seq).encode())
        stage_and_fill(host, 1, snapshots.list_snapshots()[-1] if snapshots.list_snapshots() else None, ["a"])
        commit(seq)
    assert snapshots.list_snapshots() == [3, 4]


def test_a_stale_epoch_cannot_stage_or_commit(host: Path) -> None:
    (host / "workspace" / "a").write_bytes(b"1")
    stage_and_fill(host, 1, None, ["a"])
    server.set_epoch({"epoch": 2})
    with pytest.raises(common.Failure, match="no longer this host's epoch"):
        commit(1)
    with pytest.raises(common.Failure, match="older than this host's epoch"):
        snapshots.stage({"epoch": 1, "base_seq": None, "replace": [], "delete": []})


def test_the_pass_log_survives_a_torn_last_line(host: Path) -> None:
    snapshots.append_pass({"seq": 7})
    with open(os.path.join(common.data_dir(), "passes.jsonl"), "ab") as handle:
        handle.write(b'{"seq": 8, "trunc')
    assert snapshots.last_pass() == {"seq": 7}


@pytest.mark.parametrize(
    ("command", "allowed"),
    [
        ("rsync --server -lHogDtpRSe.LsfxCIvu --timeout=30 --stats --numeric-ids --link-dest /x . in/", True),
        ("rsync --server -lHogDtpRSe.LsfxCIvu --bwlimit=100 . in/", True),
        ("rsync --server --sender -logDtpre.iLsfxC . /etc/", False),
        ("rsync --server -lHogDtpR --log-file=/etc/cron.d/x . in/", False),
        ("rsync --server -lHogDtpR --temp-dir=/tmp . in/", False),
        ("rsync --server -lHogDtpRK . in/", False),
        ("sh -c 'rm -rf /'", False),
        ("rsync --server -lHogDtpR", False),
    ],
)
def test_the_pair_key_runs_only_a_receive_into_staging(host: Path, command: str, allowed: bool) -> None:
    import shlex

    if allowed:
        argv = pairing.receive_argv(shlex.split(command), 4, 9)
        assert argv[-1] == os.path.join(common.incoming_dir(4), "tree") + "/"
        assert argv[-2] == "."
        assert argv[-3] == "--link-dest=" + os.path.join(common.snapshot_path(9), "tree")
        assert "/x" not in argv
    else:
        with pytest.raises(common.Failure):
            pairing.receive_argv(shlex.split(command), 4, 9)


def test_authorize_and_revoke_the_pair_key(host: Path) -> None:
    keys = host / "authorized_keys"
    keys.write_text("ssh-ed25519 AAAAuser user@laptop\n")
    pairing.authorize_pair({"pair": "p1", "public_key": "ssh-ed25519 AAAApair comment", "epoch": 3})
    pairing.authorize_pair({"pair": "p1", "public_key": "ssh-ed25519 AAAApair comment", "epoch": 4})
    lines = keys.read_text().splitlines()
    assert lines[0] == "ssh-ed25519 AAAAuser user@laptop"
    assert len(lines) == 2 and "receive 4" in lines[1] and lines[1].startswith('command="')
    assert ",restrict ssh-ed25519 AAAApair dumont-pair=p1" in lines[1]
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    result = pairing.revoke_pair({"pair": "p1"})
    assert result["removed"] == 1
    assert keys.read_text().splitlines() == ["ssh-ed25519 AAAAuser user@laptop"]


def test_a_fence_kills_this_standbys_older_receives_and_no_other_standbys(host: Path) -> None:
    import subprocess
    import sys

    (host / "data").mkdir(exist_ok=True)
    mine = os.path.realpath(host / "data")

    def receive(epoch: int, data: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "DUMONT_RECEIVE_EPOCH": str(epoch), "DUMONT_RECEIVE_DATA_DIR": data}
        return subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], env=env)

    old, current, neighbour = receive(1, mine), receive(3, mine), receive(1, str(host / "another standby"))
    try:
        common.write_epoch(3)
        assert pairing.revoke_pair({"pair": "p1"})["killed"] == 1
        assert old.wait(10) == -9
        assert current.poll() is None and neighbour.poll() is None, "not older, or not this standby's"
    finally:
        for proc in (old, current, neighbour):
            proc.kill()
            proc.wait()


def test_requests_are_answered_as_json_lines(host: Path) -> None:
    answer = json.loads(server.handle(b'{"id": 5, "op": "set_epoch", "args": {"epoch": 2}}'))
    assert answer == {"id": 5, "ok": True, "result": {"epoch": 2}}
    bad = json.loads(server.handle(b'{"id": 6, "op": "format_disk"}'))
    assert bad["ok"] is False and bad["error"]["kind"] == "UnknownOperation"


def test_only_files_that_stood_still_since_before_the_scan_are_settled(host: Path) -> None:
    ws = host / "workspace"
    (ws / "old").write_bytes(b"still")
    (ws / "moved").write_bytes(b"v1")
    st_old, st_moved = (ws / "old").stat(), (ws / "moved").stat()
    later = time.time() + 10  # a scan that started well after both files last changed
    files = [["old", st_old.st_size, st_old.st_mtime_ns], ["moved", st_moved.st_size, st_moved.st_mtime_ns],
             ["gone", 1, 1]]
    assert server.settled({"files": files, "since": later})["settled"] == ["old", "moved"]
    (ws / "moved").write_bytes(b"v2")  # rewritten after the scan: same size, new mtime
    assert server.settled({"files": files, "since": later})["settled"] == ["old"]
    assert server.settled({"files": files, "since": time.time()})["settled"] == [], "a recent change is racy"


def test_a_push_in_streams_splits_by_size_and_keeps_hard_links_together(tmp_path: Path) -> None:
    from dumont.agent.push import split_by_size, summed_stats

    for name, size in (("big", 900), ("mid", 500), ("small", 400), ("tiny", 10)):
        (tmp_path / name).write_bytes(b"x" * size)
    os.link(tmp_path / "small", tmp_path / "small-too")
    (tmp_path / "dir").mkdir()
    listed = ["big", "dir", "mid", "small", "small-too", "tiny", "gone"]
    groups = split_by_size(listed, 2, str(tmp_path))
    assert sorted(p for g in groups for p in g) == sorted(listed)  # every path once
    assert any({"small", "small-too"} <= set(g) for g in groups)  # a hard-link group travels whole
    assert {"dir", "gone"} <= set(groups[0])  # what has no size goes with the first stream
    loads = [sum((tmp_path / p).stat().st_size for p in g if (tmp_path / p).is_file() and p != "small-too")
             for g in groups]
    assert max(loads) <= 1.2 * min(loads)
    assert split_by_size(listed, 1, str(tmp_path)) == [listed]
    stats = "Total bytes sent: 1,000\nLiteral data: 10 bytes\n"
    assert summed_stats(stats + "\n" + stats, 2) == "Total bytes sent: 2000\nLiteral data: 20\n"


def test_files_the_source_vouches_for_are_not_read_by_inspect_or_commit_and_a_torn_one_is_still_refused(
        host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine inspects only what the source does not vouch for; the claims reach the commit through
    vouched.json, so a first pass of many files reads none of them twice. A claim holds only for the size and
    mtime it names: a file torn on the way (another size) is hashed and refused."""
    ws = host / "workspace"
    for name in ("a", "b"):
        (ws / name).write_bytes(name.encode() * 1000)
    entries = {e[common.PATH]: e for e in server.scan({"use_cache": False})["entries"]}
    stage_and_fill(host, 1, None, ["a", "b"])
    claims = {name: [e[common.SIZE], e[common.MTIME], e[common.DATA]] for name, e in entries.items()
              if e[common.KIND] == "f"}
    read = count_hashes(monkeypatch)
    assert snapshots.inspect({"epoch": 1, "vouched": claims, "paths": ["."]})["entries"]
    snapshots.commit({"epoch": 1, "seq": 1, "entries": list(entries.values()), "keep": 2, "record": {}})
    assert read == [], "neither inspect nor commit read a vouched file"

    (ws / "a").write_bytes(b"new" * 10)
    entries = {e[common.PATH]: e for e in server.scan({"use_cache": False})["entries"]}
    tree = stage_and_fill(host, 1, 1, ["a"])
    snapshots.inspect({"epoch": 1, "vouched": {"a": [entries["a"][common.SIZE], entries["a"][common.MTIME],
                                                      entries["a"][common.DATA]]}, "paths": []})
    (tree / "a").write_bytes(b"torn")
    with pytest.raises(common.Failure, match="'a' differs in size"):
        commit(2)


def test_the_pair_stream_prefers_aes_gcm_where_the_cpu_has_aes_instructions(tmp_path: Path) -> None:
    with_aes, without = tmp_path / "aes", tmp_path / "plain"
    with_aes.write_text("processor\t: 0\nflags\t\t: fpu sse2 aes avx2\n")
    without.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n")
    assert pairing.stream_ciphers(str(with_aes)).startswith("aes128-gcm@openssh.com,")
    assert pairing.stream_ciphers(str(without)).startswith("chacha20-poly1305@openssh.com,")
    assert pairing.stream_ciphers(str(tmp_path / "missing")).startswith("chacha20-poly1305@openssh.com,")
    assert "aes128-gcm@openssh.com" in pairing.stream_ciphers(str(without)), "either end may lack the other"


def test_a_commit_may_send_only_how_its_manifest_differs_from_the_base_snapshot(host: Path) -> None:
    """HostAgent.commit with a base: the standby merges the change into the base snapshot's manifest and writes
    the same manifest a whole one gives; a change of another snapshot than the staged base is refused."""
    ws = host / "workspace"
    for name in ("a", "b", "c"):
        (ws / name).write_bytes(name.encode())
    stage_and_fill(host, 1, None, ["a", "b", "c"])
    commit(1)
    (ws / "b").write_bytes(b"changed")
    (ws / "c").unlink()
    (ws / "d").write_bytes(b"new")
    whole = server.scan({"use_cache": False})["entries"]
    before = {e[common.PATH]: e for e in snapshots.snapshot_manifest(1)}
    changed = [e for e in whole if before.get(e[common.PATH]) != e]
    delta = {"base_seq": 1, "changed": changed, "removed": ["c"]}
    snapshots.stage({"epoch": 1, "base_seq": 1, "replace": ["b", "d"], "delete": ["c"]})
    tree = Path(common.incoming_dir(1)) / "tree"
    for name in ("b", "d"):
        shutil.copy2(ws / name, tree / name)
    with pytest.raises(common.Failure, match="a change of snapshot 7, but the pass was staged on 1"):
        snapshots.commit({"epoch": 1, "seq": 2, "delta": {**delta, "base_seq": 7}, "keep": 3, "record": {}})
    snapshots.commit({"epoch": 1, "seq": 2, "delta": delta, "keep": 3, "record": {}})
    assert snapshots.snapshot_manifest(2) == sorted(whole, key=lambda e: os.fsencode(e[common.PATH]))
    assert server.verify({"seq": 2})["ok"]
