"""``mint dev ...``: tiny models and adapters for tests and the demo, CPU environment."""

from __future__ import annotations

import argparse
import json
import os


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="real SGLang on CPU: `catalog` (default, `make demo`) serves a 100,000-adapter catalog by id "
                     "under a zipf workload; `rl` trains K policies at once, each publishing its LoRA every step"
    )
    demo.add_argument("scenario", nargs="?", choices=["catalog", "rl"], default="catalog",
                      help="catalog (default) or rl")
    demo.add_argument("--catalog-size", type=int, default=100_000, help="catalog: synthetic adapters (default 100000)")
    demo.add_argument("--requests", type=int, default=3000, help="catalog: zipf workload requests (default 3000)")
    demo.add_argument("--concurrency", type=int, default=32, help="catalog: concurrent clients (default 32)")
    demo.add_argument("--policies", type=int, default=4, help="rl: policies trained at once (default 4)")
    demo.add_argument("--steps", type=int, default=5, help="rl: steps of every policy (default 5)")
    demo.add_argument("--durable", action=argparse.BooleanOptionalAction, default=None,
                      help="rl: each publish answers once its revision is stored; --no-durable (the default): "
                           "once it is recorded and served from memory, stored after")
    demo.add_argument("--json", default=None, metavar="PATH", help="rl: write the run's record to PATH")
    demo.set_defaults(func=_demo)

    cluster = subparsers.add_parser(
        "cluster", help="N engines behind SGLang's gateway (SMG) with adapter affinity, one shared catalog "
                        "(PostgreSQL + an S3-compatible store), on loopback")
    csub = cluster.add_subparsers(dest="cluster_command", metavar="CLUSTER_COMMAND")
    csub.required = True
    p = csub.add_parser("up", help="start PostgreSQL, an S3-compatible store (moto), SMG and N engines; "
                                   "Ctrl-C stops them all")
    p.add_argument("--engines", type=int, default=2, help="engines (default 2)")
    p.add_argument("--port", type=int, default=30080, help="the gateway's port (default 30080)")
    p.add_argument("--catalog", default=None,
                   help="serve an existing catalog folder or postgresql:// URL (default: start PostgreSQL and "
                        "moto and fill a catalog with --catalog-size adapters)")
    p.add_argument("--catalog-size", type=int, default=1000, help="synthetic adapters in the demo catalog (1000)")
    p.set_defaults(func=_cluster_up)
    p = csub.add_parser("down", help="stop the cluster `mint cluster up` started (exit 1 if it is still stopping "
                                     "after --timeout)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for it to stop (default 90)")
    p.set_defaults(func=_cluster_down)

    dev = subparsers.add_parser("dev", help="development helpers: tiny models, adapters, CPU environment")
    sub = dev.add_subparsers(dest="dev_command", metavar="DEV_COMMAND")
    sub.required = True

    p = sub.add_parser("tiny-model", help="write a tiny random-weight Llama with a local tokenizer")
    p.add_argument("out", help="folder to write the model into")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_tiny_model)

    p = sub.add_parser("tiny-adapters", help="write N PEFT LoRA adapters (non-zero B) for a tiny model")
    p.add_argument("model", help="the tiny model's folder")
    p.add_argument("out", help="folder to write adapters into (one sub-folder each)")
    p.add_argument("-n", "--count", type=int, default=4, help="how many adapters (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_tiny_adapters)

    p = sub.add_parser("tiny-moe", help="write a tiny random-weight MoE model (8 experts, top-2) with a local tokenizer")
    p.add_argument("out", help="folder to write the model into")
    p.add_argument("--family", choices=["qwen3-moe", "deepseek-v3"], default="qwen3-moe",
                   help="qwen3-moe, or deepseek-v3 (MLA + MoE, with the config SGLang's CPU path needs)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_tiny_moe)

    p = sub.add_parser("tiny-moe-adapters",
                       help="write one expert-LoRA adapter for a tiny MoE model in per-expert, 3D-packed and "
                       "PEFT-fused forms (serve the fused one through `mint pack`)")
    p.add_argument("model", help="the tiny MoE model's folder")
    p.add_argument("out", help="folder to write the forms into (one sub-folder each)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_tiny_moe_adapters)

    p = sub.add_parser(
        "cpu-env",
        help="print `export` lines that let SGLang run without a GPU driver "
        '(use: eval "$(mint dev cpu-env)")',
    )
    p.set_defaults(func=_cpu_env)


def _tiny_model(args) -> int:
    from sglang_mint.dev.tiny import write_tiny_llama

    out = write_tiny_llama(args.out, seed=args.seed)
    print(f"wrote tiny Llama to {out}")
    return 0


def _tiny_adapters(args) -> int:
    from sglang_mint.dev.tiny import write_tiny_adapters
    from sglang_mint.errors import MintError

    if args.count < 1:
        raise MintError(f"--count must be at least 1, got {args.count}")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        raise MintError(f"{args.model} is not a model folder (no config.json)")
    paths = write_tiny_adapters(args.model, args.out, args.count, seed=args.seed)
    for path in paths:
        cfg = json.loads((path / "adapter_config.json").read_text())
        print(f"{path}  rank={cfg['r']} targets={','.join(sorted(cfg['target_modules']))}")
    return 0


def _tiny_moe(args) -> int:
    from sglang_mint.dev.tiny_moe import write_tiny_moe

    out = write_tiny_moe(args.out, family=args.family, seed=args.seed)
    print(f"wrote tiny {args.family} to {out}")
    return 0


def _tiny_moe_adapters(args) -> int:
    from sglang_mint.dev.tiny_moe import family_of, write_tiny_moe_adapters
    from sglang_mint.errors import MintError

    try:
        family_of(args.model)
    except (OSError, KeyError, ValueError):
        raise MintError(f"{args.model} is not a tiny MoE model folder (qwen3_moe or deepseek_v3 config.json)")
    for form, path in write_tiny_moe_adapters(args.model, args.out, seed=args.seed).items():
        cfg = json.loads((path / "adapter_config.json").read_text())
        targets = sorted(cfg["target_modules"]) + [f"experts.{p}" for p in sorted(cfg.get("target_parameters") or [])]
        print(f"{path}  form={form} rank={cfg['r']} targets={','.join(targets)}")
    return 0


def _cpu_env(args) -> int:
    from sglang_mint.dev.cpu_env import cpu_server_env, shell_exports

    before = dict(os.environ)
    print(shell_exports(before, cpu_server_env(before)))
    return 0


def _demo(args) -> int:
    from sglang_mint.errors import MintError

    if args.scenario == "rl":
        from sglang_mint.dev.rl_demo import run_rl_demo

        if args.policies < 1 or args.steps < 1:
            raise MintError("--policies and --steps must be positive")
        durable = {} if args.durable is None else {"durable": args.durable}
        return run_rl_demo(args.policies, args.steps, json_path=args.json, **durable)
    from sglang_mint.dev.demo import run_demo

    if args.catalog_size < 1 or args.requests < 1 or args.concurrency < 1:
        raise MintError("--catalog-size, --requests and --concurrency must be positive")
    return run_demo(args.catalog_size, args.requests, args.concurrency)


def _cluster_up(args) -> int:
    from sglang_mint.dev.cluster import run_cluster

    return run_cluster(args.engines, args.port, args.catalog, args.catalog_size)


def _cluster_down(args) -> int:
    from sglang_mint.dev.cluster import stop_cluster

    return stop_cluster(args.timeout)
