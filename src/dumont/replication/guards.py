"""Guards that keep a wrong source from winning over a good standby. Pure: manifests and numbers in, refusal out.

Mutagen's data-loss reports (a fresh, empty replica wiping the good one) and Syncthing's stale-copy overwrite are
the failures these guards exist for. Every refusal says what was found and how to override it on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

from dumont.errors import EmptySourceRefused, MassDeletionRefused, StaleEpochRefused
from dumont.replication.manifest import FILE, Manifest, TreeDiff


@dataclass(frozen=True)
class GuardPolicy:
    """Thresholds for the guards; the ``allow_*`` switches are for an operator who means it."""

    max_delete_fraction: float = 0.5
    near_empty_fraction: float = 0.05
    min_files_for_fractions: int = 10
    allow_empty_source: bool = False
    allow_mass_delete: bool = False


def human_bytes(n: int | float) -> str:
    """Bytes as a short human string (``1.2 GB``)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def check_pass(
    *,
    source: Manifest,
    source_name: str,
    source_missing: bool,
    source_epoch: int,
    base: Manifest | None,
    standby_name: str,
    standby_epoch: int,
    diff: TreeDiff,
    policy: GuardPolicy,
) -> None:
    """Raise a :class:`GuardRefused` subclass when the pass must not run; return quietly when it may."""
    if source_epoch < standby_epoch:
        raise StaleEpochRefused(
            f"refusing to sync from {source_name}: its epoch {source_epoch} is older than {standby_name}'s epoch "
            f"{standby_epoch}, so it is a fenced former primary",
            hint="a fenced host can never write to the standby again; replace it instead",
        )
    if base is None:
        return
    base_files, source_files = base.file_count, source.file_count
    if base_files == 0:
        return
    what = "does not exist" if source_missing else f"holds {source_files} files"
    if not policy.allow_empty_source and (
        source_files == 0
        or (base_files >= policy.min_files_for_fractions and source_files < policy.near_empty_fraction * base_files)
    ):
        raise EmptySourceRefused(
            f"refusing to sync: the workspace on {source_name} {what}, but {standby_name}'s last snapshot holds "
            f"{base_files} files ({human_bytes(base.total_bytes)}); copying it would wipe the standby",
            hint="nothing was deleted; if the workspace was emptied on purpose, sync with --allow-empty-source",
        )
    base_paths = base.index
    deleted_files = sum(1 for p in diff.deleted if base_paths[p].kind == FILE)
    if (
        not policy.allow_mass_delete
        and base_files >= policy.min_files_for_fractions
        and deleted_files > policy.max_delete_fraction * base_files
    ):
        raise MassDeletionRefused(
            f"refusing to sync: the pass would delete {deleted_files} of the {base_files} files in {standby_name}'s "
            f"last snapshot ({deleted_files / base_files:.0%}, more than the allowed "
            f"{policy.max_delete_fraction:.0%})",
            hint="nothing was deleted; if this is intended, sync with --allow-mass-delete",
        )
