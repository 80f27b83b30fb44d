"""Shared plumbing of the benchmark scripts: machine description, timing, JSON output."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds of one call of ``fn``, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def header(device: torch.device) -> str:
    return f"device: {device} ({device_name(device)}), torch {torch.__version__}, threads {torch.get_num_threads()}"


def write_json(path: str, benchmark: str, device: torch.device, rows: list, **extra) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": benchmark, "command": " ".join(["python"] + sys.argv),
                               "device": str(device), "device_name": device_name(device),
                               "torch": torch.__version__, "threads": torch.get_num_threads(),
                               **extra, "rows": rows}, indent=2))
    print(f"wrote {out}")


def fit_timed(trainable, space: dict, storage, name: str, reuse_actors: bool = False, what: str = "run"):
    """Run a Ray Tune experiment quietly; return its results and the wall time of ``tuner.fit()``.
    Any errored trial raises, naming ``what``."""
    from ray import tune

    tuner = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(reuse_actors=reuse_actors),
                       run_config=tune.RunConfig(storage_path=str(storage), name=f"{name}_{time.time_ns()}", verbose=0))
    start = time.perf_counter()
    results = tuner.fit()
    fit_s = time.perf_counter() - start
    errors = [str(r.error) for r in results if r.error]
    if errors:
        raise RuntimeError(f"{what} failed: {errors[0]}")
    return results, fit_s
