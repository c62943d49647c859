"""Send (model, prompt) jobs to a server at once; collect greedy token ids and logprobs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai


def greedy_batch(server, jobs: list[tuple[str, str]], max_tokens: int) -> list[tuple[list[int], list[float]]]:
    """All jobs in flight together, so the server batches several adapters in one forward."""
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)

    def one(job):
        model, prompt = job
        r = client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, logprobs=1,
            extra_body={"return_token_ids": True, "ignore_eos": True},
        )
        c = r.choices[0]
        return c.model_extra["token_ids"], c.logprobs.token_logprobs

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, jobs))


def answer_models(client, model: str, **extra) -> list[str]:
    """The ``model`` each kind of answer names: a completion and a chat completion, whole and
    streamed (every chunk of a stream, set-wise)."""
    chat = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "temperature": 0}
    text = {"prompt": "hello", "max_tokens": 2, "temperature": 0}
    whole = [client.completions.create(model=model, **text, **extra).model,
             client.chat.completions.create(model=model, **chat, **extra).model]
    streams = [client.completions.create(model=model, stream=True, **text, **extra),
               client.chat.completions.create(model=model, stream=True, **chat, **extra)]
    return whole + [",".join(sorted({chunk.model for chunk in stream})) for stream in streams]
