"""Manifests are pure: tables of (base, source) -> diff, and (source, base, kept) -> expected snapshot."""

from __future__ import annotations

import pytest

from dumont.agent.scan import manifest_digest as agent_digest
from dumont.replication.manifest import (
    Entry,
    Manifest,
    describe_mismatch,
    diff_trees,
    expected_after_pass,
    mismatches,
)


def f(path: str, data: str | None = "h1", *, mode: int = 0o644, size: int = 1, mtime: int = 10,
      link: str | None = None) -> Entry:
    return Entry(path, "f", mode, size, mtime, data, link)


def d(path: str, *, mode: int = 0o755, mtime: int = 10) -> Entry:
    return Entry(path, "d", mode, 0, mtime, None)


def sym(path: str, target: str, *, mtime: int = 10) -> Entry:
    return Entry(path, "l", 0o777, len(target), mtime, target)


def m(*entries: Entry) -> Manifest:
    return Manifest.of([d("."), *entries])


@pytest.mark.parametrize(
    ("base", "source", "changed", "deleted", "hot"),
    [
        (None, m(f("a")), ["a"], [], []),
        (m(f("a")), m(f("a")), [], [], []),
        (m(f("a")), m(f("a", "h2")), ["a"], [], []),
        (m(f("a")), m(f("a", mtime=11)), ["a"], [], []),
        (m(f("a")), m(f("a", mode=0o600)), ["a"], [], []),
        (m(f("a")), m(), [], ["a"], []),
        (m(f("a")), m(f("a", None)), [], [], ["a"]),
        (m(d("x"), f("x/a")), m(d("x", mtime=99), f("x/a")), [], [], []),
        (m(d("x")), m(d("x", mode=0o700)), ["x"], [], []),
        (m(sym("l", "t1")), m(sym("l", "t2")), ["l"], [], []),
        (m(f("a"), f("b")), m(f("a"), f("b", "h9", link=None), f("c", link="a")), ["a", "b", "c"], [], []),
        (m(d("x"), f("x/a")), m(f("x")), ["x"], ["x/a"], []),
    ],
    ids=["first", "same", "content", "mtime", "mode", "deleted", "hot", "dir-mtime-only", "dir-mode",
         "symlink-target", "hard-link-group-expands", "dir-becomes-file"],
)
def test_diff_trees(base: Manifest | None, source: Manifest, changed: list[str], deleted: list[str],
                    hot: list[str]) -> None:
    diff = diff_trees(base, source)
    assert list(diff.changed) == changed
    assert list(diff.deleted) == deleted
    assert list(diff.hot) == hot


def test_a_kept_path_takes_the_base_version_or_disappears() -> None:
    base = m(f("a", "old"), d("x"))
    source = m(f("a", "new"), d("x"), f("x/new", "n"))
    expected = expected_after_pass(source, base, ["a", "x/new"])
    assert expected.by_path()["a"].data == "old"
    assert "x/new" not in expected.by_path()
    assert "x" in expected.by_path()


def test_orphans_of_a_kept_path_are_dropped() -> None:
    base = m(f("x", "was a file"))
    source = m(d("x"), f("x/child"))
    expected = expected_after_pass(source, base, ["x"])
    assert expected.by_path()["x"].kind == "f"
    assert "x/child" not in expected.by_path()


def test_a_hard_link_group_that_loses_its_leader_elects_the_next_member() -> None:
    source = m(f("a"), f("b", link="a"), f("c", link="a"))
    expected = expected_after_pass(source, None, ["a"])
    assert expected.by_path()["b"].link is None
    assert expected.by_path()["c"].link == "b"


def test_mismatches_and_their_description() -> None:
    want, have = m(f("a"), f("b")), m(f("a", "h2"), f("c"))
    assert mismatches(want, have) == ["a", "b", "c"]
    assert describe_mismatch("a", want.by_path()["a"], have.by_path()["a"]) == "a: differs in content"
    assert describe_mismatch("b", want.by_path()["b"], None) == "b: missing"
    assert describe_mismatch("c", None, have.by_path()["c"]) == "c: present but not in the manifest"


def test_digest_matches_the_agents_and_survives_odd_bytes() -> None:
    odd = b"caf\xe9\n\xff".decode("utf-8", "surrogateescape")
    manifest = m(f(odd), sym("link", odd))
    assert manifest.digest() == agent_digest(manifest.to_wire())
    assert Manifest.from_wire(manifest.to_wire()) == manifest


def test_entries_sort_by_raw_bytes() -> None:
    names = ["b", "a/b", "a", "\udcff", "Z", "a-b"]
    manifest = Manifest.of(f(n) for n in names)
    assert [e.path for e in manifest.entries] == sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape"))


def test_a_manifest_with_changes_is_the_manifest_of_the_changed_tree() -> None:
    """A scan's delta merged in (HostAgent.scan) gives exactly the manifest a full answer would: random trees of
    odd names, each changed by additions, replacements and removals."""
    import random

    rng = random.Random(20261208)
    names = ["a", "a/b", "a b", "a-b", "a/\udcff", "é", "z", "Z", "a.b", "a/b/c", "0", "a\nb"]
    for _ in range(300):
        tree = {n: f(n, f"h{rng.randint(0, 3)}") for n in rng.sample(names, rng.randint(0, len(names)))}
        after = dict(tree)
        for name in rng.sample(names, rng.randint(0, 5)):
            if name in after and rng.random() < 0.5:
                del after[name]
            else:
                after[name] = f(name, f"h{rng.randint(4, 9)}")
        changed = [e for n, e in after.items() if tree.get(n) != e]
        removed = [n for n in tree if n not in after]
        merged = Manifest.of(tree.values()).with_changes(changed, removed)
        assert merged == Manifest.of(after.values())
        assert merged.digest() == Manifest.of(after.values()).digest()
