"""Adapter placement with bounded loads: affinity kept, each engine's share capped by request rate.

Consistent hashing keeps every request for an adapter on one engine, but an engine's share is
the luck of where the popular adapters hash (604 / 396 of 1,000 zipf requests on two engines).
Bounding requests in flight instead (SMG's prefix_hash) evens the shares but walks single
requests to engines that do not hold their adapter, at the price of cold loads. Here whole
adapters move, by their measured request rate (consistent hashing with bounded loads,
Mirrokni, Thorup and Zadimoghaddam, 2018, over rates):

    capacity = load_factor x the mean engine load
    adapters by rate, busiest first:
        a head adapter (rate >= capacity x head_share) -> the least loaded engine
        any other -> the first engine on its ring walk with load + rate <= capacity
                     (the least loaded engine if none)
    an adapter placed off its ring home gets a routing key that lands there (SMGRing.key_for)

Why the head is dealt out: placed on their ring walks, the busiest adapters fill the first
engines' bounds and leave the whole long tail to the others. Shares come out even, but one
engine then does most of the cold loads (in a simulation of 8-adapter host caches over zipf(1.1)
traffic, the busiest engine's share of cold loads was 1.7 / 1.9 x the mean on 2 / 3 engines,
against 1.2 / 1.5 for plain consistent hashing; 1.1 / 1.4 with the head dealt out, and the worst
of 12 rings' max/mean shares fell from 1.24 to 1.11 on 3 engines).

The gateway's middleware carries the moved adapters' keys (middleware.py); an adapter not in the
table, or whose engine is down, falls back to SMG's ring, as with plain affinity. Rates come from
the engines' usage ledger (usage/ledger.py: requests per adapter over a window).

    placement = place_adapters({"acme/bot": 120.0, "acme/tutor": 30.0, ...}, worker_urls)
    placement.routing_keys      # {"acme/tutor": "acme/tutor#2"}: only the adapters that moved
    placement.planned_max_over_mean
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sglang_mint.gateway.smg_ring import SMGRing

DEFAULT_LOAD_FACTOR = 1.05
DEFAULT_HEAD_SHARE = 1 / 16  # an adapter with this share of an engine's capacity is dealt out, not walked
MAX_MOVED = 1024  # keys the middleware carries; the rest of the catalog stays on the ring


@dataclass
class Placement:
    """Where each rated adapter goes, and the routing keys of those that left their ring home."""

    engine_of: dict[str, str]
    routing_keys: dict[str, str]
    planned_load: dict[str, float]
    load_factor: float
    unmovable: list[str] = field(default_factory=list)  # over capacity at home, no key fits 128 bytes

    @property
    def planned_max_over_mean(self) -> float:
        loads = list(self.planned_load.values())
        total = sum(loads)
        return max(loads) * len(loads) / total if total else 1.0

    def summary(self) -> dict:
        return {"adapters": len(self.engine_of), "moved": len(self.routing_keys),
                "unmovable": len(self.unmovable), "load_factor": self.load_factor,
                "planned_max_over_mean": round(self.planned_max_over_mean, 3),
                "planned_load": {u: round(v, 1) for u, v in sorted(self.planned_load.items())}}


def place_adapters(rates: Mapping[str, float], ring_urls: Iterable[str], healthy_urls: Iterable[str] | None = None,
                   load_factor: float = DEFAULT_LOAD_FACTOR, max_moved: int = MAX_MOVED,
                   head_share: float = DEFAULT_HEAD_SHARE) -> Placement:
    """Place each adapter of ``rates`` (requests per unit time, any unit) on one engine.

    ``ring_urls`` are the model's registered workers (SMG's ring holds all of them); adapters go
    only to ``healthy_urls`` (default: all). Busier adapters are placed first; those with at
    least ``head_share`` of an engine's capacity go to the least loaded engine (its ring home
    when that is among the least loaded), the rest along their ring walk under the bound."""
    if load_factor < 1.0:
        raise ValueError(f"load_factor {load_factor}: must be at least 1.0 (1.0 asks for exactly even shares)")
    ring = SMGRing(ring_urls)
    healthy = set(ring.urls if healthy_urls is None else healthy_urls)
    if not healthy <= set(ring.urls):
        raise ValueError(f"healthy workers {sorted(healthy - set(ring.urls))} are not on the ring")
    if not healthy:
        raise ValueError("no healthy worker to place adapters on")
    load = {url: 0.0 for url in sorted(healthy)}
    total = sum(max(0.0, r) for r in rates.values())
    capacity = load_factor * total / len(load)
    placement = Placement({}, {}, load, load_factor)
    for adapter, rate in sorted(rates.items(), key=lambda kv: (-kv[1], kv[0])):
        rate = max(0.0, rate)
        walk = [url for url in ring.walk(adapter) if url in healthy]
        home = walk[0]
        if rate >= head_share * capacity:
            target = min(walk, key=load.__getitem__)  # the first of the least loaded, in walk order
        else:
            target = next((url for url in walk if load[url] + rate <= capacity), min(walk, key=load.__getitem__))
        key = ring.key_for(adapter, target) if target != home and len(placement.routing_keys) < max_moved else None
        if target != home and key is None:
            placement.unmovable.append(adapter)
            target = home
        if target != home:
            placement.routing_keys[adapter] = key
        placement.engine_of[adapter] = target
        load[target] += rate
    return placement
