"""How fast do blobs come from the object store into an engine's local disk cache?

Issue 12's third benchmark. For small (0.5 MB, a rank-16 adapter of a small model) and
large (40 MB) blobs, with 1 and 4 threads, it measures:

- ``fetch``: ``S3BlobStore.local_path`` on an empty cache: GET from a real moto server on
  loopback, sha256 while writing, fsync, rename into the cache (MB/s and blobs/s);
- ``hit``: the same calls again, now answered from the cache (blobs/s; no bytes move);
- ``get``: plain boto3 GetObject into memory from the same server: the network and
  server share of ``fetch``, without hashing or the disk;
- ``copy``: the ceiling, a plain local copy of the same bytes from files in the page
  cache into a new folder, fsynced, with the same threads.

moto is a single Python process (werkzeug), so ``fetch`` measures this client against
moto on the same cores; real S3 or MinIO serve faster. Median of ``--rounds`` rounds,
each with a fresh cache folder. One JSON line per (size, threads, mode) in
bench/results/blob_fetch_bench.jsonl with the setup, the machine and the git commit.

    flock /tmp/mint-cpu.lock python bench/blob_fetch_bench.py [--rounds 3] [--small 64] [--large 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _common import append_result  # noqa: E402
from sglang_mint.catalog.s3_blobs import S3BlobStore  # noqa: E402
from sglang_mint.dev.s3_server import S3Server  # noqa: E402

MB = 1e6


def timed(fn, items, threads: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - t0


def copy_synced(src: str, dst: str) -> None:
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_size(label: str, size: int, count: int, threads_list, rounds: int, url: str, work: str) -> list[dict]:
    store = S3BlobStore(url, os.path.join(work, "warm"))
    blobs = [os.urandom(size) for _ in range(count)]
    digests = [store.put(b) for b in blobs]
    src = os.path.join(work, f"src-{label}")
    os.makedirs(src)
    sources = []
    for d, b in zip(digests, blobs):
        sources.append(os.path.join(src, d))
        with open(sources[-1], "wb") as f:
            f.write(b)
    del blobs
    total = size * count
    out = []
    for threads in threads_list:
        times = {"fetch": [], "hit": [], "get": [], "copy": []}
        for r in range(rounds):
            cache = os.path.join(work, f"cache-{label}-{threads}-{r}")
            s = S3BlobStore(url, cache, cache_bytes=4 * total, check=False)
            times["fetch"].append(timed(s.local_path, digests, threads))
            times["hit"].append(timed(s.local_path, digests, threads))
            times["get"].append(timed(lambda d: s.client.get_object(Bucket=s.bucket, Key=s.key(d))["Body"].read(),
                                      digests, threads))
            dst = os.path.join(work, f"copy-{label}-{threads}-{r}")
            os.makedirs(dst)
            times["copy"].append(timed(lambda p: copy_synced(p, os.path.join(dst, os.path.basename(p))),
                                       sources, threads))
            shutil.rmtree(cache)
            shutil.rmtree(dst)
        for mode, ts in times.items():
            wall = statistics.median(ts)
            rec = {"bench": "blob_fetch", "mode": mode, "blob_bytes": size, "blobs": count, "threads": threads,
                   "rounds": rounds, "wall_s": round(wall, 4),
                   "mb_per_s": None if mode == "hit" else round(total / MB / wall, 1),
                   "blobs_per_s": round(count / wall, 1), "all_wall_s": [round(t, 4) for t in ts],
                   "setup": {"store": "moto server (python -m moto.server) on 127.0.0.1",
                             "cache": "S3BlobStore disk cache: sha256 while writing, fsync, rename",
                             "copy": "shutil.copyfile from page-cached files + fsync (ceiling)"}}
            out.append(append_result("blob_fetch_bench", rec))
            mbs = "       -" if rec["mb_per_s"] is None else f"{rec['mb_per_s']:8.1f}"
            print(f"{label:5s} {size / MB:5.1f} MB x{count:<3d} threads={threads} {mode:5s} "
                  f"{mbs} MB/s {rec['blobs_per_s']:8.1f} blobs/s  (median of {rounds})", flush=True)
    shutil.rmtree(src)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--small", type=int, default=64, help="number of 0.5 MB blobs")
    ap.add_argument("--large", type=int, default=8, help="number of 40 MB blobs")
    ap.add_argument("--threads", default="1,4")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    with S3Server() as s3, tempfile.TemporaryDirectory(prefix="mint-blob-bench-") as work:
        os.environ.update(s3.env())
        bucket = "mint-bench-" + uuid.uuid4().hex[:8]
        s3.client().create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/catalog"
        run_size("small", 500_000, args.small, threads, args.rounds, url, work)
        run_size("large", 40_000_000, args.large, threads, args.rounds, url, work)


if __name__ == "__main__":
    main()
