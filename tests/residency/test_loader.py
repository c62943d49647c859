import threading
import time

from sglang_mint.residency import ColdLoader


def wait_ready(loader, n, timeout=5.0):
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += loader.ready()
        time.sleep(0.001)
    return out


def test_duplicate_requests_share_one_load():
    calls = []
    gate = threading.Event()

    def load(key):
        calls.append(key)
        gate.wait(5)
        return key.upper()

    loader = ColdLoader(load, workers=2)
    assert loader.request("a") is True
    assert loader.request("a") is False  # under way
    assert loader.loading("a") and loader.inflight == 1
    gate.set()
    [result] = wait_ready(loader, 1)
    assert (result.key, result.value, result.ok) == ("a", "A", True)
    assert calls == ["a"]
    assert not loader.loading("a")
    assert loader.request("a") is True  # a later request loads again
    wait_ready(loader, 1)
    loader.shutdown()


def test_a_failure_is_handed_over_not_raised():
    def load(key):
        if key == "bad":
            raise OSError("truncated file")
        return 1

    loader = ColdLoader(load, workers=1)
    loader.request("bad")
    loader.request("good")
    results = {r.key: r for r in wait_ready(loader, 2)}
    assert isinstance(results["bad"].error, OSError) and not results["bad"].ok
    assert results["good"].ok and results["good"].value == 1
    assert loader.failed_total == 1 and loader.inflight == 0
    loader.shutdown()


def test_loads_run_off_the_calling_thread():
    threads = []
    loader = ColdLoader(lambda key: threads.append(threading.current_thread().name), workers=1)
    loader.request("x")
    wait_ready(loader, 1)
    assert threads and threads[0] != threading.current_thread().name
    assert threads[0].startswith("mint-cold-load")
    loader.shutdown()
