"""Where and how a trial computes: the device, torch's thread count, bf16 autocast, and the model's
input layout."""

from __future__ import annotations

import sys

import torch

from ..registry import ConfigError
from .reporting import in_tune_session


_FROZEN = False  # whether reset_process_state has frozen the process's start-up objects (gc.freeze)
_START_THREADS = torch.get_num_threads()  # this process's intra-op threads when the module loaded (torch's default)


def reset_process_state() -> None:
    """What a trial could otherwise inherit from an earlier one in the same process (a Ray worker
    reused between trials, ``reuse_actors``): the earlier trial's objects (its data cache, models, any
    DataLoader worker processes) are collected, torch's thread count is the process's own again, and
    on CUDA the allocator's cached blocks are released and its peak-memory counters start afresh.
    The random state needs nothing here: every trial seeds Python, NumPy and torch itself."""
    import gc

    global _FROZEN
    gc.collect()
    if not _FROZEN:  # the first trial of the process: what survives now is the process's own (imported
        # modules, Ray's worker). Frozen, it is never scanned again: each later collection looks at the
        # objects made since, 0.1-0.2 s less per trial (a fifth of a short demo run)
        _FROZEN = True
        gc.freeze()
    if torch.get_num_threads() != _START_THREADS:
        torch.set_num_threads(_START_THREADS)
    torch.set_grad_enabled(True)
    if "torch._dynamo" in sys.modules:  # compiled code of an earlier trial's model (train.compile)
        torch._dynamo.reset()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def trial_threads(requested: int | None = None) -> int:
    """torch's intra-op threads for this trial: inside a Ray Tune trial, the CPUs the trial holds (its
    ``resources.cpu``, at least 1), so that trials side by side never use more cores than the study
    gave them; standalone, ``requested`` (``--threads``), else torch's count when the process started
    (``OMP_NUM_THREADS`` where set, else one per core the process may run on)."""
    if in_tune_session():
        from ray import tune

        try:
            cpus = float(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))
        except Exception:  # no resource record: one thread, as Ray's own default for a worker
            cpus = 1.0
        return max(int(cpus), 1)
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"threads must be a whole number ≥ 1, got {requested!r}")
        return requested
    return _START_THREADS


def set_threads(count: int) -> int:
    """Compute with ``count`` intra-op threads from now on; returns it. (The numbers do not depend on
    the count on the CPU except through the weight gradient of convolutions with few input channels:
    see docs/training.md, Threads.)"""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


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
    """channels_last on CUDA (the convolutions' fast layout); elsewhere plain N×C×H×W strides.

    On the CPU a channels-last batch (a crop of the cached N×H×W×C pixels is one, and so is any
    one-channel batch whose channel stride is not H·W) makes the convolutions return channels-last
    maps, and torch's channels-last batch norm sums its batch statistics in per-thread chunks: the
    numbers would then depend on the thread count. With the plain layout they do not (see
    docs/training.md, Threads)."""
    if device.type == "cuda":
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 4 and x.stride() != _plain_strides(x.shape):
        return x.clone(memory_format=torch.contiguous_format)
    return x


def _plain_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


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
