"""A Tune stopper that ends an experiment once its study folder has been deleted."""

from __future__ import annotations

from pathlib import Path

from ray.tune import Stopper


class FolderGone(Stopper):
    """``stop_all`` once the study's lock file (inside the study folder) is gone."""

    def __init__(self, lock_path: Path):
        self.lock_path = Path(lock_path)

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return not self.lock_path.is_file()
