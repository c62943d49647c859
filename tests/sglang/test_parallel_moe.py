"""MoE-expert LoRA (tiny Qwen3-MoE) served from a catalog with TP=2 and TP=2 + EP=2, on CPU.

Real SGLang, two ranks on this machine's two cores; every answer must equal HF+PEFT.
The dense storms under TP and DP are in test_parallel.py. DP is not repeated here: each
DP rank is a whole scheduler holding every expert, as a single engine does (test_moe_cpu.py),
and what DP adds, routing adapters to ranks and loading them on each, does not depend on
the model; a MoE DP storm cost the suite 50 s.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from transformers import AutoTokenizer

from mint_status import mint_status
from test_parallel import PROMPT, TOKENS, complete, openai_client

from sglang_mint.catalog import init_catalog
from sglang_mint.dev.reference import run_reference
from sglang_mint.dev.server import SGLangServer
from sglang_mint.dev.tiny_moe import write_tiny_moe, write_tiny_moe_adapters

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

# SGLang's MoE-LoRA kernels run under Triton's interpreter on CPU, about 2 s a request here,
# so this storm is smaller: 8 requests over 4 cold adapters (each read cold, then served
# again after the others went through the 2 slots), three of them stored packed.
# Tolerance 1e-3 against HF+PEFT: test_moe_cpu.py explains SGLang's fp16 expert outputs.
# At TP=2 SGLang pads the tiny model's expert intermediate size on CPU (32 -> 64); before
# moe_cpu.py padded the adapters alike, every expert LoRA failed to load there
# ("LoRA buffer shape [8, 32] does not match weight shape [8, 0]"), and at EP=2 too
# ("[8, 64] does not match [8, 32]"): each rank holds 4 of the 8 experts, all channels.
MOE_ADAPTERS = 4
MOE_TOL = 1e-3


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel-moe")
    model = write_tiny_moe(root / "model", "qwen3-moe", seed=0)
    catalog = root / "catalog"
    with init_catalog(str(catalog), str(model)) as cat:
        for i in range(MOE_ADAPTERS):
            forms = write_tiny_moe_adapters(model, root / f"a{i}", seed=i)
            # moe/2 as PEFT 0.21 writes it (fused experts), published without --pack: stored packed, the
            # one form of it SGLang serves (as PEFT files its pool fill raised and the server stopped)
            form = "peft-fused" if i == 2 else "per-expert"
            cat.publish(f"moe/{i}", str(forms[form]), pack=i % 2 == 1)
    ids = AutoTokenizer.from_pretrained(model)(PROMPT)["input_ids"]
    jobs = [{"adapter": str(root / f"a{i}" / "peft-fused"), "prompt_ids": ids, "max_tokens": TOKENS}
            for i in range(MOE_ADAPTERS)]
    refs = dict(zip((f"moe/{i}" for i in range(MOE_ADAPTERS)), run_reference(sys.executable, model, jobs)))
    return model, catalog, refs


@pytest.mark.parametrize("parallel", [["--tp-size", "2"], ["--tp-size", "2", "--ep-size", "2"]], ids=["tp2", "tp2-ep2"])
def test_moe_storm_equals_hf_peft(moe, tmp_path, parallel):
    model, catalog, refs = moe
    extra = ["--mint-catalog", str(catalog), *parallel, "--max-loras-per-batch", "2"]
    with SGLangServer(model, enable_mint=True, extra_args=extra, log_path=tmp_path / "server.log",
                      env={"TRITON_INTERPRET": "1"}, python=sys.executable, start_timeout=400) as srv:
        client = openai_client(srv)
        ids = [f"moe/{i % MOE_ADAPTERS}" for i in range(2 * MOE_ADAPTERS)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda a: (a, complete(client, a)), ids))
        schedulers = mint_status(srv)["schedulers"]
    assert sum(s["requests"] for s in schedulers) == len(ids)
    assert len(schedulers) == 1
    for adapter_id, (tokens, logprobs) in answers:
        assert tokens == refs[adapter_id]["tokens"], adapter_id
        assert logprobs == pytest.approx(refs[adapter_id]["logprobs"], abs=MOE_TOL), adapter_id
