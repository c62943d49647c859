"""The LoRA id crosses SGLang's process boundary in either of its IPC encodings (io_struct)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from hung import HUNG_AFTER_S


def test_the_catalog_lora_id_survives_pickle_and_msgpack_ipc():
    # One interpreter for both encodings (SGLang's import is most of the cost): SGLANG_USE_PICKLE_IPC
    # is read on every call (envs.SGLANG_USE_PICKLE_IPC.get(), our frontend) and once at import,
    # into io_struct._USE_PICKLE_IPC, which sock_send / sock_recv read on every message; setting
    # both is what a process started with the variable at 0 sees.
    code = textwrap.dedent("""
        import os
        os.environ["SGLANG_USE_PICKLE_IPC"] = "1"
        import zmq
        from sglang.srt.managers import io_struct
        from sglang_mint.catalog.store import Revision
        from sglang_mint.lora_id import RevisionName
        from sglang_mint.sglang.frontend import CatalogFrontend
        assert io_struct._USE_PICKLE_IPC is True
        rev = Revision("acme/bot", 3, 1.0, "peft", 8, 16.0, "q_proj", "float16", 10, "{}", "ab" * 32, "{}", 99, 4)
        ctx = zmq.Context.instance()
        send, recv = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        send.bind("inproc://ipc")
        recv.connect("inproc://ipc")
        for pickle_ipc in ("1", "0"):
            os.environ["SGLANG_USE_PICKLE_IPC"] = pickle_ipc
            io_struct._USE_PICKLE_IPC = pickle_ipc == "1"
            lora_id = CatalogFrontend.lora_id_of(RevisionName(rev))
            io_struct.sock_send(send, io_struct.UnloadLoRAAdapterReqInput(lora_name="acme/bot@3", lora_id=lora_id))
            back = io_struct.sock_recv(recv).lora_id
            print(pickle_ipc, type(back).__name__, back, getattr(getattr(back, "revision", None), "loaded_bytes", None))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert p.returncode == 0, p.stderr[-3000:]
    seen = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines()}
    assert seen["1"] == ["CatalogLoraId", "mint:acme/bot@3", "99"]  # the record rides along
    assert seen["0"] == ["str", "mint:acme/bot@3", "None"]  # msgpack: the plain id, looked up by the scheduler
