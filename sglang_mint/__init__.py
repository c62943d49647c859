"""sglang-mint: LoRA adapters as the unit of deployment.

The core (everything outside ``sglang_mint.sglang``) never imports sglang; the
glue in ``sglang_mint.sglang`` is the only place that does.
"""

__version__ = "0.1.0"
