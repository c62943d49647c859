"""The LoRA id crosses SGLang's process boundary in either of its IPC encodings (io_struct)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_catalog_lora_id_survives_pickle_and_msgpack_ipc():
    code = textwrap.dedent("""
        import os, pickle, sys
        os.environ["SGLANG_USE_PICKLE_IPC"] = sys.argv[1]
        from sglang.srt.managers import io_struct
        from sglang_mint.catalog.store import Revision
        from sglang_mint.lora_id import CatalogLoraId
        from sglang_mint.lora_id import RevisionName
        from sglang_mint.sglang.frontend import CatalogFrontend
        rev = Revision("acme/bot", 3, 1.0, "peft", 8, 16.0, "q_proj", "float16", 10, "{}", "ab" * 32, "{}", 99, 4)
        lora_id = CatalogFrontend.lora_id_of(RevisionName(rev))
        msg = io_struct.UnloadLoRAAdapterReqInput(lora_name="acme/bot@3", lora_id=lora_id)
        if io_struct._USE_PICKLE_IPC:
            back = pickle.loads(pickle.dumps(msg)).lora_id
        else:
            back = io_struct.msgpack_decode(io_struct.msgpack_encode(msg)).lora_id
        print(type(back).__name__, back, getattr(getattr(back, "revision", None), "loaded_bytes", None))
    """)
    seen = {}
    for pickle_ipc in ("1", "0"):
        p = subprocess.run([sys.executable, "-c", code, pickle_ipc], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        seen[pickle_ipc] = p.stdout.split()
    assert seen["1"] == ["CatalogLoraId", "mint:acme/bot@3", "99"]  # the record rides along
    assert seen["0"] == ["str", "mint:acme/bot@3", "None"]  # msgpack: the plain id, looked up by the scheduler
