"""A JSON POST to a test's server on loopback: (status, body text), an HTTP error's too."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def post_json(server, path: str, body: dict, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
