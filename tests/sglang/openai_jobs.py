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
