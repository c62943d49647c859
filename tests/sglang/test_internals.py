"""hooks.INTERNALS is checked at startup: a private SGLang attribute the glue needs and this SGLang
lacks refuses the process that uses it, naming it. No server: each check runs in a fresh process,
so what it deletes from SGLang's modules does not leak into the test runner or the next check; the
processes are forked from one that imported SGLang and loaded no plugin (forked_python.py), so the
module pays SGLang's import once."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from forked_python import ForkedPython, publish_as_scheduler_without

from sglang_mint.sglang import hooks

# What the checks import; none of these loads SGLang's plugins.
SGLANG_MODULES = ["sglang.srt.plugins", "sglang.srt.plugins.hook_registry", "sglang.srt.runtime_context",
                  "sglang.srt.lora.mem_pool", "sglang.srt.lora.lora_moe_runners", "sglang.srt.utils.auth",
                  "sglang.srt.managers.scheduler", "sglang.srt.managers.data_parallel_controller"]


@pytest.fixture(scope="module")
def run_py():
    with ForkedPython(SGLANG_MODULES) as py:
        yield py.run


def test_every_row_names_a_role_and_modules_of_the_glue():
    glue = {p.stem for p in Path(hooks.__file__).parent.glob("*.py")}
    for row in hooks.INTERNALS:
        assert row.role in {h.role for h in hooks.HOOKS}, row
        assert row.names and all(name.strip() == name for name in row.names.split(", ")), row
        assert {m.strip() for m in row.module.split(",")} <= glue, row


def test_sglang_s_own_objects_hold_what_the_instance_rows_name():
    """No server: SGLang's real LoRA pool and MoE LoRA layer (bench/_standin_pool.py builds them on CPU),
    a request as its scheduler holds it and its LoRA registry have every attribute INTERNALS names on them."""
    import functools

    from sglang.srt.lora.layers import FusedMoEWithLoRA
    from sglang.srt.lora.lora_registry import LoRARegistry
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.managers.tokenizer_manager import TokenizerManager
    from sglang.srt.sampling.sampling_params import SamplingParams
    from transformers import Qwen3MoeConfig

    from sglang_mint.sglang.frontend import _request_internals
    from sglang_mint.sglang.mint_moe import moe_layer_of

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from _standin_pool import standin_base_and_modules, standin_pool, tp1

    cfg = Qwen3MoeConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, vocab_size=64, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                         intermediate_size=40, mlp_only_layers=[])
    with tp1():
        base, modules = standin_base_and_modules(cfg)
        pool = standin_pool(cfg, base, 8, {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"})
        moe = moe_layer_of(SimpleNamespace(lora_modules=modules))
        assert isinstance(moe, FusedMoEWithLoRA)
        req = Req("r1", "", [1, 2], SamplingParams(max_new_tokens=1))  # a request, as the scheduler holds it
        hooks.verify_internals("scheduler", memory_pool=pool, moe_layer=moe, req=req)
        hooks.verify_internals("frontend", lora_registry=LoRARegistry())
    assert moe_layer_of(None) is None  # LoRA off: nothing to check
    tm = SimpleNamespace()  # SGLang's own create_abort_task, on a tokenizer manager that has nothing else
    tm.create_abort_task = functools.partial(TokenizerManager.create_abort_task, tm)
    made = _request_internals(tm)
    assert None not in made.values()  # each row checked below
    hooks.verify_internals("frontend", **made)


def test_an_internal_sglang_lacks_refuses_startup(run_py):
    """A module attribute (the packed fill's switch), a class's (AuthLevel.ADMIN_OPTIONAL) and an
    instance's (a tokenizer manager without lora_ref_cache) are each named; with everything in
    place, the same checks refuse nothing."""
    proc = run_py("""
        from types import SimpleNamespace
        from sglang.srt.lora import mem_pool
        from sglang.srt.utils import auth
        from sglang_mint.sglang import hooks

        registry = SimpleNamespace(_registry={}, _counters={})
        tm = SimpleNamespace(lora_registry=registry, rid_to_state={}, server_args=None,  # no lora_ref_cache
                             enable_priority_scheduling=False, enable_metrics=False,
                             model_config=SimpleNamespace(vocab_size=512, hidden_size=128))
        kept = mem_pool._SGLANG_EXPERIMENTAL_LORA_OPTI
        del mem_pool._SGLANG_EXPERIMENTAL_LORA_OPTI  # as if SGLang had renamed it
        for role, instances in (("scheduler", {}), ("frontend", {"tokenizer_manager": tm})):
            try:
                hooks.verify_internals(role, **instances)
            except hooks.HooksNotApplied as exc:
                print("REFUSED", role, exc)
            else:
                print("STARTED", role)
        mem_pool._SGLANG_EXPERIMENTAL_LORA_OPTI = kept
        tm.lora_ref_cache = {}
        hooks.verify_internals("scheduler")
        hooks.verify_internals("frontend", tokenizer_manager=tm, lora_registry=registry)
        print("CONTROL OK")
        auth.AuthLevel = type("AuthLevel", (), {"ADMIN_FORCE": 1})  # as if SGLang had renamed the member
        try:
            hooks.verify_internals("frontend")
        except hooks.HooksNotApplied as exc:
            print("REFUSED class", exc)
    """)
    out = proc.stdout
    assert "CONTROL OK" in out, out[-2000:] + proc.stderr[-3000:]
    scheduler = next(ln for ln in out.splitlines() if ln.startswith(("REFUSED scheduler", "STARTED scheduler")))
    assert scheduler.startswith("REFUSED") and "sglang.srt.lora.mem_pool._SGLANG_EXPERIMENTAL_LORA_OPTI" in scheduler
    assert "scheduler process" in scheduler and "refusing to start" in scheduler
    frontend = next(ln for ln in out.splitlines() if ln.startswith(("REFUSED frontend", "STARTED frontend")))
    assert frontend.startswith("REFUSED") and "tokenizer_manager.lora_ref_cache" in frontend
    assert "_SGLANG_EXPERIMENTAL_LORA_OPTI" not in frontend  # a scheduler's internal is not the frontend's
    assert "REFUSED class" in out and "sglang.srt.utils.auth.AuthLevel.ADMIN_OPTIONAL" in out


def test_the_startup_hooks_check_their_instances_with_enable_mint_only(run_py):
    """The DP controller's __init__ (AFTER) hook checks the controller: one without _active_workers is
    refused with --enable-mint and passes as stock; a complete one passes."""
    proc = run_py("""
        from types import SimpleNamespace
        from sglang.srt.plugins.hook_registry import HookRegistry
        from sglang_mint.config import MintConfig
        from sglang_mint.sglang import dp_affinity, hooks

        hooks.register_for("all")
        hooks.register_for("frontend")
        HookRegistry.apply_hooks()
        budget = SimpleNamespace(update_budget=None, total_requests=0, last_timestamp=[])
        controller = SimpleNamespace(dp_budget=budget, load_snapshot_reader=SimpleNamespace(read_all=None))
        for name, args in (("stock", SimpleNamespace()), ("mint", SimpleNamespace(_mint=MintConfig()))):
            try:
                dp_affinity._after_controller_init(None, controller, args)
            except hooks.HooksNotApplied as exc:
                print("REFUSED", name, exc)
            else:
                print("STARTED", name)
        controller._active_workers = [0, 1]
        dp_affinity._after_controller_init(None, controller, SimpleNamespace(_mint=MintConfig()))
        print("CONTROL OK")
    """)
    out = proc.stdout
    assert "STARTED stock" in out, out[-2000:] + proc.stderr[-3000:]
    assert "REFUSED mint" in out and "controller._active_workers" in out, out[-2000:] + proc.stderr[-3000:]
    assert "CONTROL OK" in out, proc.stderr[-3000:]


def test_a_process_announced_with_an_internal_missing_refuses_to_start(run_py):
    """publish(role="scheduler") with --enable-mint checks the module rows right there."""
    lines = publish_as_scheduler_without(run_py, "sglang.srt.lora.lora_moe_runners", "_naive_moe_lora_align_block_size")
    assert lines[0].startswith("PUBLISHED")  # without --enable-mint SGLang goes on as stock
    assert lines[1].startswith("REFUSED") and "_naive_moe_lora_align_block_size" in lines[1]
