"""The adapter-routing middleware for SMG: build the WebAssembly component, install it.

``adapter_route/guest.py`` is compiled with componentize-py (pinned in
requirements.lock) into a component of about 18 MB. The base model's served
name is baked in, so one component serves one base model:

    wasm = build_adapter_route("tiny")          # about 8 s the first time, then cached
    install_adapter_route("http://127.0.0.1:30080", wasm)   # SMG compiles it: about 20 s on 2 cores

``routing_keys`` (placement.py) is baked in too: the routing key of each adapter that was moved
off its ring home, ``{"acme/tutor": "acme/tutor#2"}``; every other adapter's key is its id.
The build is cached under the sglang-mint cache folder, keyed by the guest's source, the
interface file, the base name and the keys. SMG must run with ``--enable-wasm``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sglang_mint.config import default_cache_dir
from sglang_mint.errors import MintError
from sglang_mint.process import pid_alive

GUEST_DIR = Path(__file__).parent / "adapter_route"
WIT_WORLD = "smg"
MODULE_NAME = "mint-adapter-route"
# The request paths whose body names a model (and possibly a lora_path).
ROUTED_PATHS = ("/v1/completions", "/v1/chat/completions", "/generate")
# The client's own ``model``, sent on to the engine when the middleware rewrote it to the base
# model, so that the answer names it (routing.py:answered_model). SMG forwards only a fixed list
# of headers to an engine; ``x-request-id-*`` is on it, a header of our own would be dropped.
REQUESTED_MODEL_HEADER = "x-request-id-mint-model"
# Folders SMG 1.13.0 will not load a module from (BLOCKED_PATH_PREFIXES in its wasm registration).
SMG_BLOCKED_PREFIXES = ("/etc/", "/proc/", "/sys/", "/dev/", "/boot/", "/root/", "/var/log/", "/var/run/")


class GatewayError(MintError):
    http_status = 502


def componentize_py() -> str:
    """The componentize-py executable beside this Python, or on PATH."""
    here = Path(sys.executable).parent / "componentize-py"
    found = str(here) if here.exists() else shutil.which("componentize-py")
    if found is None:
        raise GatewayError("componentize-py is not installed (pip install componentize-py==0.25.1, as pinned in "
                           "requirements.lock); it builds the gateway's adapter-routing middleware")
    return found


def _route_config(base_model: str, routing_keys: dict[str, str]) -> str:
    keys = dict(sorted(routing_keys.items()))
    return (f"BASE_MODEL = {base_model!r}\nROUTED_PATHS = {ROUTED_PATHS!r}\n"
            f"REQUESTED_MODEL_HEADER = {REQUESTED_MODEL_HEADER!r}\nROUTING_KEYS = {keys!r}\n")


def build_adapter_route(base_model: str, cache_dir: str | os.PathLike | None = None,
                        routing_keys: dict[str, str] | None = None) -> Path:
    """The middleware component for ``base_model``, built once and cached; returns its path.
    Builds with ``routing_keys`` go to ``placed/`` in the cache, where those of past
    placements are removed after an hour (a placement replaces its predecessor in seconds)."""
    if not base_model or ":" in base_model:
        raise GatewayError(f"base model name {base_model!r}: must be non-empty and have no ':'")
    config = _route_config(base_model, routing_keys or {})
    sources = [GUEST_DIR / "guest.py", GUEST_DIR / "smg_middleware.wit"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + config.encode())
    out_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "gateway"
    if routing_keys:
        out_dir = out_dir / "placed"
    out = out_dir / f"adapter-route-{digest.hexdigest()[:16]}.wasm"
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_partials_of_gone_builders(out)
    if routing_keys:
        _remove_old_placed_builds(out_dir)
    with tempfile.TemporaryDirectory(prefix="mint-wasm-") as work:
        shutil.copy(GUEST_DIR / "guest.py", Path(work) / "guest.py")
        (Path(work) / "route_config.py").write_text(config)
        partial = out.with_name(f"{out.name}.{os.getpid()}.partial")  # one per builder; rename is atomic
        cmd = [componentize_py(), "-d", str(GUEST_DIR / "smg_middleware.wit"), "-w", WIT_WORLD,
               "componentize", "guest", "-p", work, "-o", str(partial)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        if done.returncode != 0:
            raise GatewayError(f"componentize-py failed ({done.returncode}):\n{done.stderr[-2000:]}")
        partial.rename(out)
    return out


def _remove_partials_of_gone_builders(out: Path) -> None:
    """A builder killed mid-write leaves ``<out>.<pid>.partial``; remove those whose pid has no process."""
    for partial in out.parent.glob(f"{out.name}.*.partial"):
        pid = partial.name[len(out.name) + 1:-len(".partial")]
        if pid.isdigit() and not pid_alive(int(pid)):
            partial.unlink(missing_ok=True)


def _remove_old_placed_builds(placed_dir: Path, max_age_s: float = 3600.0) -> None:
    """Each placement's component is about 18 MB: keep the last hour's (the one in use among them)."""
    cutoff = time.time() - max_age_s
    for old in placed_dir.glob("adapter-route-*.wasm"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except FileNotFoundError:
            pass  # another gateway's builder removed it first


def install_adapter_route(gateway_url: str, wasm_path: str | os.PathLike, timeout: float = 120.0,
                          warm: bool = True) -> str:
    """Attach the component to SMG's request phase, and warm it unless ``warm`` is false (then
    call :func:`warm_adapter_route` before clients come); returns SMG's module id.

    SMG reads the file itself, so gateway and file must share a file system. It refuses
    files under /root/, /etc/ and a few other system folders, where the build cache of
    root lives (``/root/.cache``): such a file is loaded from a copy in the temp folder.
    """
    wasm_path = Path(wasm_path).resolve()
    if str(wasm_path).startswith(SMG_BLOCKED_PREFIXES):
        copies = Path(tempfile.gettempdir()) / f"mint-gateway-{os.getuid()}"
        placed = wasm_path.parent.name == "placed"
        copy = (copies / "placed" if placed else copies) / wasm_path.name
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            partial = copy.with_name(f"{copy.name}.{os.getpid()}.partial")
            shutil.copy(wasm_path, partial)
            partial.rename(copy)
        if placed:
            _remove_old_placed_builds(copy.parent)
        wasm_path = copy
    spec = {"modules": [{"name": MODULE_NAME, "file_path": str(wasm_path),
                         "module_type": "Middleware", "attach_points": [{"Middleware": "OnRequest"}]}]}
    req = urllib.request.Request(gateway_url.rstrip("/") + "/wasm", data=json.dumps(spec).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise GatewayError(f"SMG refused the middleware: HTTP {exc.code} {exc.read()[:500]!r}") from None
    except OSError as exc:
        raise GatewayError(f"cannot reach SMG at {gateway_url}: {exc}") from None
    result = answer["modules"][0].get("add_result", {})
    if "Success" not in result:
        raise GatewayError(f"SMG did not load the middleware {wasm_path}: {result}")
    if warm:
        warm_adapter_route(gateway_url, timeout)
    return result["Success"]


def adapter_route_modules(gateway_url: str, timeout: float = 10.0) -> list[str]:
    """SMG's ids of the adapter-route middleware modules attached now (``GET /wasm``)."""
    try:
        with urllib.request.urlopen(gateway_url.rstrip("/") + "/wasm", timeout=timeout) as r:
            modules = json.loads(r.read())["modules"]
    except OSError as exc:
        raise GatewayError(f"cannot list SMG's middleware at {gateway_url}: {exc}") from None
    return [m["module_uuid"] for m in modules if m.get("module_meta", {}).get("name") == MODULE_NAME]


def remove_adapter_route(gateway_url: str, module_id: str, timeout: float = 30.0) -> None:
    """Detach a middleware module from SMG (``DELETE /wasm/<id>``)."""
    req = urllib.request.Request(f"{gateway_url.rstrip('/')}/wasm/{module_id}", method="DELETE")
    try:
        urllib.request.urlopen(req, timeout=timeout).read()
    except urllib.error.HTTPError as exc:
        raise GatewayError(f"SMG did not remove middleware {module_id}: HTTP {exc.code} {exc.read()[:300]!r}") from None
    except OSError as exc:
        raise GatewayError(f"cannot reach SMG at {gateway_url}: {exc}") from None


# SMG runs middleware on a pool of min(CPUs, 4) threads fed from one queue, and each thread
# compiles a new middleware build for itself on the first request it takes (crates/wasm,
# runtime.rs: WasmThreadPool, a component cache per worker).
SMG_WASM_THREADS_MAX = 4


def warm_adapter_route(gateway_url: str, timeout: float = 120.0, rounds: int = 4, fast_s: float = 1.0) -> list[float]:
    """Send throwaway requests through the middleware until every SMG middleware thread has
    compiled it; returns the seconds of the slowest request of each round.

    SMG compiles a middleware on the first requests that reach it, not when it is loaded, once
    per middleware thread: measured on 2 cores (2 threads), the first two requests after an
    install took 10.7 and 11.1 s, the next 0.01 s. Clients would otherwise pay that. Each round
    sends SMG_WASM_THREADS_MAX requests at once, so that a thread busy compiling leaves the next
    request to another thread, and every thread compiles in the first round; a round in which every
    request is fast (under ``fast_s``) ends it. The requests name an id no catalog holds: 404, from
    SMG or an engine."""
    body = json.dumps({"model": "mint-warm-up/none", "prompt": "", "max_tokens": 1}).encode()

    def one() -> float:
        req = urllib.request.Request(gateway_url.rstrip("/") + "/v1/completions", data=body,
                                     headers={"content-type": "application/json"})
        t0 = time.perf_counter()
        try:
            urllib.request.urlopen(req, timeout=timeout).read()
        except urllib.error.HTTPError as exc:
            exc.read()  # 404 model_not_found without engines: the middleware ran all the same
        except OSError as exc:
            raise GatewayError(f"cannot reach SMG at {gateway_url}: {exc}") from None
        return time.perf_counter() - t0

    slowest = []
    with ThreadPoolExecutor(SMG_WASM_THREADS_MAX) as pool:
        for _ in range(rounds):
            slowest.append(max(pool.map(lambda _: one(), range(SMG_WASM_THREADS_MAX))))
            if len(slowest) >= 2 and slowest[-1] < fast_s:
                break
    return slowest
