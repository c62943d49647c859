"""Many engines behind SGLang's gateway, SMG, with adapter affinity.

- ``middleware.py``: the WebAssembly request middleware that turns
  ``model=<adapter-id>`` into SMG's form (``model=<base>``, ``lora_path``,
  ``X-SMG-Routing-Key``), so clients keep the one-engine contract;
- ``smg.py``: starting SMG with a routing policy (consistent hashing unless told) and tight
  health checks;
- ``registration.py``: an engine joining and leaving the gateway (``--mint-gateway``).
"""
