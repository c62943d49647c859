"""Cold loads on background threads, handed to the serving loop when ready.

The serving loop calls ``request(key)`` (starts a load unless one is running
or done: duplicate requests share one load) and ``ready()`` (results of
finished loads, each returned once). Reading and decoding happen on the
worker threads; the loop only receives a finished object, so installing it
is O(1) there. Threads rather than processes: the decoded tensors must live
in the serving process, and safetensors reads and torch copies release the
GIL.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class LoadResult:
    key: str
    value: Any = None
    error: BaseException | None = None
    queued_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def load_seconds(self) -> float:
        return self.finished_at - self.started_at

    @property
    def wait_seconds(self) -> float:
        return self.started_at - self.queued_at


class ColdLoader:
    def __init__(self, load_fn: Callable[[str], Any], workers: int = 2, name: str = "mint-cold-load"):
        self._load_fn = load_fn
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._done: queue.SimpleQueue[LoadResult] = queue.SimpleQueue()
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self.started_total = 0
        self.failed_total = 0

    def request(self, key: str) -> bool:
        """Start loading ``key`` unless a load of it is under way. True if this call started one."""
        with self._lock:
            if key in self._inflight:
                return False
            self._inflight.add(key)
            self.started_total += 1
        self._pool.submit(self._run, key, time.monotonic())
        return True

    def loading(self, key: str) -> bool:
        with self._lock:
            return key in self._inflight

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def ready(self) -> list[LoadResult]:
        """Finished loads since the last call (the caller must install or drop each)."""
        out = []
        while True:
            try:
                result = self._done.get_nowait()
            except queue.Empty:
                return out
            with self._lock:
                self._inflight.discard(result.key)
                if not result.ok:
                    self.failed_total += 1
            out.append(result)

    def _run(self, key: str, queued_at: float) -> None:
        result = LoadResult(key, queued_at=queued_at, started_at=time.monotonic())
        try:
            result.value = self._load_fn(key)
        except BaseException as exc:  # handed to the loop, which fails only this adapter's requests
            result.error = exc
        result.finished_at = time.monotonic()
        self._done.put(result)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
