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


def unpack_revision(rev: str, folder: Path) -> Path:
    """The ``dmltune`` package as of git revision ``rev``, unpacked into ``folder`` (returned)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "dmltune"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def add_batch_arguments(parser) -> None:
    """The options of the pair-math benchmarks: device, batch sizes B, embedding dim, K per class."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[80, 1000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=5, help="instances per class")


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


def per_anchor_loss(sim, labels, gamma_pos, gamma_neg, anchor_loss):
    """Mining + loss one anchor at a time, in the style of the authors' code: boolean indexing per
    anchor, the tolerance rule (MS mining when both tolerances are ε), each anchor's loss appended to
    a list, then summed and divided by the batch size."""
    losses = []
    for i in range(sim.shape[0]):
        pos = sim[i][labels == labels[i]]
        pos = pos[pos < 1 - 1e-5]  # drop the self pair
        neg = sim[i][labels != labels[i]]
        if len(pos) == 0 or len(neg) == 0:
            continue
        neg_kept = neg[neg + gamma_neg > torch.min(pos)]
        pos_kept = pos[pos - gamma_pos < torch.max(neg)]
        if len(neg_kept) < 1 or len(pos_kept) < 1:
            continue
        losses.append(anchor_loss(pos_kept, neg_kept))
    return sum(losses) / sim.shape[0] if losses else sim.sum() * 0
