"""Every SGLang internal sglang-mint hooks, reads or writes: the one list.

``HOOKS``: each row names the process that needs it (``all``, ``frontend`` for the
launcher, tokenizer manager and DP controller, ``scheduler``), the dotted target,
the ``HookType``, our function (``module:name`` under ``sglang_mint.sglang``) and
whether it is only for machines without CUDA. ``register_for`` declares a process's
rows with SGLang's ``HookRegistry``; ``verify_applied`` checks at startup that SGLang
applied every one (it logs a failed target and carries on, which would leave the
plugin half installed without a word).

``INTERNALS``: the private state the glue reads or writes without a hook, on a
module, a class or an instance the glue gets at startup (the scheduler's LoRA
manager and pool, the tokenizer manager and its registry, the DP controller, ...).
``verify_internals`` checks them in each process that uses them, as soon as their
instances exist; ``verify_startup`` does both checks.
"""

from __future__ import annotations

import importlib

from sglang_mint.engine_manifest import Hook, Internal, missing_internals, rows_for
from sglang_mint.errors import HooksNotApplied, refusal  # noqa: F401 - hooks.HooksNotApplied

_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_TM = "sglang.srt.managers.tokenizer_manager.TokenizerManager"
_MOE = "sglang.srt.layers.moe.moe_runner.triton_utils"
_RUNNERS = "sglang.srt.lora.lora_moe_runners"
_DP = "sglang.srt.managers.data_parallel_controller.DataParallelController"
_OPENAI = "sglang.srt.entrypoints.openai.serving_base.OpenAIServingBase"

HOOKS: tuple[Hook, ...] = (
    # each process's role, told by SGLang: the launcher parses the command line, every process publishes its role
    Hook("all", "sglang.srt.server_args.ServerArgs.from_cli_args", "AFTER", "hooks:_after_command_line_parsed"),
    Hook("all", "sglang.srt.runtime_context._configure_context", "BEFORE", "hooks:_before_publish"),
    # --enable-mint and --mint-* flags, carried to every process
    Hook("all", "sglang.srt.server_args.ServerArgs.add_cli_args", "AFTER", "flags:_after_add_cli_args"),
    Hook("all", "sglang.srt.server_args.ServerArgs.from_cli_args", "AFTER", "flags:_after_from_cli_args"),
    # pinned host memory is a no-op without CUDA
    *(Hook("all", f"torch.{name}", "BEFORE", "cpu_compat:_unpin_kwargs", True)
      for name in ("tensor", "empty", "zeros", "ones", "full")),
    Hook("all", "torch.Tensor.pin_memory", "REPLACE", "cpu_compat:_pin_memory_noop", True),
    # tensor parallelism on CPU: gloo all-reduce instead of a PyNccl communicator
    Hook("scheduler", "sglang.srt.distributed.parallel_state.init_model_parallel_group", "AROUND",
         "cpu_compat:_around_init_model_parallel_group", True),
    # the adapter id in the OpenAI `model` field
    Hook("frontend", f"{_OPENAI}._resolve_lora_path", "AROUND", "openai_model:_around_resolve_lora_path"),
    Hook("frontend", f"{_OPENAI}.handle_request", "AROUND", "openai_model:_around_handle_request"),  # answers name it
    Hook("frontend", "sglang.srt.entrypoints.openai.serving_responses.OpenAIServingResponses._validate_model", "AROUND",
         "openai_model:_around_validate_responses_model"),  # /v1/responses would drop the adapter: refused
    Hook("frontend", "sglang.srt.entrypoints.openai.serving_responses.OpenAIServingResponses.create_responses",
         "AROUND", "server_made_ids:_around_create_responses"),  # a stored answer's id is the server's
    Hook("frontend", "sglang.srt.entrypoints.openai.serving_responses.OpenAIServingResponses.create_responses",
         "AROUND", "response_store:_around_create_responses"),  # its metadata within OpenAI's bounds; background ones bounded
    Hook("frontend", "sglang.srt.entrypoints.openai.serving_responses.OpenAIServingResponses.__init__", "AFTER",
         "response_store:_after_serving_responses_init"),  # answers kept within a count and bytes
    Hook("frontend", "sglang.srt.entrypoints.openai.serving_responses.OpenAIServingResponses."
         "_response_input_history", "AROUND", "response_store:_around_response_input_history"),  # ...and continued
    Hook("frontend", f"{_TM}.open_session", "AROUND", "server_made_ids:_around_open_session"),  # a session's too
    # sessions: an idle timeout each, and at most --mint-max-sessions open per scheduler
    Hook("frontend", f"{_TM}.open_session", "AROUND", "session_bounds:_around_open_session"),
    Hook("scheduler", f"{_SCHED}.__init__", "AFTER", "session_bounds:_after_scheduler_init"),
    Hook("scheduler", "sglang.srt.session.session_controller.SessionController.open", "AROUND",
         "session_bounds:_around_session_controller_open"),
    Hook("scheduler", "sglang.srt.session.session_controller.Session.is_timed_out", "AROUND",
         "session_bounds:_around_session_is_timed_out"),  # idle only once its requests are done
    # Ollama's routes: a refused request is a 400 in Ollama's shape
    Hook("frontend", "sglang.srt.entrypoints.ollama.serving.OllamaServing.handle_generate", "AROUND",
         "ollama_errors:_around_ollama_handler"),
    Hook("frontend", "sglang.srt.entrypoints.ollama.serving.OllamaServing.handle_chat", "AROUND",
         "ollama_errors:_around_ollama_handler"),
    # a request's stop_regex matched in bounded time
    Hook("scheduler", f"{_SCHED}.__init__", "AFTER", "stop_regex:_after_scheduler_init"),
    Hook("scheduler", "sglang.srt.managers.schedule_batch.Req._locate_str_stop_finished_len", "AROUND",
         "stop_regex:_around_locate_stop_finished_len"),
    Hook("scheduler", "sglang.srt.managers.schedule_batch.Req._check_str_based_finish", "AROUND",
         "stop_regex:_around_check_str_based_finish"),  # one budget for all of a request's patterns in a step
    Hook("scheduler", f"{_SCHED}.process_batch_result", "AROUND",
         "stop_regex:_around_process_batch_result"),  # ... and for all the requests of a step
    # a non-streaming session's history: a whole tree, within --mint-session-history-tokens
    Hook("scheduler", "sglang.srt.session.session_controller.Session.create_req", "AROUND",
         "session_history:_around_session_create_req"),
    Hook("scheduler", "sglang.srt.session.session_controller.Session.create_req", "AROUND",
         "session_bounds:_around_session_create_req"),  # a streaming one: within half the KV cache
    Hook("scheduler", f"{_SCHED}.get_internal_state", "AFTER", "session_history:_after_get_internal_state"),
    Hook("scheduler", f"{_SCHED}.get_internal_state", "AFTER", "session_bounds:_after_get_internal_state"),
    # the LoRA drainer keeps only the adapters it drains, not every revision it has seen
    Hook("scheduler", f"{_SCHED}.init_lora_drainer", "AFTER", "lora_drainer:_after_init_lora_drainer"),
    Hook("scheduler", "sglang.srt.lora.lora_drainer.LoRADrainer.update_draining_state", "AFTER",
         "lora_drainer:_after_update_draining_state"),
    Hook("scheduler", "sglang.srt.lora.lora_drainer.LoRADrainer.can_schedule", "AFTER",
         "lora_drainer:_after_can_schedule"),
    Hook("scheduler", f"{_SCHED}.get_internal_state", "AFTER", "lora_drainer:_after_get_internal_state"),
    # a prompt's request as the scheduler will get it: refused where the scheduler would raise on it; n bounded
    Hook("frontend", f"{_TM}.generate_request", "BEFORE", "frontend:_before_generate_request"),
    Hook("frontend", f"{_TM}._create_tokenized_object", "AFTER", "frontend:_after_create_tokenized_object"),
    # priority, DP ranks: a router's fields, an admin's right (the check: frontend.py), and the admin key opens
    # the tenants' routes
    Hook("frontend", f"{_TM}.generate_request", "BEFORE", "router_fields:_before_generate_request"),
    Hook("frontend", "sglang.srt.utils.auth.decide_request_auth", "AFTER", "admin:_after_decide_request_auth"),
    Hook("all", "sglang.srt.utils.common.build_server_info", "AFTER",
         "server_info:_after_build_server_info"),  # /server_info: no secret to every tenant
    # catalog lookups in the tokenizer manager, the registry holding only names in flight, /mint/* and
    # --mint-gateway's join (endpoints.py)
    Hook("frontend", f"{_TM}.init_lora", "AFTER", "frontend:_after_init_lora"),
    Hook("frontend", f"{_TM}._validate_and_resolve_lora", "AROUND",
         "frontend:_around_validate_and_resolve_lora"),  # no request body writes its own LoRA id
    Hook("frontend", f"{_TM}.abort_request", "AROUND",
         "client_rids:_around_abort_request"),  # a hang-up ends no other request whose rid starts with its rid
    Hook("frontend", f"{_TM}.generate_request", "BEFORE",
         "client_rids:_before_generate_request"),  # SGLang's own health check may use its rid head
    Hook("frontend", f"{_TM}.create_abort_task", "AROUND",
         "client_rids:_around_create_abort_task"),  # a finished stream's late abort spares a newer same rid
    Hook("frontend", f"{_TM}._resolve_lora_path", "AROUND", "frontend:_around_tm_resolve_lora_path"),
    Hook("frontend", "sglang.srt.lora.lora_registry.LoRARegistry.release", "AROUND",
         "frontend:_around_registry_release"),
    Hook("frontend", "sglang.srt.lora.lora_registry.LoRARegistry.get_all_adapters", "AFTER",
         "frontend:_after_registry_get_all_adapters"),  # /v1/models names no tenant's catalog id
    Hook("frontend", "sglang.srt.entrypoints.http_server.launch_server", "BEFORE", "endpoints:_before_launch_server"),
    # the catalog is the authority for its names: stock loads and unloads under them are refused (frontend.py)
    Hook("frontend", f"{_TM}.load_lora_adapter", "AROUND", "frontend:_around_load_lora_adapter"),
    Hook("frontend", f"{_TM}.load_lora_adapter_from_tensors", "AROUND", "frontend:_around_load_lora_adapter"),
    Hook("frontend", f"{_TM}.unload_lora_adapter", "AROUND", "frontend:_around_unload_lora_adapter"),
    # admin endpoints answer a loopback TCP peer: recorded before uvicorn's proxy-headers middleware (admin.py)
    Hook("frontend", "uvicorn.config.Config.load", "AFTER", "admin:_after_uvicorn_config_load"),
    # SGLang's HTTP metrics: no series per path a client invents (metric_labels.py)
    Hook("frontend", "sglang.srt.observability.http_request_metrics._get_fastapi_request_path", "AFTER",
         "metric_labels:_after_get_fastapi_request_path"),
    # vLLM's lora_requests_info gauge on /metrics, for llm-d's LoRA affinity (lora_info.py)
    Hook("frontend", "sglang.srt.entrypoints.http_server.add_prometheus_middleware", "AFTER",
         "lora_info:_after_add_prometheus_middleware"),
    # data parallelism: a catalog adapter's requests go to the DP rank that keeps it warm
    Hook("frontend", f"{_DP}.dispatching_with_trace", "AROUND", "dp_affinity:_around_dispatching_with_trace"),
    # ...and the DP controller checks its hooks before it starts the schedulers, as the others do, and its internals
    Hook("frontend", f"{_DP}.__init__", "BEFORE", "dp_affinity:_before_controller_init"),
    Hook("frontend", f"{_DP}.__init__", "AFTER", "dp_affinity:_after_controller_init"),
    # catalog adapters in the scheduler: holds, background reads, the host budget
    Hook("scheduler", f"{_SCHED}.__init__", "AFTER", "residency:_after_scheduler_init"),
    Hook("scheduler", f"{_SCHED}.can_schedule_lora_req", "AROUND", "residency:_around_can_schedule_lora_req"),
    Hook("scheduler", f"{_SCHED}.ingest_requests", "AFTER", "residency:_after_ingest_requests"),
    Hook("scheduler", f"{_SCHED}._add_request_to_queue", "BEFORE", "residency:_before_add_request_to_queue"),
    # (a request's end is billed: its abort reason's status_code tells an error from a cancellation)
    Hook("scheduler", f"{_SCHED}.send_abort_output", "AFTER", "residency:_after_send_abort_output"),
    Hook("scheduler", f"{_SCHED}.handle_generate_request", "AROUND",
         "residency:_around_handle_generate_request"),  # refusals on arrival billed
    Hook("scheduler", "sglang.srt.managers.schedule_batch.Req.set_finish_with_abort", "AFTER",
         "residency:_after_set_finish_with_abort"),  # a refusal before the prefill bills no tokens
    Hook("scheduler", f"{_SCHED}.init_req_max_new_tokens", "BEFORE",
         "residency:_before_init_req_max_new_tokens"),  # n > 1: SGLang's warm-up bills the prompt once
    Hook("scheduler", "sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer"
         ".stream_output", "BEFORE", "residency:_before_stream_output"),  # billed before the answer leaves
    Hook("scheduler", "sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer"
         ".stream_output", "AFTER", "residency:_after_stream_output"),
    Hook("scheduler", f"{_SCHED}.get_internal_state", "AFTER", "residency:_after_get_internal_state"),
    # the compiled grammars a scheduler keeps, within --mint-grammar-cache-bytes
    Hook("scheduler", "sglang.srt.constrained.grammar_manager.GrammarManager.__init__", "AFTER",
         "grammar_cache:_after_grammar_manager_init"),
    Hook("scheduler", f"{_SCHED}.get_internal_state", "AFTER", "grammar_cache:_after_get_internal_state"),
    Hook("scheduler", f"{_SCHED}.get_internal_state", "AFTER",
         "server_info:_after_scheduler_get_internal_state"),  # /server_info's internal_states: no secret
    Hook("scheduler", f"{_SCHED}.run_event_loop", "AROUND", "residency:_around_run_event_loop"),  # usage billed
    # no request body names another adapter's prefix-cache namespace
    Hook("scheduler", f"{_SCHED}.handle_generate_request", "AROUND", "prefix_cache:_around_handle_generate_request"),
    # packed adapters: one read, one copy per pool buffer
    Hook("scheduler", "sglang.srt.lora.lora.LoRAAdapter.initialize_weights", "AROUND",
         "packed_loader:initialize_weights"),
    Hook("scheduler", "sglang.srt.lora.mem_pool.LoRAMemoryPool.load_lora_weight_to_buffer", "AROUND",
         "packed_pool:load_lora_weight_to_buffer"),
    # MoE-expert LoRA of the mint backend
    Hook("scheduler", "sglang.srt.lora.layers.FusedMoEWithLoRA._get_lora_info", "AFTER",
         "mint_moe:_after_get_lora_info"),
    Hook("scheduler", f"{_RUNNERS}.build_lora_hooks", "AROUND", "mint_moe:_around_build_lora_hooks"),
    # the four gaps of SGLang's CPU MoE path (moe_cpu.py); fused_moe binds moe_align_block_size
    # at import, so both modules' names are hooked
    Hook("scheduler", f"{_MOE}.fused_moe_triton_config.get_device_name", "AFTER", "moe_cpu:_device_name_cpu", True),
    Hook("scheduler", f"{_MOE}.fused_moe.moe_align_block_size", "AROUND", "moe_cpu:_around_moe_align", True),
    Hook("scheduler", f"{_MOE}.moe_align_block_size.moe_align_block_size", "AROUND", "moe_cpu:_around_moe_align",
         True),
    Hook("scheduler", f"{_RUNNERS}._compute_lora_alignment", "AROUND", "moe_cpu:_around_lora_alignment", True),
    Hook("scheduler", "sglang.srt.utils.common.direct_register_custom_op", "AFTER", "moe_cpu:_also_register_cpu",
         True),
    Hook("scheduler", "sglang.srt.lora.layers.FusedMoEWithLoRA.slice_moe_lora_a_weights", "AROUND",
         "moe_cpu:_around_slice_moe_lora_a", True),
    Hook("scheduler", "sglang.srt.lora.layers.FusedMoEWithLoRA.slice_moe_lora_b_weights", "AROUND",
         "moe_cpu:_around_slice_moe_lora_b", True),
)


_HTTP = "sglang.srt.entrypoints.http_server"

INTERNALS: tuple[Internal, ...] = (
    Internal("all", "sglang.srt.runtime_context", "_CONTEXT", "a publish into it announces the process's role "
             "(a model-owned context announces none)", "hooks"),
    Internal("frontend", _HTTP, "app, _global_state", "adds the /mint/* routes, frontend/admin_guard.AdminGuard and "
             "the 409 handler to app before the server starts; reads _global_state.tokenizer_manager and "
             "app.state.openai_serving_responses (its stores' figures) in /mint/*",
             "endpoints, admin"),
    Internal("frontend", "sglang.srt.utils.auth.AuthLevel", "ADMIN_OPTIONAL", "marks /mint/* ADMIN_OPTIONAL",
             "endpoints"),
    Internal("frontend", f"{_HTTP}.flush_cache", "_auth_level", "an endpoint's mark: the guard covers every route "
             "SGLang marks ADMIN_OPTIONAL", "admin"),
    Internal("frontend", "fastapi.routing._IncludedRouter", "original_router", "the routes of included routers "
             "(elastic EP), read by frontend/admin_guard.leaf_routes", "admin"),
    Internal("frontend", "uvicorn_config", "app, loaded_app", "wraps uvicorn's loaded_app to record the TCP peer",
             "admin"),
    Internal("frontend", "tokenizer_manager", "lora_ref_cache, lora_registry", "SGLang's own adapters: the "
             "fallback for names the catalog does not hold", "frontend, openai_model"),
    Internal("frontend", "tokenizer_manager", "server_args", "--enable-mint's settings (flags.mint_config), the "
             "port", "frontend, client_rids, openai_model, server_made_ids, router_fields"),
    Internal("frontend", "generate_req_input", "lora_id, _sub_obj_cache", "cleared, with the prompts a batch was "
             "split into, before SGLang resolves a request's LoRA: no request body writes its own LoRA id; the "
             "prompts' objects are the ones a batch's rids in flight hold", "frontend, client_rids"),
    Internal("frontend", "tokenizer_manager", "rid_to_state", "the rids in flight, and the request each is: a "
             "hang-up's abort is not sent while it would end another of them", "client_rids"),
    Internal("frontend", "sglang.srt.managers.tokenizer_manager.ReqState", "obj, abort_sent", "the request a rid "
             "in flight is (a finished answer's late abort reaches only its own), and whether its abort was sent",
             "client_rids"),
    Internal("frontend", "abort_tasks", "tasks", "create_abort_task's BackgroundTasks: its task runs on behalf of "
             "its answer", "client_rids"),
    Internal("frontend", "abort_task", "func", "the task's function, wrapped", "client_rids"),
    Internal("frontend", "lora_registry", "_registry, _counters", "registers and drops catalog revision names",
             "frontend"),
    Internal("frontend", "sglang.srt.managers.io_struct", "_USE_PICKLE_IPC, msgpack_encode, msgpack_decode", "a "
             "request's msgpack IPC, which sock_send uses unless pickle is: decoded as the scheduler will before it "
             "is sent", "typed_ipc"),
    Internal("frontend", "sglang.srt.environ.envs", "SGLANG_USE_PICKLE_IPC", "a LoRA id carries its revision "
             "record only through pickled IPC", "frontend"),
    Internal("frontend", "sglang.srt.runtime_context", "get_serving", "its enable_response_store: whether "
             "/v1/responses stores answers, read by their id alone", "server_made_ids, response_store, endpoints"),
    Internal("frontend", "sglang.srt.arg_groups.fields.serving.Serving", "enable_response_store", "the same",
             "server_made_ids, response_store, endpoints"),
    Internal("frontend", "openai_serving_responses", "response_store, msg_store, background_tasks", "the stored "
             "answers and their conversations, dicts SGLang reads with get, [] and [] =, and the tasks making "
             "background answers, a dict each task's end pops: replaced by limited stores", "response_store"),
    Internal("frontend", "sglang.srt.entrypoints.openai.protocol.ResponsesRequest", "previous_response_id, "
             "metadata, store, background, stream", "the answer a request continues; what is kept with a stored "
             "answer; whether it is made in the background, holding no connection", "response_store"),
    Internal("frontend", "sglang.srt.entrypoints.openai.protocol.ResponsesRequest", "request_id, store", "a stored "
             "answer's id: the client's is refused", "server_made_ids"),
    Internal("all", "sglang.srt.server_args.ServerArgs", "api_key, admin_api_key, ssl_keyfile_password",
             "the secrets /server_info's answer carries (its settings, its command line, each scheduler's "
             "internal state), redacted there; admin_api_key is also the key a request carries to write a "
             "router's field, and either key the one a WebSocket handshake carries", "server_info, router_fields, "
             "endpoints"),
    Internal("scheduler", "sglang.srt.managers.io_struct.GetInternalStateReqOutput", "internal_state", "a "
             "scheduler's settings, as /server_info gives them: replaced by a redacted copy", "server_info"),
    Internal("all", "sglang.srt.server_args.ServerArgs", "grpc_port, smg_grpc_mode, grpc_mode, "
             "enable_custom_logit_processor, enable_session_radix_cache", "settings refused with --enable-mint: "
             "gRPC front ends past the admin guard and the tenant rules, tenants' code and session ids "
             "(flags.TENANT_UNSAFE)", "flags"),
    Internal("all", "sglang.srt.environ.envs", "SGLANG_GRPC_PORT, SGLANG_RUST_SERVER, "
             "SGLANG_ENABLE_REQUEST_DECOMPRESSION", "the same, set by environment; a body unpacked with no bound",
             "flags"),
    Internal("all", "sglang.srt.constants", "HEALTH_CHECK_RID_PREFIX", "the head of SGLang's health checks' "
             "rids: a client's rid may not start with it, and the ledger does not bill them", "client_rids"),
    Internal("frontend", "sglang.srt.entrypoints.openai.serving_responses.OpenAIServingResponses",
             "create_error_response", "the refusal of a stored answer whose body wrote its id (its "
             "tokenizer_manager, set in __init__, gives the server_args)", "server_made_ids"),
    Internal("frontend", "sglang.srt.managers.io_struct.OpenSessionReqInput", "session_id", "a session's id: the "
             "client's is refused", "server_made_ids"),
    Internal("frontend", "sglang.srt.managers.io_struct.GenerateReqInput", "priority, routed_dp_rank, "
             "data_parallel_rank", "a router's fields: refused from a request without the admin key", "router_fields"),
    Internal("frontend", "tokenizer_manager", "enable_priority_scheduling", "whether SGLang acts on a request's "
             "priority", "router_fields"),
    Internal("all", "sglang.srt.server_args.ServerArgs", "dp_size", "whether SGLang acts on a request's DP rank",
             "router_fields"),
    Internal("frontend", "sglang.srt.managers.io_struct.GenerateReqInput", "custom_labels", "the labels a request "
             "adds to SGLang's tokenizer metrics: only the names the server allows (an EmbeddingReqInput has none)",
             "metric_labels"),
    Internal("frontend", "tokenizer_manager", "enable_metrics", "whether SGLang's tokenizer metrics read them",
             "metric_labels"),
    Internal("all", "sglang.srt.server_args.ServerArgs", "tokenizer_metrics_allowed_custom_labels", "the label "
             "names a request may write", "metric_labels"),
    Internal("scheduler", "sglang.srt.constrained.base_grammar_backend.BaseGrammarBackend",
             "get_cached_or_future_value, set_cache, reset", "what reads and writes a backend's compiled grammars: "
             "get, [] =, pop and clear on its cache", "grammar_cache"),
    Internal("scheduler", "grammar_backend", "cache", "the compiled grammars, a dict: replaced by a GrammarCache "
             "(a wrapped backend's grammar_backend too)", "grammar_cache"),
    Internal("scheduler", "xgrammar_backend", "grammar_compiler, _tokenizer_info", "xgrammar's compiler, replaced "
             "by one without a cache", "grammar_cache"),
    Internal("scheduler", "sglang.srt.constrained.reasoner_grammar_backend", "ReasonerGrammarObject, "
             "ReasonerGrammarBackend", "the reasoning wrapper of a grammar (its .grammar) and of a backend (its "
             ".grammar_backend), both unwrapped", "grammar_cache"),
    Internal("scheduler", "sglang.srt.constrained.base_grammar_backend", "InvalidGrammarObject", "a grammar that "
             "failed to compile, weighed by its .error_message", "grammar_cache"),
    Internal("scheduler", "sglang.srt.constrained.xgrammar_backend.XGrammarGrammar", "copy", "an xgrammar grammar: "
             "its .ctx, the compiled form, weighed by xgrammar's memory_size_bytes (a grammar without them is "
             "taken to hold UNMEASURED_GRAMMAR_BYTES)", "grammar_cache"),
    Internal("scheduler", "scheduler", "grammar_manager", "the scheduler's grammars (its grammar_backend, "
             "server_args): their cache's figures for /server_info", "grammar_cache"),
    Internal("frontend", "sglang.srt.managers.io_struct.OpenSessionReqInput", "timeout", "a session's idle "
             "timeout: set where the body has none, refused above --mint-session-timeout", "session_bounds"),
    Internal("all", "sglang.srt.managers.io_struct.OpenSessionReqInput", "streaming", "whether a session asked for "
             "holds a request slot once it runs: refused past --mint-max-streaming-sessions", "session_bounds"),
    Internal("scheduler", "sglang.srt.managers.io_struct.OpenSessionReqOutput", "session_id, success", "a "
             "session refused past --mint-max-sessions", "session_bounds"),
    Internal("scheduler", "scheduler", "session_controller", "the scheduler's sessions", "session_bounds"),
    Internal("scheduler", "scheduler", "lora_drainer", "the LoRA drainer (None without --lora-drain-wait-threshold)",
             "lora_drainer"),
    Internal("scheduler", "lora_drainer", "adapter_to_stats", "its AdapterStats per lora_id: the entries that "
             "drain for no adapter dropped after each update, and counted for /server_info", "lora_drainer"),
    Internal("scheduler", "sglang.srt.lora.lora_drainer.AdapterStats", "is_draining_for", "the one field an entry "
             "keeps from one step to the next", "lora_drainer"),
    Internal("scheduler", "scheduler", "max_running_requests, max_total_num_tokens, max_req_len, "
             "server_args.enable_streaming_session", "its request slots, which a streaming session holds one of, its "
             "KV cache's tokens, which it holds its own of, and the longest request, which caps a turn's "
             "max_new_tokens", "session_bounds"),
    Internal("scheduler", "session_controller", "tree_cache.session_records", "the KV each streaming session "
             "holds (its record's kv_allocated_len)", "session_bounds"),
    Internal("scheduler", "session_controller", "sessions, maybe_reap", "the sessions a scheduler keeps open (each "
             "session's streaming), and the close of those past their timeout", "session_bounds"),
    Internal("scheduler", "sglang.srt.session.session_controller.SessionController", "_all_requests_finished",
             "whether a session's requests are done (its _inflight, last_active_time: whether a streaming one runs, "
             "and when it was last active)", "session_bounds"),
    Internal("frontend", "sglang.srt.managers.io_struct.TokenizedGenerateReqInput", "input_ids, mm_inputs, "
             "logprob_start_len, top_logprobs_num, return_hidden_states, token_indices_to_pool, "
             "positional_embed_overrides, sampling_params", "a prompt's request as the scheduler gets it: the values it "
             "raises on refused", "frontend"),
    Internal("frontend", "sglang.srt.sampling.sampling_params.SamplingParams", "top_k, stop_token_ids, logit_bias, "
             "stop_strs",
             "sampling values the scheduler raises on (top_k past int32, a stop id outside the vocabulary, a "
             "non-finite bias)", "frontend"),
    Internal("frontend", "tokenizer_manager", "model_config.vocab_size, model_config.hidden_size", "the vocabulary "
             "a prompt's and a stop's token ids are checked against; the width of an embedding override",
             "frontend"),
    Internal("scheduler", "session", "req_nodes, streaming", "a session's requests by rid, its tree's nodes (their "
             "order, the order of use); whether it streams (such a session keeps one request: left to SGLang)",
             "session_history"),
    Internal("scheduler", "session_node", "req, parent, children, abort", "a node of a session's tree: cleared, "
             "and taken out of the tree, here", "session_history"),
    Internal("scheduler", "sglang.srt.managers.io_struct.SessionParams", "rid, replace", "which request a session "
             "request continues from or replaces", "session_history"),
    Internal("scheduler", "sglang.srt.managers.schedule_batch.Req", "finished", "a kept request still running is "
             "not forgotten", "session_history"),
    Internal("scheduler", "sglang.srt.managers.schedule_batch", "FINISH_ABORT", "a request continuing from a rid "
             "its session does not hold: its abort (req.to_finish) given mint's message", "session_history"),
    Internal("scheduler", "req", "origin_input_ids, output_ids", "what a kept request weighs; where a stop "
             "pattern's search past its budget cuts the output", "session_history, stop_regex"),
    Internal("scheduler", "req", "origin_input_ids, sampling_params.max_new_tokens, to_finish, "
             "set_finish_with_abort", "a streaming session's turn: the tokens its KV holds after it, and its "
             "refusal as SGLang refuses a turn", "session_bounds"),
    Internal("scheduler", "session", "_inflight, session_id", "a streaming session's turn running, whose KV is "
             "counted as what it may hold after it; its record's key", "session_bounds"),
    Internal("frontend", "ollama_serving", "tokenizer_manager", "the Ollama handlers' tokenizer manager, whose "
             "settings say whether mint is on", "ollama_errors"),
    Internal("scheduler", "req", "sampling_params.stop_regex_strs", "whether a request has stop patterns to "
             "search after a step", "stop_regex"),
    Internal("scheduler", "batch", "reqs", "a step's requests: those with stop patterns share its budget",
             "stop_regex"),
    Internal("scheduler", "sglang.srt.managers.schedule_batch", "re", "the module a request's stop patterns are "
             "matched with, its only use there: replaced by a BoundedSearch (its search and error)", "stop_regex"),
    Internal("frontend", "sglang.srt.utils.auth", "AuthDecision, AuthLevel.NORMAL", "the tenants' routes admit the "
             "admin key too", "admin"),
    Internal("frontend", "sglang.srt.environ.envs", "SGLANG_REQ_WAITING_TIMEOUT, SGLANG_REQ_RUNNING_TIMEOUT", "the "
             "scheduler's timeouts, which abort by rid prefix past the hooks: warned of at startup", "client_rids"),
    Internal("frontend", "sglang.srt.environ.envs", "SGLANG_TIMEOUT_KEEP_ALIVE", "uvicorn's idle-connection "
             "timeout, set through its variable before launch_server reads it", "endpoints"),
    Internal("frontend", "controller", "dp_budget.update_budget, dp_budget.total_requests, "
             "dp_budget.last_timestamp, load_snapshot_reader.read_all, _active_workers", "the ranks' loads for "
             "adapter affinity; sets ._mint_loads", "dp_affinity"),
    Internal("scheduler", "sglang.srt.sampling.sampling_params.SamplingParams", "n, max_new_tokens", "a prompt "
             "asked for n > 1 choices: SGLang's warm-up of it (0 new tokens) bills the prompt once", "residency"),
    Internal("scheduler", "scheduler", "disaggregation_mode", "a prefill server of prefill-decode disaggregation "
             "keeps no usage ledger: the decode server answers and bills", "residency"),
    Internal("scheduler", "parallel", "pp_rank, dp_rank, attn_tp_rank, attn_cp_rank, attn_dp_rank, attn_dp_size",
             "get_parallel(): the ranks SGLang takes requests on, where the usage ledger is kept; the DP rank the "
             "node share and the metrics state are named by", "residency"),
    Internal("scheduler", "req", "already_computed, retraction_count", "a request aborted in the queue before its "
             "first prefill bills no tokens", "residency"),
    Internal("scheduler", "req", "rid", "the server's own requests (client_rids.SERVER_RID_HEADS: an adapter's "
             "warm-up, a health check) are not billed", "residency"),
    Internal("scheduler", "lora_manager", "configs, loras, lora_refs, memory_pool, lora_modules, _unload_lora_adapter",
             "installs and drops catalog adapters as SGLang's own (dropped without unload_lora_adapter's two free "
             "GPU memory reads, each an empty_cache); ranks, pins; finds an expert layer", "residency, lora_info"),
    Internal("scheduler", "lora_manager", "embed_tokens_module, lm_head_module", "what the pool fill is given "
             "beside lora_modules, for its dry run on the read thread", "adapter_reader"),
    Internal("scheduler", "memory_pool", "buffer_id_to_uid, moe_use_local_expert_ids, target_modules, "
             "max_lora_rank, lora_added_tokens_size", "which adapter holds a slot; when the one-copy packed fill "
             "applies; the modules its fill files weights under; what it holds, named when an adapter does not fit",
             "lora_info, packed_pool, adapter_reader"),
    Internal("scheduler", "memory_pool", "A_buffer, B_buffer, embedding_A_buffer, embedding_B_buffer, "
             "lm_head_A_buffer, lm_head_B_buffer, new_embeddings_buffer, pin_memory_available", "a copy of the pool "
             "for the fill's dry run: every *_buffer replaced by meta tensors of its shapes, pinning off",
             "adapter_reader"),
    Internal("scheduler", "sglang.srt.lora.mem_pool.LoRAMemoryPool", "load_lora_weight_to_buffer", "SGLang's own "
             "(unwrapped past the hooks: HookRegistry's __wrapped__) run dry on the read thread, on that copy: what it "
             "raises fails the adapter's requests, not the scheduler", "adapter_reader"),
    Internal("scheduler", "sglang.srt.lora.utils", "get_target_module_name, get_normalized_target_modules", "how "
             "the pool fill files a weight by name: a read adapter's names are checked with it before the fill; the "
             "module names the pool compares", "adapter_reader"),
    Internal("scheduler", "sglang.srt.lora.mem_pool", "_SGLANG_EXPERIMENTAL_LORA_OPTI, copy_weight_into_buffer",
             "how the packed fill zeroes B, and the copy it counts through", "packed_pool"),
    Internal("scheduler", "sglang.srt.lora.lora.LoRAAdapter", "initialize_weights_from_tensors", "builds a "
             "catalog adapter from the tensors read here; its layers[].weights are counted (residency/host_bytes) "
             "and copied where they still view a mapped staged file", "adapter_reader"),
    Internal("scheduler", "moe_layer", "_uses_interleaved_gate_up", "the gate/up layout of an expert layer",
             "mint_moe, packed_pool"),
    Internal("scheduler", "sglang.srt.lora.lora_moe_runners", "_naive_moe_lora_align_block_size", "SGLang's CPU "
             "alignment, for the CPU MoE path", "moe_cpu"),
    Internal("scheduler", "sglang.srt.utils.common", "sglang_lib", "SGLang's custom-op library, for the CPU MoE "
             "path", "moe_cpu"),
)


# SGLang's publish roles -> the rows of HOOKS each process applies ("all" is applied everywhere).
# Roles SGLang has but sglang-mint does not serve (an encoder, the expert backup) get "all" only.
ROLE_OF_PUBLISHED = {"scheduler": "scheduler", "detokenizer": "detokenizer", "tokenizer": "frontend",
                     "dp_controller": "frontend"}
_declared: set[str] = set()  # the roles whose rows this process has declared


def register_for(role: str) -> list[Hook]:
    """Declare the rows of ``role`` alone ("all" for the rows every process needs); returns them.
    A role declared before is not declared again."""
    import torch
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if role in _declared:
        return []
    _declared.add(role)
    hooks = [h for h in rows_for(HOOKS, role, torch.cuda.is_available()) if h.role == role]
    for hook in hooks:
        module, name = hook.function.split(":")
        function = getattr(importlib.import_module(f"sglang_mint.sglang.{module}"), name)
        HookRegistry.register(hook.target, function, HookType[hook.kind])
    return hooks


def _take_role(role: str) -> None:
    """Declare and apply ``role``'s rows now (SGLang applied the others in ``load_plugins``)."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    if register_for(role):
        HookRegistry.apply_hooks()


def _after_command_line_parsed(result, *args, **kwargs):
    """The process that parses SGLang's command line is the launcher: its frontend hooks must be
    in place before ``launch_server`` runs, and SGLang publishes its role only inside it. (An
    ``sglang.Engine`` publishes "tokenizer" before it builds its tokenizer manager.)"""
    _take_role("frontend")
    return result


def _before_publish(context, server_args, *args, role: str | None = None, **kwargs):
    """``publish(server_args, role="scheduler")`` and its kin: SGLang tells this process its role.
    Its rows are applied, and with ``--enable-mint`` checked, before the process builds anything."""
    from sglang.srt import runtime_context

    if context is not runtime_context._CONTEXT or role not in ROLE_OF_PUBLISHED:
        return None  # a model-owned context, or a role without hooks of ours
    ours = ROLE_OF_PUBLISHED[role]
    _take_role(ours)
    from sglang_mint.sglang.flags import mint_config

    if server_args is not None and mint_config(server_args) is not None:
        verify_startup(ours)  # the instance rows are checked once their instances exist
    return None


def verify_applied(role: str) -> None:
    """Raise HooksNotApplied naming every target SGLang failed to hook in this process."""
    import torch
    from sglang.srt.plugins.hook_registry import HookRegistry

    missing = sorted({h.target for h in rows_for(HOOKS, role, torch.cuda.is_available())} - HookRegistry._patched)
    if missing:
        raise refusal(f"hook {', '.join(missing)}", role)


def verify_internals(role: str, **instances) -> None:
    """Raise HooksNotApplied naming every attribute of INTERNALS missing in this process of ``role``: the
    rows of ``role`` and "all" on a module or class, and those on an instance given here (by the row's
    owner name: ``verify_internals("scheduler", lora_manager=..., memory_pool=...)``)."""
    missing = missing_internals(INTERNALS, role, instances)
    if missing:
        raise refusal(f"find {', '.join(missing)}", role)


def verify_startup(role: str, **instances) -> None:
    """At a process's startup with --enable-mint: every hook applied, every internal present."""
    verify_applied(role)
    verify_internals(role, **instances)
