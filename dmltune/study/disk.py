"""A full or read-only disk under the study folder: found by probing (free-space figures do not tell a
read-only mount or a quota) or in a failure's chain of causes, and turned into one line that stops
the study with every finished trial kept."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..interruption import StudyFailed


def disk_error(err: BaseException) -> OSError | None:
    """The OSError for a full or read-only disk anywhere in ``err``'s chain of causes."""
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, OSError) and describe(err):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def describe(err: OSError) -> str | None:
    """"no space left" or "read-only file system" for such an error, else None."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left"
    if err.errno == errno.EROFS:
        return "read-only file system"
    return None


def disk_stop_message(err: BaseException, next_step: str) -> str | None:
    """One line for a full or read-only disk anywhere in ``err``'s causes (None for any other error):
    what happened, where, and ``next_step``."""
    found = disk_error(err)
    if found is None:
        return None
    where = str(found.filename or "the disk")
    name = Path(where).name
    if name.startswith(".") and name.endswith(".partial"):  # the file it was replacing (dmltune.atomic)
        where = str(Path(where).with_name(name[1:-len(".partial")]))
    return f"{describe(found)} on {where}; {next_step}"


def disk_problem(folder: Path) -> str | None:
    """"no space left" or "read-only file system" when a small file cannot be written into ``folder``
    for that reason (probed, as free-space figures do not tell a read-only mount or a quota)."""
    probe = Path(folder) / ".dmltune-space-probe"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return describe(err)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None


def stop_for_disk(study, what: str, where) -> StudyFailed:
    return StudyFailed(f"{what} on {where}; every finished trial is kept: free space (or make it writable), then "
                       f"`dmltune resume {study.directory} --retry-errored` (the trials it stopped ended in error)")
