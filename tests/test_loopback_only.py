"""Tests, benchmarks and dev servers send traffic only to loopback (127.0.0.0/8, ::1).

A server bound to every interface, or a call to this machine's outward address
(found with a UDP socket's getsockname, or its host name), reaches beyond
loopback. A remote caller is played at the ASGI level instead
(tests/sglang/test_admin_guard.py: a scope whose TCP peer is another address) or,
end to end, by a forwarding header on loopback. This scans the sources for the
ways out.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("tests", "bench", "sglang_mint/dev")
WAYS_OUT = {
    "binds every interface": re.compile(r"0\.0\.0\.0|[\"']::[\"']|\bINADDR_ANY\b|in6addr_any"),
    "finds this machine's outward address": re.compile(r"SOCK_DGRAM|gethostname\(|getfqdn\(|gethostbyname\("),
    "a --host that is not loopback": re.compile(
        r"[\"']--host[\"'],\s*(?![\"'](?:127\.\d+\.\d+\.\d+|localhost|::1)[\"'])[\"'][^\"']*[\"']"),
}


def offending_lines() -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                found.extend(f"{path.relative_to(ROOT)}:{n}: {why}: {line.strip()}"
                             for why, pattern in WAYS_OUT.items() if pattern.search(line))
    return found


def test_no_test_or_benchmark_leaves_loopback():
    assert offending_lines() == []


def test_the_scan_finds_each_way_out():
    for line in ('"--host", "0.0.0.0"', 'socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
                 "'--host', '10.1.2.3'", 'bind(("::", 0))', "socket.gethostname()"):
        assert any(p.search(line) for p in WAYS_OUT.values()), line
    for line in ('"--host", "127.0.0.1"', "'--host', '::1'", 'headers={"X-Forwarded-For": "203.0.113.7"}'):
        assert not any(p.search(line) for p in WAYS_OUT.values()), line
