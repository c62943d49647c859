"""The plugin's registration and launch flags, checked in a fresh interpreter.

Each check runs in a process of its own: loading SGLang's plugins applies hooks to the
process, which must not leak into the test runner or into the next check. The processes
are forked from one that imported SGLang and loaded no plugin (forked_python.py), so the
module pays SGLang's import once; `mint`'s flags in `launch_server --help` still come from
a real `python -m sglang.launch_server`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from forked_python import ForkedPython, publish_as_scheduler_without
from hung import HUNG_AFTER_S

# What the checks import; none of these loads SGLang's plugins.
SGLANG_MODULES = ["sglang.srt.server_args", "sglang.srt.plugins", "sglang.srt.plugins.hook_registry",
                  "sglang.srt.lora.backend.lora_registry", "sglang.srt.runtime_context",
                  "sglang.srt.managers.scheduler", "sglang.srt.managers.detokenizer_manager",
                  "sglang.srt.managers.data_parallel_controller"]


@pytest.fixture(scope="module")
def forked():
    # HF_HUB_OFFLINE is read when huggingface_hub is imported, which is now, in the server.
    with ForkedPython(SGLANG_MODULES, env={"HF_HUB_OFFLINE": "1"}) as py:
        yield py


@pytest.fixture
def run_py(forked):
    return forked.run


def test_entry_point_is_discoverable():
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group="sglang.srt.plugins")}
    assert eps["mint"].value == "sglang_mint.sglang:register"
    assert eps["mint"].load().__module__ == "sglang_mint.sglang"


@pytest.fixture(scope="module")
def flag_results(tiny_model, tmp_path_factory, forked):
    """Parse a set of command lines with SGLang's own parser, plugins loaded once."""
    from sglang_mint.catalog import init_catalog

    catalog_dir = tmp_path_factory.mktemp("catalog-dir") / "catalog"
    init_catalog(catalog_dir, tiny_model).close()
    not_a_catalog = tmp_path_factory.mktemp("not-a-catalog")
    # A catalog made for a model of another size than the one served.
    other_model = tmp_path_factory.mktemp("other-model")
    config = json.loads((tiny_model / "config.json").read_text())
    (other_model / "config.json").write_text(json.dumps({**config, "hidden_size": 2 * config["hidden_size"]}))
    other_catalog = tmp_path_factory.mktemp("other-catalog") / "catalog"
    init_catalog(other_catalog, other_model).close()
    cases = {
        "stock": ["--model-path", str(tiny_model)],
        "mint": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint", "--lora-backend", "mint",
                 "--max-lora-rank", "8", "--lora-target-modules", "all",
                 "--mint-catalog", str(catalog_dir), "--mint-host-cache-bytes", "64MiB", "--mint-pin", "a", "b/c",
                 "--mint-load-workers", "3", "--mint-max-upload-bytes", "16GiB",
                 "--mint-max-concurrent-uploads", "3", "--mint-usage-dir", str(catalog_dir.parent / "ledger"),
                 "--mint-grammar-cache-bytes", "1GiB", "--mint-max-sessions", "64", "--mint-session-timeout", "90",
                 "--mint-max-streaming-sessions", "16", "--mint-max-request-bytes", "8MiB",
                 "--mint-session-history-tokens", "4096", "--mint-max-top-logprobs", "50",
                 "--mint-max-stored-responses", "500", "--mint-stored-responses-bytes", "2GiB",
                 "--mint-max-background-responses", "32"],
        "bad_upload_size": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                            "--mint-catalog", str(catalog_dir), "--mint-max-upload-bytes", "0"],
        "not_a_catalog": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                          "--mint-catalog", str(not_a_catalog)],
        "bad_size": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                     "--mint-catalog", str(catalog_dir), "--mint-host-cache-bytes", "lots"],
        "bad_pin": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                    "--mint-catalog", str(catalog_dir), "--mint-pin", "../x"],
        "catalog_with_pp": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                            "--mint-catalog", str(catalog_dir), "--pp-size", "2"],
        "bad_dp_dispatch": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                            "--mint-catalog", str(catalog_dir), "--mint-dp-dispatch", "random"],
        "cache_without_catalog": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                                  "--mint-host-cache-bytes", "1GiB"],
        "catalog_without_mint": ["--model-path", str(tiny_model), "--mint-catalog", str(catalog_dir)],
        "mint_without_lora": ["--model-path", str(tiny_model), "--enable-mint"],
        "missing_catalog": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                            "--mint-catalog", str(catalog_dir / "nope")],
        "bad_backend": ["--model-path", str(tiny_model), "--lora-backend", "nonsense"],
        "tokenizer_workers": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                              "--tokenizer-worker-num", "2"],
        "grpc_port": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                      "--mint-catalog", str(catalog_dir), "--grpc-port", "40123"],
        "smg_grpc_mode": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                          "--mint-catalog", str(catalog_dir), "--smg-grpc-mode"],
        "custom_logit_processor": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                                   "--mint-catalog", str(catalog_dir), "--enable-custom-logit-processor"],
        "session_radix_cache": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                                "--mint-catalog", str(catalog_dir), "--enable-session-radix-cache"],
        "catalog_other_base": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                               "--mint-catalog", str(other_catalog)],
        "bad_workers": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                        "--mint-catalog", str(catalog_dir), "--mint-load-workers", "0"],
        "bad_grammar_cache": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                              "--mint-grammar-cache-bytes", "much"],
        "bad_stored_responses": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                                 "--mint-max-stored-responses", "0"],
        "bad_stored_bytes": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                             "--mint-stored-responses-bytes", "1.5 tons"],
        "bad_background_responses": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                                     "--mint-max-background-responses", "0"],
        "bad_max_sessions": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                             "--mint-max-sessions", "0"],
        "bad_streaming_sessions": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                                   "--mint-max-streaming-sessions", "0"],
        "bad_request_size": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                             "--mint-max-request-bytes", "0"],
        "bad_top_logprobs": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                             "--mint-max-top-logprobs", "0"],
        "bad_session_history": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                                "--mint-session-history-tokens", "0"],
        "bad_session_timeout": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                                "--mint-session-timeout", "inf"],
        "bad_concurrent_uploads": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                                   "--mint-catalog", str(catalog_dir), "--mint-max-concurrent-uploads", "0"],
        "catalog_without_pool_size": ["--model-path", str(tiny_model), "--enable-lora", "--enable-mint",
                                      "--mint-catalog", str(catalog_dir), "--max-lora-rank", "8"],
    }
    proc = forked.run(f"""
        import contextlib, io, json, pickle
        from sglang.srt.plugins import load_plugins
        from sglang.srt.plugins.hook_registry import HookRegistry
        load_plugins()
        import sglang_mint.sglang as glue
        n_hooks = sum(len(v) for v in HookRegistry._hooks.values())
        glue.register()  # a second call must add nothing
        idempotent = n_hooks == sum(len(v) for v in HookRegistry._hooks.values())
        from sglang.srt.server_args import prepare_server_args
        from sglang.srt.lora.backend.lora_registry import get_backend_from_name
        out = {{"idempotent": idempotent, "backend_name": get_backend_from_name("mint").name}}
        for name, argv in {json.dumps(cases)}.items():
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err):
                    args = prepare_server_args(argv)
                mint = pickle.loads(pickle.dumps(args))._mint  # as a spawned process sees it
                out[name] = {{"ok": True, "mint": None if mint is None else dict(vars(mint), pinned=list(mint.pinned))}}
            except SystemExit as e:
                out[name] = {{"ok": False, "error": str(e.code) + err.getvalue()}}
        print("RESULT" + json.dumps(out))
    """)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[0][len("RESULT"):]), str(catalog_dir)


def test_register_is_idempotent(flag_results):
    results, _ = flag_results
    assert results["idempotent"] is True


def test_mint_backend_is_registered(flag_results):
    results, _ = flag_results
    assert results["backend_name"] == "mint"


def test_without_flag_the_plugin_is_off(flag_results):
    results, _ = flag_results
    assert results["stock"] == {"ok": True, "mint": None}


def test_flags_reach_subprocess_copies_of_server_args(flag_results):
    results, catalog_dir = flag_results
    assert results["mint"] == {"ok": True, "mint": {
        "catalog": catalog_dir, "host_cache_bytes": 64 << 20, "pinned": ["a", "b/c"], "load_workers": 3,
        "max_upload_bytes": 16 << 30, "max_concurrent_uploads": 3, "dp_dispatch": "affinity", "catalog_cache": None,
        "blob_cache_bytes": 10 << 30, "gateway": None, "advertise_url": None,
        "usage_dir": str(Path(catalog_dir).parent / "ledger"), "usage_flush_s": None, "grammar_cache_bytes": 1 << 30,
        "max_sessions": 64, "max_streaming_sessions": 16, "session_timeout_s": 90.0, "session_history_tokens": 4096,
        "max_stored_responses": 500, "max_top_logprobs": 50, "max_request_bytes": 8 << 20,
        "stored_responses_bytes": 2 << 30, "max_background_responses": 32}}


@pytest.mark.parametrize("case, message", [
    ("catalog_without_mint", "require --enable-mint"),
    ("mint_without_lora", "--enable-mint needs LoRA on"),
    ("missing_catalog", "no such folder"),
    ("bad_backend", "invalid choice"),
    ("not_a_catalog", "--mint-catalog"),
    ("bad_size", "--mint-host-cache-bytes: 'lots' is not a size"),
    ("bad_pin", "--mint-pin: adapter id '../x'"),
    ("cache_without_catalog", "need --mint-catalog"),
    ("catalog_with_pp", "does not support pipeline parallelism yet, got --pp-size 2"),
    ("bad_dp_dispatch", "invalid choice: 'random'"),
    ("tokenizer_workers", "--tokenizer-worker-num 2"),
    ("grpc_port", "SGLang's --grpc-port starts a gRPC server beside HTTP whose admin calls"),  # no admin guard
    ("smg_grpc_mode", "SGLang's --smg-grpc-mode serves requests past the tokenizer manager"),
    ("custom_logit_processor", "SGLang's --enable-custom-logit-processor runs a request's custom_logit_processor"),
    ("session_radix_cache", "SGLang's --enable-session-radix-cache keeps a request's KV cache under the session_id"),
    ("catalog_other_base", "was made for base model"),
    ("bad_workers", "--mint-load-workers must be 1 to 64, got 0"),
    ("bad_upload_size", "--mint-max-upload-bytes: size '0' must be positive"),
    ("bad_concurrent_uploads", "--mint-max-concurrent-uploads must be 1 to 64, got 0"),
    ("bad_grammar_cache", "--mint-grammar-cache-bytes: 'much' is not a size"),
    ("bad_max_sessions", "--mint-max-sessions must be 1 to 1000000, got 0"),
    ("bad_streaming_sessions", "--mint-max-streaming-sessions must be 1 to 1000000, got 0"),
    ("bad_request_size", "--mint-max-request-bytes: size '0' must be positive"),
    ("bad_session_history", "--mint-session-history-tokens must be 1 to 1073741824, got 0"),
    ("bad_top_logprobs", "--mint-max-top-logprobs must be 1 to 1048576, got 0"),
    ("bad_stored_responses", "--mint-max-stored-responses must be 1 to 10000000, got 0"),
    ("bad_stored_bytes", "--mint-stored-responses-bytes: '1.5 tons' is not a size"),
    ("bad_background_responses", "--mint-max-background-responses must be 1 to 1000000, got 0"),
    ("bad_session_timeout", "--mint-session-timeout must be above 0 and at most 604800 (7 days), got inf"),
    ("catalog_without_pool_size", "without --lora-paths needs --lora-target-modules"),  # was SGLang's traceback
])
def test_bad_flags_are_clear_errors(flag_results, case, message):
    results, _ = flag_results
    assert results[case]["ok"] is False
    assert message in results[case]["error"]


def test_help_lists_the_flags():
    proc = subprocess.run([sys.executable, "-m", "sglang.launch_server", "--help"],
                          capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in ("--enable-mint", "--mint-catalog", "--mint-host-cache-bytes", "--mint-pin", "--mint-max-upload-bytes",
                 "--mint-max-concurrent-uploads", "sglang-mint", "mint}"):
        assert text in proc.stdout


def test_each_process_hooks_only_what_runs_in_it(run_py):
    """The role comes from hooks SGLang calls in its real process entry points, not from the stack.

    Each entry point runs its real ``load_plugins()`` (our entry point: the rows every process
    needs) and then announces its role with ``publish(server_args, role=...)``; given a model
    that does not exist, it stops there. The launcher is the process that parses the command line.
    """
    proc = run_py("""
        import argparse
        import json
        import os
        os.environ["HF_HUB_OFFLINE"] = "1"
        import sglang.srt.plugins as plugins
        from sglang.srt.plugins.hook_registry import HookRegistry
        import sglang_mint.sglang as glue
        from sglang_mint.sglang import hooks
        from sglang.srt.managers import data_parallel_controller, detokenizer_manager, scheduler
        from sglang.srt.server_args import ServerArgs

        args = ServerArgs(model_path="no-such-model")  # as a spawned process receives it: built elsewhere

        def launcher():
            plugins.load_plugins()
            ServerArgs.from_cli_args(argparse.Namespace(model_path="no-such-model"))

        out = {}
        for name, call in (
            ("scheduler", lambda: scheduler.run_scheduler_process(args, None, 0, 0, 0, None, None)),
            ("detokenizer", lambda: detokenizer_manager.run_detokenizer_process(args, None)),
            ("dp_controller", lambda: data_parallel_controller.run_data_parallel_controller_process(args, None, None)),
            ("launcher", launcher),
        ):
            HookRegistry.reset()  # a fresh process: nothing declared, nothing loaded
            hooks._declared.clear()
            glue._registered = False
            plugins._plugins_loaded = False
            try:
                call()
            except Exception:
                pass  # past the announcement, the process fails to find the model
            out[name] = {"roles": sorted(hooks._declared), "targets": sorted(HookRegistry._hooks)}
        print("RESULT" + json.dumps(out))
    """)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    roles = {name: v["roles"] for name, v in out.items()}
    assert roles == {"scheduler": ["all", "scheduler"], "detokenizer": ["all", "detokenizer"], "dp_controller": ["all", "frontend"],
                     "launcher": ["all", "frontend"]}
    sched, detok, front, dp = out["scheduler"], out["detokenizer"], out["launcher"], out["dp_controller"]
    assert any("Scheduler.can_schedule_lora_req" in t for t in sched["targets"])
    assert any("LoRAMemoryPool.load_lora_weight_to_buffer" in t for t in sched["targets"])  # packed pool fill
    assert not any("mem_pool" in t for t in front["targets"] + detok["targets"])
    assert not any("openai" in t or "tokenizer_manager" in t for t in sched["targets"])
    assert any("OpenAIServingBase._resolve_lora_path" in t for t in front["targets"])
    assert any("DataParallelController.dispatching_with_trace" in t for t in dp["targets"])
    assert not any("Scheduler" in t for t in front["targets"])
    assert not any("Scheduler" in t or "openai" in t or "lora.lora" in t for t in detok["targets"])


def test_a_process_announced_with_a_hook_missing_refuses_to_start(run_py):
    """The check runs in the announcement itself, so it cannot be skipped by a role it got wrong:
    a scheduler announced with --enable-mint whose hook SGLang could not apply stops there."""
    lines = publish_as_scheduler_without(run_py, "sglang.srt.managers.scheduler", "Scheduler.get_internal_state")
    assert lines[0].startswith("PUBLISHED")  # without --enable-mint SGLang goes on as stock
    assert lines[1].startswith("REFUSED") and "Scheduler.get_internal_state" in lines[1]


def test_a_hook_sglang_could_not_apply_refuses_startup(run_py):
    """SGLang logs a target it cannot hook and carries on; each process of ours refuses instead."""
    proc = run_py("""
        from sglang.srt.plugins.hook_registry import HookRegistry
        from sglang.srt.managers import scheduler
        from sglang_mint.sglang import hooks
        hooks.register_for("all")
        hooks.register_for("scheduler")
        kept = scheduler.Scheduler.get_internal_state
        del scheduler.Scheduler.get_internal_state  # as if SGLang had renamed it
        HookRegistry.apply_hooks()
        try:
            hooks.verify_applied("scheduler")
        except hooks.HooksNotApplied as exc:
            print("REFUSED", exc)
        else:
            print("STARTED")
        HookRegistry.reset()
        hooks._declared.clear()
        scheduler.Scheduler.get_internal_state = kept
        hooks.register_for("all")
        hooks.register_for("scheduler")
        HookRegistry.apply_hooks()
        hooks.verify_applied("scheduler")  # with every target present, nothing is refused
        print("CONTROL OK")
    """)
    assert "REFUSED" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Scheduler.get_internal_state" in proc.stdout and "refusing to start" in proc.stdout
    assert "CONTROL OK" in proc.stdout, proc.stderr[-3000:]


def test_the_dp_controller_refuses_to_start_without_its_dispatch_hook(run_py):
    """The DP controller is a process of its own: a dispatch hook SGLang could not apply would
    turn adapter affinity into round robin without a word, so the controller refuses to start."""
    proc = run_py("""
        from types import SimpleNamespace
        from sglang.srt.plugins.hook_registry import HookRegistry
        from sglang.srt.managers import data_parallel_controller as dpc
        from sglang_mint.sglang import hooks
        from sglang_mint.config import MintConfig
        mint_on = SimpleNamespace(_mint=MintConfig())
        for renamed in (True, False):
            HookRegistry.reset()
            kept = dpc.DataParallelController.dispatching_with_trace
            if renamed:
                del dpc.DataParallelController.dispatching_with_trace  # as if SGLang had renamed it
            hooks._declared.clear()
            hooks.register_for("all")
            hooks.register_for("frontend")
            HookRegistry.apply_hooks()
            dpc.DataParallelController.dispatching_with_trace = kept
            try:  # port_args=None: past our check, SGLang's own __init__ fails on it
                dpc.DataParallelController(mint_on, None, None)
            except hooks.HooksNotApplied as exc:
                print("REFUSED", renamed, exc)
            except Exception as exc:
                print("STARTED", renamed, type(exc).__name__)
    """)
    assert "REFUSED True" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "DataParallelController.dispatching_with_trace" in proc.stdout
    assert "STARTED False" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]  # every hook applied: it goes on


def test_grpc_set_by_environment_is_refused_too(monkeypatch):
    """SGLANG_GRPC_PORT starts the native gRPC server as --grpc-port does; SGLANG_RUST_SERVER serves without
    the Python HTTP server."""
    from sglang.srt.server_args import ServerArgs

    from sglang_mint.sglang.flags import tenant_unsafe_settings

    args = ServerArgs(model_path="tiny")
    assert tenant_unsafe_settings(args) == ()
    monkeypatch.setenv("SGLANG_GRPC_PORT", "40124")
    monkeypatch.setenv("SGLANG_RUST_SERVER", "1")
    assert [setting for setting, _ in tenant_unsafe_settings(args)] == ["SGLANG_GRPC_PORT", "SGLANG_RUST_SERVER"]
    monkeypatch.setenv("SGLANG_ENABLE_REQUEST_DECOMPRESSION", "1")  # a zstd body unpacked with no bound
    assert [setting for setting, _ in tenant_unsafe_settings(args)][-1] == "SGLANG_ENABLE_REQUEST_DECOMPRESSION"
