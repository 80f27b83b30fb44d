"""Replacing a file (or a folder) in one step: a reader, or a kill, sees the old one or the new one,
never half of one. Every file dmltune writes goes through here (issue #27)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path
from typing import Iterator

_WRITING = threading.RLock()  # a study's experiments run in threads of one driver: one writer at a time


def partial_path(path: Path) -> Path:
    """The hidden name beside ``path`` that a new version is written under before it replaces ``path``."""
    return Path(path).with_name(f".{Path(path).name}.partial")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield the path to write the new version of ``path`` to (a file, or a folder the caller creates);
    when the block ends without an error it is renamed over ``path``, otherwise it is removed and
    ``path`` is left as it was."""
    partial = partial_path(path)
    with _WRITING:
        _remove(partial)  # what a killed writer left
        try:
            yield partial
            if partial.is_dir() and Path(path).is_dir():  # a folder cannot be renamed over a folder
                old = Path(path).with_name(f".{Path(path).name}.old")
                _remove(old)
                os.replace(path, old)
                os.replace(partial, path)
                _remove(old)
            else:
                os.replace(partial, path)
        except BaseException:
            _remove(partial)
            raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to a hidden file beside ``path``, then rename it over ``path``."""
    with replacing(path) as partial:
        if isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            partial.write_text(data)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
