"""A loopback HTTP server that answers as a test says: a stand-in for a remote service (SMG, an
engine) in unit tests of pure logic. Never the proof that a feature works against the real one.

    def answer(method, path, body):
        return 200, {"workers": []}          # a dict is sent as JSON, bytes as they are

    with loopback_stub(answer) as url:       # "http://127.0.0.1:<port>", threaded
        ...
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Answer = Callable[[str, str, bytes], "tuple[int, dict | bytes]"]


@contextmanager
def loopback_stub(answer: Answer) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _respond(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, reply = answer(self.command, self.path, body)
            data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            if not isinstance(reply, bytes):
                self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _respond

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
