"""Read and check a PEFT LoRA folder before anything is written.

A folder is importable when it holds ``adapter_config.json`` (peft_type LORA,
r > 0, finite lora_alpha > 0, a list of target_modules) and
``adapter_model.safetensors`` whose tensors are exactly ``<module>.lora_A.weight``
[r, in] and ``<module>.lora_B.weight`` [out, r] for target modules, each module
one of the base model's whose widths are known (module_paths.py: anything else
is refused, as SGLang would put it unchecked in the module its name mentions)
and in/out matching them (``BaseModel.module_shape``). Example for the tiny model (hidden 128, 2 kv heads
of 32) and r=8: ``base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight``
is [8, 128] and ``...k_proj.lora_B.weight`` is [64, 8]. MoE experts come in three
forms, each checked for rank, widths and expert count (E routed experts):

* per expert ``...mlp.experts.<e>.gate_proj`` [r, in] / [out, r], ``e < E``
  (also Mixtral's ``w1/w3/w2``);
* 3D ``...mlp.experts.gate_proj`` [E, r, in] / [E, out, r] (a lead of 1, a shared-outer
  tensor, is refused: SGLang serves it only for --lora-paths adapters);
* PEFT 0.21's fused experts (``target_parameters``): ``...mlp.experts.lora_A.weight``
  [E*r, in] / [out, r*E], one nesting depth (``.base_layer``) per parameter.

``r`` is the module's own rank (``rank_pattern``, see lora_keys.py; its keys
are module names, never regexes: pattern_keys.py).

Everything is read into memory and checked here, except by ``check_peft_file``,
which reads only the weights' header (an upload streamed to a file stays there,
so checking a 1 GiB adapter takes a small constant of memory); the catalog
writes blobs only for an adapter that passed every check. The safetensors
reading itself is safetensors_io.py's (its names are re-exported here).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
from dataclasses import dataclass
from typing import Any, Mapping

from sglang_mint.adapters.base_model import BaseModel
from sglang_mint.adapters.errors import BaseModelMismatch, InvalidAdapter
from sglang_mint.adapters.stacked_experts import held_tensor_count, stack_experts
from sglang_mint.adapters.lora_keys import KEY, PEFT_DEFAULT_ALPHA, PEFT_FUSED, ModuleRanks, fused_expert_params
from sglang_mint.adapters.module_paths import FAMILY_HELP, ModulePath, absent_from_layer, module_path, unservable
from sglang_mint.adapters.pattern_keys import SuffixTable
from sglang_mint.adapters.stack_fill import complete_stacks
from sglang_mint.adapters.safetensors_io import (DTYPES, MAX_HEADER_BYTES, map_safetensors, read_safetensors,
                                                 read_safetensors_header)
from sglang_mint.adapters.uniform_rank import uniform_lora, uniform_size
from sglang_mint.errors import shown

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"

_MEMORY_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}  # torch/numpy dtype name -> safetensors
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class PeftAdapter:
    config_bytes: bytes
    weights_bytes: bytes | None  # None when the weights stay in the file ``weights_path``
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    dtype: str
    base_model_name: str | None
    weights_path: str | None = None
    loaded_bytes: int = 0  # tensor bytes once ranks are padded to one (uniform.uniform_size)
    tensor_count: int = 0
    # PEFT 0.21's fused experts (``target_parameters``: ``mlp.experts.base_layer.lora_A.weight``), which
    # SGLang cannot file under any module: the catalog stores such an adapter packed (docs/packed.md).
    fused_experts: bool = False

    def weights(self) -> bytes:
        """The safetensors bytes, read from ``weights_path`` if they are not in memory (packing needs them)."""
        if self.weights_bytes is not None:
            return self.weights_bytes
        with open(self.weights_path, "rb") as f:
            return f.read()


def parse_config(data: bytes, where: str) -> dict:
    """adapter_config.json bytes -> the checked config dict (check_config)."""
    return check_config(_config_json(data, where), where)


def _config_json(data: bytes, where: str):
    """adapter_config.json bytes parsed; InvalidAdapter for malformed JSON."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidAdapter(f"{where}: malformed JSON ({exc})") from None
    except RecursionError:  # {"r":[[[[...]]]]} 100,000 deep, in the 1 MiB an upload's config may have
        raise InvalidAdapter(f"{where}: malformed JSON (nested too deep)") from None


def check_config(config: dict, where: str) -> dict:
    """The config rules of an import (LORA, r, alpha, patterns, targets, no DoRA); returns ``config``."""
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{where}: expected a JSON object")
    if config.get("peft_type") != "LORA":
        raise InvalidAdapter(f"{where}: peft_type is {config.get('peft_type')!r}; only LORA adapters are supported")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise InvalidAdapter(f"{where}: rank r must be a positive integer, got {r!r}")
    # rank_pattern, alpha_pattern and use_rslora are served exactly: uniform_rank.py rewrites such adapters
    # into the one-rank, one-scaling form SGLang reads before they reach its pool.
    for name in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(name) or {}, dict):
            raise InvalidAdapter(f"{where}: {name} must be a JSON object, got {config[name]!r}")
    for key, pr in (config.get("rank_pattern") or {}).items():
        if not isinstance(pr, int) or isinstance(pr, bool) or pr <= 0:
            raise InvalidAdapter(f"{where}: rank_pattern[{key!r}] must be a positive integer, got {pr!r}")
    for key, pa in (config.get("alpha_pattern") or {}).items():
        if not _positive_finite(pa):
            raise InvalidAdapter(f"{where}: alpha_pattern[{key!r}] must be a positive finite number, got {shown(pa)}")
    if not isinstance(config.get("use_rslora", False), bool):
        raise InvalidAdapter(f"{where}: use_rslora must be true or false, got {config['use_rslora']!r}")
    alpha = config.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    if not _positive_finite(alpha):
        raise InvalidAdapter(f"{where}: lora_alpha must be a positive finite number, got {shown(alpha)}")
    targets = config.get("target_modules")
    params = config.get("target_parameters")
    if (targets == [] and params and isinstance(params, list)  # PEFT 0.21's experts-only adapter
            and all(isinstance(t, str) and t for t in params)):
        targets = params
    if not targets or not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        # A string is a regex to PEFT and, unless 'all'/'all-linear', an error to SGLang's loader
        # (get_normalized_target_modules); a list entry is matched as a module name (pattern_keys.py).
        raise InvalidAdapter(f"{where}: target_modules must be a non-empty list of module names, got {targets!r}"
                             + (" (a string, a regex or 'all-linear', is not served)" if isinstance(targets, str)
                                else ""))
    ModuleRanks(config, where)  # refuses a rank_pattern / alpha_pattern key that is not a module name
    if config.get("use_dora"):
        raise InvalidAdapter(f"{where}: DoRA adapters (use_dora) are not supported")
    if config.get("modules_to_save"):
        raise InvalidAdapter(f"{where}: modules_to_save {config['modules_to_save']!r} is not supported (LoRA deltas only)")
    return config


def _positive_finite(x) -> bool:
    """A JSON number > 0 that is a finite float: json reads NaN and Infinity, and NaN <= 0 is False;
    an int such as 10**400 overflows a float."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x)) and x > 0
    except OverflowError:
        return False


EMBEDDING_LAYERS = ("embed_tokens", "lm_head")  # what PEFT's save_embedding_layers saves whole


def _why_not_lora(name: str) -> str:
    """Why a tensor that is no lora_A/lora_B weight is refused. PEFT saves an embedding layer's full
    weight beside the LoRA weights (``...lm_head.base_layer.weight``) when that layer is in
    target_modules or the vocabulary was resized (save_embedding_layers="auto", its default)."""
    path = name.removesuffix(".weight").split(".")
    module = next((p for p in reversed(path) if p not in ("base_layer", "modules_to_save", "default")), "")
    if module in EMBEDDING_LAYERS:
        return (f"the full weight of {module}, which PEFT saves beside the LoRA weights when {module} is in "
                f"modules_to_save, or (save_embedding_layers, on by default) in target_modules or the vocabulary "
                f"was resized; a catalog serves LoRA weights on the base model's own weights and vocabulary: "
                f"leave {module} out of modules_to_save and save with save_embedding_layers=False")
    return "only lora_A/lora_B weights are supported"


def check_tensors(header: dict, config: dict, base: BaseModel, where: str) -> tuple[tuple[str, ...], str]:
    """Check names and shapes against the config and base; return (modules seen, dtype).

    ``header`` is {tensor name: (safetensors dtype, shape)} (read_safetensors_header);
    every shape error names the tensor, its shape and the shape expected.
    """
    pairs: dict[str, dict[str, tuple[str, list[int]]]] = {}  # module -> {"A": (key, shape), "B": ...}
    dtypes = set()
    for name, (dtype, shape) in header.items():
        m = KEY.match(name)
        if not m:
            raise InvalidAdapter(f"{where}: unexpected tensor {name!r} ({_why_not_lora(name)})")
        pairs.setdefault(m["module"], {})[m["ab"]] = (name, list(shape))
        dtypes.add(dtype)
    if not pairs:
        raise InvalidAdapter(f"{where}: no LoRA tensors")
    if len(dtypes) > 1:
        raise InvalidAdapter(f"{where}: tensors mix dtypes {sorted(dtypes)}; one dtype expected")
    targets = SuffixTable()  # PEFT's rule: an entry is the path or a dotted suffix of it (wk, indexer.wk)
    for t in config["target_modules"]:
        targets.add(t, t)
    targeted = {module: set(targets.hits(module)) for module in pairs}
    ranks = ModuleRanks(config, where)
    params = list(config.get("target_parameters") or [])
    fused_params: dict[str, list[str]] = {}
    seen = set()
    for module, ab in sorted(pairs.items()):
        if "A" not in ab or "B" not in ab:
            raise InvalidAdapter(f"{where}: module {module!r} has lora_{'A' if 'A' in ab else 'B'} but no "
                                 f"lora_{'B' if 'A' in ab else 'A'}")
        layer = _LAYER.search(module)
        if layer and int(layer[1]) >= base.num_hidden_layers:
            raise BaseModelMismatch(f"{where}: {module}: layer {layer[1]} does not exist in base model {base.name!r} "
                                    f"({base.num_hidden_layers} layers)")
        fused = PEFT_FUSED.match(module) if params else None
        if fused:  # PEFT fused experts: the nesting depth says which target parameter this is
            parent = fused["pre"]
            if parent not in fused_params:
                fused_params[parent] = fused_expert_params(
                    parent, params, lambda k: header[k][1] if k in header else None, where)
            param = fused_params[parent][fused["depth"].count(".base_layer")]
            seen.add(param)
            _check_fused(ab, parent, param, ranks.of(f"{parent}.{param}")[0], base, where)
            continue
        if not targeted[module]:
            raise InvalidAdapter(f"{where}: module {module!r} has LoRA tensors but is not in target_modules "
                                 f"{config['target_modules']}")
        seen.add(module.rsplit(".", 1)[-1])
        _check_module(module, ab, ranks.of(module)[0], base, where)
    hit = set().union(*targeted.values())
    missing = [t for t in config["target_modules"] if t not in seen and t not in hit]
    if missing:
        raise InvalidAdapter(f"{where}: target_modules {missing} have no lora_A/lora_B tensors")
    return tuple(sorted(seen)), DTYPES[dtypes.pop()][1]


def check_lora(config: dict, tensors: Mapping[str, Any], base: BaseModel,
               where: str) -> tuple[tuple[str, ...], str]:
    """Every import check on an adapter already in memory; returns (modules seen, dtype) as check_tensors.

    ``config`` is adapter_config.json as a dict, ``tensors`` what
    ``safetensors.torch.load_file`` returned (anything with ``.shape`` and a
    float16/bfloat16/float32 ``.dtype``; torch is not imported here). Raises
    InvalidAdapter / BaseModelMismatch with the same messages as an import.
    """
    check_config(config, where)
    header = {}
    for name, t in tensors.items():
        dtype = _MEMORY_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise InvalidAdapter(f"{where}: tensor {name!r} has dtype {t.dtype}; LoRA weights must be F16, BF16 or F32")
        header[name] = (dtype, list(t.shape))
    return check_tensors(header, config, base, where)


def load_for_serving(folder: str, config: dict, base: BaseModel, where: str,
                     mapped: bool = False) -> tuple[dict, dict]:
    """(config, tensors) of the PEFT adapter in ``folder``, checked and in the one-rank form;
    ``mapped``: the weights are views of a mapping of the file (map_safetensors), not a copy.

    The import checks run again on what is on disk now: a catalog may have been written by an
    older version or by hand, and a bad tensor must fail here, not later in an engine's pool
    fill. Then the one-rank, one-scaling form SGLang serves exactly (uniform_rank.py), with
    per-expert tensors stacked into one per layer-module (stacked_experts.py); the config
    returned is ``config`` itself when it already was uniform.
    """
    if config.get("target_parameters"):  # stored by a version that kept this form: SGLang's pool fill raised
        raise InvalidAdapter(f"{where}: stored in PEFT's fused-expert form (target_parameters), which SGLang "
                             "cannot serve; publish it again: the catalog now stores such an adapter packed")
    tensors = (map_safetensors if mapped else read_safetensors)(os.path.join(folder, WEIGHTS), where)
    check_lora(config, tensors, base, where)
    config, tensors = uniform_lora(config, tensors, where=where)
    return config, stack_experts(complete_stacks(tensors, base), base.num_experts)


def _check_module(module: str, ab: dict, r: int, base: BaseModel, where: str) -> None:
    """One 2-D module ([r, in] / [out, r]) or 3-D expert module ([E, r, in] / [E, out, r])."""
    (ka, a), (kb, b) = ab["A"], ab["B"]
    path = module_path(module)
    want = _widths(path, module, ka, base, where)
    parent, leaf, index = path.parent, path.module, path.expert
    dims = 3 if parent == "experts" and index is None and len(a) == 3 else 2
    if len(a) != dims or len(b) != dims:
        raise InvalidAdapter(f"{where}: {module}: lora_A {a} and lora_B {b} must both be 2-D ([r, in], [out, r])"
                             + (" or both 3-D ([E, r, in], [E, out, r])" if parent == "experts" else ""))
    if a[-2] != r or b[-1] != r:
        raise InvalidAdapter(
            f"{where}: {module}: lora_A {a} / lora_B {b} do not match rank r={r} (expected [r, in] and [out, r])")
    n = base.num_experts
    if index is not None and n and index >= n:
        raise BaseModelMismatch(f"{where}: {ka}: expert {index} does not exist: base has {n} experts")
    lead_a, lead_b = a[:-2], b[:-2]
    if dims == 3:  # lead E on both
        experts = n or max(a[0], b[0])
        for key, shape in ((ka, a), (kb, b)):
            if shape[0] == 1 and experts > 1:
                raise InvalidAdapter(
                    f"{where}: {key} has shape {shape}: one tensor for every expert (shared-outer), which SGLang "
                    "serves only in a server-wide mode it turns on at startup for --lora-paths adapters, never "
                    f"for a catalog's (served so, it was wrong); repeat it to the {experts} experts")
            if shape[0] != experts:
                has = f"base has {n} experts" if n else f"{kb if key == ka else ka} has {experts}"
                raise BaseModelMismatch(f"{where}: {key} has shape {shape}, expected {[experts] + shape[1:]}: "
                                        f"{shape[0]} experts, {has}")
    _expect(ka, a, lead_a + [r, want[0]], leaf, want, base, where)
    _expect(kb, b, lead_b + [want[1], r], leaf, want, base, where)


def _check_fused(ab: dict, parent: str, param: str, r: int, base: BaseModel, where: str) -> None:
    """PEFT fused experts of ``param`` under ``parent`` (``...layers.0.mlp.experts``): A [E*r, in],
    B [out, r*E] (PEFT reshapes them to [E, r, in], [E, out, r])."""
    (ka, a), (kb, b) = ab["A"], ab["B"]
    path = module_path(f"{parent}.{param}")
    want = _widths(path if path and path.parent == "experts" else None, f"{parent}.{param}", ka, base, where)
    if len(a) != 2 or len(b) != 2 or a[0] % r or b[1] != a[0]:
        raise InvalidAdapter(f"{where}: fused experts {ka} {a} / {kb} {b} do not match rank r={r} of {param} "
                             f"(expected [E*{r}, in] and [out, {r}*E])")
    n = base.num_experts
    if n and a[0] != n * r:
        raise BaseModelMismatch(f"{where}: {ka} has shape {a}, expected {[n * r, a[1]]} ({n} experts x rank {r}): "
                                f"{a[0] // r} experts, base has {n} experts")
    _expect(ka, a, [a[0], want[0]], param, want, base, where)
    _expect(kb, b, [want[1], b[1]], param, want, base, where)


def _widths(path: ModulePath | None, module: str, key: str, base: BaseModel, where: str) -> tuple[int, int]:
    """(in, out) of the base-model module at ``path``; refuses a module whose widths cannot be checked.

    SGLang files a LoRA weight by substring, so an unchecked width reaches its forward (module_paths.py)."""
    if path is None:
        raise InvalidAdapter(f"{where}: {key}: {module!r} is not a module of base model {base.name!r} whose "
                             f"widths can be checked (expected {FAMILY_HELP}); refused, as SGLang would put it in "
                             f"the module its name mentions")
    refused = unservable(path, base)
    if refused is not None:
        raise InvalidAdapter(f"{where}: {key}: {refused}")
    want = base.module_shape(path.parent, path.module)
    if want is None:
        lacks = base.unrecorded_widths()
        why = (f"the catalog's record of it was written by an older version of mint, without "
               f"{', '.join(lacks)}; if the model has this module, record its widths with "
               f"`mint catalog refresh-base CATALOG --base-model MODEL_DIR` (then restart the servers)"
               if lacks else "which has no such module")
        raise InvalidAdapter(f"{where}: {key}: the widths of {path.module} under {path.parent or 'the model'} are "
                             f"not recorded for base model {base.name!r} ({base.identity}), {why}; refused, as "
                             f"they cannot be checked")
    absent = absent_from_layer(path, base)
    if absent is not None:
        raise InvalidAdapter(f"{where}: {key}: {absent}")
    return want


def _expect(key: str, got: list[int], want: list[int], leaf: str, io: tuple[int, int], base: BaseModel,
            where: str) -> None:
    if list(got) != want:
        raise BaseModelMismatch(
            f"{where}: {key} has shape {list(got)}, expected {want}: shapes do not match base model {base.name!r} "
            f"({base.identity}), whose {leaf} maps in={io[0]} -> out={io[1]}")


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
    return check_peft_bytes(config_bytes, weights, base, folder, read_named_base=True)


def check_peft_bytes(config_bytes: bytes, weights: bytes, base: BaseModel, where: str, *,
                     read_named_base: bool = False) -> PeftAdapter:
    """Every check of a publish on an adapter in memory. The adapter returned holds the config to
    store: ``config_bytes`` itself, or with PEFT's lora_alpha added (``_served_config``).
    ``read_named_base``: the config is the operator's (read_peft_folder), see _check_peft_config."""
    config = _check_peft_config(config_bytes, base, where, read_named_base)
    config_bytes = _served_config(config_bytes, config)
    header = read_safetensors_header(weights, f"{where}/{WEIGHTS}")
    try:  # second opinion from the reference parser (deserialize handles BF16, numpy does not)
        import safetensors
        safetensors.deserialize(weights)
    except Exception as exc:  # noqa: BLE001 - any parser complaint means corrupt
        raise InvalidAdapter(f"{where}/{WEIGHTS}: corrupt safetensors ({exc})") from None
    modules, dtype = check_tensors(header, config, base, where)
    return PeftAdapter(config_bytes, weights, config["r"], float(config["lora_alpha"]),
                       modules, dtype, config.get("base_model_name_or_path"),
                       loaded_bytes=uniform_size(config, header, where),
                       tensor_count=held_tensor_count(header, base.num_experts),
                       fused_experts=bool(config.get("target_parameters")))


def check_peft_file(config_bytes: bytes, weights_path: str, base: BaseModel, where: str) -> PeftAdapter:
    """check_peft_bytes on weights left in a file: only its header is read (through mmap, so the
    tensors' bytes are never copied into this process); the returned adapter keeps the path."""
    config = _check_peft_config(config_bytes, base, where)
    config_bytes = _served_config(config_bytes, config)
    with open(weights_path, "rb") as f:
        head = f.read(8)
        if len(head) == 8 and struct.unpack("<Q", head)[0] > MAX_HEADER_BYTES:
            raise InvalidAdapter(f"{where}/{WEIGHTS}: corrupt safetensors (a header of {struct.unpack('<Q', head)[0]} "
                                 f"bytes; at most {MAX_HEADER_BYTES} are read)")
        if os.fstat(f.fileno()).st_size < 8:
            read_safetensors_header(head, f"{where}/{WEIGHTS}")  # raises: truncated (mmap needs a non-empty file)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            header = read_safetensors_header(data, f"{where}/{WEIGHTS}")
    try:  # second opinion: the reference parser checks the header against the file, reading no tensor
        import safetensors
        with safetensors.safe_open(weights_path, framework="numpy"):
            pass
    except Exception as exc:  # noqa: BLE001 - any parser complaint means corrupt
        raise InvalidAdapter(f"{where}/{WEIGHTS}: corrupt safetensors ({exc})") from None
    modules, dtype = check_tensors(header, config, base, where)
    return PeftAdapter(config_bytes, None, config["r"], float(config["lora_alpha"]),
                       modules, dtype, config.get("base_model_name_or_path"), weights_path=weights_path,
                       loaded_bytes=uniform_size(config, header, where),
                       tensor_count=held_tensor_count(header, base.num_experts),
                       fused_experts=bool(config.get("target_parameters")))


def _served_config(config_bytes: bytes, config: dict) -> bytes:
    """The adapter_config.json to store: SGLang's LoRAConfig reads ``hf_config["lora_alpha"]`` (a
    KeyError on every request without it), so a config that lacks it gets the value PEFT gives it
    (LoraConfig's default, 8) and is served as PEFT computes it; any other config is kept byte for byte.
    ``config`` (the parsed bytes) is given lora_alpha too."""
    if "lora_alpha" in config:
        return config_bytes
    config["lora_alpha"] = PEFT_DEFAULT_ALPHA
    return json.dumps(config).encode()


def read_served_config(folder: str, where: str) -> dict:
    """The adapter_config.json in ``folder`` (a stored revision) as SGLang must read it.

    A revision stored by an older version may lack lora_alpha (publish kept the config byte for byte
    then; ``_served_config`` adds it since), and SGLang's LoRAConfig raised KeyError on every load of
    it. It is served with the value PEFT gives it, as a newer publish stores it; its stored bytes stay
    as they are (a revision is immutable and its digests name them). Example: ``{"r": 4, ...}`` without
    lora_alpha is read as ``{"r": 4, ..., "lora_alpha": 8}``, scaling 8 / 4."""
    with open(os.path.join(folder, CONFIG), "rb") as f:
        config = _config_json(f.read(), f"{where}/{CONFIG}")  # checked at publish; a catalog written by hand
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{where}/{CONFIG}: not a JSON object")
    if "lora_alpha" not in config:
        config["lora_alpha"] = PEFT_DEFAULT_ALPHA
    return config


def _check_peft_config(config_bytes: bytes, base: BaseModel, where: str, read_named_base: bool = False) -> dict:
    """adapter_config.json checked, and against the catalog's base model where it names one.

    ``base_model_identity`` is compared as a name. ``base_model_name_or_path`` is a path on the machine
    that trained the adapter; its config.json is read only when ``read_named_base`` (a folder the
    operator publishes from this machine): from an upload it would let a tenant make the server open
    any path and tell what it found there (its model identity, or that it is unreadable)."""
    config = parse_config(config_bytes, f"{where}/{CONFIG}")
    recorded = config.get("base_model_identity")
    if recorded and recorded != base.identity:
        raise BaseModelMismatch(f"{where}: adapter records base model identity {recorded!r}; "
                                f"this catalog serves {base.name!r} ({base.identity})")
    named = config.get("base_model_name_or_path")
    if read_named_base and isinstance(named, str) and os.path.isfile(os.path.join(named, "config.json")):
        from sglang_mint.adapters.base_model import load_base_model
        theirs = load_base_model(named)
        if theirs.identity != base.identity:
            raise BaseModelMismatch(f"{where}: adapter was trained on {named!r} ({theirs.identity}); "
                                    f"this catalog serves {base.name!r} ({base.identity})")
    return config
