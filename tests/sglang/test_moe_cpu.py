"""MoE-expert LoRA end to end on CPU: real SGLang serving a tiny Qwen3-MoE (8 experts, top-2).

One adapter (attention + expert LoRA, non-zero B) in three forms, all served
at once in one batch with the base model: per-expert 2D keys, 3D-packed keys,
and PEFT 0.21's fused experts through `mint pack` (stock SGLang cannot read the
fused folder; the packed file is the product's answer). Every form must give
HF+PEFT's greedy tokens (PEFT loads the fused folder: the form it wrote) and
the same logprobs as each other; `--lora-backend mint` must give what
SGLang's `torch_native` gives.

Tolerances: forms against each other and mint against torch_native 1e-4
(measured: forms bit-identical; mint vs torch_native 6.3e-5 on Qwen3-MoE,
3.8e-6 on DeepSeek-V3); against HF+PEFT fp32 `TOL_HF` = 1e-3 (measured 1.7e-4
Qwen3-MoE, 2.0e-4 DeepSeek-V3 here; up to 4.8e-4 on other prompts), because
SGLang's Triton MoE kernel stores each expert GEMM's output in fp16 when the
model dtype is not bf16 (`fused_moe.py:586` `compute_type = tl.bfloat16 if
... else tl.float16`, then `accumulator.to(compute_type)` in
`fused_moe_triton_kernels.py`). That is SGLang's base path, not LoRA: the
same model without `--enable-lora` (CPU's native MoE) matches HF bit for bit,
and the base model's rows in this batch show the same gap. It is also why
mint and torch_native differ by more than fp32 noise: a last-bit difference in
an expert's input can flip one fp16 rounding of its output. `test_expert_lora_moves_logprobs_past_tolerance` checks
that dropping the expert LoRA changes logprobs by far more than TOL_HF, so the
looser bound cannot hide missing expert deltas.

The MoE-LoRA path runs SGLang's Triton kernels, so on CPU it needs
TRITON_INTERPRET=1 (sglang_mint/sglang/moe_cpu.py closes the four CPU gaps).
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from openai_jobs import greedy_batch
from sglang_mint.dev.reference import run_reference
from sglang_mint.dev.server import SGLangServer
from sglang_mint.dev.tiny_moe import write_tiny_moe, write_tiny_moe_adapters
from sglang_mint.packed.convert import pack_folder

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PROMPTS = ["the quick brown fox and the lazy dog", "a tiny model writes"]
MAX_TOKENS = 2  # a prefill and a decode step: each path once
TOL = 1e-4
TOL_HF = 1e-3
INTERPRET = {"TRITON_INTERPRET": "1"}
# served name -> the folder the HF+PEFT reference loads for it
SERVED_FORMS = ("per-expert", "packed3d", "packed-fused")


def build(root: Path, family: str):
    """(model, {form: folder} as written, {served name: folder}); the fused form is served packed."""
    model = write_tiny_moe(root / "model", family, seed=0)
    forms = write_tiny_moe_adapters(model, root / "adapters", seed=0)
    pack_folder(str(forms["peft-fused"]), str(root / "adapters" / "packed-fused"), base_dir=str(model))
    served = {"per-expert": forms["per-expert"], "packed3d": forms["packed3d"],
              "packed-fused": root / "adapters" / "packed-fused"}
    return model, forms, served


def mint_moe_kernel_calls(server) -> int | None:
    """Launches of sglang-mint's MoE-expert LoRA kernel in the server's scheduler (None: not the mint backend)."""
    with urllib.request.urlopen(server.url + "/get_server_info") as r:
        [state] = json.loads(r.read())["internal_states"]
    return (state.get("mint_backend") or {}).get("moe_kernel_calls")


def kernel_calls_of_a_decode_step(server, job) -> int | None:
    """Launches of the MoE kernel in one decode step of ``job``: its launches for 2 tokens (a prefill and a
    decode step) less those for 1 (a prefill alone). None: not the mint backend."""
    before = mint_moe_kernel_calls(server)
    if before is None:
        return None
    greedy_batch(server, [job], 1)
    prefilled = mint_moe_kernel_calls(server)
    greedy_batch(server, [job], 2)
    return (mint_moe_kernel_calls(server) - prefilled) - (prefilled - before)


def serve_backends(model, served, jobs, log_dir, extra_args=(), max_tokens=MAX_TOKENS,
                   backends=("torch_native", "mint"), count_a_decode_step=True):
    """{backend: (results, server log, MoE kernel calls, those of one decode step or None)} for each backend, one
    server at a time."""
    out = {}
    for backend in backends:
        log = log_dir / f"{backend}.log"
        with SGLangServer(model, lora_paths=served, enable_mint=False, lora_backend=backend, log_path=log,
                          env=INTERPRET, extra_args=list(extra_args), python=sys.executable) as server:
            results = serve_batch(server, jobs, max_tokens)
            calls = mint_moe_kernel_calls(server)
            out[backend] = (results, log.read_text(errors="replace"), calls,
                            kernel_calls_of_a_decode_step(server, jobs[-1]) if count_a_decode_step else None)
    return out


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return build(tmp_path_factory.mktemp("qwen3-moe"), "qwen3-moe")


def attention_only(per_expert: Path, out: Path) -> Path:
    """The per-expert adapter without its expert LoRA (reference only)."""
    out.mkdir(parents=True, exist_ok=True)
    t = load_file(str(per_expert / "adapter_model.safetensors"))
    save_file({k: v for k, v in t.items() if ".experts." not in k}, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text((per_expert / "adapter_config.json").read_text())
    return out


def jobs_for(forms, prompts):
    return [(f"tiny:{f}" if f else "tiny", p) for p in prompts for f in [None, *forms]]


def serve_batch(server, jobs, max_tokens=MAX_TOKENS):
    """Send all jobs at once (they share SGLang batches); returns [(tokens, logprobs)]."""
    return greedy_batch(server, jobs, max_tokens)


def reference_for(model, fused, jobs, max_tokens=MAX_TOKENS, extra=()):
    """HF+PEFT fp32 in its own process: every adapter form is the fused folder PEFT wrote."""
    tok = AutoTokenizer.from_pretrained(model)
    specs = [{"adapter": str(fused) if ":" in m else None, "prompt_ids": tok(p)["input_ids"],
              "max_tokens": max_tokens} for m, p in jobs]
    specs += [{"adapter": str(a), "prompt_ids": tok(p)["input_ids"], "max_tokens": max_tokens} for a, p in extra]
    return [(r["tokens"], r["logprobs"]) for r in run_reference(sys.executable, model, specs)]


@pytest.fixture(scope="module")
def qwen_jobs():
    return jobs_for(SERVED_FORMS, PROMPTS)


@pytest.fixture(scope="module")
def qwen_reference(qwen, qwen_jobs, tmp_path_factory):
    """(reference of every job, reference of the attention-only adapter per prompt)."""
    model, forms, _ = qwen
    attn = attention_only(forms["per-expert"], tmp_path_factory.mktemp("attn-only"))
    ref = reference_for(model, forms["peft-fused"], qwen_jobs, extra=[(attn, p) for p in PROMPTS])
    return ref[: len(qwen_jobs)], ref[len(qwen_jobs):]


@pytest.fixture(scope="module")
def qwen_served(qwen, qwen_jobs, tmp_path_factory):
    model, _, served = qwen
    return serve_backends(model, served, qwen_jobs, tmp_path_factory.mktemp("qwen3-moe-logs"))


def assert_close(got, want, jobs, tol):
    for (model, prompt), (tokens, logprobs), (ref_tokens, ref_logprobs) in zip(jobs, got, want):
        assert tokens == ref_tokens, (model, prompt)
        assert logprobs == pytest.approx(ref_logprobs, abs=tol), (model, prompt)


@pytest.mark.parametrize("backend", ["torch_native", "mint"])
def test_every_form_matches_hf_peft(qwen_served, qwen_reference, qwen_jobs, backend):
    assert_close(qwen_served[backend][0], qwen_reference[0], qwen_jobs, TOL_HF)


@pytest.mark.parametrize("backend", ["torch_native", "mint"])
def test_forms_agree_with_each_other(qwen_served, qwen_jobs, backend):
    results = dict(zip(qwen_jobs, qwen_served[backend][0]))
    for prompt in PROMPTS:
        first = results[(f"tiny:{SERVED_FORMS[0]}", prompt)]
        for form in SERVED_FORMS[1:]:
            tokens, logprobs = results[(f"tiny:{form}", prompt)]
            assert tokens == first[0] and logprobs == pytest.approx(first[1], abs=TOL), (form, prompt)


def test_mint_matches_torch_native(qwen_served, qwen_jobs):
    # Our MoE kernel ran, in decode steps too (twice per MoE layer and forward: the tiny model has two), and
    # never under torch_native.
    assert qwen_served["mint"][2] >= 2 * 2 * 2 and qwen_served["mint"][3] == 2 * 2
    assert qwen_served["torch_native"][2] is None
    assert_close(qwen_served["mint"][0], qwen_served["torch_native"][0], qwen_jobs, TOL)


def test_mint_ran_its_triton_kernels_interpreted(qwen_served):
    # The servers run with TRITON_INTERPRET=1: the adapter's attention LoRA went through our dense
    # Triton kernels and its expert LoRA through our MoE kernel, not the torch _ref path
    # (test_mint_backend.py serves the tiny Llama's adapters on that one).
    assert "mint LoRA backend on cpu: triton kernels (TRITON_INTERPRET=1)" in qwen_served["mint"][1]


def test_forms_shared_a_batch(qwen_served):
    for backend, (_, log, _, _) in qwen_served.items():
        assert max(int(n) for n in re.findall(r"Prefill batch, #new-seq: (\d+)", log)) >= 2, backend


def test_expert_lora_moves_logprobs_past_tolerance(qwen_reference, qwen_jobs):
    """Guards TOL_HF: without its expert LoRA the adapter's logprobs move by far more."""
    ref, attn_only = qwen_reference
    full = {p: lp for (m, p), (_, lp) in zip(qwen_jobs, ref) if m == f"tiny:{SERVED_FORMS[0]}"}
    base = {p: lp for (m, p), (_, lp) in zip(qwen_jobs, ref) if m == "tiny"}
    for prompt, (_, lp) in zip(PROMPTS, attn_only):
        gap = max(abs(a - b) for a, b in zip(full[prompt][:1], lp[:1]))  # first token: same context
        assert gap > 10 * TOL_HF, (prompt, gap)
        assert abs(full[prompt][0] - base[prompt][0]) > 10 * TOL_HF, prompt


# DeepSeek-V3: MLA + expert LoRA. MLA prefill needs SGLang's Triton attention
# (interpreted here; torch_native attention reads a latent cache prefill did not
# write), so it is slow: one prompt, a handful of tokens, and the mint backend only,
# against HF+PEFT (mint against torch_native is checked on Qwen3-MoE above; a
# torch_native DeepSeek server, 3.8e-6 from mint when it ran, cost the suite 50 s).
DS_PROMPTS = ["the quick brown fox"]
DS_TOKENS = 2
TRITON_ATTENTION = ["--attention-backend", "triton"]


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    return build(tmp_path_factory.mktemp("deepseek-v3"), "deepseek-v3")


@pytest.fixture(scope="module")
def ds_jobs():
    return jobs_for(SERVED_FORMS, DS_PROMPTS)


@pytest.fixture(scope="module")
def ds_reference(deepseek, ds_jobs):
    model, forms, _ = deepseek
    return reference_for(model, forms["peft-fused"], ds_jobs, max_tokens=DS_TOKENS)


@pytest.fixture(scope="module")
def ds_served(deepseek, ds_jobs, tmp_path_factory):
    model, _, served = deepseek
    return serve_backends(model, served, ds_jobs, tmp_path_factory.mktemp("deepseek-v3-logs"),
                          extra_args=TRITON_ATTENTION, max_tokens=DS_TOKENS, backends=("mint",),
                          count_a_decode_step=False)  # interpreted MLA: each token costs seconds


def test_deepseek_mla_and_experts_match_hf_peft(ds_served, ds_reference, ds_jobs):
    results, _, moe_kernel_calls, _ = ds_served["mint"]
    assert moe_kernel_calls >= 2 * len(ds_jobs)  # our MoE kernel served the experts
    assert_close(results, ds_reference, ds_jobs, TOL_HF)
    adapter = [lp for (m, _), (_, lp) in zip(ds_jobs, ds_reference) if m != "tiny"]
    base = [lp for (m, _), (_, lp) in zip(ds_jobs, ds_reference) if m == "tiny"]
    assert abs(adapter[0][0] - base[0][0]) > 10 * TOL_HF  # the adapter changes the output
