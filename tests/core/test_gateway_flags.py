"""--mint-gateway / --mint-advertise-url: bad values are refused with the flag named; SMG's own
parser reads the gateway's command line as meant."""

from __future__ import annotations

import socket

import pytest

from sglang_mint.config import MintConfig, check_http_url
from sglang_mint.errors import MintError
from sglang_mint.gateway.registration import engine_url
from sglang_mint.gateway.smg import BOUNDED_AFFINITY, SMGGateway, bounded_affinity
from sglang_mint.ports import free_port


@pytest.mark.parametrize("url, expected", [
    ("http://10.0.0.9:30080", "http://10.0.0.9:30080"),
    ("http://10.0.0.9:30080/", "http://10.0.0.9:30080"),
    (" https://gw.example:443 ", "https://gw.example:443"),
    ("http://[::1]:8080", "http://[::1]:8080"),
])
def test_gateway_urls_are_normalised(url, expected):
    assert check_http_url("--mint-gateway", url) == expected


@pytest.mark.parametrize("url", ["10.0.0.9:30080", "ftp://h:1", "http://", "http://h:1/v1", "http://h:99999"])
def test_bad_gateway_urls_name_the_flag(url):
    with pytest.raises(MintError, match="--mint-gateway"):
        check_http_url("--mint-gateway", url)


def test_advertise_url_needs_a_gateway():
    with pytest.raises(MintError, match="--mint-advertise-url needs --mint-gateway"):
        MintConfig.from_flags(advertise_url="http://10.0.0.5:30000")
    config = MintConfig.from_flags(gateway="http://gw:30080/", advertise_url="http://10.0.0.5:30000")
    assert (config.gateway, config.advertise_url) == ("http://gw:30080", "http://10.0.0.5:30000")


def test_the_default_advertise_url_is_the_address_the_server_binds(monkeypatch):
    assert engine_url("127.0.0.1", 30000) == "http://127.0.0.1:30000"
    assert engine_url("::1", 30000) == "http://[::1]:30000"
    monkeypatch.setattr(socket, "gethostname", lambda: "engine-7")
    assert engine_url("", 30000) == "http://engine-7:30000"  # bound to every interface: the host's name


def test_smg_reads_the_gateways_command_line_as_meant(tmp_path):
    """SMGGateway's arguments through smg 1.13.0's own parser (what ``smg launch`` runs): a
    misspelt or renamed flag of a policy would end SMG at startup; a value parsed otherwise
    would route differently than the benchmark measured."""
    from smg.launch_router import parse_router_args

    gw = SMGGateway(free_port(), policy=BOUNDED_AFFINITY, log_path=tmp_path / "smg.log")
    assert gw.args[1] == "launch"
    parsed = parse_router_args(gw.args[2:])
    assert (parsed.policy, parsed.prefix_hash_load_factor, parsed.prefix_hash_balance_abs_threshold) == \
        ("prefix_hash", 1.1, 0)
    assert parsed.enable_wasm and parsed.prometheus_port == gw.prometheus_port
    loose = SMGGateway(free_port(), policy=bounded_affinity(1.25, 3), log_path=tmp_path / "loose.log")
    parsed = parse_router_args(loose.args[2:])
    assert (parsed.prefix_hash_load_factor, parsed.prefix_hash_balance_abs_threshold) == (1.25, 3)
    plain = SMGGateway(free_port(), log_path=tmp_path / "plain.log")
    assert parse_router_args(plain.args[2:]).policy == "consistent_hashing"
