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
    if gpu <= 0:
        return
    try:  # looked up only now: counting this machine's GPUs imports torch
        have_gpu = float(available["GPU"])
    except KeyError:
        have_gpu = 0.0
    if gpu > have_gpu:
        fix = "set resources.gpu: 0 (train on the CPU)" if have_gpu == 0 else f"set resources.gpu to at most {have_gpu:g}"
        raise ConfigError(f"resources.gpu asks for {gpu:g} GPU per trial, but {where} has "
                          f"{'no GPU' if have_gpu == 0 else f'{have_gpu:g}'}; {fix}")


class _ThisMachine(dict):
    """This machine's resources: the CPUs at once, the GPUs when first looked up (torch counts them)."""

    def __missing__(self, key):
        if key != "GPU":
            raise KeyError(key)
        import torch

        self["GPU"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return self["GPU"]


def local_resources() -> dict:
    """This machine's CPUs and CUDA GPUs, as Ray would count them."""
    return _ThisMachine(CPU=os.cpu_count() or 1)
