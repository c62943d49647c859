"""`mint plan` through the CLI's own main(argv): its help, its table, its JSON, its errors."""

import json
import subprocess
import sys
import textwrap

import pytest
from hung import HUNG_AFTER_S

from sglang_mint.cli import build_parser, main

SMALL = ["plan", "--model", "tiny", "--rank", "1", "--catalog", "2000", "--rate", "50", "--requests", "4000",
         "--host-cache", "10MB", "--request-seconds", "0.1"]


def plan_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "group")
    return sub.choices["plan"]


def test_every_option_says_its_default_or_what_it_takes_instead():
    for action in plan_parser()._actions:
        if action.dest in ("help", "json"):
            continue
        text = action.help or ""
        assert "default" in text or "instead of" in text, (action.option_strings, text)


def test_the_table_ends_with_the_engines_needed(capsys):
    assert main([*SMALL, "--slo-cold-p99-ms", "500", "--gpu-slots", "64"]) == 0
    out = capsys.readouterr().out
    assert "tiny (float32); adapters rank 1 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in out
    assert "host cache 10.00 MB (203 adapters)" in out  # 10 MB / 49,152 bytes
    assert out.strip().splitlines()[-1].startswith("engines needed: 1 (1 GPUs)")


def test_more_adapters_in_flight_than_gpu_slots_is_pointed_out(capsys):
    assert main([*SMALL, "--gpu-slots", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("GPU slots: ") and "> 2 slots" in last


def test_json_carries_the_rows_and_the_answer(capsys):
    assert main([*SMALL, "--json", "--engines", "2", "--routing", "round-robin"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["engines_needed"] == 2 and [r["engines"] for r in plan["rows"]] == [2]
    row = plan["rows"][0]
    assert row["requests"] == 2000 and 0 < row["hit_rate"] < 1 and len(row["per_engine"]) == 2
    assert plan["adapter"]["host_bytes"] == 49_152 and plan["traffic"]["warmup_requests"] == 2000


def test_a_plan_that_misses_exits_1_and_says_so(capsys):
    assert main([*SMALL, "--slo-cold-p99-ms", "0.001", "--max-engines", "2"]) == 1
    assert "no engine count up to 2 meets" in capsys.readouterr().out


def test_a_given_engine_count_is_said_as_given(capsys):
    assert main([*SMALL, "--engines", "1", "--slo-cold-p99-ms", "0.001"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("1 engine misses cold TTFT p99 <= 0 ms")
    assert main([*SMALL, "--engines", "2", "--slo-cold-p99-ms", "500", "--gpu-slots", "64"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("2 engines meet cold TTFT p99 <= 500 ms")


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt-9"], "neither a known name"),
    (["--model", "llama-3-70b", "--gpus-per-engine", "1"], "exceed"),
    (["--host-cache", "lots"], "is not a size"),
    (["--rate", "0"], "rate or clients must be positive"),
    (["--clients", "0"], "rate or clients must be positive"),
    (["--disk-gbps", "-1"], "bandwidths must be positive"),
    (["--engines", "0"], "--engines 0: must be at least 1"),
    (["--max-engines", "0"], "--max-engines 0: must be at least 1"),
])
def test_bad_inputs_are_named(capsys, args, message):
    assert main(["plan", *args, "--requests", "100"]) == 2
    assert message in capsys.readouterr().err


def test_rate_and_clients_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--rate", "5", "--clients", "3"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_plan_needs_neither_torch_nor_sglang():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "sglang", "safetensors"):
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        from sglang_mint.cli import main
        sys.exit(main(["plan", "--model", "tiny", "--rank", "1", "--catalog", "100", "--requests", "200",
                       "--engines", "1", "--json"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["rows"][0]["requests"] == 100
