"""Readers in other processes never see a half-published revision; kill -9 mid-publish leaves a consistent catalog."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

from hung import HUNG_AFTER_S

from sglang_mint.errors import AdapterNotFound

HERE = os.path.dirname(os.path.abspath(__file__))

PRELUDE = f"""
import hashlib, io, json, os, sys, time
sys.path.insert(0, {HERE!r})
from safetensors.numpy import save
from catalog_fixtures import peft_tensors
from sglang_mint.adapters.peft import check_peft_bytes
from sglang_mint.catalog import open_catalog

def adapter(cat, seed, rank=1):
    cfg = json.dumps({{"peft_type": "LORA", "r": rank, "lora_alpha": 2, "target_modules":
                      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}}).encode()
    return check_peft_bytes(cfg, save(peft_tensors(rank=rank, seed=seed)), cat.base, f"seed{{seed}}")
"""

WRITER = PRELUDE + """
cat = open_catalog(sys.argv[1])
n, watched = int(sys.argv[2]), sys.argv[3:]
for k in range(1, n + 1):
    cat.publish_peft("hot", adapter(cat, 1000 + k), {"k": k})
    if k % 7 == 0:               # move current back and forth too
        cat.rollback("hot")
        cat.rollback("hot", to=k)
    while k == 1 and not all(os.path.exists(w) for w in watched):
        time.sleep(0.01)         # every reader has seen revision 1 before the rest are published
print("done", flush=True)
"""

READER = PRELUDE + """
cat = open_catalog(sys.argv[1])
final, watched, give_up = int(sys.argv[2]), sys.argv[3], time.time() + float(sys.argv[4])
print("ready", flush=True)
seen, errors, n = set(), [], 0
while final not in seen and time.time() < give_up:
    time.sleep(0.0005)  # two shared cores: leave the writer room, also while nothing is published yet
    try:
        r = cat.resolve("hot")
    except Exception as exc:  # before the first publish
        if type(exc).__name__ != "AdapterNotFound":
            errors.append(repr(exc))
        continue
    n += 1
    if r.revision not in seen and r.revision == 1:
        open(watched, "w").close()  # the writer goes on once every reader has seen revision 1
    seen.add(r.revision)
    if r.metadata.get("k") != r.revision:
        errors.append(f"revision {r.revision} carries metadata of {r.metadata}")
    for name, digest in r.files.items():
        if not cat.blobs.exists(digest):
            errors.append(f"revision {r.revision}: blob {digest} missing")
    if n % 25 == 0:
        path = r.local_path()
        data = open(os.path.join(path, "adapter_model.safetensors"), "rb").read()
        if hashlib.sha256(data).hexdigest() != r.files["adapter_model.safetensors"]:
            errors.append(f"revision {r.revision}: view bytes differ from blob")
print(json.dumps({"resolves": n, "revisions_seen": len(seen), "errors": errors[:5]}), flush=True)
"""

KILLED_WRITER = PRELUDE + """
cat = open_catalog(sys.argv[1])
base = int(sys.argv[2])
k = 0
while True:
    k += 1
    cat.publish_peft(f"k/{k % 3}", adapter(cat, base + k), {"k": k})
    if k % 5 == 0:
        try:
            cat.rollback(f"k/{k % 3}")
        except Exception:
            pass
    print(k, flush=True)
"""


def _script(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_readers_never_see_half_published_revisions(cat, tmp_path):
    cat.close()
    writer = _script(tmp_path, "writer.py", WRITER)
    reader = _script(tmp_path, "reader.py", READER)
    final = 21
    # Each reader marks a file once it has seen revision 1, and the writer publishes the other 20
    # only then, so each reader watches while revisions change however the two cores are shared
    # (a reader with a 2 s clock once saw only the last revision in CI's loaded fast lane).
    watched = [str(tmp_path / f"reader{i}-saw-1") for i in range(2)]
    readers = [subprocess.Popen([sys.executable, reader, cat.path, str(final), w, str(HUNG_AFTER_S)],
                                stdout=subprocess.PIPE, text=True) for w in watched]
    for p in readers:
        assert p.stdout.readline().strip() == "ready"
    w = subprocess.run([sys.executable, writer, cat.path, str(final), *watched],
                       capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert w.returncode == 0, w.stderr
    for p in readers:
        out, _ = p.communicate(timeout=HUNG_AFTER_S)
        rep = json.loads(out)
        assert rep["errors"] == [], rep
        assert rep["revisions_seen"] >= 2 and rep["resolves"] > 0  # revision 1, then at least the last
    from sglang_mint.catalog import open_catalog
    with open_catalog(cat.path) as c:
        assert c.resolve("hot").revision == final
        assert c.verify()["ok"]


def test_kill_9_during_publish_loop_leaves_catalog_consistent(cat, backend, tmp_path):
    cat.close()
    script = _script(tmp_path, "killed.py", KILLED_WRITER)
    rng = random.Random(1234)
    printed: set[int] = set()  # the k of every publish a writer reported committed
    reports = 0
    for run in range(5):
        p = subprocess.Popen([sys.executable, script, cat.path, str(100000 * (run + 1))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = p.stdout.readline()  # imported and published once: now kill at a random moment
        assert first.strip(), p.stderr.read()
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        ks = [int(first), *map(int, p.stdout.read().split())]
        reports += len(ks)
        printed |= set(ks)
    assert reports >= 5
    # A starved writer may be killed before its third publish: only the ids it reported must exist
    # (one committed just before the kill, unreported, may exist too, and is checked alike).
    reported = {f"k/{k % 3}" for k in printed}
    if backend == "sqlite":
        db = sqlite3.connect(os.path.join(cat.path, "catalog.db"))
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    from sglang_mint.catalog import open_catalog
    with open_catalog(cat.path) as c:
        if backend == "postgres":
            # The killed writer's advisory lock goes with its connection: nobody holds it, a write gets it.
            # Its backend ends once it notices the client gone: on a starved machine, not at once.
            deadline = time.monotonic() + HUNG_AFTER_S
            while (held := c.store.conn().execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()) != (0,):
                assert time.monotonic() < deadline, f"the killed writer's lock is still held: {held}"
                time.sleep(0.05)
            c.store.conn().execute("SET lock_timeout = '2s'")
            with c.store.write_lock():
                pass
        rep = c.verify()
        assert rep["ok"], rep["problems"]
        for adapter_id in (f"k/{i}" for i in range(3)):
            try:
                info = c.get(adapter_id)
            except AdapterNotFound:
                assert adapter_id not in reported
                continue
            for r in info.revisions:  # no revision points at a missing blob
                assert all(c.blobs.exists(d) for d in r.files.values())
            assert c.resolve(adapter_id).revision in [r.revision for r in info.revisions]
        c.gc(grace_s=0)  # crash leftovers (orphan blobs, temp files) go; nothing referenced does
        rep = c.verify()
        assert rep["ok"] and rep["unreferenced_blobs"] == 0 and rep["temp_files"] == 0, rep


NODE = PRELUDE + """
# One 'node' holding the catalog open: reads commands on stdin, answers one line each.
cat = open_catalog(sys.argv[1])
for line in sys.stdin:
    cmd, arg = line.split()
    if cmd == "publish":
        print(cat.publish_peft("shared", adapter(cat, int(arg))).revision, flush=True)
    elif cmd == "rollback":
        print(cat.rollback("shared").revision, flush=True)
    else:
        print(cat.resolve("shared").revision, flush=True)
"""


def test_publish_on_one_process_is_resolved_by_another_at_once(cat, tmp_path):
    """Engines resolve per request against the store: a commit anywhere is the next answer everywhere."""
    cat.close()
    script = _script(tmp_path, "node.py", NODE)
    writer, reader = (subprocess.Popen([sys.executable, script, cat.path], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True) for _ in range(2))

    def ask(p, cmd):
        p.stdin.write(cmd + "\n")
        p.stdin.flush()
        return int(p.stdout.readline())

    try:
        assert ask(writer, "publish 1") == 1 and ask(reader, "resolve -") == 1  # both connected and warm
        for k in range(2, 7):
            assert ask(writer, f"publish {k}") == k
            assert ask(reader, "resolve -") == k  # the reader's first look after the commit
        assert ask(writer, "rollback -") == 5 and ask(reader, "resolve -") == 5
    finally:
        for p in (writer, reader):
            p.stdin.close()
            p.wait(timeout=30)
