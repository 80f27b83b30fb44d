"""Repairing a Tune experiment whose driver died between deleting and re-recording a checkpoint.

With ``CheckpointConfig(num_to_keep=1)`` Ray deletes a trial's previous checkpoint as soon as it
registers the new one, but records the new one in the experiment state only at the next snapshot.
A driver killed in between leaves a state that points at a deleted checkpoint, and ``Tuner.restore``
then fails that trial ("Could not recover from checkpoint as it does not exist on storage"). The
trial's newer checkpoint is still on disk, so before restoring, each missing recorded checkpoint is
replaced by a copy of the oldest readable newer checkpoint of the same trial: normally the one whose
registration deleted it, so one Ray had received whole (a still newer one may have been cut off
mid-write by the kill, and a checkpoint whose state file does not load is never used). The trainable resumes from the epoch stored inside it and, like every restored trial, first
reports every epoch up to it again (the driver copies results to the study folder in the background,
so they may lag the checkpoint), so no epoch is lost; the results table keeps one row per epoch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..atomic import replacing
from .state_copy import EXPERIMENT_STATE


def recorded_checkpoints(folder: Path) -> list[Path]:
    """The latest checkpoint the newest experiment state records for each trial (as paths under
    ``folder``, so a moved study folder still works)."""
    from ray import cloudpickle

    trial_data = None
    for state in sorted(folder.glob(EXPERIMENT_STATE), reverse=True):
        try:  # the newest readable one (a file being written, or cut off by a kill, is skipped)
            trial_data = json.loads(state.read_text()).get("trial_data", [])
            break
        except (OSError, ValueError):
            continue
    if not trial_data:
        return []
    out = []
    for _, runtime in trial_data:
        manager = json.loads(runtime).get("checkpoint_manager") or {}
        try:
            latest = cloudpickle.loads(bytes.fromhex(manager["value"])).latest_checkpoint_result
        except Exception:  # an unexpected layout: leave the experiment to Ray as it is
            continue
        if latest is not None and latest.checkpoint is not None:
            path = Path(latest.checkpoint.path)
            out.append(folder / path.parent.name / path.name)
    return out


def _readable(checkpoint: Path) -> bool:
    from dmltune.training.state import CheckpointError, load_checkpoint

    try:
        load_checkpoint(checkpoint)
    except CheckpointError:
        return False
    return True


def repair_missing_checkpoints(folder: Path) -> list[Path]:
    """Restore every recorded-but-deleted checkpoint from its trial's oldest readable newer one (the
    newest readable one when none newer is); returns those fixed. A trial with no readable checkpoint
    is left to Ray, which records it as failed with its reason."""
    fixed = []
    for path in recorded_checkpoints(Path(folder)):
        if path.exists() or not path.parent.is_dir():
            continue
        present = sorted(p for p in path.parent.glob("checkpoint_*") if p.is_dir())
        newer = [p for p in present if p.name > path.name]
        older = [p for p in reversed(present) if p.name < path.name]
        source = next((p for p in newer + older if _readable(p)), None)
        if source is not None:
            with replacing(path) as partial:
                shutil.copytree(source, partial)
            fixed.append(path)
    return fixed
