"""The guards as a table: (source, base, epochs, policy) -> refused with which error, or allowed."""

from __future__ import annotations

import pytest

from dumont.errors import EmptySourceRefused, GuardRefused, MassDeletionRefused, StaleEpochRefused
from dumont.replication.guards import GuardPolicy, check_pass, human_bytes
from dumont.replication.manifest import Entry, Manifest, diff_trees


def files(n: int, prefix: str = "f") -> Manifest:
    return Manifest.of([Entry(".", "d", 0o755, 0, 1, None)] + [
        Entry(f"{prefix}{i}", "f", 0o644, 10, 1, f"h{i}") for i in range(n)])


CASES = [
    ("first pass", files(0), None, 1, 0, GuardPolicy(), None),
    ("empty source, empty standby", files(0), files(0), 1, 1, GuardPolicy(), None),
    ("empty source, populated standby", files(0), files(3), 1, 1, GuardPolicy(), EmptySourceRefused),
    ("empty allowed on purpose", files(0), files(3), 1, 1, GuardPolicy(allow_empty_source=True), None),
    ("near-empty source", files(2), files(100), 1, 1, GuardPolicy(), EmptySourceRefused),
    ("small standby is not judged by fractions", files(1), files(5), 1, 1, GuardPolicy(), None),
    ("half deleted is allowed", files(50), files(100), 1, 1, GuardPolicy(), None),
    ("most deleted", files(40), files(100), 1, 1, GuardPolicy(), MassDeletionRefused),
    ("mass delete allowed on purpose", files(40), files(100), 1, 1, GuardPolicy(allow_mass_delete=True), None),
    ("stale epoch", files(3), files(3), 1, 2, GuardPolicy(), StaleEpochRefused),
    ("newer epoch", files(3), files(3), 3, 2, GuardPolicy(), None),
]


@pytest.mark.parametrize(("name", "source", "base", "src_epoch", "standby_epoch", "policy", "error"), CASES,
                         ids=[c[0] for c in CASES])
def test_guard_table(name: str, source: Manifest, base: Manifest | None, src_epoch: int, standby_epoch: int,
                     policy: GuardPolicy, error: type[GuardRefused] | None) -> None:
    def run() -> None:
        check_pass(source=source, source_name="gpu-1", source_missing=False, source_epoch=src_epoch, base=base,
                   standby_name="cpu-1", standby_epoch=standby_epoch, diff=diff_trees(base, source), policy=policy)

    if error is None:
        run()
    else:
        with pytest.raises(error) as caught:
            run()
        assert "refusing to sync" in str(caught.value)
        assert caught.value.hint, "every refusal says how to proceed"


def test_messages_name_the_numbers() -> None:
    with pytest.raises(MassDeletionRefused, match=r"delete 60 of the 100 files.*60%.*50%"):
        source, base = files(40), files(100)
        check_pass(source=source, source_name="gpu-1", source_missing=False, source_epoch=1, base=base,
                   standby_name="cpu-1", standby_epoch=1, diff=diff_trees(base, source), policy=GuardPolicy())


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (999, "999 B"), (1500, "1.5 KB"), (1_200_000_000, "1.2 GB")])
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text
