"""The training side: one configuration's trial, from resolved settings to per-epoch reports.

    settings.py    the config resolved once into frozen typed objects
    trial.py       Trial: data, model, miner, loss, optimizer, adaptive parts; step(), run_epoch()
    parts.py       the adaptive-part interface, its do-nothing version, the ADAPTIVE registry
    meta.py        meta-learned λ (registered as "meta")
    generation.py  generated examples, MIRAGE (registered as "generation")
    evaluation.py  Evaluator and the one eval-mode embedding loop
    runtime.py     device, autocast, channels_last
    state.py       checkpoints and random-number state
    reporting.py   reports and checkpoints to Ray Tune or the terminal
    loop.py        train(), tune_trainable(): epochs, evaluation cadence, checkpoints, reports

See docs/architecture.md.
"""

from . import generation, meta  # noqa: F401  (registers the adaptive parts)
from .loop import train, tune_trainable
from .parts import ADAPTIVE, Batch, TrainingPart
from .settings import TrialSettings
from .trial import StepResult, Trial, build_optimizer

__all__ = ["ADAPTIVE", "Batch", "StepResult", "TrainingPart", "Trial", "TrialSettings", "build_optimizer", "train",
           "tune_trainable"]
