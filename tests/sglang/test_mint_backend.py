"""`--lora-backend mint` end to end: real SGLang on CPU, several adapters in one batch.

The same requests (every tiny adapter and the base model, two prompts each,
sent as one native /generate batch, which reaches the scheduler as one message,
so SGLang prefills them in one batch) go to a server with
`--lora-backend mint` and to the session's stock server (SGLang's
`torch_native`, the same adapters from --lora-paths); greedy tokens
must be equal and logprobs within 1e-4 of each other and of HF+PEFT fp32.
On CPU the mint backend runs our kernels' torch `_ref` path here; the Triton
kernels themselves run interpreted (TRITON_INTERPRET=1) in test_moe_cpu.py's
mint servers, attention and experts, against torch_native and HF+PEFT.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from transformers import AutoTokenizer

from json_calls import post_json
from sglang_mint.dev.reference import run_reference
from sglang_mint.dev.server import SGLangServer

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PROMPTS = ["the quick brown fox and the lazy dog", "a tiny model writes"]
MAX_TOKENS = 5
TOL = 1e-4


def batch_jobs(adapters):
    """(model, prompt) for every adapter and the base model, times every prompt."""
    return [(f"tiny:{a}" if a else "tiny", p) for p in PROMPTS for a in [None, *adapters]]


def serve_batch(server, jobs, tok):
    """All jobs as one /generate batch of token ids; returns [(tokens, logprobs)], greedy.

    Sent as separate concurrent requests, they reached the scheduler one by one, and on a busy machine
    each could be prefilled alone; a batch of token ids (no text to tokenize) is sent on as one message."""
    body = {"input_ids": [tok(prompt)["input_ids"] for _, prompt in jobs],
            "lora_path": [model.split(":", 1)[1] if ":" in model else None for model, _ in jobs],
            "sampling_params": {"max_new_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True},
            "return_logprob": True}
    code, text = post_json(server, "/generate", body)
    assert code == 200, text
    return [(answer["output_ids"], [lp for lp, _, _ in answer["meta_info"]["output_token_logprobs"]])
            for answer in json.loads(text)]


def run_server(tiny_model, adapters, backend, log, jobs):
    with SGLangServer(tiny_model, lora_paths=adapters, enable_mint=False, lora_backend=backend,
                      log_path=log, python=sys.executable) as server:
        results = serve_batch(server, jobs, AutoTokenizer.from_pretrained(tiny_model))
    return results, log.read_text(errors="replace")


@pytest.fixture(scope="module")
def jobs(tiny_adapters):
    return batch_jobs(list(tiny_adapters))


@pytest.fixture(scope="module")
def reference(tiny_model, tiny_adapters, jobs):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    specs = [{"adapter": str(tiny_adapters[m.split(":", 1)[1]]) if ":" in m else None,
              "prompt_ids": tok(p)["input_ids"], "max_tokens": MAX_TOKENS} for m, p in jobs]
    return [(r["tokens"], r["logprobs"]) for r in run_reference(sys.executable, tiny_model, specs)]


@pytest.fixture(scope="module")
def served(tiny_model, tiny_adapters, jobs, tmp_path_factory, stock_server):
    """{backend: (results, what the server logged while serving them)}."""
    mint = run_server(tiny_model, tiny_adapters, "mint", tmp_path_factory.mktemp("mint-backend") / "mint.log", jobs)
    args = stock_server.args
    assert [args[i + 1] for i, a in enumerate(args) if a == "--lora-backend"] == ["torch_native"]
    logged = stock_server.log_path.stat().st_size  # the shared server's log holds other modules' batches too
    results = serve_batch(stock_server, jobs, AutoTokenizer.from_pretrained(tiny_model))
    return {"mint": mint, "torch_native": (results, stock_server.log_path.read_bytes()[logged:].decode("utf-8", "replace"))}


def assert_same(got, want, jobs):
    for (model, prompt), (tokens, logprobs), (ref_tokens, ref_logprobs) in zip(jobs, got, want):
        assert tokens == ref_tokens, (model, prompt)
        assert logprobs == pytest.approx(ref_logprobs, abs=TOL), (model, prompt)


def test_mint_backend_ran_the_reference_kernels(served):
    log = served["mint"][1]
    assert "Using mint as backend of LoRA kernels" in log
    assert "mint LoRA backend on cpu: torch reference (_ref)" in log


def test_requests_shared_batches(served, jobs):
    # Otherwise "several adapters in one batch" was never exercised: every job, in one prefill.
    for backend, (_, log) in served.items():
        sizes = [int(n) for n in re.findall(r"Prefill batch, #new-seq: (\d+)", log)]
        assert len(jobs) in sizes, (backend, sizes)


def test_mint_matches_hf_peft(served, reference, jobs):
    assert_same(served["mint"][0], reference, jobs)


def test_mint_matches_torch_native(served, jobs):
    assert_same(served["mint"][0], served["torch_native"][0], jobs)


def test_adapters_differ_from_base_in_the_batch(reference, jobs):
    # Guards the tests above: each adapter must change its prompt's logprobs.
    base = {p: lp for (m, p), (_, lp) in zip(jobs, reference) if m == "tiny"}
    for (model, prompt), (_, logprobs) in zip(jobs, reference):
        if model != "tiny":
            assert logprobs != pytest.approx(base[prompt], abs=1e-3), model
