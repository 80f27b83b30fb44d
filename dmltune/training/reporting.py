"""Where a trial's per-epoch results and checkpoints go: Ray Tune, or the terminal.

The trainable calls ``reporter.report(metrics, checkpoint_dir)`` once per epoch and
``reporter.restore_dir()`` at start. Inside a Tune trial this maps to ``ray.tune.report`` /
``ray.tune.get_checkpoint``; standalone it prints one line per epoch and keeps checkpoints in a
local folder, so the same training code runs both ways.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Iterator, Mapping


def in_tune_session() -> bool:
    """True inside a Ray Tune trial (a function trainable run by a Tuner)."""
    if "ray" not in sys.modules:
        return False
    try:
        from ray.tune import get_context

        with warnings.catch_warnings():  # Ray warns when asked outside a trial, which is the question
            warnings.simplefilter("ignore")
            return get_context().get_trial_id() is not None
    except Exception:  # outside a session Ray raises or returns nothing
        return False


class TuneReporter:
    """Report to Ray Tune; checkpoints travel through Tune's own mechanism."""

    keeps_checkpoints = True

    @contextlib.contextmanager
    def restore_dir(self) -> Iterator[Path | None]:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield Path(d)

    def report(self, metrics: Mapping, checkpoint_dir: Path | None = None) -> None:
        import ray
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        node = ray.get_runtime_context().get_node_id()  # which machine ran it, for cluster studies
        tune.report({**metrics, "node_id": node}, checkpoint=checkpoint)

    def trial_id(self) -> str | None:
        from ray import tune

        return tune.get_context().get_trial_id()

    def gpu_fraction(self) -> float:
        from ray import tune

        try:
            resources = tune.get_context().get_trial_resources()
            return float(resources.required_resources.get("GPU", 0.0))
        except Exception:
            return 0.0


class ConsoleReporter:
    """Print one line per epoch; keep the latest checkpoint in ``checkpoint_root`` (if given)."""

    def __init__(self, checkpoint_root: str | os.PathLike | None = None, selection_metric: str = "map@r",
                 stream=None):
        self.checkpoint_root = Path(checkpoint_root) if checkpoint_root else None
        self.keeps_checkpoints = self.checkpoint_root is not None
        self.metric = selection_metric
        self.stream = stream or sys.stdout
        self.history: list[dict] = []

    def trial_id(self) -> str | None:
        return None  # standalone: no Tune trial (PBT exploits happen only in Tune)

    @contextlib.contextmanager
    def restore_dir(self) -> Iterator[Path | None]:
        if self.checkpoint_root is None:
            yield None
            return
        found = [path for path in (self.checkpoint_root / "latest", self.checkpoint_root / ".latest.old")
                 if path.is_dir()]  # .latest.old: a kill fell between the two renames of a replacement
        yield found[0] if found else None

    def report(self, metrics: Mapping, checkpoint_dir: Path | None = None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is not None and self.checkpoint_root is not None:
            from ..atomic import replacing

            self.checkpoint_root.mkdir(parents=True, exist_ok=True)
            with replacing(self.checkpoint_root / "latest") as partial:  # replaced once the copy is whole
                shutil.copytree(checkpoint_dir, partial)
        print(self.format_line(metrics), file=self.stream, flush=True)

    def done_before(self, last: Mapping, epochs: int) -> None:
        """A rerun of a finished run: nothing to train; say where the result is and what it was."""
        where = self.checkpoint_root / "latest" if self.checkpoint_root else "the checkpoint"
        print(f"already done: {where} holds every epoch (train.epochs = {epochs}); nothing to train. To train "
              f"further, raise train.epochs (--set train.epochs=N). Its last epoch:", file=self.stream)
        print(self.format_line(last), file=self.stream, flush=True)

    def format_line(self, m: Mapping) -> str:
        parts = [f"epoch {m.get('epoch', '?'):>3}"]
        if m.get("status") == "diverged":
            return f"{parts[0]}  diverged: {m.get('reason', '')}"

        def add(label, key, fmt="{:.4f}"):
            value = m.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                parts.append(f"{label} " + fmt.format(value))

        add("loss", "loss")
        add("λ", "lam", "{:.3f}")
        add("pos", "pos_after", "{:.0f}")
        add("neg", "neg_after", "{:.0f}")
        add(f"val {self.metric}", f"val/{self.metric}")
        add(f"test {self.metric}", f"test/{self.metric}")
        add("test R@1", "test/recall@1")
        add("img/s", "images_per_s", "{:.0f}")
        add("s", "wall_s", "{:.1f}")
        return "  ".join(parts)

    def gpu_fraction(self) -> float:
        return 1.0


def make_reporter(checkpoint_root=None, selection_metric: str = "map@r"):
    """The Tune reporter inside a trial, otherwise a console reporter."""
    if in_tune_session():
        return TuneReporter()
    return ConsoleReporter(checkpoint_root, selection_metric)
