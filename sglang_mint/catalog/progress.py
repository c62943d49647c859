"""``Progress``: the bar that bulk imports (Catalog.import_folders) and ``mint catalog synth`` draw."""

from __future__ import annotations

import sys
import time


class Progress:
    """A progress bar on stderr: tqdm when it is installed, else one rewritten line."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.n, self.enabled = total, desc, 0, enabled
        self._tqdm = None
        self._last = 0.0
        if enabled:
            try:
                from tqdm import tqdm
                self._tqdm = tqdm(total=total, desc=desc, file=sys.stderr, unit="adapter")
            except ImportError:
                pass

    def update(self, k: int) -> None:
        self.n += k
        if self._tqdm is not None:
            self._tqdm.update(k)
        elif self.enabled and (time.monotonic() - self._last > 0.5 or self.n == self.total):
            self._last = time.monotonic()
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled:
            sys.stderr.write("\n")
