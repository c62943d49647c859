"""A shared catalog's rows are data, not paths (issue 19, item 5).

Anyone who can write the metadata database (SQLite file, PostgreSQL) could put a path where a
revision's ``content_digest`` or a file name belongs; every engine then builds its loadable folder
from it. Here a row is rewritten directly in the database, as such a writer would, and the
engine's ``local_path`` must refuse it with 422 naming the adapter, before touching the disk.
"""

from __future__ import annotations

import json
import os

import pytest
from catalog_fixtures import write_peft

from sglang_mint.catalog.errors import MintError


def rewrite_row(cat, adapter_id: str, column: str, value: str) -> None:
    """UPDATE revisions SET <column> = value for the adapter's revisions, straight in the database."""
    sql = f"UPDATE revisions SET {column} = %s WHERE adapter_id = %s"
    if cat.path.startswith("postgres"):
        import psycopg

        with psycopg.connect(cat.path, autocommit=True) as c:
            c.execute(sql, (value, adapter_id))
    else:
        import sqlite3

        with sqlite3.connect(os.path.join(cat.path, "catalog.db")) as c:
            c.execute(sql.replace("%s", "?"), (value, adapter_id))


def tree(root) -> set[str]:
    return {os.path.join(d, n) for d, subs, names in os.walk(root) for n in subs + names}


def bad_rows(good_files: dict[str, str], digest: str, outside: str) -> dict[str, tuple[str, str, str]]:
    """case -> (column, value written, what the refusal names)."""
    weights = good_files["adapter_model.safetensors"]
    return {
        "digest-absolute": ("content_digest", outside, "content_digest"),
        "digest-dotdot": ("content_digest", "../../../" + digest[9:], "content_digest"),
        "digest-short": ("content_digest", digest[:40], "content_digest"),
        "digest-upper": ("content_digest", digest.upper(), "content_digest"),
        "file-name-escape": ("files", json.dumps({**good_files, "../../escape.safetensors": weights}),
                             "'../../escape.safetensors'"),
        "file-name-manifest": ("files", json.dumps({**good_files, ".mint-files.json": weights}),
                               "'.mint-files.json'"),
        "file-blob-digest": ("files", json.dumps({**good_files, "adapter_model.safetensors": "../" * 4 + "etc"}),
                             "adapter_model.safetensors"),
    }


@pytest.mark.parametrize("case", ["digest-absolute", "digest-dotdot", "digest-short", "digest-upper",
                                  "file-name-escape", "file-name-manifest", "file-blob-digest"])
def test_a_row_with_a_path_is_refused_before_any_filesystem_call(cat, peft, tmp_path, case):
    cat.publish("row/good", peft("good", seed=1))
    cat.publish("row/bad", peft("bad", seed=2))
    good = cat.resolve("row/good")
    # An attacker's folder that holds a loadable adapter: a row pointing there must not be served from it.
    outside = write_peft(tmp_path / "attacker" / "aa" / "planted", seed=3)
    column, value, names = bad_rows(good.files, cat.resolve("row/bad").content_digest, outside)[case]
    rewrite_row(cat, "row/bad", column, value)
    before = tree(tmp_path) | tree(cat.views)
    with pytest.raises(MintError) as exc:
        cat.resolve("row/bad").local_path()
    assert exc.value.http_status == 422, (case, exc.value.http_status, str(exc.value))
    message = str(exc.value)
    assert "'row/bad'" in message and names in message, message
    assert tree(tmp_path) | tree(cat.views) == before, case  # nothing linked, copied or created
    # The good adapter next to it is still served.
    assert os.path.isfile(os.path.join(cat.resolve("row/good").local_path(), "adapter_model.safetensors"))
