"""The Vast emulator's market: an offer catalogue generated from a seed, and Vast's filter language over it.

The catalogue is deterministic for a seed (``DUMONT_LOCAL_VAST_SEED``): realistic GPU models and memory (in MB,
as Vast reports it), prices ($/h per GPU; an RTX 4090 between about $0.30 interruptible and $0.90 on demand),
reliabilities from 0.90 to 0.999, machine and host ids, and geolocations such as ``"Bangkok, TH"``. Its first
offers are laid out so that the seed's default criteria (≤ $0.50/h, ≥ 8 GB, reliability ≥ 0.98, TH/VN/JP/EU)
always find machines, whatever the seed.

Filters are the bodies the CLI sends (cloud-apis.md §1.4): ``{"field": {"op": value}}`` with eq, neq, gt, gte,
lt, lte, in, notin; numbers may arrive as strings; ``geolocation`` compares the country code. A condition on a
field the offers do not have is ignored, as the real CLI only warns about unknown fields.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_SEED: Final = 20260
CATALOGUE_SIZE: Final = 240
DEFAULT_LIMIT: Final = 64
HOURS_PER_MONTH: Final = 720.0  # storage_cost is $/GB/month; dph_total adds it per hour
CONTROL_KEYS: Final = frozenset({"order", "type", "limit", "allocated_storage", "disable_bundling"})


@dataclass(frozen=True)
class GpuModel:
    """One GPU model and its market: memory in MB, on-demand $/h per GPU, the lowest bid per GPU."""

    name: str
    ram_mb: int
    on_demand: tuple[float, float]
    bid_floor: float
    weight: int
    dlperf: float
    tflops: float


MODELS: Final = (
    GpuModel("RTX 3060", 12288, (0.07, 0.16), 0.04, 6, 9.5, 12.7),
    GpuModel("RTX 3070", 8192, (0.09, 0.18), 0.05, 4, 13.0, 20.3),
    GpuModel("RTX 3080", 10240, (0.12, 0.25), 0.07, 5, 18.0, 29.8),
    GpuModel("RTX 3090", 24576, (0.18, 0.45), 0.11, 10, 22.0, 35.6),
    GpuModel("RTX 4070", 12282, (0.13, 0.28), 0.08, 4, 20.0, 29.1),
    GpuModel("RTX 4080", 16376, (0.25, 0.55), 0.15, 5, 31.0, 48.7),
    GpuModel("RTX 4090", 24564, (0.40, 0.90), 0.30, 14, 44.0, 82.6),
    GpuModel("RTX A4000", 16376, (0.14, 0.30), 0.08, 4, 12.0, 19.2),
    GpuModel("RTX A5000", 24564, (0.22, 0.45), 0.13, 4, 18.0, 27.8),
    GpuModel("RTX A6000", 49140, (0.45, 0.90), 0.28, 4, 27.0, 38.7),
    GpuModel("L40S", 46068, (0.70, 1.20), 0.45, 3, 48.0, 91.6),
    GpuModel("A100 PCIE", 40960, (0.70, 1.30), 0.45, 3, 40.0, 19.5),
    GpuModel("A100 SXM4", 81920, (1.00, 1.80), 0.65, 3, 52.0, 19.5),
    GpuModel("H100 SXM", 81559, (1.80, 3.00), 1.20, 3, 110.0, 66.9),
    GpuModel("Tesla V100", 16384, (0.15, 0.35), 0.09, 2, 14.0, 15.7),
)

LOCATIONS: Final = (
    ("Bangkok, TH", 6), ("Chiang Mai, TH", 2), ("Hanoi, VN", 3), ("Ho Chi Minh City, VN", 3), ("Tokyo, JP", 5),
    ("Osaka, JP", 2), ("Frankfurt, DE", 4), ("Amsterdam, NL", 3), ("Paris, FR", 2), ("Warsaw, PL", 2),
    ("Madrid, ES", 2), ("Stockholm, SE", 1), ("Prague, CZ", 1), ("Bucharest, RO", 1), ("Helsinki, FI", 1),
    ("London, GB", 2), ("Texas, US", 6), ("California, US", 5), ("Virginia, US", 3), ("Quebec, CA", 2),
    ("Seoul, KR", 2), ("Singapore, SG", 2), ("Taipei, TW", 2), ("Hong Kong, HK", 2), ("Mumbai, IN", 1),
    ("Sydney, AU", 1), ("Sao Paulo, BR", 1), ("Johannesburg, ZA", 1),
)

# Laid out first so the default criteria always match: cheap ≥ 8 GB single GPUs in TH, VN, JP and the EU.
_ANCHOR_PLACES: Final = ("Bangkok, TH", "Hanoi, VN", "Tokyo, JP", "Frankfurt, DE", "Amsterdam, NL", "Paris, FR",
                         "Chiang Mai, TH", "Ho Chi Minh City, VN", "Osaka, JP", "Warsaw, PL")
_ANCHOR_MODELS: Final = ("RTX 4090", "RTX 3090", "RTX 3080", "RTX A4000", "RTX A5000", "RTX 4080", "RTX 3070")
_ANCHORS: Final = 28


def generate_catalogue(seed: int, size: int = CATALOGUE_SIZE) -> list[dict[str, Any]]:
    """The market's offers for ``seed``: the same list every time, anchors first."""
    rng = random.Random(seed)  # noqa: S311 -- a reproducible market, not a secret
    ids = rng.sample(range(1_000_000, 29_999_999), size)
    machines = rng.sample(range(1_000, 60_000), size)
    by_name = {m.name: m for m in MODELS}
    offers = []
    for index in range(size):
        if index < _ANCHORS:
            model = by_name[_ANCHOR_MODELS[index % len(_ANCHOR_MODELS)]]
            place, gpus, reliability = _ANCHOR_PLACES[index % len(_ANCHOR_PLACES)], 1, rng.uniform(0.982, 0.999)
            low = model.on_demand[0]
            base = rng.uniform(low, min(model.on_demand[1], max(low, 0.45)))
        else:
            model = rng.choices(MODELS, weights=[m.weight for m in MODELS])[0]
            place = rng.choices([p for p, _ in LOCATIONS], weights=[w for _, w in LOCATIONS])[0]
            gpus = rng.choice((1, 1, 1, 1, 1, 1, 2, 2, 4, 8))
            reliability = 0.90 + 0.099 * rng.random() ** 0.4  # most hosts are reliable; some are not
            base = rng.uniform(*model.on_demand)
        bid = max(model.bid_floor, base * rng.uniform(0.55, 0.8))
        offers.append(_offer(rng, offer_id=ids[index], machine_id=machines[index], model=model, place=place,
                             gpus=gpus, reliability=reliability, base=base, bid=bid))
    return offers


def _offer(rng: random.Random, *, offer_id: int, machine_id: int, model: GpuModel, place: str, gpus: int,
           reliability: float, base: float, bid: float) -> dict[str, Any]:
    cores = min(128, gpus * rng.choice((8, 12, 16, 24, 32)))
    verified = rng.random() < 0.92
    return {
        "id": offer_id, "ask_contract_id": offer_id, "bundle_id": offer_id, "machine_id": machine_id,
        "host_id": rng.randint(10_000, 400_000), "gpu_name": model.name, "num_gpus": gpus,
        "gpu_ram": model.ram_mb, "gpu_total_ram": model.ram_mb * gpus, "gpu_frac": 1.0,
        "cpu_name": rng.choice(("AMD EPYC 7543", "AMD Ryzen 9 7950X", "Intel Xeon Gold 6338", "AMD EPYC 9354")),
        "cpu_cores": cores, "cpu_cores_effective": float(cores), "cpu_ghz": round(rng.uniform(2.4, 4.5), 1),
        "cpu_ram": gpus * rng.choice((32, 64, 128)) * 1024, "disk_space": float(rng.choice((120, 250, 500, 1000))),
        "disk_bw": round(rng.uniform(800, 6000), 1), "inet_up": round(rng.uniform(80, 2500), 1),
        "inet_down": round(rng.uniform(200, 5000), 1), "pcie_bw": round(rng.uniform(6, 25), 1),
        "dph_base": round(base * gpus, 4), "min_bid": round(bid * gpus, 4),
        "storage_cost": round(rng.uniform(0.1, 0.3), 3), "reliability": round(reliability, 4),
        "reliability2": round(reliability, 4), "geolocation": place,
        "cuda_max_good": rng.choice((12.2, 12.4, 12.8)),
        "driver_version": rng.choice(("535.183.01", "550.127.05", "560.35.03")),
        "dlperf": round(model.dlperf * gpus * rng.uniform(0.9, 1.05), 2), "total_flops": model.tflops * gpus,
        "duration": float(rng.randint(3, 180) * 86400), "direct_port_count": rng.randint(20, 500),
        "public_ipaddr": f"203.0.113.{rng.randint(1, 254)}", "static_ip": rng.random() < 0.5,
        "verification": "verified" if verified else "unverified", "verified": verified, "external": False,
        "rentable": True, "rented": False, "hosting_type": 0, "compute_cap": 890 if "40" in model.name else 860,
        "os_version": "22.04", "vms_enabled": False,
    }


def priced(offer: Mapping[str, Any], kind: str, storage_gb: float) -> dict[str, Any]:
    """An offer as a search of ``kind`` sees it: dph_total at the on-demand price or the minimum bid, plus storage."""
    row = dict(offer)
    is_bid = kind == "bid"
    storage = float(offer["storage_cost"]) * storage_gb / HOURS_PER_MONTH
    total = round((offer["min_bid"] if is_bid else offer["dph_base"]) + storage, 4)
    row.update(dph_total=total, is_bid=is_bid, dlperf_per_dphtotal=round(offer["dlperf"] / total, 2),
               flops_per_dphtotal=round(offer["total_flops"] / total, 2),
               score=round(offer["dlperf"] / total * offer["reliability"], 2))
    return row


def matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Whether ``row`` satisfies every condition of a Vast filter body (control keys and unknown fields aside)."""
    for field, conditions in filters.items():
        if field in CONTROL_KEYS or field not in row or not isinstance(conditions, Mapping):
            continue
        value = row[field]
        if field == "geolocation" and isinstance(value, str):
            value = value.strip()[-2:].upper()
        if not all(_holds(value, op, operand) for op, operand in conditions.items()):
            return False
    return True


def _holds(value: Any, op: str, operand: Any) -> bool:
    if op in ("in", "notin"):
        members = operand if isinstance(operand, list) else [operand]
        found = any(_equal(value, member) for member in members)
        return found if op == "in" else not found
    if op in ("eq", "neq"):
        return _equal(value, operand) == (op == "eq")
    number, bound = _as_float(value), _as_float(operand)
    if number is None or bound is None:
        return False
    comparisons = {"gt": number > bound, "gte": number >= bound, "lt": number < bound, "lte": number <= bound}
    return comparisons.get(op, True)  # an operator we do not know filters nothing


def _equal(value: Any, operand: Any) -> bool:
    if isinstance(value, bool) or isinstance(operand, bool):
        return str(value).lower() == str(operand).lower()
    if value is None or operand is None:
        return value is None and operand is None
    number, other = _as_float(value), _as_float(operand)
    if number is not None and other is not None:
        return number == other
    return str(value).strip().casefold() == str(operand).strip().casefold()


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def order_rows(rows: Iterable[dict[str, Any]], order: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Rows sorted by ``[[field, "asc"|"desc"], ...]``; rows without a field sort after those with it."""
    ordered = list(rows)
    for field, direction in reversed([tuple(item[:2]) for item in order if len(item) >= 2]):
        present = [r for r in ordered if r.get(field) is not None]
        absent = [r for r in ordered if r.get(field) is None]
        present.sort(key=lambda r: _sort_key(r[field]), reverse=str(direction).lower() == "desc")
        ordered = present + absent
    return ordered


def _sort_key(value: Any) -> tuple[int, float, str]:
    number = _as_float(value)
    return (0, number, "") if number is not None else (1, 0.0, str(value))


def search(catalogue: Iterable[Mapping[str, Any]], body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The offers a filter body selects, priced for its type and storage, ordered and limited as it asks."""
    kind = str(body.get("type") or "on-demand")
    storage = _as_float(body.get("allocated_storage"))
    rows = [priced(o, kind, 5.0 if storage is None else storage) for o in catalogue]
    rows = [r for r in rows if matches(r, body)]
    order = body.get("order")
    rows = order_rows(rows, order if isinstance(order, list) else [["score", "desc"]])
    limit = _as_float(body.get("limit"))
    return rows[: int(limit) if limit is not None and limit > 0 else DEFAULT_LIMIT]
