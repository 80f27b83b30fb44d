"""What a study asks of the machine or cluster: each trial's CPUs and GPU share must fit somewhere,
or Tune would wait for ever for a place to run it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..registry import ConfigError

if TYPE_CHECKING:
    from .schema import Study


def check_resources(study: Study, available: dict, where: str) -> None:
    """Each trial's CPU and GPU request, and each arm's ``train.device``, fits on ``where`` (Ray's
    resource totals, or this machine's); a trial that can never be placed would leave Tune waiting
    for ever, and one that asks for a device the machine lacks would fail. Every problem is listed
    (ConfigErrors when several)."""
    from .problems import Problems

    problems = Problems()
    with problems.collect():
        _check_cpu(study.resources["cpu"], available, where)
    with problems.collect():
        _check_gpu(study, available, where)
    with problems.collect():
        _check_cuda_present(study.arms, available, where)
    problems.raise_if_any()


def _check_cpu(cpu: float, available: dict, where: str) -> None:
    have_cpu = float(available.get("CPU", 0))
    if cpu > have_cpu:
        raise ConfigError(f"resources.cpu = {cpu:g} per trial, but {where} has {have_cpu:g} CPUs; "
                          f"set resources.cpu to at most {have_cpu:g}")


def _check_gpu(study: Study, available: dict, where: str) -> None:
    gpu = max((arm.gpu(study.resources.get("gpu", 0)) for arm in study.arms), default=0.0)
    if gpu <= 0:
        return
    have_gpu = _gpus(available)
    if gpu > have_gpu:
        fix = ("set resources.gpu: 0 (train on the CPU)" if have_gpu == 0
               else f"set resources.gpu to at most {have_gpu:g}")
        raise ConfigError(f"resources.gpu asks for {gpu:g} GPU per trial, but {where} has "
                          f"{'no GPU' if have_gpu == 0 else f'{have_gpu:g}'}; {fix}")


def _gpus(available: dict) -> float:
    try:  # looked up only now: counting this machine's GPUs imports torch
        return float(available["GPU"])
    except KeyError:
        return 0.0


def cuda_arms(arms) -> list:
    """The arms whose ``train.device`` is (or may be, in a search) ``cuda``."""
    from .data_checks import arm_values

    return [arm for arm in arms if "cuda" in arm_values(arm, "train", "device")]


def _check_cuda_present(arms, available: dict, where: str) -> None:
    """``train.device: cuda`` needs a GPU on ``where``."""
    wanting = cuda_arms(arms)
    if wanting and _gpus(available) == 0:
        names = ", ".join(f"'{arm.name}'" for arm in wanting)
        raise ConfigError(f"arm{'s' if len(wanting) > 1 else ''} {names}: train.device is cuda, but {where} has no GPU; set train.device: auto "
                          "(the GPU when a trial holds one, else the CPU) or cpu")


def check_devices(resources: dict, arms) -> None:
    """Independent of the machine: an arm that trains on ``cuda`` is given a GPU share per trial
    (``resources.gpu``); without one its trials could never see a GPU."""
    for arm in cuda_arms(arms):
        if arm.gpu(resources.get("gpu", 0)) <= 0:
            raise ConfigError(f"arm '{arm.name}': train.device is cuda, but its trials are given no GPU "
                              "(resources.gpu is 0 or left out); set resources.gpu (a fraction, or auto) or "
                              "train.device: auto")


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
