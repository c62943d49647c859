"""The adapter_config.json a catalog stores is one SGLang reads, and an upload's config never makes the
server read a path of the tenant's choosing.

* Without lora_alpha, SGLang's LoRAConfig raised KeyError on every request: the stored config carries
  PEFT's value (8), in the PEFT form and in the packed one (lora_alpha / r is PEFT's scaling).
* ``base_model_name_or_path`` of an upload named a path the server opened (``<path>/config.json``)
  and echoed what it found: a tenant could probe the server's files. Only a folder published by
  its operator (``mint catalog publish DIR``) is still compared with the base model it names.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from catalog_fixtures import write_base, write_peft, written

from sglang_mint.adapters.errors import BaseModelMismatch
from sglang_mint.adapters.peft import CONFIG, WEIGHTS
from sglang_mint.catalog.upload import publish_files

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # _standin_pool: SGLang's pool on CPU

POOL_MODULES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def _files(folder: str) -> dict[str, str]:
    return {name: os.path.join(folder, name) for name in ("adapter_config.json", "adapter_model.safetensors")}


def _drop_alpha(folder: str) -> str:
    path = os.path.join(folder, "adapter_config.json")
    cfg = json.loads(open(path).read())
    del cfg["lora_alpha"]
    with open(path, "w") as f:
        json.dump(cfg, f)
    return folder


@pytest.mark.parametrize("pack", [False, True], ids=["peft", "packed"])
def test_a_config_without_lora_alpha_is_stored_as_sglang_reads_it(cat, tmp_path, pack):
    from sglang.srt.lora.lora_config import LoRAConfig

    folder = _drop_alpha(write_peft(tmp_path / "a", rank=4))
    rev = publish_files(cat, "no/alpha", _files(folder), pack=pack)
    served = LoRAConfig(str(rev.local_path()))  # what read_adapter builds first; KeyError before
    assert served.lora_alpha / served.r == 8 / 4  # PEFT's default alpha 8 over the adapter's rank 4


def _publish_as_an_older_version(cat, adapter_id: str, folder: str):
    """What publish stored before it added PEFT's lora_alpha: the operator's config byte for byte, and the
    row's alpha r (``config.get("lora_alpha", r)``), through the catalog's own store."""
    raw = open(os.path.join(folder, CONFIG), "rb").read()
    r = json.loads(raw)["r"]
    payload = {CONFIG: raw, WEIGHTS: open(os.path.join(folder, WEIGHTS), "rb").read()}
    return cat._publish(adapter_id, "peft", payload, r, float(r), tuple(json.loads(raw)["target_modules"]),
                        "float16", None, None)


def _scheduler_manager(max_rank: int = 8, **served):
    """What read_adapter takes from SGLang's LoRAManager, for the tiny Llama of catalog_fixtures.TINY (or
    that model changed by ``served``): SGLang's real LoRA pool and LoRA layers, on CPU (bench/_standin_pool.py).
    ``can_support`` (--max-lora-rank, --lora-target-modules) passes everything: these tests are about the fill."""
    from types import SimpleNamespace

    from _standin_pool import standin_base_and_modules, standin_pool, tp1
    from sglang.srt.configs.load_config import LoadConfig
    from transformers import LlamaConfig

    hf = LlamaConfig(**{**dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=32, vocab_size=1000), **served})
    with tp1():
        base, modules = standin_base_and_modules(hf)
        pool = standin_pool(hf, base, max_rank, set(POOL_MODULES))
    pool.can_support = lambda config: True
    return SimpleNamespace(base_hf_config=hf, memory_pool=pool, lora_modules=modules, embed_tokens_module=None,
                           lm_head_module=None, load_config=LoadConfig(), lora_backend=None, base_model=base)


def test_a_revision_an_older_version_stored_without_lora_alpha_loads_with_peft_s_alpha(cat, tmp_path):
    """Before: KeyError 'lora_alpha' from SGLang's LoRAConfig on every load of such a revision."""
    from sglang_mint.sglang.adapter_reader import read_adapter

    rev = _publish_as_an_older_version(cat, "old/no-alpha", _drop_alpha(write_peft(tmp_path / "a", rank=4)))
    stored = cat.blobs.read(rev.files[CONFIG])
    assert "lora_alpha" not in json.loads(stored)
    adapter, host_bytes = read_adapter(_scheduler_manager(), cat, "old/no-alpha", cat.resolve("old/no-alpha"))
    assert adapter.config.lora_alpha == 8 and adapter.scaling == 8 / 4  # PEFT's default alpha over rank 4
    stacked = {name.split(".")[-3] for name in adapter.layers[1].weights}  # SGLang stacks q/k/v and gate/up
    assert host_bytes > 0 and stacked == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert cat.blobs.read(rev.files[CONFIG]) == stored and cat.verify()["ok"]  # the revision is not rewritten


def test_an_upload_s_named_base_path_is_never_read(cat, tmp_path):
    """Before: 'adapter was trained on <path> (llama-...)' for a folder holding another model's config.json,
    and 'base model config <path>/config.json is unreadable' for a file that is not JSON."""
    other = write_base(tmp_path / "other-model", hidden_size=256)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("not json")
    for i, named in enumerate((other, str(junk))):
        folder = write_peft(tmp_path / f"u{i}", config={"base_model_name_or_path": named})
        rev = publish_files(cat, f"probe/{i}", _files(folder))  # checked by its tensors, the named path unread
        assert rev.revision == 1


def test_an_operator_s_folder_is_still_compared_with_the_base_it_names(cat, tmp_path):
    other = write_base(tmp_path / "other-model", hidden_size=256)
    folder = write_peft(tmp_path / "a", config={"base_model_name_or_path": other})
    before = written(cat)
    with pytest.raises(BaseModelMismatch, match="adapter was trained on"):
        cat.publish("a", folder)
    assert written(cat) == before


def test_a_weight_the_pool_cannot_file_fails_the_read_not_the_forward(cat, tmp_path):
    """SGLang's pool fill files each weight by name as a batch is formed and raised on one it could not
    (DeepSeek-V2-Lite's kv_a_proj_with_mqa: the scheduler's forward raised and the server stopped).
    read_adapter looks every name up the same way, on the read thread: such an adapter fails there."""
    from sglang_mint.adapters.errors import InvalidAdapter
    from sglang_mint.sglang.adapter_reader import read_adapter, unfiled_weights

    rev = publish_files(cat, "pool/names", _files(write_peft(tmp_path / "a", rank=4)))
    manager = _scheduler_manager()
    adapter, _ = read_adapter(manager, cat, "pool/names", rev)  # every name files: read as before
    assert unfiled_weights(adapter, manager.memory_pool.target_modules) == []
    manager.memory_pool.target_modules = {"qkv_proj", "gate_up_proj", "down_proj"}  # a pool without o_proj
    with pytest.raises(InvalidAdapter, match=r"pool has no module for .*o_proj.* and \d+ more \(its modules: "
                                             r"down_proj, gate_up_proj, qkv_proj\)"):
        read_adapter(manager, cat, "pool/names", rev)


@pytest.fixture
def packed_reads(monkeypatch):
    """``LoRAAdapter.initialize_weights`` as a scheduler has it: a packed folder is read by packed_loader (its
    hook is not applied in the test process)."""
    from sglang.srt.lora.lora import LoRAAdapter

    from sglang_mint.sglang import packed_loader

    original = LoRAAdapter.initialize_weights
    monkeypatch.setattr(LoRAAdapter, "initialize_weights",
                        lambda self: packed_loader.initialize_weights(original, self))


def _fill(manager, uid: str, adapter) -> None:
    """SGLang's own pool fill (mem_pool.LoRAMemoryPool.load_lora_weight_to_buffer) of ``adapter`` into slot 0."""
    from sglang.srt.lora.mem_pool import LoRAMemoryPool

    LoRAMemoryPool.load_lora_weight_to_buffer(manager.memory_pool, uid, 0, adapter, manager.lora_modules, None, None)


@pytest.mark.parametrize("pack", [False, True], ids=["peft", "packed"])
def test_a_weight_the_pool_cannot_hold_fails_the_read_not_the_forward(cat, tmp_path, packed_reads, pack):
    """SGLang's pool fill asserts each weight's shape against its slot as a batch is formed: a misfit raised in the
    scheduler's forward and the server stopped. Here the served model's MLP is 320 wide, the catalog's record of
    it (what a PEFT revision is checked against) 256; a packed revision's reader checks only the base's identity
    (hidden size, layers, vocab, experts). read_adapter retraces the fill's shapes: the read fails, naming them.
    (A narrower served MLP is no error to SGLang: its slices cut gate_up's B and down's A to the layer's width.)"""
    from sglang_mint.adapters.errors import InvalidAdapter
    from sglang_mint.sglang.adapter_reader import read_adapter

    rev = publish_files(cat, "pool/shapes", _files(write_peft(tmp_path / "a", rank=4)), pack=pack)
    adapter, _ = read_adapter(_scheduler_manager(), cat, "pool/shapes", rev)  # read for the model it was made for
    served = _scheduler_manager(intermediate_size=320)
    with pytest.raises(AssertionError, match=r"LoRA buffer shape torch.Size\(\[4, 320\]\) does not match weight "
                                             r"shape torch.Size\(\[4, 256\]\)"):
        _fill(served, "pool/shapes", adapter)  # what the scheduler did with it: down_proj's A comes first
    with pytest.raises(InvalidAdapter, match=r"SGLang's LoRA pool fill refuses it: AssertionError: LoRA buffer shape "
                                             r"torch.Size\(\[4, 320\]\) does not match weight shape "
                                             r"torch.Size\(\[4, 256\]\)"):
        read_adapter(served, cat, "pool/shapes", rev)


@pytest.mark.parametrize("pack,rank", [(False, 4), (False, 1), (True, 4), (True, 8)],
                         ids=["peft-r4", "peft-r1", "packed-r4", "packed-r8"])
def test_an_adapter_the_pool_holds_still_reads(cat, tmp_path, packed_reads, pack, rank):
    """Ranks 1 and 4 fill the first rows/columns of a max-rank-8 pool's slots; rank 8 fills them whole."""
    from _standin_pool import poison, pools_equal

    from sglang_mint.sglang.adapter_reader import fill_refusal, read_adapter

    rev = publish_files(cat, "pool/fits", _files(write_peft(tmp_path / "a", rank=rank)), pack=pack)
    manager, before = _scheduler_manager(max_rank=8), _scheduler_manager(max_rank=8)
    poison(manager.memory_pool, 3)
    poison(before.memory_pool, 3)
    adapter, _ = read_adapter(manager, cat, "pool/fits", rev)
    assert adapter.config.r == rank and fill_refusal(manager, "pool/fits", adapter) is None
    assert pools_equal(manager.memory_pool, before.memory_pool) == []  # the dry fill wrote no slot
    assert adapter.layers[0].pinned_weights == {}  # and pinned nothing
    # a packed revision: packed_pool's one-copy fill will run, and its plan, made on the read, is kept for it
    assert (getattr(adapter, "_mint_pool_plan", (None,))[0] is manager.memory_pool) == pack
    _fill(manager, "pool/fits", adapter)  # and SGLang's fill takes it
    assert pools_equal(manager.memory_pool, before.memory_pool) != []


def _dense_tensors(r: int, mutate: dict) -> dict:
    import torch
    from catalog_fixtures import peft_tensors

    t = {k: torch.from_numpy(v) for k, v in peft_tensors(rank=r).items()}
    for name, shape in mutate.items():
        t[f"base_model.model.model.layers.1.{name}.weight"] = torch.randn(shape).half()
    return t


def _moe_tensors(r: int, layout: str, experts: int = 4, mutate: dict | None = None) -> dict:
    """Qwen3-MoE-like, hidden 32, 4 experts of width 16: per_expert ({e}.gate_proj ...), packed3d
    (gate_proj [E, r, 32] ...), shared_outer (gate/up A and down B for all experts at once: [1, ...])."""
    import torch

    t = {}
    for layer in range(2):
        pre = f"base_model.model.model.layers.{layer}."
        for m, fin, fout in (("q_proj", 32, 32), ("k_proj", 32, 16), ("v_proj", 32, 16), ("o_proj", 32, 32)):
            t[f"{pre}self_attn.{m}.lora_A.weight"] = torch.randn(r, fin)
            t[f"{pre}self_attn.{m}.lora_B.weight"] = torch.randn(fout, r)
        for m, fin, fout in (("gate_proj", 32, 16), ("up_proj", 32, 16), ("down_proj", 16, 32)):
            if layout == "per_expert":
                for e in range(experts):
                    t[f"{pre}mlp.experts.{e}.{m}.lora_A.weight"] = torch.randn(r, fin)
                    t[f"{pre}mlp.experts.{e}.{m}.lora_B.weight"] = torch.randn(fout, r)
            else:
                outer = layout == "shared_outer"  # one gate/up A and one down B for all experts
                ea, eb = (1, experts) if outer and m != "down_proj" else (experts, 1) if outer else (experts, experts)
                t[f"{pre}mlp.experts.{m}.lora_A.weight"] = torch.randn(ea, r, fin)
                t[f"{pre}mlp.experts.{m}.lora_B.weight"] = torch.randn(eb, fout, r)
    for name, shape in (mutate or {}).items():
        t[f"base_model.model.model.layers.1.{name}.weight"] = torch.randn(shape)
    return t


R = 4
FILL_CASES = {  # name: (model, tensors, whether SGLang's fill refuses them)
    "dense-fits": ("dense", lambda: _dense_tensors(R, {}), False),
    "o_proj-B-wider": ("dense", lambda: _dense_tensors(R, {"self_attn.o_proj.lora_B": (130, R)}), True),
    "o_proj-B-rank-5": ("dense", lambda: _dense_tensors(R, {"self_attn.o_proj.lora_B": (128, R + 1)}), True),
    "o_proj-A-narrower": ("dense", lambda: _dense_tensors(R, {"self_attn.o_proj.lora_A": (R, 100)}), True),
    "o_proj-A-wider": ("dense", lambda: _dense_tensors(R, {"self_attn.o_proj.lora_A": (R, 140)}), False),  # sliced
    "v_proj-B-narrower": ("dense", lambda: _dense_tensors(R, {"self_attn.v_proj.lora_B": (60, R)}), True),
    "qkv-A-narrower": ("dense", lambda: _dense_tensors(R, {f"self_attn.{m}_proj.lora_A": (R, 100) for m in "qkv"}),
                       True),
    "experts-fit": ("moe", lambda: _moe_tensors(R, "per_expert"), False),
    "expert-4-of-4": ("moe", lambda: _moe_tensors(R, "per_expert", experts=5), True),
    "expert-gate-B-wider": ("moe", lambda: _moe_tensors(R, "per_expert", mutate={
        "mlp.experts.2.gate_proj.lora_B": (17, R), "mlp.experts.2.up_proj.lora_B": (17, R)}), True),
    "stacked-experts-fit": ("moe", lambda: _moe_tensors(R, "packed3d"), False),
    "stacked-5-experts": ("moe", lambda: _moe_tensors(R, "packed3d", experts=5), True),
    "stacked-3-experts": ("moe", lambda: _moe_tensors(R, "packed3d", experts=3), False),  # the fourth is zeroed
    "stacked-down-A-narrower": ("moe", lambda: _moe_tensors(R, "packed3d", mutate={
        "mlp.experts.down_proj.lora_A": (4, R, 15)}), True),
    "shared-outer-fits": ("outer", lambda: _moe_tensors(R, "shared_outer"), False),
    # a server started with a shared-outer adapter in --lora-paths: a catalog's per-expert adapter
    "per-expert-on-shared-outer": ("outer", lambda: _moe_tensors(R, "per_expert"), True),
    "stacked-on-shared-outer": ("outer", lambda: _moe_tensors(R, "packed3d"), True),
    "shared-outer-2-gate-up": ("outer", lambda: _moe_tensors(R, "shared_outer", mutate={
        "mlp.experts.gate_proj.lora_A": (2, R, 32), "mlp.experts.up_proj.lora_A": (2, R, 32)}), True),
}


@pytest.mark.parametrize("case", sorted(FILL_CASES))
def test_the_read_refuses_exactly_what_sglang_s_fill_refuses(case):
    """fill_refusal (SGLang's fill, dry) against SGLang's own fill into a real pool (max rank 8) with SGLang's LoRA layers: what the
    fill raises on is named, what it takes is not (a wider o_proj A: SGLang slices it to the layer's width; 3 of 4
    stacked experts: the fourth is zeroed)."""
    from types import SimpleNamespace

    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.lora.lora import LoRAAdapter
    from sglang.srt.lora.lora_config import LoRAConfig
    from transformers import Qwen3MoeConfig

    from sglang_mint.sglang.adapter_reader import fill_refusal

    model, tensors, refused = FILL_CASES[case]
    if model == "dense":
        manager = _scheduler_manager()
    else:
        from _standin_pool import standin_base_and_modules, standin_pool, tp1

        hf = Qwen3MoeConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=8, vocab_size=64, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                            intermediate_size=40, mlp_only_layers=[])
        with tp1():
            base, modules = standin_base_and_modules(hf)
            pool = standin_pool(hf, base, 8, set(POOL_MODULES), shared_outer=model == "outer")
        manager = SimpleNamespace(base_hf_config=hf, memory_pool=pool, lora_modules=modules, base_model=base,
                                  embed_tokens_module=None, lm_head_module=None)
    config = LoRAConfig(config_dict={"peft_type": "LORA", "r": R, "lora_alpha": 2 * R, "target_modules": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]})
    adapter = LoRAAdapter(case, config, manager.base_hf_config, LoadConfig(), None, base_model=manager.base_model)
    adapter.initialize_weights_from_tensors(tensors())
    refusal = fill_refusal(manager, case, adapter)
    try:
        _fill(manager, case, adapter)
    except (AssertionError, IndexError, ValueError) as exc:
        raised = exc
    else:
        raised = None
    assert (raised is not None) == refused and (refusal is not None) == refused, (raised, refusal)
    if refused:
        assert refusal.startswith(f"{type(raised).__name__}: "), (raised, refusal)
