"""GET /mint/status of a test's server, for the end-to-end tests that read its counters."""

from __future__ import annotations

import json
import urllib.request


def mint_status(server) -> dict:
    with urllib.request.urlopen(server.url + "/mint/status", timeout=60) as r:
        return json.loads(r.read())

