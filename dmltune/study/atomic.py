"""Replacing a file in one step: a reader (or a kill) sees the old file or the new one, never half."""

from __future__ import annotations

import os
import threading
from pathlib import Path

_WRITING = threading.Lock()  # a study's experiments run in threads of one driver: one writer at a time


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to a hidden file beside ``path``, then rename it over ``path``."""
    partial = Path(path).with_name(f".{Path(path).name}.partial")
    with _WRITING:
        if isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            partial.write_text(data)
        os.replace(partial, path)
