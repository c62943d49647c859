"""Read and check a PEFT LoRA folder before anything is written.

A folder is importable when it holds ``adapter_config.json`` (peft_type LORA,
r > 0, target_modules) and ``adapter_model.safetensors`` whose tensors are
exactly ``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight``
[out, r] for target modules, with in/out matching the base model for the dense
Llama/Qwen modules. Example for the tiny model (hidden 128, 2 kv heads of 32)
and r=8: ``base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight`` is
[8, 128] and ``...k_proj.lora_B.weight`` is [64, 8].

Everything is read into memory and checked here; the catalog writes blobs only
for an adapter that passed every check.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass

from sglang_mint.catalog.base import BaseModel
from sglang_mint.catalog.errors import BaseModelMismatch, InvalidAdapter

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"

# safetensors dtype -> (bytes per element, our dtype name)
DTYPES = {"F16": (2, "float16"), "BF16": (2, "bfloat16"), "F32": (4, "float32"), "F64": (8, "float64")}
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class PeftAdapter:
    config_bytes: bytes
    weights_bytes: bytes
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    dtype: str
    base_model_name: str | None


def read_safetensors_header(data: bytes, where: str) -> dict[str, tuple[str, list[int]]]:
    """Parse and bounds-check a safetensors buffer; return {name: (dtype, shape)}.

    Catches truncation (the header promises more bytes than the file has),
    overlapping or gapped data offsets, and shape/size disagreements, each
    with a message naming the file and tensor.
    """
    if len(data) < 8:
        raise InvalidAdapter(f"{where}: truncated safetensors file ({len(data)} bytes, no header)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise InvalidAdapter(f"{where}: truncated or corrupt safetensors (header of {n} bytes, file of {len(data)})")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as exc:
        raise InvalidAdapter(f"{where}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{where}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    payload = len(data) - 8 - n
    spans, out = [], {}
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InvalidAdapter(f"{where}: corrupt safetensors header entry for {name!r}") from None
        if dtype not in DTYPES:
            raise InvalidAdapter(f"{where}: tensor {name!r} has dtype {dtype}; LoRA weights must be F16, BF16 or F32")
        numel = 1
        for d in shape:
            numel *= d
        if end - start != numel * DTYPES[dtype][0] or start < 0:
            raise InvalidAdapter(f"{where}: tensor {name!r} of shape {shape} does not fit its data offsets")
        spans.append((start, end, name))
        out[name] = (dtype, list(shape))
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            raise InvalidAdapter(f"{where}: corrupt safetensors (tensor {name!r} starts at {start}, expected {pos})")
        pos = end
    if pos != payload:
        what = "truncated" if pos > payload else "corrupt"
        raise InvalidAdapter(f"{where}: {what} safetensors (tensors need {pos} data bytes, file has {payload})")
    return out


def _rank_for(module: str, config: dict) -> int:
    """PEFT's rule: a rank_pattern key matches a module path that ends with it."""
    for key, r in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return r
    return config["r"]


def _targeted(module: str, targets) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return module.rsplit(".", 1)[-1] in targets or module in targets


def parse_config(data: bytes, where: str) -> dict:
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise InvalidAdapter(f"{where}: malformed JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{where}: expected a JSON object")
    if config.get("peft_type") != "LORA":
        raise InvalidAdapter(f"{where}: peft_type is {config.get('peft_type')!r}; only LORA adapters are supported")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise InvalidAdapter(f"{where}: rank r must be a positive integer, got {r!r}")
    for key, pr in (config.get("rank_pattern") or {}).items():
        if not isinstance(pr, int) or pr <= 0:
            raise InvalidAdapter(f"{where}: rank_pattern[{key!r}] must be a positive integer, got {pr!r}")
    alpha = config.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise InvalidAdapter(f"{where}: lora_alpha must be a positive number, got {alpha!r}")
    targets = config.get("target_modules")
    if not targets or not isinstance(targets, (list, str)) or (
            isinstance(targets, list) and not all(isinstance(t, str) and t for t in targets)):
        raise InvalidAdapter(f"{where}: target_modules must be a non-empty list of module names, got {targets!r}")
    if config.get("use_dora"):
        raise InvalidAdapter(f"{where}: DoRA adapters (use_dora) are not supported")
    if config.get("modules_to_save"):
        raise InvalidAdapter(f"{where}: modules_to_save {config['modules_to_save']!r} is not supported (LoRA deltas only)")
    return config


def check_tensors(header: dict, config: dict, base: BaseModel, where: str) -> tuple[tuple[str, ...], str]:
    """Check names and shapes against the config and base; return (modules seen, dtype)."""
    pairs: dict[str, dict[str, list[int]]] = {}
    dtypes = set()
    for name, (dtype, shape) in header.items():
        m = _KEY.match(name)
        if not m:
            raise InvalidAdapter(f"{where}: unexpected tensor {name!r} (only lora_A/lora_B weights are supported)")
        pairs.setdefault(m["module"], {})[m["ab"]] = shape
        dtypes.add(dtype)
    if not pairs:
        raise InvalidAdapter(f"{where}: no LoRA tensors")
    if len(dtypes) > 1:
        raise InvalidAdapter(f"{where}: tensors mix dtypes {sorted(dtypes)}; one dtype expected")
    targets = config["target_modules"]
    seen = set()
    for module, ab in sorted(pairs.items()):
        short = module.rsplit(".", 1)[-1]
        if "A" not in ab or "B" not in ab:
            raise InvalidAdapter(f"{where}: module {module!r} has lora_{'A' if 'A' in ab else 'B'} but no "
                                 f"lora_{'B' if 'A' in ab else 'A'}")
        if not _targeted(module, targets):
            raise InvalidAdapter(f"{where}: module {module!r} has LoRA tensors but is not in target_modules {targets}")
        seen.add(short)
        a, b, r = ab["A"], ab["B"], _rank_for(module, config)
        if len(a) != 2 or len(b) != 2:
            raise InvalidAdapter(f"{where}: {module}: lora_A {a} and lora_B {b} must both be 2-D")
        if a[0] != r or b[1] != r:
            raise InvalidAdapter(
                f"{where}: {module}: lora_A {a} / lora_B {b} do not match rank r={r} (expected [r, in] and [out, r])")
        layer = _LAYER.search(module)
        if layer and int(layer[1]) >= base.num_hidden_layers:
            raise BaseModelMismatch(f"{where}: {module}: layer {layer[1]} does not exist in base model {base.name!r} "
                                    f"({base.num_hidden_layers} layers)")
        parent = module.rsplit(".", 2)[-2] if module.count(".") >= 1 else ""
        want = base.module_shape(parent, short)
        if want and (a[1], b[0]) != want:
            raise BaseModelMismatch(
                f"{where}: {module}: shapes [in={a[1]}, out={b[0]}] do not match base model {base.name!r} "
                f"({base.identity}), which has {short} [in={want[0]}, out={want[1]}]")
    if isinstance(targets, list):
        missing = [t for t in targets if t not in seen and not any(_targeted(m, [t]) for m in pairs)]
        if missing:
            raise InvalidAdapter(f"{where}: target_modules {missing} have no lora_A/lora_B tensors")
    return tuple(sorted(seen)), DTYPES[dtypes.pop()][1]


def read_peft_folder(folder: str, base: BaseModel) -> PeftAdapter:
    """Read and fully check a PEFT folder. Raises InvalidAdapter / BaseModelMismatch."""
    if not os.path.isdir(folder):
        raise InvalidAdapter(f"{folder!r} is not a folder (a PEFT adapter folder is expected)")
    cpath, wpath = os.path.join(folder, CONFIG), os.path.join(folder, WEIGHTS)
    if not os.path.exists(cpath):
        raise InvalidAdapter(f"{folder!r}: missing {CONFIG}")
    if not os.path.exists(wpath):
        if os.path.exists(os.path.join(folder, "adapter_model.bin")):
            raise InvalidAdapter(
                f"{folder!r}: adapter_model.bin is a pickle file and is refused (it can run code when loaded); "
                "convert it to adapter_model.safetensors")
        raise InvalidAdapter(f"{folder!r}: missing {WEIGHTS}")
    with open(cpath, "rb") as f:
        config_bytes = f.read()
    with open(wpath, "rb") as f:
        weights = f.read()
    return check_peft_bytes(config_bytes, weights, base, folder)


def check_peft_bytes(config_bytes: bytes, weights: bytes, base: BaseModel, where: str) -> PeftAdapter:
    config = parse_config(config_bytes, f"{where}/{CONFIG}")
    recorded = config.get("base_model_identity")
    if recorded and recorded != base.identity:
        raise BaseModelMismatch(f"{where}: adapter records base model identity {recorded!r}; "
                                f"this catalog serves {base.name!r} ({base.identity})")
    named = config.get("base_model_name_or_path")
    if isinstance(named, str) and os.path.isfile(os.path.join(named, "config.json")):
        from sglang_mint.catalog.base import load_base_model
        theirs = load_base_model(named)
        if theirs.identity != base.identity:
            raise BaseModelMismatch(f"{where}: adapter was trained on {named!r} ({theirs.identity}); "
                                    f"this catalog serves {base.name!r} ({base.identity})")
    header = read_safetensors_header(weights, f"{where}/{WEIGHTS}")
    try:  # second opinion from the reference parser (deserialize handles BF16, numpy does not)
        import safetensors
        safetensors.deserialize(weights)
    except Exception as exc:  # noqa: BLE001 - any parser complaint means corrupt
        raise InvalidAdapter(f"{where}/{WEIGHTS}: corrupt safetensors ({exc})") from None
    modules, dtype = check_tensors(header, config, base, where)
    return PeftAdapter(config_bytes, weights, config["r"], float(config.get("lora_alpha", config["r"])),
                       modules, dtype, config.get("base_model_name_or_path"))
