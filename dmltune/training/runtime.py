"""Where and how a trial computes: the device, bf16 autocast, and the model's input layout."""

from __future__ import annotations

import sys

import torch

from ..registry import ConfigError
from .reporting import in_tune_session


_START_THREADS = torch.get_num_threads()  # this process's intra-op threads when the module loaded


def reset_process_state() -> None:
    """What a trial could otherwise inherit from an earlier one in the same process (a Ray worker
    reused between trials, ``reuse_actors``): the earlier trial's objects (its data cache, models, any
    DataLoader worker processes) are collected, torch's thread count is the process's own again, and
    on CUDA the allocator's cached blocks are released and its peak-memory counters start afresh.
    The random state needs nothing here: every trial seeds Python, NumPy and torch itself."""
    import gc

    gc.collect()
    if torch.get_num_threads() != _START_THREADS:
        torch.set_num_threads(_START_THREADS)
    torch.set_grad_enabled(True)
    if "torch._dynamo" in sys.modules:  # compiled code of an earlier trial's model (train.compile)
        torch._dynamo.reset()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def compile_backbone(model: torch.nn.Module, mode: str) -> None:
    """``train.compile``: compile the backbone's forward in place (``nn.Module.compile``, so parameter
    names, checkpoints and the optimizer are those of the eager model). The head, the pair math and
    the backward pass stay as they are; ``false`` leaves the model eager."""
    if mode == "false":
        return
    model.backbone.compile(mode=None if mode == "true" else mode)


def pick_device(requested: str) -> torch.device:
    """``auto``: the GPU Ray assigned to this trial (or the first one standalone), else the CPU.

    Inside a Tune trial that was given no GPU, ``auto`` means the CPU even on a GPU machine: Ray may
    not hide the node's GPUs from such a trial, and using one would take it from trials that own it.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if in_tune_session():
        import ray

        if not ray.get_gpu_ids():
            if requested == "cuda":
                raise ConfigError("train.device = 'cuda' but the trial holds no GPU; give the study resources.gpu")
            return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise ConfigError("train.device = 'cuda' but no CUDA GPU is visible; use device: auto or cpu")
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def autocast_factory(device: torch.device, amp: str):
    """A function returning a fresh autocast context: bf16 on CUDA unless ``amp`` is ``off``."""
    enabled = device.type == "cuda" and amp in ("auto", "bf16")

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)

    return autocast


def to_model_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """channels_last on CUDA (the convolutions' fast layout), unchanged elsewhere."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


class Runtime:
    """The device of a trial and its autocast, chosen once from ``train.device`` and ``train.amp``."""

    def __init__(self, device: str, amp: str):
        self.device = pick_device(device)
        self.autocast = autocast_factory(self.device, amp)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        return to_model_input(x, self.device)

    def place_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.device.type == "cuda" else model
