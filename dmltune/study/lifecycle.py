"""A study folder's owner and its recorded plan.

* **One owner.** A driver (`run` or `resume`) holds an exclusive lock on the study folder
  (``fcntl.flock`` on ``.dmltune.lock``) while it runs; a second driver stops at once with one line
  naming the holder's pid and host. The lock file also tells a running driver that its folder is
  still there: deleting the folder deletes the lock file.
* **One plan.** ``study.yaml`` records the study as it was first run. `run` on a folder whose record
  differs refuses and says what differs; ``--fresh`` moves the old folder aside (never deletes it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from ..registry import ConfigError
from ..atomic import write_atomic

LOCK_FILE = ".dmltune.lock"
STUDY_RECORD = "study.yaml"


class StudyLock:
    """Exclusive ownership of a study folder for the life of one driver (context manager)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._handle = None

    def __enter__(self) -> "StudyLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = _holder_text(handle.read())
            handle.close()
            raise ConfigError(f"study folder {self.folder} is in use by another dmltune driver ({holder}); "
                              "wait for it to finish or stop it, then run `dmltune resume` on the folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def folder_present(self) -> bool:
        """False once the study folder (and with it the lock file) has been deleted."""
        return self.path.is_file()


def _holder_text(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) and "name" in v for v in tree):
        out = {}  # arms: by name, so a reordering or one changed arm reads as such
        for value in tree:
            out.update(_flat(value, f"{prefix}{value['name']}."))
        return out
    return {prefix.rstrip("."): tree}


def plan_differences(recorded: dict, current: dict, limit: int = 3) -> list[str]:
    """``key: old → new`` for each setting that differs (``storage`` aside), at most ``limit``."""
    old = {k: v for k, v in _flat(recorded).items() if k != "storage"}
    new = {k: v for k, v in _flat(current).items() if k != "storage"}
    missing = object()
    keys = [k for k in list(old) + [k for k in new if k not in old] if old.get(k, missing) != new.get(k, missing)]
    shown = [f"{k}: {_short(old.get(k, '(absent)'))} → {_short(new.get(k, '(absent)'))}" for k in keys[:limit]]
    return shown + ([f"and {len(keys) - limit} more"] if len(keys) > limit else [])


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def check_recorded_plan(study, fresh: bool = False) -> Path | None:
    """Before `run`: a folder without a record is new; an identical record is this study (a rerun
    finishes or reports it); a different one is refused, or with ``fresh`` moved aside (returns the
    folder it was moved to)."""
    record = study.directory / STUDY_RECORD
    if not record.is_file():
        return None
    try:
        recorded = yaml.safe_load(record.read_text()) or {}
    except (OSError, yaml.YAMLError):
        recorded = None
    current = normalised(study.source)  # as the record reads back
    if recorded == current or (recorded is not None and not plan_differences(recorded, current)):
        return None
    if fresh:
        aside = study.directory.with_name(f"{study.directory.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        study.directory.rename(aside)
        return aside
    what = "; ".join(plan_differences(recorded, current)) if recorded is not None else "its study.yaml is unreadable"
    raise ConfigError(f"{study.directory} holds study '{study.name}' with other settings ({what}); continue it with "
                      f"`dmltune resume {study.directory}`, grow it with `dmltune extend` (more seeds, grid values "
                      "or arms; finished trials are kept), give this study a new name, or run with --fresh "
                      "(moves the old folder aside, deletes nothing)")


def normalised(source: dict) -> dict:
    """A study's settings as its record (``study.yaml``) reads back: YAML-dumped, then loaded."""
    return yaml.safe_load(yaml.safe_dump(source))


def write_record(study) -> None:
    record = study.directory / STUDY_RECORD
    if not record.exists():
        write_atomic(record, yaml.safe_dump(study.source, sort_keys=False))
