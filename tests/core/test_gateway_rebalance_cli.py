"""``mint gateway rebalance`` refuses, before it builds or installs anything, a --base-model the
engines do not serve and a gateway that does not route by consistent hashing; a --gateway that is
not a URL is a usage error. SMG and the engines are loopback stand-ins (loopback_stub.py); the
middleware build is replaced by a file, so that what would be installed is seen without
componentize-py. Against the real SMG: tests/sglang/test_gateway.py."""

from __future__ import annotations

import json
import time

import pytest
from loopback_stub import loopback_stub

import sglang_mint.gateway.smg as smg_module
from sglang_mint.cli import build_parser
from sglang_mint.cli import main as cli_main
from sglang_mint.usage.ledger import UsageLedger

# What SMG's Prometheus listener says after routing 12 requests for model tiny by one policy.
SELECTIONS = ('# TYPE smg_worker_selection_total counter\n'
              'smg_worker_selection_total{{connection_mode="http",model="tiny",policy="{policy}",'
              'worker_type="regular"}} 12\n')
NOTHING_ROUTED = "# TYPE smg_http_requests_total counter\nsmg_http_requests_total{method=\"GET\",path=\"/workers\"} 3\n"
ENGINES = ["http://127.0.0.2:30001", "http://127.0.0.3:30002"]  # never called while SMG names their model


class FakeSMG:
    """SMG's admin API as rebalance uses it: /workers, /wasm (one old adapter-route module),
    /v1/completions (the warm-up: 404) and, on the same port here, its Prometheus /metrics
    (``policy``: the one its requests were routed by, None before it has routed any)."""

    def __init__(self, workers: list[dict], policy: str | None = "consistent_hashing"):
        self.workers, self.policy, self.calls = workers, policy, []

    def answer(self, method, path, body):
        self.calls.append((method, path))
        if (method, path) == ("GET", "/workers"):
            return 200, {"workers": self.workers}
        if (method, path) == ("GET", "/wasm"):
            return 200, {"modules": [{"module_uuid": "old-route", "module_meta": {"name": "mint-adapter-route"}}]}
        if (method, path) == ("POST", "/wasm"):
            return 200, {"modules": [{"add_result": {"Success": "new-route"}}]}
        if method == "DELETE" and path.startswith("/wasm/"):
            return 200, {}
        if path == "/metrics":  # a counter SMG never incremented is not listed
            return 200, (SELECTIONS.format(policy=self.policy) if self.policy else NOTHING_ROUTED).encode()
        return 404, b""

    def installs(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.calls if m in ("POST", "DELETE") and p.startswith("/wasm")]


def served_by_smg(model_id: str | None) -> list[dict]:
    return [{"url": url, "is_healthy": True, **({"model_id": model_id} if model_id else {})} for url in ENGINES]


@pytest.fixture
def usage_dir(tmp_path):
    ledger = UsageLedger(tmp_path / "usage", "e1", flush_s=3600, clock=time.time)
    for adapter, n in {"acme/a": 40, "acme/b": 30, "acme/c": 20, "acme/d": 10}.items():
        for _ in range(n):
            ledger.record(adapter, 1, prompt_tokens=1, cached_tokens=0, completion_tokens=1)
    ledger.close()
    return str(tmp_path / "usage")


@pytest.fixture
def builds(monkeypatch, tmp_path):
    """The middleware builds asked for, as (base model, routing keys); each gives a small file."""
    asked = []

    def build(base_model, cache_dir=None, routing_keys=None):
        asked.append((base_model, dict(routing_keys or {})))
        out = tmp_path / f"route-{len(asked)}.wasm"
        out.write_bytes(b"\0asm")
        return out

    monkeypatch.setattr(smg_module, "build_adapter_route", build)
    return asked


def rebalance(gateway: str, usage_dir: str, *extra: str) -> list[str]:
    return ["gateway", "rebalance", "--gateway", gateway, "--gateway-metrics", gateway, "--usage-dir", usage_dir,
            *extra]


def test_a_base_model_no_engine_serves_is_refused_before_anything_is_installed(usage_dir, builds, capsys):
    smg = FakeSMG(served_by_smg("tiny"))
    with loopback_stub(smg.answer) as gateway:
        assert cli_main(rebalance(gateway, usage_dir, "--base-model", "tiny-chat")) == 2
    err = capsys.readouterr().err
    assert err.startswith("mint: error: base model 'tiny-chat' is not what the engines behind the gateway "
                          "serve: 'tiny' (http://127.0.0.2:30001, http://127.0.0.3:30002)"), err
    assert err.rstrip().endswith("pass --base-model 'tiny'"), err
    assert builds == [] and smg.installs() == []


def test_the_served_model_is_asked_of_each_engine_when_smg_does_not_name_it(usage_dir, builds, capsys):
    def engine(method, path, body):  # SGLang's GET /v1/models: the base model, then its adapters
        if path == "/v1/models":
            return 200, {"data": [{"id": "tiny", "parent": None}, {"id": "acme/a", "parent": "tiny"}]}
        return 404, b""

    with loopback_stub(engine) as one, loopback_stub(engine) as two:
        smg = FakeSMG([{"url": one, "is_healthy": True}, {"url": two, "is_healthy": True}])
        with loopback_stub(smg.answer) as gateway:
            assert cli_main(rebalance(gateway, usage_dir, "--base-model", "acme/a")) == 2
            assert "base model 'acme/a'" in capsys.readouterr().err and smg.installs() == []
            assert cli_main(rebalance(gateway, usage_dir, "--base-model", "tiny")) == 0
    assert [base for base, _ in builds] == ["tiny"]
    assert smg.installs() == [("POST", "/wasm"), ("DELETE", "/wasm/old-route")]


@pytest.mark.parametrize("policy, words", [
    ("round_robin", "policy is round_robin"),
    (None, "has routed no request"),  # a gateway that has routed nothing does not name its policy yet
])
def test_a_gateway_not_routing_by_consistent_hashing_is_refused(usage_dir, builds, capsys, policy, words):
    smg = FakeSMG(served_by_smg("tiny"), policy=policy)
    with loopback_stub(smg.answer) as gateway:
        assert cli_main(rebalance(gateway, usage_dir, "--base-model", "tiny")) == 2
    err = capsys.readouterr().err
    assert err.startswith("mint: error: ") and words in err and "consistent_hashing" in err, err
    assert builds == [] and smg.installs() == []


def test_unreadable_metrics_are_refused_naming_the_flag(usage_dir, builds, capsys):
    smg = FakeSMG(served_by_smg("tiny"))
    with loopback_stub(smg.answer) as gateway, loopback_stub(lambda *_: (404, b"")) as elsewhere:
        args = rebalance(gateway, usage_dir, "--base-model", "tiny")
        args[args.index("--gateway-metrics") + 1] = elsewhere
        assert cli_main(args) == 2
    assert "--gateway-metrics" in capsys.readouterr().err and builds == [] and smg.installs() == []


def test_the_served_model_on_a_consistent_hashing_gateway_is_installed(usage_dir, builds, capsys):
    smg = FakeSMG(served_by_smg("tiny"))
    with loopback_stub(smg.answer) as gateway:
        assert cli_main(rebalance(gateway, usage_dir, "--base-model", "tiny", "--load-factor", "1.0")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [(base, keys) for base, keys in builds] == [("tiny", plan["moved"])]
    assert smg.installs() == [("POST", "/wasm"), ("DELETE", "/wasm/old-route")]


@pytest.mark.parametrize("flag", ["--gateway", "--gateway-metrics"])
@pytest.mark.parametrize("source", [["--usage-dir", "{usage}"], ["--usage-from-engines"]])
def test_a_url_flag_that_is_not_a_url_is_a_usage_error(usage_dir, builds, capsys, flag, source):
    args = ["gateway", "rebalance", "--gateway", "http://127.0.0.1:9", "--base-model", "tiny",
            *[a.format(usage=usage_dir) for a in source]]
    args += [flag, "notaurl"] if flag != "--gateway" else []
    if flag == "--gateway":
        args[args.index("--gateway") + 1] = "notaurl"
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mint: error: {flag} 'notaurl': expected http://host:port"), err


def test_the_admin_key_flag_points_to_the_environment_variable():
    gateway = next(a for a in build_parser()._actions if a.dest == "group").choices["gateway"]
    rebalance_parser = next(a for a in gateway._actions if a.dest == "gateway_command").choices["rebalance"]
    key = next(a for a in rebalance_parser._actions if a.dest == "admin_api_key")
    assert "prefer $MINT_ADMIN_API_KEY" in key.help and "ps" in key.help, key.help
