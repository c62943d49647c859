"""Many engines behind SGLang's gateway, SMG, with adapter affinity.

- ``middleware.py``: the WebAssembly request middleware that turns
  ``model=<adapter-id>`` into SMG's form (``model=<base>``, ``lora_path``,
  ``X-SMG-Routing-Key``), so clients keep the one-engine contract;
- ``smg.py``: starting SMG with a routing policy (consistent hashing unless told) and tight
  health checks;
- ``registration.py``: an engine joining and leaving the gateway (``--mint-gateway``);
- ``placement.py``, ``smg_ring.py``: adapters placed whole on engines by request rate, each
  engine's share bounded, and the routing keys that land them on SMG's ring where placed;
- ``cli.py``: ``mint gateway rebalance``.
"""
