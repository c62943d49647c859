"""Which adapters are in host memory, and getting the others there off the serving loop.

Engine-agnostic: ``HostLRU`` is the policy (events in, eviction actions out)
and ``ColdLoader`` runs loads on background threads; the SGLang glue carries
out what they decide.
"""

from sglang_mint.residency.host_lru import HostLRU
from sglang_mint.residency.loader import ColdLoader, LoadResult

__all__ = ["HostLRU", "ColdLoader", "LoadResult"]
