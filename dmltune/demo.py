"""A short CPU demo: fixed versus adaptive thresholds on scikit-learn's bundled digits.

Each arm is one configuration of the real trainable (``dmltune.trainable.train``): a small CNN on
digit classes 0–4 (two of them held out for validation), Recall@1 and MAP@R measured on the unseen
classes 5–9, over a few seeds. No download; 8 epochs × 2 seeds take about half a minute on one CPU
core. It computes with one thread by default: the network is far too small to gain from more, and
on a busy machine torch's default (a thread per core, spinning while it waits) made each epoch 8×
slower (docs/training.md, Threads).
"""

from __future__ import annotations

import copy
import io
import statistics
import time

from .registry import ConfigError
from .training.reporting import ConsoleReporter
from .training import train

BASE = {
    "dataset": {"name": "digits", "val_fraction": 0.4},
    "model": {"backbone": "small_cnn", "dim": 32, "freeze_bn": False},
    "train": {"epochs": 8, "batch_size": 24, "k": 8, "lr": 1e-3},
    "eval": {"metric": "map@r", "every": 0, "nmi": False},
}

ARMS = (
    ("MS loss + MS mining (fixed ε)", {"name": "ms", "epsilon": 0.1}, {"name": "ms"}),
    ("Soft contrastive + ASMS (fixed γ)", {"name": "asms"}, {"name": "soft_contrastive"}),
    ("Soft contrastive + AT-ASMS (adaptive γ)", {"name": "at_asms"}, {"name": "soft_contrastive"}),
    ("... + meta-learned λ (DDTAS)", {"name": "at_asms"},
     {"name": "soft_contrastive", "lam": {"meta": {"init": 0.7, "lr": 0.02, "scope": "head"}}}),
    ("Binomial* + DSML (dynamic sampling)", {"name": "dsml"}, {"name": "binomial", "dynamic": True}),
)


def arm_config(miner: dict, loss: dict, seed: int, epochs: int) -> dict:
    cfg = copy.deepcopy(BASE)
    cfg.update(seed=seed, miner=dict(miner), loss=copy.deepcopy(loss))
    cfg["train"]["epochs"] = epochs
    return cfg


def check_count(value, option: str, command: str = "demo") -> int:
    """``value`` as a whole number ≥ 1; otherwise ConfigError naming the ``command`` and ``option``."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{command} {option} must be a whole number ≥ 1, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{command} {option} must be a whole number ≥ 1, got {value!r}")
    return value


def spread(values: list[float]) -> str:
    """``mean ± sd`` over seeds; one seed has no spread, so its value alone (the table says n = 1)."""
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def run_demo(epochs: int = 8, seeds: int = 2, threads: int = 1) -> list[dict]:
    """Train every arm for ``epochs`` epochs with seeds ``0 .. seeds − 1`` on ``threads`` threads (all
    ≥ 1, else ConfigError); print one line per arm and return the per-seed test metrics."""
    epochs, seeds = check_count(epochs, "--epochs"), check_count(seeds, "--seeds")
    threads = check_count(threads, "--threads")
    print("digits: training classes 0-4 (2 held out for validation), test classes 5-9; small CNN, "
          f"{epochs} epochs, {seeds} seed{'s' if seeds > 1 else ''} per arm\n")
    print(f"{'arm':<42} {'test R@1':>16} {'test MAP@R':>16} {'λ at end':>9} {'seconds':>8}")
    results = []
    for label, miner, loss in ARMS:
        start = time.perf_counter()
        runs = []
        for seed in range(seeds):
            quiet = ConsoleReporter(stream=io.StringIO())
            runs.append(train(arm_config(miner, loss, seed, epochs), reporter=quiet, threads=threads))
        r1 = [r["test/recall@1"] for r in runs]
        mapr = [r["test/map@r"] for r in runs]
        lam = runs[-1].get("lam_end", runs[-1].get("lam"))
        lam_text = f"{lam:.3f}" if lam is not None else "—"
        print(f"{label:<42} {spread(r1):>16} {spread(mapr):>16} {lam_text:>9} {time.perf_counter() - start:>8.1f}")
        results.append({"arm": label, "test/recall@1": r1, "test/map@r": mapr})
    print(f"\nmean ± sd over {seeds} seeds." if seeds > 1 else
          "\none seed per arm (n = 1): no spread to show (--seeds 2 or more gives mean ± sd).")
    print("Digits are nearly separable in pixel space and five training classes leave little to learn:")
    print("the demo exercises the whole pipeline, it is not a benchmark result.")
    return results
