"""``mint catalog ...``: init, refresh-base, import, publish, rollback, show, list, stats, verify, gc, synth, delete.

Human output by default, ``--json`` for scripts (one JSON document on stdout).
Errors are MintError subclasses: the top-level ``mint`` prints them and exits 2.
"""

from __future__ import annotations

import json
import os
import time


def _out(args, data, human: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else human)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _rev_line(r) -> str:
    return (f"{r.adapter_id}@{r.revision}  {r.format} rank={r.rank} alpha={r.alpha:g} {r.dtype} "
            f"{r.size_bytes} B  {','.join(r.target_modules)}  {_when(r.created)}")


def _metadata(args) -> dict | None:
    if not getattr(args, "metadata", None):
        return None
    from sglang_mint.catalog.errors import CatalogError
    try:
        m = json.loads(args.metadata)
    except ValueError as exc:
        raise CatalogError(f"--metadata is not valid JSON: {exc}") from None
    if not isinstance(m, dict):
        raise CatalogError("--metadata must be a JSON object, e.g. '{\"step\": 1200}'")
    return m


def _open(args):
    from sglang_mint.catalog import open_catalog
    return open_catalog(args.catalog)


def cmd_init(args) -> int:
    from sglang_mint.catalog import init_catalog
    with init_catalog(args.catalog, args.base_model, blobs=args.blobs) as cat:
        b = cat.base
        _out(args, {"path": cat.display, "base_model": b.to_json()},
             f"created catalog {cat.display} for base model {b.name} ({b.identity})")
    return 0


def cmd_refresh_base(args) -> int:
    from sglang_mint.catalog.base_record import refresh_base
    with _open(args) as cat:
        rep = refresh_base(cat, args.base_model)
        b = cat.base
        filled = ", ".join(f"{k}={json.dumps(v)}" for k, v in rep["filled"].items())
        _out(args, {"path": cat.display, **rep},
             f"catalog {cat.display}: recorded {filled} for base model {b.name} ({b.identity}); running servers "
             "read it when they open the catalog: restart them" if filled else
             f"catalog {cat.display} already records every field of base model {b.name} ({b.identity}); "
             "nothing written")
    return 0


ADAPTER_FILES = "adapter_config.json and adapter_model.safetensors"


def _adapter_folders(from_dir: str) -> list[str]:
    """The sub-folders of ``--from-dir``, one adapter each; CatalogError naming DIR if there are none."""
    from sglang_mint.catalog.errors import CatalogError
    if not os.path.isdir(from_dir):
        raise CatalogError(f"--from-dir {from_dir}: no such folder" if not os.path.exists(from_dir) else
                           f"--from-dir {from_dir}: not a folder")
    folders = sorted(os.path.join(from_dir, d) for d in os.listdir(from_dir)
                     if os.path.isdir(os.path.join(from_dir, d)))
    if not folders:
        hint = (f"; {from_dir} is itself an adapter folder: publish it as one adapter with "
                f"`mint catalog publish CATALOG ADAPTER_ID {from_dir}`"
                if os.path.isfile(os.path.join(from_dir, "adapter_config.json")) else "")
        raise CatalogError(f"--from-dir {from_dir} holds no adapter folders: each sub-folder is imported as one "
                           f"adapter and holds {ADAPTER_FILES}{hint}")
    return folders


def cmd_import(args) -> int:
    from sglang_mint.catalog.errors import CatalogError
    folders = list(args.folders) + (_adapter_folders(args.from_dir) if args.from_dir is not None else [])
    if not folders:
        raise CatalogError(f"nothing to import: name adapter folders, or --from-dir DIR (folders holding "
                           f"{ADAPTER_FILES})")
    if args.id and len(folders) != 1:
        raise CatalogError(f"--id names one adapter but {len(folders)} folders were given")
    with _open(args) as cat:
        t0 = time.perf_counter()
        if args.id:
            revs = [cat.publish(args.id, folders[0], _metadata(args), pack=args.pack)]
        else:
            revs = cat.import_folders(folders, args.namespace, _metadata(args), progress=not args.no_progress,
                                      pack=args.pack)
        dt = time.perf_counter() - t0
        _out(args, {"imported": [r.to_json() for r in revs], "seconds": round(dt, 3)},
             "\n".join(_rev_line(r) for r in revs) + f"\nimported {len(revs)} adapter(s) in {dt:.2f}s")
    return 0


def cmd_publish(args) -> int:
    with _open(args) as cat:
        r = cat.publish(args.adapter_id, args.folder, _metadata(args), args.revision, pack=args.pack)
        _out(args, r.to_json(), f"published {_rev_line(r)} (now current)")
    return 0


def cmd_rollback(args) -> int:
    with _open(args) as cat:
        r = cat.rollback(args.adapter_id, args.to)
        _out(args, r.to_json(), f"{args.adapter_id}: current is now revision {r.revision}")
    return 0


def cmd_show(args) -> int:
    with _open(args) as cat:
        if args.revision is not None:
            r = cat.get_revision(args.adapter_id, args.revision)
            _out(args, r.to_json(), _rev_line(r) + f"\n  metadata: {json.dumps(r.metadata)}")
            return 0
        info = cat.get(args.adapter_id)
        lines = [f"{info.adapter_id}  current={info.current} latest={info.latest}"
                 + ("  DELETED" if info.deleted else "")]
        for r in info.revisions:
            mark = "*" if r.revision == info.current else " "
            lines.append(f" {mark} {_rev_line(r)}  metadata={json.dumps(r.metadata)}")
        _out(args, info.to_json(), "\n".join(lines))
    return 0


def cmd_list(args) -> int:
    with _open(args) as cat:
        page = cat.list(args.prefix, args.after, args.limit, args.include_deleted)
        rows = [{"adapter_id": a.adapter_id, "current": a.current, "latest": a.latest, "deleted": a.deleted,
                 "revision": r.to_json() if r else None} for a, r in page.items]
        human = "\n".join((_rev_line(r) if r else f"{a.adapter_id}  (deleted)") for a, r in page.items)
        if page.next_after:
            human += f"\n-- more: --after {page.next_after}"
        _out(args, {"items": rows, "next_after": page.next_after}, human or "(no adapters)")
    return 0


def cmd_delete(args) -> int:
    with _open(args) as cat:
        cat.delete(args.adapter_id)
        _out(args, {"deleted": args.adapter_id}, f"deleted {args.adapter_id} (blobs are reclaimed by gc)")
    return 0


def cmd_stats(args) -> int:
    with _open(args) as cat:
        s = cat.stats()
        _out(args, s, "\n".join(f"{k:20s} {v}" for k, v in s.items()))
    return 0


def cmd_verify(args) -> int:
    with _open(args) as cat:
        rep = cat.verify(rehash=not args.no_hash)
        human = (f"{'OK' if rep['ok'] else 'PROBLEMS'}: checked {rep['checked_blobs']} blobs; "
                 f"{rep['unreferenced_blobs']} unreferenced blob(s), {rep['temp_files']} temp file(s) for gc")
        human += "".join(f"\n  {p}" for p in rep["problems"])
        _out(args, rep, human)
        return 0 if rep["ok"] else 1


def cmd_gc(args) -> int:
    if args.grace < 0:
        from sglang_mint.catalog.errors import CatalogError
        raise CatalogError(f"--grace {args.grace:g}: must be 0 or more seconds")
    with _open(args) as cat:
        rep = cat.gc(args.grace)
        _out(args, rep, "\n".join(f"{k:20s} {v}" for k, v in rep.items()))
    return 0


def cmd_synth(args) -> int:
    from sglang_mint.catalog import init_catalog, open_catalog
    from sglang_mint.catalog.synth import synth
    from sglang_mint.catalog.errors import CatalogError, NotACatalog
    if args.count < 1:  # before a catalog is made for it
        raise CatalogError(f"--count {args.count}: must be at least 1")
    try:
        cat = open_catalog(args.catalog)
    except NotACatalog:
        if not args.base_model:
            raise
        cat = init_catalog(args.catalog, args.base_model, blobs=args.blobs)
    else:
        if args.base_model:
            from sglang_mint.adapters.base_model import load_base_model
            from sglang_mint.adapters.errors import BaseModelMismatch
            b = load_base_model(args.base_model)
            if b.identity != cat.base.identity:
                raise BaseModelMismatch(f"--base-model {b.name} ({b.identity}) is not the catalog's base model "
                                        f"{cat.base.name} ({cat.base.identity})")
    with cat:
        rep = synth(cat, args.count, args.prefix, args.start, args.rank, args.shared_payload, args.seed,
                    progress=not args.no_progress)
        _out(args, rep, f"MODE: {rep['mode']} ({rep['note']})\n"
             f"added {rep['count']} adapters {rep['first_id']} .. {rep['last_id']} "
             f"in {rep['seconds']}s ({rep['rate_per_s']:.0f}/s)")
    return 0


BLOBS_HELP = ("postgresql:// catalogs only: where blobs live, s3://BUCKET/PREFIX (S3 or any S3-compatible "
              "server; endpoint from AWS_ENDPOINT_URL) or a folder every engine mounts at the same path; "
              "recorded in the catalog, so engines need only the URL")


def add_commands(subparsers) -> None:
    top = subparsers.add_parser("catalog", help="the adapter catalog: ids, revisions, publish/rollback",
                                description="Manage an adapter catalog (see docs/catalog.md).")
    sub = top.add_subparsers(dest="catalog_cmd", metavar="COMMAND")
    sub.required = True

    def cmd(name, func, help, catalog=True):
        p = sub.add_parser(name, help=help, description=help)
        if catalog:
            p.add_argument("catalog", metavar="CATALOG", help="catalog folder, or postgresql://USER@HOST:PORT/DB "
                           "(blobs where init put them; password better in PGPASSWORD or ~/.pgpass)")
        p.add_argument("--json", action="store_true", help="print one JSON document for scripts")
        p.set_defaults(func=func)
        return p

    p = cmd("init", cmd_init, "create an empty catalog for one base model")
    p.add_argument("--base-model", required=True, metavar="MODEL_DIR", help="HuggingFace folder with config.json")
    p.add_argument("--blobs", metavar="WHERE", help=BLOBS_HELP)

    p = cmd("refresh-base", cmd_refresh_base, "record the base-model sizes an older version of mint left out of "
            "the catalog (MoE and MLA widths: adapters of those modules are refused until then)")
    p.add_argument("--base-model", required=True, metavar="MODEL_DIR", help="the catalog's base model: a folder with "
                   "config.json of the same model (identity) as at init")

    p = cmd("import", cmd_import, "import PEFT adapter folders (id = NAMESPACE/<folder name>), with a progress bar")
    p.add_argument("folders", nargs="*", metavar="FOLDER", help="PEFT folders (adapter_config.json + "
                   "adapter_model.safetensors)")
    p.add_argument("--from-dir", metavar="DIR", help="also import every sub-folder of DIR")
    p.add_argument("--namespace", default="", help="id prefix, e.g. 'acme' gives 'acme/<folder name>'")
    p.add_argument("--id", help="explicit adapter id (one folder only)")
    p.add_argument("--metadata", metavar="JSON", help="free-form metadata object for every revision")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--pack", action="store_true", help="store the packed format (adapter.mintpack: one read, one "
                   "copy at load; see docs/packed.md) instead of the PEFT files; the same checks run first")

    p = cmd("publish", cmd_publish, "publish an adapter folder as the next revision of an adapter and make it "
            "current")
    p.add_argument("adapter_id", metavar="ADAPTER_ID")
    p.add_argument("folder", metavar="FOLDER", help="a PEFT folder (adapter_config.json + adapter_model.safetensors), "
                   "or a packed one `mint pack` wrote (adapter.mintpack: stored packed, as its HTTP upload is)")
    p.add_argument("--metadata", metavar="JSON", help="free-form metadata, e.g. '{\"step\": 1200, \"eval\": 0.81}'")
    p.add_argument("--revision", type=int, help="refuse unless this is the number the new revision gets")
    p.add_argument("--pack", action="store_true", help="store the packed format (adapter.mintpack: one read, one "
                   "copy at load; see docs/packed.md) instead of the PEFT files; the same checks run first")

    p = cmd("rollback", cmd_rollback, "make the previous (or a named) revision current")
    p.add_argument("adapter_id", metavar="ADAPTER_ID")
    p.add_argument("--to", type=int, metavar="N", help="revision number (default: the one before current)")

    p = cmd("show", cmd_show, "show an adapter and its revisions (* marks current)")
    p.add_argument("adapter_id", metavar="ADAPTER_ID")
    p.add_argument("--revision", type=int, metavar="N", help="show one revision")

    p = cmd("list", cmd_list, "list adapters by id, with prefix filter and pagination")
    p.add_argument("--prefix", default="", help="only ids starting with this, e.g. 'acme/'")
    p.add_argument("--after", help="start after this id (the previous page's next_after)")
    p.add_argument("--limit", type=int, default=50, help="page size (default 50)")
    p.add_argument("--include-deleted", action="store_true")

    p = cmd("delete", cmd_delete, "mark an adapter deleted (gc reclaims its blobs)")
    p.add_argument("adapter_id", metavar="ADAPTER_ID")

    cmd("stats", cmd_stats, "counts and sizes")
    p = cmd("verify", cmd_verify, "check metadata and re-hash every referenced blob (exit 1 on problems)")
    p.add_argument("--no-hash", action="store_true", help="check existence only, do not re-hash")
    p = cmd("gc", cmd_gc, "drop deleted adapters' revisions and superseded never-stored durable=false ones, "
                          "and reclaim unreferenced blobs")
    p.add_argument("--grace", type=float, default=3600.0, metavar="SECONDS",
                   help="keep unreferenced blob files, and superseded durable=false revisions never stored, "
                        "younger than this (a publish may be in flight); default 3600")

    p = cmd("synth", cmd_synth, "add N synthetic rank-r adapters for benchmarks (distinct and loadable unless "
            "--shared-payload)")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--base-model", metavar="MODEL_DIR", help="create the catalog for this model if it does not exist")
    p.add_argument("--blobs", metavar="WHERE", help="with --base-model on a postgresql:// catalog: " + BLOBS_HELP)
    p.add_argument("--prefix", default="synth/", help="id prefix (default 'synth/')")
    p.add_argument("--start", type=int, default=0, help="first index (ids are PREFIX + 7-digit index)")
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared-payload", action="store_true",
                   help="all entries share one payload blob (metadata scaling only; NOT distinct adapters)")
    p.add_argument("--no-progress", action="store_true")
