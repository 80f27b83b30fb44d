"""Results tables with known answers, in the format the study runner writes (trials.parquet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

BINS = 8


def trial_rows(arm, experiment, trial_id, seed, val, test, *, epochs=3, status="ok", gpu_s=3600.0,
               config=None, lam=None, gamma=None):
    """Per-epoch reports of one trial; the final epoch carries ``val`` and ``test``."""
    rows = []
    for epoch in range(1, epochs + 1):
        last = epoch == epochs
        row = {"arm": arm, "experiment": experiment, "trial_id": trial_id, "seed": seed,
               "trial_status": "ERROR" if status == "error" else "TERMINATED", "status": status,
               "error": "boom" if status == "error" else "", "epoch": epoch, "loss": 1.0 / epoch,
               "val/map@r": val - 0.01 * (epochs - epoch) if val is not None else np.nan,
               "val_epoch": epoch, "wall_s": gpu_s * epoch / epochs, "gpu_s": gpu_s * epoch / epochs,
               "pos_after": 10.0 + epoch, "neg_after": 100.0 - epoch, "pos_before": 20.0, "neg_before": 200.0}
        if last and test is not None:
            row["test/map@r"] = test
            row["test/recall@1"] = test + 0.2
        if lam is not None:
            row["lam"] = lam + 0.01 * epoch
        if gamma is not None:
            row["gamma_pos"], row["gamma_neg"] = gamma + 0.01 * epoch, gamma / 2
        hist = np.linspace(1, 2, BINS)
        for i in range(BINS):
            row[f"val_simhist/pos/{i:02d}"] = hist[i] / hist.sum()
            row[f"val_simhist/neg/{i:02d}"] = hist[::-1][i] / hist.sum()
        row.update({f"config/{k}": v for k, v in (config or {}).items()})
        rows.append(row)
    return rows


def grid_arm(name, values, seeds=(0, 1, 2), noise=None, status=None, gpu_s=3600.0):
    """A 2-D grid arm: ``values[(gp, gn)]`` is the validation value of that cell (same for every
    seed unless ``noise[(gp, gn, seed)]`` shifts it); test = val − 0.1. ``status[(gp, gn, seed)]``
    marks errored / diverged trials."""
    rows, i = [], 0
    for (gp, gn), v in values.items():
        for s in seeds:
            st = (status or {}).get((gp, gn, s), "ok")
            val = None if st == "error" else v + (noise or {}).get((gp, gn, s), 0.0)
            if st == "diverged":
                val = np.nan
            rows += trial_rows(name, name, f"{name}_{i:05d}", s, val, None if val is None or np.isnan(val) else val - 0.1,
                               status=st, gpu_s=gpu_s, epochs=1 if st != "ok" else 3,
                               config={"miner.name": "asms", "miner.gamma_pos": gp, "miner.gamma_neg": gn},
                               gamma=gp)
            i += 1
    return rows


def single_arm(name, vals, gpu_s=3600.0, lam=0.5):
    return [r for s, v in enumerate(vals)
            for r in trial_rows(name, name, f"{name}_{s:05d}", s, v, v - 0.1, gpu_s=gpu_s,
                                config={"miner.name": "at_asms"}, lam=lam, gamma=0.1)]


def example_table() -> pd.DataFrame:
    """A fixed 3 × 2 grid (one cell matches the reference), a single fixed arm and the reference."""
    grid = {(0.05, 0.0): 0.40, (0.05, 0.05): 0.45, (0.1, 0.0): 0.52,
            (0.1, 0.05): 0.47, (0.2, 0.0): 0.30, (0.2, 0.05): 0.35}
    rows = grid_arm("asms_grid", grid) + single_arm("ms_simp", [0.41, 0.43, 0.42], lam=None) \
        + single_arm("ddtas", [0.50, 0.52, 0.51])
    return pd.DataFrame(rows)


def write_study_dir(folder: Path, table: pd.DataFrame | None = None, analysis: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = example_table() if table is None else table
    table.to_parquet(folder / "trials.parquet", index=False)
    arms = list(dict.fromkeys(table.arm))
    source = {"name": folder.name, "seeds": [0, 1, 2], "eval": {"metric": "map@r"},
              "arms": [{"name": a} for a in arms]}
    if analysis:
        source["analysis"] = analysis
    (folder / "study.yaml").write_text(yaml.safe_dump(source, sort_keys=False))
    return folder


def simulated_table(rng: np.random.Generator, config_means, reference_mean: float, sd: float, seeds: int,
                    seed_sd: float = 0.0, status=None, gpu_s: float = 600.0) -> pd.DataFrame:
    """One final report per trial, drawn from a known truth: configuration c of arm ``grid`` has true
    validation mean ``config_means[c]``, the reference arm ``ref`` has ``reference_mean``; each trial
    adds seed noise N(0, sd²), plus a seed effect N(0, seed_sd²) shared by every arm on that seed.
    ``status[(c, seed)]`` marks failed trials of the grid."""
    effect = rng.normal(0.0, seed_sd, seeds) if seed_sd else np.zeros(seeds)
    rows = []
    for c, mean in enumerate(config_means):
        for s in range(seeds):
            st = (status or {}).get((c, s), "ok")
            v = mean + effect[s] + rng.normal(0.0, sd)
            rows.append({"arm": "grid", "experiment": "grid", "trial_id": f"g{c}_{s}", "seed": s, "status": st,
                         "epoch": 1, "val/map@r": np.nan if st != "ok" else v, "test/map@r": v - 0.1,
                         "wall_s": gpu_s, "gpu_s": gpu_s, "config/miner.name": "asms",
                         "config/miner.gamma_pos": 0.01 * (c + 1)})
    for s in range(seeds):
        v = reference_mean + effect[s] + rng.normal(0.0, sd)
        rows.append({"arm": "ref", "experiment": "ref", "trial_id": f"r{s}", "seed": s, "status": "ok", "epoch": 1,
                     "val/map@r": v, "test/map@r": v - 0.1, "wall_s": gpu_s, "gpu_s": gpu_s,
                     "config/miner.name": "at_asms", "config/miner.gamma_pos": 0.1})
    return pd.DataFrame(rows)


def run_study_text(tmp_path: Path, text: str, name: str, timeout: int = 600, env: dict | None = None):
    """Write ``text`` as ``s.yaml`` in ``tmp_path`` and ``dmltune run`` it there (it must exit 0), with
    ``env`` (e.g. a shared Ray cluster's: tests/shared_ray.py); return (the completed process, the study
    folder, its results table)."""
    import subprocess
    import sys

    (tmp_path / "s.yaml").write_text(text)
    run = subprocess.run([sys.executable, "-m", "dmltune", "run", "s.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=timeout, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    folder = tmp_path / "results" / name
    return run, folder, pd.read_parquet(folder / "trials.parquet")


def tiny_study(name: str, **changes) -> dict:
    """The smallest real study on digits (one seed, one grid arm of 2 configurations, 1 epoch of 2
    batches; one trial at a time, no retries), as a study file's mapping with ``changes`` on top."""
    return {"name": name, "seeds": [0], "resources": {"cpu": 1}, "concurrency": 1, "retries": 0,
            "dataset": {"name": "digits", "val_fraction": 0.4},
            "model": {"backbone": "small_cnn", "dim": 8, "freeze_bn": False},
            "train": {"epochs": 1, "batch_size": 12, "k": 4, "lr": 0.001, "batches_per_epoch": 2, "workers": 0},
            "eval": {"metric": "map@r", "nmi": False, "similarity_bins": 0},
            "arms": [{"name": "grid", "miner": {"name": "asms", "gamma_pos": {"grid": [0.0, 0.1]}},
                      "loss": {"name": "soft_contrastive"}}],
            **changes}


def run_killed_after_first_trial(cwd: Path, text: str, env: dict) -> None:
    """Start ``dmltune run s.yaml`` (``text``) in ``cwd`` and SIGKILL its process group as soon as it
    prints that the first of 3 trials ended."""
    import os
    import signal
    import subprocess
    import sys

    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "s.yaml").write_text(text)
    driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", "s.yaml"], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        for line in driver.stdout:
            if line.startswith("[1/3]"):
                break
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
