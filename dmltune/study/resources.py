"""What a study asks of the machine or cluster: each trial's CPUs and GPU share must fit somewhere,
or Tune would wait for ever for a place to run it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..registry import ConfigError

if TYPE_CHECKING:
    from .schema import Study


def check_resources(study: Study, available: dict, where: str) -> None:
    """Each trial's CPU and GPU request fits on ``where`` (Ray's resource totals, or this machine's);
    a trial that can never be placed would leave Tune waiting for ever."""
    cpu, have_cpu = study.resources["cpu"], float(available.get("CPU", 0))
    if cpu > have_cpu:
        raise ConfigError(f"resources.cpu = {cpu:g} per trial, but {where} has {have_cpu:g} CPUs; "
                          f"set resources.cpu to at most {have_cpu:g}")
    gpu = max((arm.gpu(study.resources.get("gpu", 0)) for arm in study.arms), default=0.0)
    have_gpu = float(available.get("GPU", 0))
    if gpu > 0 and gpu > have_gpu:
        fix = "set resources.gpu: 0 (train on the CPU)" if have_gpu == 0 else f"set resources.gpu to at most {have_gpu:g}"
        raise ConfigError(f"resources.gpu asks for {gpu:g} GPU per trial, but {where} has "
                          f"{'no GPU' if have_gpu == 0 else f'{have_gpu:g}'}; {fix}")


def local_resources() -> dict:
    """This machine's CPUs and CUDA GPUs, as Ray would count them."""
    import torch

    return {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count() if torch.cuda.is_available() else 0}
