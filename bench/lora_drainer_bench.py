"""What SGLang's LoRA drainer costs a scheduling step once it has seen many adapters, with and without mint.

    python bench/lora_drainer_bench.py [--seen 1000 10000 100000] [--steps 200]

``--lora-drain-wait-threshold`` makes SGLang's scheduler call ``LoRADrainer.update_draining_state``
at every prefill step. The drainer keeps an entry for every lora_id it has seen and walks them all
there; under ``--enable-mint`` a lora_id is a catalog revision, so an RL loop's publishes, or a
catalog swept by its tenants, grow it without end. Each run feeds SGLang's own drainer, as it ships
("stock") and with the plugin's hooks after each update and each ``can_schedule``
(``sglang/lora_drainer.py``: "mint"), the
same work: ``--seen`` revisions arrive 4 to a step beside 4 running adapters, 4 slots, then
``--steps`` more steps are timed. The row gives the mean µs per step, the entries kept, and the
Python memory they hold (tracemalloc). Both run in this process, one after the other, alternating
which goes first.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, append_rows, stamped  # noqa: E402

from sglang.srt.lora.lora_drainer import LoRADrainer  # noqa: E402
from sglang_mint.sglang.lora_drainer import (PRUNED_ATTR, _after_can_schedule,  # noqa: E402
                                             _after_update_draining_state)

SLOTS = 4
ARRIVALS_PER_STEP = 4
THRESHOLD_S = 1.0


def request(lora_id: str, arrived: float, made: int = 0):
    return types.SimpleNamespace(lora_id=lora_id, time_stats=types.SimpleNamespace(wait_queue_entry_time=arrived),
                                 sampling_params=types.SimpleNamespace(max_new_tokens=64), output_ids=[0] * made)


def run(pruned: bool, seen: int, steps: int) -> dict:
    drainer = LoRADrainer(SLOTS, THRESHOLD_S)
    if pruned:
        setattr(drainer, PRUNED_ATTR, True)
    running = [request(f"hot/{i}@1", time.monotonic(), made=i) for i in range(SLOTS)]

    def step(n: int) -> None:
        now = time.monotonic()
        waiting = [request(f"tenant/{n}-{j}@1", now) for j in range(ARRIVALS_PER_STEP)]
        drainer.update_draining_state(waiting, running)
        if pruned:
            _after_update_draining_state(None, drainer)  # as SGLang's hook registry runs it
        for r in waiting:
            allowed = drainer.can_schedule(r)
            if pruned:
                _after_can_schedule(allowed, drainer, r)

    tracemalloc.start()
    for n in range(seen // ARRIVALS_PER_STEP):
        step(n)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    start = time.perf_counter()
    for n in range(steps):
        step(seen + n)
    return {"us_per_step": round((time.perf_counter() - start) / steps * 1e6, 1),
            "entries_kept": len(drainer.adapter_to_stats), "held_mib": round(held / 2**20, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seen", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                    help="revisions the drainer has seen before the timed steps")
    ap.add_argument("--steps", type=int, default=200, help="scheduling steps timed after them")
    ap.add_argument("--no-record", action="store_true", help="print the rows only")
    args = ap.parse_args()
    rows = []
    for i, seen in enumerate(args.seen):
        order = (False, True) if i % 2 == 0 else (True, False)
        figures = {("mint" if pruned else "stock"): run(pruned, seen, args.steps) for pruned in order}
        row = stamped({"bench": "lora_drainer", "seen": seen, "steps": args.steps, "slots": SLOTS,
                       "arrivals_per_step": ARRIVALS_PER_STEP, **figures,
                       "stock_over_mint": round(figures["stock"]["us_per_step"] / figures["mint"]["us_per_step"], 1)})
        print(row, flush=True)
        rows.append(row)
    if not args.no_record:
        append_rows(RESULTS / "lora_drainer_bench.jsonl", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
