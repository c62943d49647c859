"""Which form an adapter folder holds: PEFT weights or a packed file (``adapter.mintpack``).

Every reader of a folder asks here: the catalog's publish, the trainer client's upload, SGLang's
load (sglang_mint.sglang.packed_loader) and ``mint pack``. So a folder is never published in one
form and served in the other. A folder holding both is refused: after a retrain over a packed
folder, or ``mint pack SRC SRC``, either file may be the stale one, and nothing in the folder says
which. PEFT weights are what SGLang's loader reads from a folder (``*.safetensors``, else ``*.bin``
or ``*.pt``), less the training state transformers' Trainer writes beside them in a checkpoint folder
(``training_args.bin``, ``optimizer.pt``...: SGLang's ``filter_files_not_needed_for_inference``); the
catalog takes only ``adapter_model.safetensors`` of them (adapters/peft.py).
"""

from __future__ import annotations

import fnmatch
import os

from sglang_mint.adapters.errors import InvalidAdapter

PACKED = "adapter.mintpack"  # the packed format's file (sglang_mint.packed.format.PACKED_FILE)
PEFT_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")
# Never read as weights by SGLang (sglang.srt.model_loader.weight_utils, matched as a name's end as there)
TRAINING_STATE = ("training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")


def peft_weight_files(folder: str) -> list[str]:
    """The names in ``folder`` that SGLang's loader would read as weights: ``["adapter_model.safetensors"]``."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in PEFT_WEIGHT_FILES)
                  and not n.endswith(TRAINING_STATE) and os.path.isfile(os.path.join(folder, n)))


def packed_file(folder: str) -> str | None:
    """``folder``'s packed file when a packed adapter is what it holds, None when it holds none:
    ``"/v/acme/bot@3"`` -> ``"/v/acme/bot@3/adapter.mintpack"``. InvalidAdapter when it holds PEFT
    weights beside it."""
    path = os.path.join(folder, PACKED)
    if not os.path.isfile(path):
        return None
    weights = peft_weight_files(folder)
    if weights:
        raise InvalidAdapter(
            f"{folder}: holds both {PACKED} and {', '.join(weights)}, and nothing says which one is the adapter; "
            f"remove the stale one (`mint pack SRC DST` writes {PACKED} and adapter_config.json into a folder "
            "of their own)")
    return path
