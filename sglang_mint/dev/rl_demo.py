"""``mint demo rl``: K policies trained at once by reinforcement learning against ONE SGLang engine.

Starts ``python -m sglang.launch_server ... --enable-mint`` on the tiny model with a fresh
catalog (loopback only), then runs K policies concurrently, one thread each. Every policy
(``rl_policy.Policy``) holds its own LoRA adapter in this process and, each step:

1. samples a batch from the engine: ``POST /generate`` with ``lora_path`` pinned to
   ``rl/policy-k@<rev>``, the revision its last publish returned (4 prompts x 4 samples x
   8 tokens, temperature 1.0, ``return_logprob``);
2. scores it with its own toy reward and takes one Adam step (GRPO-style advantages),
   recomputing the logprobs with HF, which also checks that the engine sampled from exactly
   these weights;
3. publishes the new adapter as the next revision:
   ``MintClient(url).publish(id, peft_model, durable=False, expected_revision=rev + 1)``.

It prints each policy's reward per step and each step's wall time (all K policies), checks
that every policy published one revision per step, numbered consecutively, and that every
batch's logprobs are those of the revision it pinned, and exits 0 when they hold.

``run_loop`` is the loop without a server of its own: ``bench/rl_loop_bench.py`` runs it
against this engine and against a stock SGLang engine updated with full merged weights.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sglang_mint.dev.rl_policy import TARGET_CLASSES, Group, Policy, load_base

PROMPTS = ["the quick brown fox", "hello world and", "one two three", "a small red house by the river"]
SAMPLES_PER_PROMPT = 4
NEW_TOKENS = 8
# fp32 on both sides: SGLang's torch_native LoRA matches HF+PEFT to about 1e-5 here, while one
# Adam step moves these logprobs by 1e-2 or more (each step's ``neighbour_gap``).
ON_POLICY_TOLERANCE = 1e-3
# Whether a publish answers only once the revision's blob is stored. An RL step's does not: the
# server answers once the revision is recorded and served from its upload in memory, and stores
# the blob after (MintClient.publish, durable=False).
DURABLE = False
DEFAULT_POLICIES = 4
DEFAULT_STEPS = 5


def post_json(url: str, body: dict, timeout: float = 600) -> object:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"POST {url} -> {exc.code}: {exc.read()[:2000].decode(errors='replace')}") from None


def generate(url: str, prompt_ids: list[list[int]], lora_path: str | None = None) -> list[Group]:
    """Sample every prompt SAMPLES_PER_PROMPT times in one ``POST /generate``; one Group per prompt."""
    batch = [ids for ids in prompt_ids for _ in range(SAMPLES_PER_PROMPT)]
    body = {"input_ids": batch,
            "sampling_params": {"max_new_tokens": NEW_TOKENS, "temperature": 1.0, "ignore_eos": True},
            "return_logprob": True}
    if lora_path is not None:
        body["lora_path"] = [lora_path] * len(batch)
    answers = post_json(url + "/generate", body)
    groups = []
    for p, ids in enumerate(prompt_ids):
        outputs, logprobs = [], []
        for answer in answers[p * SAMPLES_PER_PROMPT:(p + 1) * SAMPLES_PER_PROMPT]:
            tokens = answer["meta_info"]["output_token_logprobs"]  # [[logprob, token id, text], ...]
            if len(tokens) != NEW_TOKENS:
                raise RuntimeError(f"asked for {NEW_TOKENS} tokens, the engine sampled {len(tokens)}")
            outputs.append([int(t[1]) for t in tokens])
            logprobs.append([float(t[0]) for t in tokens])
        groups.append(Group(list(ids), outputs, logprobs))
    return groups


class MintEngine:
    """The engine side of the loop on a server with ``--enable-mint``: sampling pins a revision,
    publishing stores the next one (``durable`` as MintClient.publish takes it)."""

    name = "mint"

    def __init__(self, url: str, durable: bool = DURABLE):
        from sglang_mint.client import MintClient

        self.url = url
        self.durable = durable
        self.client = MintClient(url)

    def publish(self, policy: Policy, revision: int, metadata: dict) -> str:
        """Publish ``policy``'s adapter as ``revision`` (refused unless it gets that number); its name."""
        extra = {} if self.durable else {"durable": False}  # the field is sent only when not durable
        pub = self.client.publish(policy.adapter_id, policy.model, expected_revision=revision,
                                  metadata=metadata, **extra)
        if pub.revision != revision:
            raise RuntimeError(f"{policy.adapter_id}: asked for revision {revision}, got {pub.revision}")
        return pub.name

    def sample(self, policy: Policy, name: str, prompt_ids: list[list[int]]) -> list[Group]:
        return generate(self.url, prompt_ids, lora_path=name)


@dataclass
class PolicyStep:
    """What one policy did in one step: the revision it sampled from, what it learned, what it published."""

    policy: int
    step: int
    sampled: str
    published: str
    reward: float
    logprob_gap: float
    neighbour_gap: float
    class_shares: list[float]  # of the batch's tokens, the share whose id is j mod TARGET_CLASSES, for each j
    seconds: dict = field(default_factory=dict)  # sample, update, publish


def policy_step(policy: Policy, engine, step: int, prompt_ids: list[list[int]]) -> PolicyStep:
    sampled = policy.served_name
    t0 = time.perf_counter()
    groups = engine.sample(policy, sampled, prompt_ids)
    t1 = time.perf_counter()
    stats = policy.update(groups)
    t2 = time.perf_counter()
    policy.served_name = engine.publish(policy, policy.revision + 1, {"step": step, "reward": stats["reward"]})
    policy.revision += 1
    t3 = time.perf_counter()
    return PolicyStep(policy.index, step, sampled, policy.served_name, stats["reward"], stats["logprob_gap"],
                      stats["neighbour_gap"], class_shares(groups),
                      {"sample": t1 - t0, "update": t2 - t1, "publish": t3 - t2})


def class_shares(groups: list[Group]) -> list[float]:
    """Of every token sampled, the share whose id is j modulo TARGET_CLASSES, for each j: what each
    policy's reward would make of this batch."""
    tokens = [t for g in groups for out in g.outputs for t in out]
    return [round(sum(1 for t in tokens if t % TARGET_CLASSES == j) / len(tokens), 4) for j in range(TARGET_CLASSES)]


def first_publish(policy: Policy, engine) -> str:
    policy.served_name = engine.publish(policy, 1, {"step": 0})
    policy.revision = 1
    return policy.served_name


def run_loop(engine, policies: list[Policy], prompt_ids: list[list[int]], steps: int,
             on_step=None) -> dict:
    """Publish every policy's first revision, then ``steps`` steps; in each, every policy samples,
    updates and publishes in a thread of its own, and the step ends when the last one has
    published. ``on_step(step, wall_s, rows)`` is called after each. Returns the loop's record."""
    rows: list[PolicyStep] = []
    walls = []
    with ThreadPoolExecutor(len(policies), thread_name_prefix="policy") as pool:
        t0 = time.perf_counter()
        first = list(pool.map(lambda p: first_publish(p, engine), policies))
        first_s = time.perf_counter() - t0
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            done = list(pool.map(lambda p: policy_step(p, engine, step, prompt_ids), policies))
            walls.append(time.perf_counter() - t0)
            rows += done
            if on_step:
                on_step(step, walls[-1], done)
    return summarize(engine.name, policies, first, first_s, rows, walls, steps)


def summarize(engine_name: str, policies: list[Policy], first: list[str], first_s: float,
              rows: list[PolicyStep], walls: list[float], steps: int) -> dict:
    """The loop's record: per policy, the names sampled and published, rewards and gaps per step;
    per step, the wall time; and whether the revisions and the on-policy check hold."""
    per_policy = {}
    problems = []
    for policy, first_name in zip(policies, first):
        mine = sorted((r for r in rows if r.policy == policy.index), key=lambda r: r.step)
        published = [first_name] + [r.published for r in mine]
        expected = [f"{policy.adapter_id}@{n}" for n in range(1, steps + 2)]
        if published != expected:
            problems.append(f"{policy.adapter_id} published {published}, expected {expected}")
        for r in mine:
            if r.sampled != f"{policy.adapter_id}@{r.step}":
                problems.append(f"{policy.adapter_id} step {r.step} sampled {r.sampled}")
            if not r.logprob_gap <= ON_POLICY_TOLERANCE:
                problems.append(f"{policy.adapter_id} step {r.step}: engine logprobs differ from revision "
                                f"{r.sampled}'s by {r.logprob_gap:.2e} (tolerance {ON_POLICY_TOLERANCE:g})")
        per_policy[policy.adapter_id] = {
            "target_class": policy.target,
            "published": published,
            "sampled": [r.sampled for r in mine],
            "reward": [round(r.reward, 4) for r in mine],
            "logprob_gap": [r.logprob_gap for r in mine],
            "neighbour_gap": [r.neighbour_gap for r in mine],
            "class_shares": [r.class_shares for r in mine],
            "seconds": [{k: round(v, 4) for k, v in r.seconds.items()} for r in mine],
        }
    phases = {k: round(statistics.median(r.seconds[k] for r in rows), 4) for k in ("sample", "update", "publish")} \
        if rows else {}
    return {"engine": engine_name, "policies": len(policies), "steps": steps,
            "samples_per_step": len(PROMPTS) * SAMPLES_PER_PROMPT, "new_tokens": NEW_TOKENS,
            "first_publish_s": round(first_s, 4), "step_wall_s": [round(w, 4) for w in walls],
            "median_phase_s": phases, "per_policy": per_policy,
            "max_logprob_gap": max((r.logprob_gap for r in rows), default=None),
            "min_neighbour_gap": min((r.neighbour_gap for r in rows), default=None),
            "on_policy_tolerance": ON_POLICY_TOLERANCE, "problems": problems, "ok": not problems}


def make_policies(model_dir: str | Path, count: int, seed: int = 0) -> tuple[list[Policy], list[list[int]]]:
    """``count`` policies over one shared base model, and the prompts as token ids."""
    from transformers import AutoTokenizer

    base = load_base(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    return [Policy(k, base, seed=seed) for k in range(count)], prompt_ids


def print_step(step: int, wall_s: float, done: list[PolicyStep]) -> None:
    rewards = " ".join(f"{r.reward:>8.3f}" for r in sorted(done, key=lambda r: r.policy))
    med = {k: statistics.median(r.seconds[k] for r in done) for k in ("sample", "update", "publish")}
    print(f"    {step:>4} {wall_s:>7.2f} {med['sample']:>7.2f} {med['update']:>7.2f} {med['publish']:>7.2f}   "
          f"{rewards}", flush=True)


def print_header(policies: list[Policy]) -> None:
    names = " ".join(f"{'policy-' + str(p.index):>8}" for p in policies)
    print(f"    {'step':>4} {'wall s':>7} {'sample':>7} {'update':>7} {'publish':>7}   {names}")


def server_flags(catalog: Path, policies: int, slots: int | None = None) -> list[str]:
    """Room in the engine for every policy's revision and the next one being warmed (``slots``, by
    default 2 per policy), and for every policy's upload at once (the default, 2, answers a third 429)."""
    return ["--mint-catalog", str(catalog), "--max-loras-per-batch", str(slots or max(4, 2 * policies)),
            "--mint-max-concurrent-uploads", str(max(2, policies))]


def run_rl_demo(policies: int = DEFAULT_POLICIES, steps: int = DEFAULT_STEPS, durable: bool = DURABLE,
                json_path: str | None = None) -> int:
    import torch

    from sglang_mint.catalog import init_catalog
    from sglang_mint.dev.demo import demo_assets
    from sglang_mint.dev.server import SGLangServer

    torch.set_num_threads(1)  # K policy threads beside the server on a small machine
    t_start = time.perf_counter()
    model, _ = demo_assets()
    work = Path(tempfile.mkdtemp(prefix="mint-rl-demo-"))
    catalog = work / "catalog"
    init_catalog(str(catalog), str(model)).close()
    print(f"==> {policies} policies, each a LoRA (r=8, q/k/v/o/gate/up/down) on the tiny model in this process; "
          f"policy k is paid for tokens whose id is k mod {TARGET_CLASSES}")
    print("==> starting sglang.launch_server --enable-mint with a fresh catalog (CPU, about 30 s)")
    server = SGLangServer(model, enable_mint=True, extra_args=server_flags(catalog, policies),
                          log_path=work / "server.log", python=sys.executable)
    try:
        with server:
            print(f"    ready in {server.start_seconds:.1f} s at {server.url} (log: {server.log_path})")
            loaded = make_policies(model, policies)
            print(f"\n==> {steps} steps; in each, every policy (one thread each) samples "
                  f"{len(PROMPTS)} prompts x {SAMPLES_PER_PROMPT} x {NEW_TOKENS} tokens from its pinned revision, "
                  f"takes one Adam step and publishes the next revision (durable={durable})")
            print("    wall: the step for all policies; sample/update/publish: median over policies; then each "
                  "policy's mean reward")
            print_header(loaded[0])
            record = run_loop(MintEngine(server.url, durable), *loaded, steps, on_step=print_step)
    finally:
        shutil.rmtree(catalog, ignore_errors=True)
    record["durable"] = durable
    record["wall_s"] = round(time.perf_counter() - t_start, 1)
    print_outcome(record)
    if json_path:
        Path(json_path).write_text(json.dumps(record, indent=1))
    return 0 if record["ok"] else 1


def print_outcome(record: dict) -> None:
    print()
    for adapter_id, p in record["per_policy"].items():
        if p["reward"]:
            print(f"    {adapter_id}: reward {p['reward'][0]:.3f} -> {p['reward'][-1]:.3f}, published "
                  f"{p['published'][0]} .. {p['published'][-1]}")
    last = {a: p["class_shares"][-1] for a, p in record["per_policy"].items() if p["class_shares"]}
    if len(last) > 1:
        classes = min(len(last), TARGET_CLASSES)
        print(f"\n    last batch of each policy, share of its tokens in each policy's paid class (id mod "
              f"{TARGET_CLASSES}): the policies have pulled apart")
        print("    " + " " * 12 + "".join(f"{'class ' + str(j):>9}" for j in range(classes)))
        for adapter_id, shares in last.items():
            print(f"    {adapter_id:<12}" + "".join(f"{x:>9.3f}" for x in shares[:classes]))
        print()
    if record["max_logprob_gap"] is not None:
        print(f"    on-policy: every batch's logprobs within {record['max_logprob_gap']:.1e} of its pinned "
              f"revision's (HF); one Adam step moves them by at least {record['min_neighbour_gap']:.1e}")
    print(f"    steps took {', '.join(f'{w:.2f}' for w in record['step_wall_s'])} s; "
          f"{record['wall_s']} s in all with the server's start")
    for problem in record["problems"]:
        print(f"    PROBLEM: {problem}")
