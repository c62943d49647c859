"""Values of a request that SGLang's tokenizer manager passes on unchecked and its scheduler raises on.

An exception in SGLang's scheduler loop, while it takes a request in or runs the batch holding it, stops
every process of the server. SGLang 0.5.23 checks a request's sampling parameters for sense (``top_k``
at least 1, ``logit_bias`` keys in the vocabulary) but not these, each of which a client could send to
stop the server (each reproduced with ``--enable-mint`` on a real server, on CPU):

- on one prompt, a list where the scheduler reads one value: ``lora_path``, ``logprob_start_len``,
  ``top_logprobs_num``, ``return_hidden_states``;
- a token id outside the vocabulary in ``stop_token_ids`` (read when ``min_new_tokens`` is set);
- ``top_logprobs_num`` (``logprobs`` / ``top_logprobs`` on the OpenAI routes) above the vocabulary size;
- ``top_k`` past a 32-bit integer;
- a ``logit_bias`` value past float32 (``1e39``), which sampling turns into NaN: a bias is at most
  ``LARGEST_LOGIT_BIAS`` either way (-1e9, a common way to ban a token, passes);
- ``token_indices_to_pool`` naming a position outside the prompt, or none;
- ``positional_embed_overrides`` from a JSON body (``/generate``: it is no embedding), or of another width
  than the model's hidden size or at positions outside the prompt (``/v1/score``'s
  ``query_embed_overrides``, ``item_embed_overrides``);
- a scalar sampling parameter of another type than SGLang's ``SamplingParams`` declares
  (``SAMPLING_PARAM_TYPES``), on a route that skips ``/generate``'s type check: ``/vertex_generate``'s
  ``max_new_tokens: 8.5``, ``skip_special_tokens: "no"`` or a ``json_schema`` object, Ollama's ``options``,
  or ``chat_template_kwargs``' ``spaces_between_special_tokens`` on ``/v1/chat/completions``, which SGLang
  copies into the sampling parameters. The first four stopped the server; ``chat_template_kwargs``' list
  reached the detokenizer, which groups requests by that value (a crash with another request in its batch,
  by the code; not reproduced here). Only the scalars are checked: ``custom_params`` takes any JSON, as
  SGLang's routes declare, and an in-process caller's numpy numbers pass.

Beside those, three values that held a loop every tenant waits on are kept within bounds:

- ``top_logprobs_num`` within ``--mint-max-top-logprobs`` (20 by default, vLLM's default too): the top
  logprobs of every position of a long prompt (``logprob_start_len: 0``) over the whole vocabulary held
  the scheduler for some 46 s and the tokenizer manager's loop for minutes;
- ``n`` (choices per prompt) at most ``MAX_PARALLEL_SAMPLES``: the tokenizer manager makes every choice's
  request before it sends one, 13 s of its loop for a million (``check_parallel_samples``);
- each stop string at most ``MAX_STOP_CHARS`` characters (SGLang bounds a stop regex to 256 bytes): the scheduler
  compares every prefix of each stop with the output's tail after each step of a streamed request,
  0.55 s a step for stops of 54,000 characters;
- each stop pattern within ``stop_regex.MAX_UNROLLED`` parts with its counted repeats written out: the ``regex``
  package the scheduler matches them with took 1.4 s and 500 MB to compile 51 bytes of nested ``{7}``s.

A token id outside the vocabulary in the prompt (``input_ids``, or ``prompt`` as token ids) did not stop
the CPU server: it was served, as whatever the embedding made of it. It is refused too: it is not a token.

With ``--enable-mint`` each is refused, a ValueError (400) naming the field, before the request is sent on.
``lora_path``'s shape is checked before the adapter is resolved (``check_lora_path_shape``), the rest on the
tokenized request (``check_tokenized_request``).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

from sglang_mint.stop_regex import check_stop_patterns

LARGEST_TOP_K = 2**31 - 1  # the scheduler holds top_k in an int32 tensor
LARGEST_LOGIT_BIAS = 1e9  # divided by a temperature of 1e-6 still far within float32
MAX_PARALLEL_SAMPLES = 1024  # n: choices of one prompt (RL rollouts take some dozens)
MAX_STOP_CHARS = 256  # as SGLang's bound on a stop regex (256 bytes)
# The scalar sampling parameters, by the type SGLang's SamplingParams declares (None: left out)
SAMPLING_PARAM_TYPES = {
    **dict.fromkeys(("max_new_tokens", "min_new_tokens", "n", "top_k", "stream_interval", "beam_width",
                     "sampling_seed"), numbers.Integral),
    **dict.fromkeys(("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty",
                     "repetition_penalty"), numbers.Real),
    **dict.fromkeys(("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim"), bool),
    **dict.fromkeys(("json_schema", "regex", "ebnf", "structural_tag"), str),
}


class ModelLimits(NamedTuple):
    """What a request is checked against: the model's vocabulary and hidden size, the server's top-logprobs cap."""

    vocab_size: int
    hidden_size: int
    max_top_logprobs: int


def check_lora_path_shape(lora_path, single: bool) -> None:
    """A ValueError where ``lora_path`` is not one name (or none) per prompt: a string or null for one
    prompt; for a batch, that or a list of them."""
    if single and isinstance(lora_path, list):
        raise ValueError("lora_path: one adapter name (a string) for one prompt, got a list; send a list only "
                         "with a list of prompts")
    names = lora_path if isinstance(lora_path, list) else [lora_path]
    for name in names:
        if name is not None and not isinstance(name, str):
            raise ValueError(f"lora_path: adapter names are strings, got {type(name).__name__}")


def check_parallel_samples(sampling_params) -> None:
    """A ValueError where a request's ``sampling_params`` (as the client wrote them: an object, or one per
    prompt) ask for more than ``MAX_PARALLEL_SAMPLES`` choices of a prompt."""
    for params in sampling_params if isinstance(sampling_params, list) else [sampling_params]:
        n = params.get("n") if isinstance(params, dict) else None
        if _is_int(n) and n > MAX_PARALLEL_SAMPLES:
            raise ValueError(f"n: at most {MAX_PARALLEL_SAMPLES} choices of a prompt, got {n}; send the prompt "
                             "again for more")


def check_tokenized_request(tokenized, limits: ModelLimits) -> None:
    """A ValueError naming the first field of ``tokenized`` (one prompt's request as the scheduler gets it:
    its token ids, sampling parameters, logprob settings) that the scheduler would raise on, or that is past
    ``limits``."""
    vocab_size = limits.vocab_size
    input_ids = getattr(tokenized, "input_ids", None)
    multimodal = getattr(tokenized, "mm_inputs", None) is not None  # a model's media placeholders: its own ids
    if input_ids is not None and len(input_ids) and not multimodal \
            and not (0 <= min(input_ids) and max(input_ids) < vocab_size):
        bad = next(t for t in input_ids if not 0 <= t < vocab_size)
        raise ValueError(f"input_ids: token id {bad} is outside the model's vocabulary (0 to {vocab_size - 1})")
    for field in ("logprob_start_len", "top_logprobs_num"):
        value = getattr(tokenized, field, None)
        if value is not None and not _is_int(value):
            raise ValueError(f"{field}: an integer for one prompt, got {type(value).__name__}")
    top_logprobs = getattr(tokenized, "top_logprobs_num", None)
    if top_logprobs is not None and top_logprobs > min(limits.max_top_logprobs, vocab_size):
        most = (f"{limits.max_top_logprobs} on this server (--mint-max-top-logprobs)"
                if limits.max_top_logprobs <= vocab_size else f"the vocabulary size, {vocab_size}")
        raise ValueError(f"top_logprobs_num (top_logprobs, logprobs): at most {most}; got {top_logprobs}")
    hidden = getattr(tokenized, "return_hidden_states", None)
    if hidden is not None and not (isinstance(hidden, bool) or hidden == "last"):
        raise ValueError(f"return_hidden_states: true, false or \"last\" for one prompt, got {hidden!r:.40}")
    _check_pool_indices(getattr(tokenized, "token_indices_to_pool", None), input_ids)
    in_session = getattr(tokenized, "session_params", None) is not None  # positions count from the session's start
    _check_embed_overrides(getattr(tokenized, "positional_embed_overrides", None),
                           None if in_session else input_ids, limits.hidden_size)
    params = getattr(tokenized, "sampling_params", None)
    if params is not None:
        _check_sampling_types(params)
        _check_sampling_params(params, vocab_size)


def _check_embed_overrides(overrides, input_ids, hidden_size: int) -> None:
    """``input_ids`` None: positions not checked against the prompt."""
    if overrides is None:
        return
    if not callable(getattr(overrides, "reconstruct", None)):
        raise ValueError("positional_embed_overrides: embeddings only a caller inside the server's process can "
                         "give; leave it out")
    shape = tuple(getattr(overrides.embeds, "shape", ()))
    positions = list(overrides.positions)
    length = len(input_ids) if input_ids is not None else None
    if shape != (len(positions), hidden_size) or not all(
            _is_int(p) and (length is None or 0 <= p < length) for p in positions):
        raise ValueError(f"embedding overrides (query_embed_overrides, item_embed_overrides): one vector of the "
                         f"model's hidden size, {hidden_size}, per position, each position in the prompt (0 to "
                         f"{'its length - 1' if length is None else length - 1}); got {list(shape)} at {positions[:8]}")


def _check_sampling_types(params) -> None:
    for field, kind in SAMPLING_PARAM_TYPES.items():
        value = getattr(params, field, None)
        if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
            what = {numbers.Integral: "an integer", numbers.Real: "a number", bool: "true or false", str: "a string"}
            raise ValueError(f"sampling_params.{field}: {what[kind]} (or null), got {type(value).__name__}")


def _check_sampling_params(params, vocab_size: int) -> None:
    top_k = getattr(params, "top_k", None)
    if _is_int(top_k) and top_k > LARGEST_TOP_K:
        raise ValueError(f"top_k: at most {LARGEST_TOP_K} (-1 for the whole vocabulary), got {top_k}")
    for token_id in getattr(params, "stop_token_ids", None) or ():
        if not _is_int(token_id) or not 0 <= token_id < vocab_size:
            raise ValueError(f"stop_token_ids: each a token id of the model's vocabulary (0 to {vocab_size - 1}), "
                             f"got {token_id!r}")
    for stop in getattr(params, "stop_strs", None) or ():
        if isinstance(stop, str) and len(stop) > MAX_STOP_CHARS:
            raise ValueError(f"stop: each stop string at most {MAX_STOP_CHARS} characters, got one of {len(stop)}")
    check_stop_patterns(getattr(params, "stop_regex_strs", None) or getattr(params, "stop_regex", None))
    for token_id, bias in (getattr(params, "logit_bias", None) or {}).items():
        if isinstance(bias, bool) or not isinstance(bias, numbers.Real) or not math.isfinite(bias) \
                or abs(bias) > LARGEST_LOGIT_BIAS:
            raise ValueError(f"logit_bias: each bias a number from -{LARGEST_LOGIT_BIAS:g} to "
                             f"{LARGEST_LOGIT_BIAS:g}, got {bias!r} for token {token_id}")


def _check_pool_indices(indices, input_ids) -> None:
    if indices is None:
        return
    length = len(input_ids) if input_ids is not None else 0
    if not isinstance(indices, list) or not indices or not all(_is_int(i) and 0 <= i < length for i in indices):
        raise ValueError(f"token_indices_to_pool: a non-empty list of positions in the prompt (0 to {length - 1})")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
