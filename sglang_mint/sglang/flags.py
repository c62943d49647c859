"""The ``--enable-mint`` / ``--mint-*`` launch flags on SGLang's parser and ``ServerArgs``.

The flags and their checks are ``config.py``'s; here they join SGLang's parser and
the result rides to every process as ``server_args._mint`` (ServerArgs pickles its
underscore bookkeeping too). Without ``--enable-mint`` it is None and every hook passes.
"""

from __future__ import annotations

from sglang_mint.config import MintConfig, config_from_args
from sglang_mint.errors import MintError
from sglang_mint.launch_flags import add_mint_arguments
from sglang_mint.sglang.backend import MINT_BACKEND


def mint_config(server_args) -> MintConfig | None:
    """The plugin's settings for this server, or None when it runs as stock SGLang."""
    return getattr(server_args, "_mint", None)


def metrics_enabled() -> bool:
    """Whether SGLang serves metrics (``--enable-metrics``); the instruments are residency/metrics.py."""
    from sglang.srt.runtime_context import get_observability

    return bool(get_observability().enable_metrics)


def _after_add_cli_args(result, parser, *args, **kwargs):
    add_mint_arguments(parser)
    # `--lora-backend mint`: SGLang's parser fixes the choices, so extend them.
    for action in parser._actions:
        if action.dest == "lora_backend" and action.choices is not None:
            if MINT_BACKEND not in action.choices:
                action.choices = list(action.choices) + [MINT_BACKEND]
            action.help = (action.help or "") + " 'mint' is sglang-mint's backend."
    return result


NATIVE_GRPC = ("starts a gRPC server beside HTTP whose admin calls (flush, weight updates, abort all) no admin guard "
               "checks")
PAST_TOKENIZER_MANAGER = ("serves requests past the tokenizer manager, where the catalog lookup and the tenant rules "
                          "run")
# (setting, why) of each SGLang setting a server for many tenants refuses (tenant_unsafe_settings)
TENANT_UNSAFE = {
    "--grpc-port": NATIVE_GRPC, "SGLANG_GRPC_PORT": NATIVE_GRPC,
    "--smg-grpc-mode": PAST_TOKENIZER_MANAGER, "--grpc-mode": PAST_TOKENIZER_MANAGER,
    "SGLANG_RUST_SERVER": PAST_TOKENIZER_MANAGER,
    "--enable-custom-logit-processor": "runs a request's custom_logit_processor, code any tenant sends (dill), "
                                       "in the scheduler that holds every tenant's adapters and cache",
    "--enable-session-radix-cache": "keeps a request's KV cache under the session_id its body writes, which "
                                    "any tenant may write too (and close)",
    "SGLANG_ENABLE_REQUEST_DECOMPRESSION": "unpacks a request body (x-body-compressed: zstd) whole, with no bound: "
                                           "a body of a few KiB within --mint-max-request-bytes can become GiBs in "
                                           "the frontend every tenant shares",
}


def tenant_unsafe_settings(server_args) -> tuple[tuple[str, str], ...]:
    """(setting, why) for each setting in ``TENANT_UNSAFE`` that is in effect."""
    from sglang.srt.environ import envs

    on = {"--grpc-port": server_args.grpc_port is not None, "SGLANG_GRPC_PORT": envs.SGLANG_GRPC_PORT.get() is not None,
          "--smg-grpc-mode": server_args.smg_grpc_mode, "--grpc-mode": server_args.grpc_mode,
          "SGLANG_RUST_SERVER": envs.SGLANG_RUST_SERVER.get(),
          "--enable-custom-logit-processor": server_args.enable_custom_logit_processor,
          "--enable-session-radix-cache": server_args.enable_session_radix_cache,
          "SGLANG_ENABLE_REQUEST_DECOMPRESSION": envs.SGLANG_ENABLE_REQUEST_DECOMPRESSION.get()}
    return tuple((setting, why) for setting, why in TENANT_UNSAFE.items() if on[setting])


def _after_from_cli_args(server_args, cls, namespace, *args, **kwargs):
    from sglang_mint.process import default_thread_binding

    default_thread_binding(server_args)  # with or without --enable-mint, like the other CPU fixes
    try:
        server_args._mint = config_from_args(
            namespace, lora_on=bool(server_args.enable_lora or server_args.lora_paths),
            pp_size=getattr(server_args, "pp_size", 1) or 1,
            tokenizer_workers=getattr(server_args, "tokenizer_worker_num", 1) or 1,
            model_path=server_args.model_path,
            tenant_unsafe=tenant_unsafe_settings(server_args) if getattr(namespace, "enable_mint", False) else ())
    except MintError as exc:
        raise SystemExit(f"error: {exc}") from None
    if server_args._mint is not None and not server_args.lora_paths:
        missing = [flag for flag, value in (("--max-lora-rank", server_args.max_lora_rank),
                                            ("--lora-target-modules", server_args.lora_target_modules)) if not value]
        if missing:  # SGLang's own check asserts later, a traceback
            raise SystemExit(
                f"error: --enable-mint without --lora-paths needs {' and '.join(missing)}: SGLang sizes its LoRA pool "
                "at startup and the catalog's adapters come after it (e.g. --max-lora-rank 16 --lora-target-modules "
                "all; an adapter above the rank or beyond the modules is refused, naming them)")
    return server_args
