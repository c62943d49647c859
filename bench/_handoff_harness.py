"""The measurement harness of bench/handoff_bench.py: servers, timed steps, retries when contended.

``run_reps`` runs one untimed warm-up step and then the timed ones: each draws
the trainer's next state dict, times a case's ``handoff(k, sd)`` (which returns
its phases and the model name to ask) and the first token of the new policy,
then a "warm" request of the same length. A step during which another SGLang
server ran is redone with fresh weights (``RETRIES``). The servers start only
once no other SGLang server runs on the machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import urllib.error
import urllib.request

import openai

from _common import other_server_pids, wait_for_other_servers
from _handoff_trainer import MODULES, Trainer
from sglang_mint.dev.server import SGLangServer

SERVED = "base"
# A 2.7 GB model leaves little room on a 24 GB machine: the default 65536-token KV cache
# (3 GB here) is not needed for 1-token requests.
SERVER_FLAGS = ["--max-total-tokens", "4096"]


def post(url: str, body: dict, timeout: float = 600) -> dict:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"POST {url.rsplit('/', 1)[-1]} -> {e.code}: {e.read()[:2000].decode(errors='replace')}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def first_token(client, model: str, prompt_ids: list[int]) -> dict:
    """One greedy token; returns its text and logprob."""
    out = client.completions.create(model=model, prompt=prompt_ids, max_tokens=1, temperature=0, logprobs=1)
    lp = out.choices[0].logprobs
    return {"token": lp.tokens[0], "logprob": lp.token_logprobs[0]}


def timed_rep(k: int, trainer: "Trainer", handoff, server, client, prompt_ids) -> dict:
    """Step k: draw the new state dict, then time ``handoff(k, sd)`` (returns its phases and the
    model name to ask) and the first token."""
    sd = trainer.step(k)  # the trainer already holds this: not timed
    others = set(other_server_pids(exclude=server.proc.pid))
    t0 = time.perf_counter()
    phases, model = handoff(k, sd)
    t1 = time.perf_counter()
    tok = first_token(client, model, prompt_ids)
    t2 = time.perf_counter()
    assert abs(first_token(client, model, prompt_ids)["logprob"] - tok["logprob"]) < 1e-4  # the policy holds
    # The serving cost alone: the same policy, a prompt of the same length that shares no prefix
    # with the one just cached (reversed), so it prefills as much as the first request did.
    w0 = time.perf_counter()
    first_token(client, model, prompt_ids[::-1])
    w1 = time.perf_counter()
    row = {"step": k, "total_s": round(t2 - t0, 4), "first_token_s": round(t2 - t1, 4),
           "warm_s": round(w1 - w0, 4), "phases": {p: round(v, 4) for p, v in phases.items()}, **tok}
    others |= set(other_server_pids(exclude=server.proc.pid))
    if others:  # another SGLang server started meanwhile and shared the cores: say so
        row["other_servers"] = len(others)
    return row


RETRIES = 2  # per step, when another SGLang server shared the machine during it
RETRY_STEP0 = 100  # retried steps publish fresh weights: a catalog refuses a revision it already holds


def run_reps(trainer, handoff, server, prompt_ids, reps: int) -> dict:
    """One untimed warm-up step, then ``reps`` timed steps. A step during which another SGLang
    server ran on the machine (tests of a colleague, say) is kept aside and redone with fresh
    weights once that server has ended, up to RETRIES times; the last try is kept either way."""
    client = openai_client(server)
    own = server.proc.pid
    retry_steps = iter(range(RETRY_STEP0 * trainer.rank, 10**9))
    wait_for_other_servers(exclude=own)
    warmup = timed_rep(0, trainer, handoff, server, client, prompt_ids)
    samples, set_aside = [], []
    for k in range(1, reps + 1):
        step = k
        for attempt in range(RETRIES + 1):
            wait_for_other_servers(exclude=own)
            row = timed_rep(step, trainer, handoff, server, client, prompt_ids)
            if not row.get("other_servers") or attempt == RETRIES:
                samples.append(row)
                break
            set_aside.append(row)
            step = next(retry_steps)
    for prev, cur in zip([warmup] + samples, samples):
        cur["changed_from_previous"] = abs(cur["logprob"] - prev["logprob"]) > 1e-6
    return {"warmup": warmup, "samples": samples, "set_aside_contended": set_aside, **summarize(samples)}


def summarize(samples: list[dict]) -> dict:
    tot = [s["total_s"] for s in samples]
    over = [s["total_s"] - s["warm_s"] for s in samples]
    phases = {p: round(statistics.median(s["phases"][p] for s in samples), 4) for p in samples[0]["phases"]}
    return {"median_s": round(statistics.median(tot), 4), "min_s": round(min(tot), 4),
            "median_over_warm_s": round(statistics.median(over), 4),
            "median_warm_s": round(statistics.median(s["warm_s"] for s in samples), 4),
            "median_phases_s": phases,
            "contended_samples": sum(1 for s in samples if s.get("other_servers"))}


class Server(SGLangServer):
    def start(self) -> "Server":
        wait_for_other_servers()
        return super().start()


def start_server(model_dir, **kwargs) -> Server:
    """A server for ``with``: it starts (after any other server has ended) on entering."""
    return Server(model_dir, served_name=SERVED, python=sys.executable, **kwargs)


def openai_client(server):
    return openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)


def lora_server(model_dir, rank, *, enable_mint, extra=()):
    return start_server(model_dir, enable_mint=enable_mint,
                        extra_args=[*SERVER_FLAGS, "--max-lora-rank", str(rank), "--lora-target-modules", *MODULES,
                                    *extra])
