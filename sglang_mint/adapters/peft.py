"""Read and check a PEFT LoRA folder before anything is written.

A folder is importable when it holds ``adapter_config.json`` (peft_type LORA,
r > 0, target_modules) and ``adapter_model.safetensors`` whose tensors are
exactly ``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight``
[out, r] for target modules, with in/out matching the base model
(``BaseModel.module_shape``). Example for the tiny model (hidden 128, 2 kv heads
of 32) and r=8: ``base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight``
is [8, 128] and ``...k_proj.lora_B.weight`` is [64, 8]. MoE experts come in three
forms, each checked for rank, widths and expert count (E routed experts):

* per expert ``...mlp.experts.<e>.gate_proj`` [r, in] / [out, r], ``e < E``
  (also Mixtral's ``w1/w3/w2``);
* 3D ``...mlp.experts.gate_proj`` [E, r, in] / [E, out, r] (a lead of 1 is a
  shared-outer tensor);
* PEFT 0.21's fused experts (``target_parameters``): ``...mlp.experts.lora_A.weight``
  [E*r, in] / [out, r*E], one nesting depth (``.base_layer``) per parameter.

``r`` is the module's own rank (``rank_pattern``, see lora_keys.py).

Everything is read into memory and checked here, except by ``check_peft_file``,
which reads only the weights' header (an upload streamed to a file stays there,
so checking a 1 GiB adapter takes a small constant of memory); the catalog
writes blobs only for an adapter that passed every check.
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
from sglang_mint.adapters.lora_keys import KEY, PEFT_FUSED, fused_expert_params, rank_alpha
from sglang_mint.adapters.uniform_rank import uniform_lora, uniform_size

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"

# The reference parser's limit on a safetensors header (safetensors' MAX_HEADER_SIZE). A per-expert
# DeepSeek-V3 adapter (about 89,000 tensors) has a header of about 12 MB.
MAX_HEADER_BYTES = 100_000_000
# safetensors dtype -> (bytes per element, our dtype name)
DTYPES = {"F16": (2, "float16"), "BF16": (2, "bfloat16"), "F32": (4, "float32"), "F64": (8, "float64")}
_MEMORY_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}  # torch/numpy dtype name -> safetensors
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EXPERT = re.compile(r"^(?P<pre>.*\.experts)\.(?P<e>\d+)\.(?P<leaf>[A-Za-z0-9_]+)$")


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

    def weights(self) -> bytes:
        """The safetensors bytes, read from ``weights_path`` if they are not in memory (packing needs them)."""
        if self.weights_bytes is not None:
            return self.weights_bytes
        with open(self.weights_path, "rb") as f:
            return f.read()


def read_safetensors_header(data: bytes, where: str) -> dict[str, tuple[str, list[int]]]:
    """Parse and bounds-check a safetensors buffer; return {name: (dtype, shape)}.

    Catches truncation (the header promises more bytes than the file has),
    overlapping or gapped data offsets, and shape/size disagreements, each
    with a message naming the file and tensor.
    """
    return {name: (dtype, shape) for name, (dtype, shape, _) in _checked_header(data, where).items()}


def _checked_header(data: bytes, where: str, size: int | None = None) -> dict[str, tuple[str, list[int], int]]:
    """{name: (dtype, shape, offset of its data in the file)}, checked as above. ``data`` is the
    file, or its first bytes (at least the header) when ``size`` gives the file's length."""
    size = len(data) if size is None else size
    if size < 8 or len(data) < 8:
        raise InvalidAdapter(f"{where}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > size - 8:
        raise InvalidAdapter(f"{where}: truncated or corrupt safetensors (header of {n} bytes, file of {size})")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as exc:
        raise InvalidAdapter(f"{where}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{where}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    payload = size - 8 - n
    spans, out = [], {}
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InvalidAdapter(f"{where}: corrupt safetensors header entry for {name!r}") from None
        if dtype not in DTYPES:
            raise InvalidAdapter(f"{where}: tensor {name!r} has dtype {dtype}; LoRA weights must be F16, BF16 or F32")
        if end - start != math.prod(shape) * DTYPES[dtype][0] or start < 0:
            raise InvalidAdapter(f"{where}: tensor {name!r} of shape {shape} does not fit its data offsets")
        spans.append((start, end, name))
        out[name] = (dtype, list(shape), 8 + n + start)
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


def map_safetensors(path: str, where: str) -> dict:
    """{name: torch tensor} of a safetensors file in shared memory, every tensor a view of one
    private (copy-on-write) mapping of it: nothing is copied until the tensors are used.

    For a revision staged in /dev/shm (frontend/staged_revisions.py), whose file stays put while
    it is served: reading copied all of it into fresh memory, 41-45 ms of a 107 MB rank-64
    adapter's cold load, where mapping takes 1 ms and SGLang's q/k/v and gate/up stacking reads
    the mapping instead of the copy (1-2 ms more). The caller copies what it keeps
    (adapter_reader.own_weights), so the mapping goes once the adapter is built. The header is
    checked as read_safetensors checks it; a tensor whose offset does not suit its dtype is copied.
    """
    import torch

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise InvalidAdapter(f"{where}: truncated safetensors file ({size} bytes, no header)")
        mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    n = struct.unpack("<Q", mapping[:8])[0]
    entries = _checked_header(mapping[:8 + min(n, size - 8)], where, size)
    data = torch.frombuffer(mapping, dtype=torch.uint8)
    tensors = {}
    for name, (dtype, shape, offset) in entries.items():
        dt = getattr(torch, DTYPES[dtype][1])
        raw = data[offset:offset + DTYPES[dtype][0] * math.prod(shape)]
        tensors[name] = (raw.view(dt) if offset % DTYPES[dtype][0] == 0 else raw.clone().view(dt)).view(shape)
    return tensors


def read_safetensors(path: str, where: str) -> dict:
    """{name: torch tensor} of a safetensors file, each tensor read straight into its own memory:
    a cold load copies the file once (from the page cache, or /dev/shm for a staged revision).

    ``safetensors.torch.load(f.read())`` copied each tensor out of the bytes it had read: a
    second copy of the whole file, about a third of a cold load's time (py-spy, a rank-8
    adapter of a 2.7 GB Llama). (``load_file`` is worse: in safetensors 0.8.0 every call keeps
    about 1.8 KB for good, most of a scheduler's growth over 10^5 cold loads.) Each tensor has
    storage of its own, as before, so what SGLang replaces (it concatenates q/k/v and gate/up)
    is freed. The header is checked first (``read_safetensors_header``'s checks): a truncated
    or corrupt file, or one that changes while it is read, is an InvalidAdapter naming ``where``.
    """
    import torch

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        head += f.read(min(n, max(size - 8, 0)))
        entries = _checked_header(head, where, size)
        tensors = {}
        for name, (dtype, shape, offset) in sorted(entries.items(), key=lambda e: e[1][2]):
            t = torch.empty(shape, dtype=getattr(torch, DTYPES[dtype][1]))
            want = t.numel() * t.element_size()
            if want and (f.tell() != offset or f.readinto(t.view(-1).view(torch.uint8).numpy()) != want):
                raise InvalidAdapter(f"{where}: {WEIGHTS} changed while it was read ({name!r})")
            tensors[name] = t
    return tensors


def _targeted(module: str, targets) -> bool:
    """PEFT's rule: a regex string matches the whole path; a list entry is the path or a dotted suffix of it
    (``wk`` and ``indexer.wk`` both target ``...self_attn.indexer.wk``)."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def parse_config(data: bytes, where: str) -> dict:
    """adapter_config.json bytes -> the checked config dict (check_config)."""
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise InvalidAdapter(f"{where}: malformed JSON ({exc})") from None
    return check_config(config, where)


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
        if not isinstance(pa, (int, float)) or isinstance(pa, bool) or pa <= 0:
            raise InvalidAdapter(f"{where}: alpha_pattern[{key!r}] must be a positive number, got {pa!r}")
    if not isinstance(config.get("use_rslora", False), bool):
        raise InvalidAdapter(f"{where}: use_rslora must be true or false, got {config['use_rslora']!r}")
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
    """Check names and shapes against the config and base; return (modules seen, dtype).

    ``header`` is {tensor name: (safetensors dtype, shape)} (read_safetensors_header);
    every shape error names the tensor, its shape and the shape expected.
    """
    pairs: dict[str, dict[str, tuple[str, list[int]]]] = {}  # module -> {"A": (key, shape), "B": ...}
    dtypes = set()
    for name, (dtype, shape) in header.items():
        m = KEY.match(name)
        if not m:
            raise InvalidAdapter(f"{where}: unexpected tensor {name!r} (only lora_A/lora_B weights are supported)")
        pairs.setdefault(m["module"], {})[m["ab"]] = (name, list(shape))
        dtypes.add(dtype)
    if not pairs:
        raise InvalidAdapter(f"{where}: no LoRA tensors")
    if len(dtypes) > 1:
        raise InvalidAdapter(f"{where}: tensors mix dtypes {sorted(dtypes)}; one dtype expected")
    targets = config["target_modules"]
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
            _check_fused(ab, param, rank_alpha(config, f"{parent}.{param}")[0], base, where)
            continue
        if not _targeted(module, targets):
            raise InvalidAdapter(f"{where}: module {module!r} has LoRA tensors but is not in target_modules {targets}")
        seen.add(module.rsplit(".", 1)[-1])
        _check_module(module, ab, rank_alpha(config, module)[0], base, where)
    if isinstance(targets, list):
        missing = [t for t in targets if t not in seen and not any(_targeted(m, [t]) for m in pairs)]
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
    tensors = (map_safetensors if mapped else read_safetensors)(os.path.join(folder, WEIGHTS), where)
    check_lora(config, tensors, base, where)
    config, tensors = uniform_lora(config, tensors, where=where)
    return config, stack_experts(tensors, base.num_experts)


def _check_module(module: str, ab: dict, r: int, base: BaseModel, where: str) -> None:
    """One 2-D module ([r, in] / [out, r]) or 3-D expert module ([E, r, in] / [E, out, r])."""
    (ka, a), (kb, b) = ab["A"], ab["B"]
    expert = _EXPERT.match(module)
    if expert:  # ...mlp.experts.3.gate_proj
        parent, leaf, index = "experts", expert["leaf"], int(expert["e"])
    else:
        parts = module.split(".")
        parent, leaf, index = (parts[-2] if len(parts) > 1 else ""), parts[-1], None
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
    if dims == 3:  # lead E on both, or 1 on one side (shared-outer: one A or B for every expert)
        experts = n or max(a[0], b[0])
        for key, shape in ((ka, a), (kb, b)):
            if shape[0] not in (1, experts):
                has = f"base has {n} experts" if n else f"{kb if key == ka else ka} has {experts}"
                raise BaseModelMismatch(f"{where}: {key} has shape {shape}, expected {[experts] + shape[1:]}: "
                                        f"{shape[0]} experts, {has}")
    want = base.module_shape(parent, leaf)
    if want:
        _expect(ka, a, lead_a + [r, want[0]], leaf, want, base, where)
        _expect(kb, b, lead_b + [want[1], r], leaf, want, base, where)


def _check_fused(ab: dict, param: str, r: int, base: BaseModel, where: str) -> None:
    """PEFT fused experts of ``param``: A [E*r, in], B [out, r*E] (PEFT reshapes them to [E, r, in], [E, out, r])."""
    (ka, a), (kb, b) = ab["A"], ab["B"]
    if len(a) != 2 or len(b) != 2 or a[0] % r or b[1] != a[0]:
        raise InvalidAdapter(f"{where}: fused experts {ka} {a} / {kb} {b} do not match rank r={r} of {param} "
                             f"(expected [E*{r}, in] and [out, {r}*E])")
    n = base.num_experts
    if n and a[0] != n * r:
        raise BaseModelMismatch(f"{where}: {ka} has shape {a}, expected {[n * r, a[1]]} ({n} experts x rank {r}): "
                                f"{a[0] // r} experts, base has {n} experts")
    want = base.module_shape("experts", param)
    if want:
        _expect(ka, a, [a[0], want[0]], param, want, base, where)
        _expect(kb, b, [want[1], b[1]], param, want, base, where)


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
    return check_peft_bytes(config_bytes, weights, base, folder)


def check_peft_bytes(config_bytes: bytes, weights: bytes, base: BaseModel, where: str) -> PeftAdapter:
    config = _check_peft_config(config_bytes, base, where)
    header = read_safetensors_header(weights, f"{where}/{WEIGHTS}")
    try:  # second opinion from the reference parser (deserialize handles BF16, numpy does not)
        import safetensors
        safetensors.deserialize(weights)
    except Exception as exc:  # noqa: BLE001 - any parser complaint means corrupt
        raise InvalidAdapter(f"{where}/{WEIGHTS}: corrupt safetensors ({exc})") from None
    modules, dtype = check_tensors(header, config, base, where)
    return PeftAdapter(config_bytes, weights, config["r"], float(config.get("lora_alpha", config["r"])),
                       modules, dtype, config.get("base_model_name_or_path"),
                       loaded_bytes=uniform_size(config, header, where),
                       tensor_count=held_tensor_count(header, base.num_experts))


def check_peft_file(config_bytes: bytes, weights_path: str, base: BaseModel, where: str) -> PeftAdapter:
    """check_peft_bytes on weights left in a file: only its header is read (through mmap, so the
    tensors' bytes are never copied into this process); the returned adapter keeps the path."""
    config = _check_peft_config(config_bytes, base, where)
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
    return PeftAdapter(config_bytes, None, config["r"], float(config.get("lora_alpha", config["r"])),
                       modules, dtype, config.get("base_model_name_or_path"), weights_path=weights_path,
                       loaded_bytes=uniform_size(config, header, where),
                       tensor_count=held_tensor_count(header, base.num_experts))


def _check_peft_config(config_bytes: bytes, base: BaseModel, where: str) -> dict:
    """adapter_config.json checked, and against the catalog's base model where it names one."""
    config = parse_config(config_bytes, f"{where}/{CONFIG}")
    recorded = config.get("base_model_identity")
    if recorded and recorded != base.identity:
        raise BaseModelMismatch(f"{where}: adapter records base model identity {recorded!r}; "
                                f"this catalog serves {base.name!r} ({base.identity})")
    named = config.get("base_model_name_or_path")
    if isinstance(named, str) and os.path.isfile(os.path.join(named, "config.json")):
        from sglang_mint.adapters.base_model import load_base_model
        theirs = load_base_model(named)
        if theirs.identity != base.identity:
            raise BaseModelMismatch(f"{where}: adapter was trained on {named!r} ({theirs.identity}); "
                                    f"this catalog serves {base.name!r} ({base.identity})")
    return config
