"""`mint catalog ...`, with --json.

The commands run in-process through the CLI's own main(argv), with its stdout, stderr and exit
status captured as a subprocess's would be; test_python_m_runs_the_cli runs the real
`python -m sglang_mint.cli` once, for the entry point itself.
"""

import contextlib
import io
import json
import subprocess
import sys

import pytest
from catalog_fixtures import write_peft
from hung import HUNG_AFTER_S

from sglang_mint.cli import main

SUBCOMMANDS = ["init", "refresh-base", "import", "publish", "rollback", "show", "list", "stats", "verify", "gc", "synth", "delete"]


def mint(*args, check=True):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["catalog", *args])
        except SystemExit as exc:  # argparse: --help, usage errors
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    p = subprocess.CompletedProcess(["mint", "catalog", *args], rc, out.getvalue(), err.getvalue())
    if check:
        assert p.returncode == 0, p.stderr
    return p


def mint_json(*args):
    return json.loads(mint(*args, "--json").stdout)


@pytest.fixture
def cli_cat(catalog_target, base_dir):
    """init(*extra) runs `mint catalog init` for this backend and returns the catalog target."""
    target, blobs = catalog_target

    def init(*extra, command="init"):
        p = mint(command, target, "--base-model", base_dir, *(["--blobs", blobs] if blobs else []), *extra)
        return target, p
    return init


def test_every_subcommand_has_help():
    for cmd in SUBCOMMANDS:
        p = mint(cmd, "--help")
        assert "--json" in p.stdout and "usage: mint catalog " + cmd in p.stdout


def test_python_m_runs_the_cli(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sglang_mint.cli", "catalog", "stats", str(tmp_path)],
                       capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert p.returncode == 2 and p.stderr.startswith("mint: error: ") and "is not a catalog" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "sglang_mint.cli", "catalog", "init", "--help"],
                       capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert p.returncode == 0 and "usage: mint catalog init" in p.stdout, p.stderr


def test_cli_end_to_end(tmp_path, cli_cat):
    cat, p = cli_cat("--json")
    assert json.loads(p.stdout)["base_model"]["hidden_size"] == 128
    for i in range(3):
        write_peft(tmp_path / "in" / f"ad{i}", seed=i, rank=2)
    p = mint("import", cat, "--from-dir", str(tmp_path / "in"), "--namespace", "acme", "--json")
    assert [r["adapter_id"] for r in json.loads(p.stdout)["imported"]] == ["acme/ad0", "acme/ad1", "acme/ad2"]
    assert "3/3" in p.stderr  # the progress bar goes to stderr, stdout stays JSON
    v2 = write_peft(tmp_path / "v2", seed=50, rank=2)
    r = mint_json("publish", cat, "acme/ad0", v2, "--metadata", '{"step": 1200, "eval": 0.81}')
    assert (r["revision"], r["metadata"]) == (2, {"step": 1200, "eval": 0.81})
    show = mint_json("show", cat, "acme/ad0")
    assert (show["current"], [x["revision"] for x in show["revisions"]]) == (2, [1, 2])
    assert mint_json("rollback", cat, "acme/ad0")["revision"] == 1
    assert mint_json("show", cat, "acme/ad0", "--revision", "2")["metadata"]["step"] == 1200
    page = mint_json("list", cat, "--prefix", "acme/", "--limit", "2")
    assert [i["adapter_id"] for i in page["items"]] == ["acme/ad0", "acme/ad1"] and page["next_after"] == "acme/ad1"
    page = mint_json("list", cat, "--prefix", "acme/", "--after", "acme/ad1")
    assert [i["adapter_id"] for i in page["items"]] == ["acme/ad2"] and page["next_after"] is None
    assert mint_json("stats", cat)["adapters"] == 3
    mint_json("delete", cat, "acme/ad2")
    gc = mint_json("gc", cat, "--grace", "0")
    assert gc["purged_revisions"] == 1 and gc["removed_blobs"] == 1
    assert mint_json("verify", cat)["ok"]
    human = mint("show", cat, "acme/ad0").stdout
    assert "* acme/ad0@1" in human and "  acme/ad0@2" in human


def test_cli_synth_says_which_mode(tmp_path, cli_cat):
    cat, p = cli_cat("--count", "50", "--no-progress", "--json", command="synth")  # synth creates the catalog
    real = json.loads(p.stdout)
    assert real["mode"] == "real" and real["count"] == 50
    shared = mint("synth", cat, "--count", "3000", "--prefix", "meta/", "--shared-payload", "--no-progress").stdout
    assert "MODE: shared-payload" in shared and "not distinct adapters" in shared
    stats = mint_json("stats", cat)
    assert stats["adapters"] == 3050 and stats["blobs"] == 52  # 50 + 1 shared payload + 1 config


@pytest.mark.parametrize("args, words", [
    (["show", "{cat}", "nope"], "'nope' is not in the catalog"),
    (["show", "{cat}", "../x"], "'..' segment"),
    (["rollback", "{cat}", "a"], "past its first revision"),
    (["publish", "{cat}", "a", "{bad}"], "rank r must be a positive integer"),
    (["publish", "{cat}", "a", "{good}"], "already has this exact content"),
    (["publish", "{cat}", "a", "{good}"], "use `mint catalog rollback CATALOG a --to 1`"),
    (["synth", "{cat}", "--count", "0"], "--count 0: must be at least 1"),
    (["gc", "{cat}", "--grace", "-5"], "--grace -5: must be 0 or more seconds"),
    (["stats", "{tmp}"], "is not a catalog"),
    (["publish", "{cat}", "b", "{good}", "--metadata", "[1]"], "--metadata must be a JSON object"),
])
def test_cli_errors_exit_2_with_message(tmp_path, cli_cat, args, words):
    cat, _ = cli_cat()
    good = write_peft(tmp_path / "good", rank=1)
    mint("publish", cat, "a", good)
    bad = write_peft(tmp_path / "bad", rank=1, config={"r": 0})
    p = mint(*[a.format(cat=cat, bad=bad, good=good, tmp=str(tmp_path)) for a in args], check=False)
    assert p.returncode == 2 and p.stderr.startswith("mint: error: ") and words in p.stderr, p.stderr


def test_verify_exit_code_1_on_problems(tmp_path, cli_cat):
    cat, _ = cli_cat()
    r = mint_json("publish", cat, "a", write_peft(tmp_path / "a", rank=1))
    from sglang_mint.catalog import open_catalog
    with open_catalog(cat) as c:  # lose a blob behind the catalog's back, wherever the backend keeps it
        c.blobs.delete(r["files"]["adapter_model.safetensors"])
    p = mint("verify", cat, check=False)
    assert p.returncode == 1 and "missing" in p.stdout


def test_import_says_what_it_found_instead_of_importing_nothing(tmp_path, base_dir):
    cat = str(tmp_path / "cat")
    mint("init", cat, "--base-model", base_dir)
    empty, one = tmp_path / "empty", write_peft(tmp_path / "one", rank=1)
    empty.mkdir()
    for args, words in [
        (["--from-dir", str(empty)], f"--from-dir {empty} holds no adapter folders: each sub-folder is imported as "
                                     "one adapter and holds adapter_config.json and adapter_model.safetensors"),
        (["--from-dir", one], f"publish it as one adapter with `mint catalog publish CATALOG ADAPTER_ID {one}`"),
        (["--from-dir", str(tmp_path / "nowhere")], f"--from-dir {tmp_path / 'nowhere'}: no such folder"),
        ([], "nothing to import: name adapter folders, or --from-dir DIR"),
    ]:
        p = mint("import", cat, *args, check=False)
        assert p.returncode == 2 and p.stderr.startswith("mint: error: ") and words in p.stderr, p.stderr
    assert mint_json("stats", cat)["adapters"] == 0


def test_publish_takes_the_folder_mint_pack_wrote(tmp_path, cli_cat):
    """`mint pack SRC DIR` writes DIR/adapter_config.json + DIR/adapter.mintpack; publishing DIR stores a
    packed revision, the one the HTTP upload of DIR/adapter.mintpack stores (upload.publish_files)."""
    import torch
    from safetensors.torch import load_file

    from sglang_mint.catalog import open_catalog
    from sglang_mint.catalog.upload import publish_files
    from sglang_mint.packed import PACKED_FILE, read_packed
    from sglang_mint.packed.convert import unpack_tensors

    cat, _ = cli_cat()
    src, packed = write_peft(tmp_path / "src", seed=7, rank=2), tmp_path / "packed"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["pack", src, str(packed)]) == 0
    r = mint_json("publish", cat, "acme/packed", str(packed), "--metadata", '{"step": 3}')
    assert (r["revision"], r["format"], r["rank"], r["metadata"]) == (1, "packed", 2, {"step": 3})
    assert sorted(r["files"]) == ["adapter.mintpack", "adapter_config.json"]
    assert [x["format"] for x in mint_json("show", cat, "acme/packed")["revisions"]] == ["packed"]
    assert "acme/packed@1  packed rank=2" in mint("show", cat, "acme/packed").stdout
    with open_catalog(cat) as c:
        by_upload = publish_files(c, "acme/upload", {PACKED_FILE: str(packed / PACKED_FILE)})
        assert (by_upload.format, by_upload.files, by_upload.content_digest) == (
            "packed", r["files"], r["content_digest"])
        view = c.resolve("acme/packed").local_path()
        p = read_packed(f"{view}/{PACKED_FILE}", pin=False)
        assert p.mint["base"]["identity"] == c.base.identity  # converted for this catalog, as an upload is
        back, source = unpack_tensors(p.mint, p.tensors), load_file(f"{src}/adapter_model.safetensors")
        assert set(back) == set(source)
        for name, tensor in source.items():
            assert torch.equal(back[name].view(torch.int16), tensor.view(torch.int16)), name  # bit-exact
    assert mint_json("verify", cat)["ok"]


def test_a_mistyped_option_is_reported_by_its_own_subcommand(tmp_path, base_dir):
    """`mint catalog import CAT --from-dirr DIR` printed `usage: mint [-h] COMMAND ...`, which names none of
    import's options; the import parser itself refuses it (exit 2), with its own usage line."""
    cat = str(tmp_path / "cat")
    mint("init", cat, "--base-model", base_dir)
    p = mint("import", cat, "--from-dirr", str(tmp_path), check=False)
    assert p.returncode == 2 and p.stderr.startswith("usage: mint catalog import "), p.stderr
    assert "mint catalog import: error: unrecognized arguments: --from-dirr" in p.stderr, p.stderr


def test_a_full_disk_is_said_as_such_and_stores_nothing(tmp_path, base_dir):
    """The disk filling under a publish (here the kernel's file-size limit, RLIMIT_FSIZE, which fails a write
    with EFBIG as a full disk fails it with ENOSPC) is an error that says so, not a traceback."""
    import os
    import resource

    cat = str(tmp_path / "cat")
    mint("init", cat, "--base-model", base_dir)
    big = write_peft(tmp_path / "big", rank=64)
    size = os.path.getsize(os.path.join(big, "adapter_model.safetensors"))
    assert max(os.path.getsize(os.path.join(cat, name)) for name in os.listdir(cat)) < size // 2
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))
    try:
        p = mint("publish", cat, "a", big, check=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert p.returncode == 2 and p.stderr.startswith("mint: error: mint catalog publish: no room left to write"), \
        p.stderr
    assert "File too large" in p.stderr and "Traceback" not in p.stderr
    assert "'a' is not in the catalog" in mint("show", cat, "a", check=False).stderr
    assert os.listdir(os.path.join(cat, "blobs", "tmp")) == []
    mint("publish", cat, "a", big)  # with room again


def test_a_command_is_named_by_its_subcommands_not_their_arguments():
    from sglang_mint.cli import _command_name, build_parser

    parser = build_parser()
    assert _command_name(parser, ["catalog", "publish", "/cat", "a", "/src"]) == "mint catalog publish"
    assert _command_name(parser, ["pack", "/data/peft-src", "/dst"]) == "mint pack"
    assert _command_name(parser, ["usage", "--dir", "/u"]) == "mint usage"
