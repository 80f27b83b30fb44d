"""A chaos run: random faults at random moments of a real study, then a value-by-value comparison with
the same study run without faults.

    python benchmarks/chaos_study.py [--faults 30] [--seed 0] [--out benchmarks/results/chaos_study.json]

It starts a two-node loopback Ray cluster (benchmarks/loopback_cluster.py: a head and a worker node,
one CPU each, separate `ray start` processes) and runs a small study on it (digits, one seed, a grid
arm, an adaptive arm and a PBT arm; every trial checkpoints each epoch; ``retries: 1``). First the
study runs once without faults: the reference. Then the same study runs again, in a fresh folder,
while faults drawn from a seeded schedule hit it at random moments (after a random number of the
driver's progress lines):

  driver_kill   the driver is SIGKILLed                        recovery: `dmltune resume DIR`
  ctrl_c        SIGINT to the driver (exit 130, one line)      recovery: `dmltune resume DIR`
  worker_kill   one trial's worker process is SIGKILLed        recovery: Ray's retry (or --retry-errored)
  node_loss     the worker node's raylet and workers die;
                the node is started again seconds later       recovery: Ray's retry (or --retry-errored)
  full_disk     the study folder's tmpfs is filled, freed
                a few seconds later (only where a tmpfs can
                be mounted: root on Linux)                     recovery: `dmltune resume DIR --retry-errored`

A driver that exits non-zero is followed by `resume` (`--retry-errored` after exit 1) until the study
ends with exit 0; further runs follow until the requested number of faults is injected. Each finished
run is then compared with the reference:

  - every trial of the reference present exactly once, no other (key: arm, experiment, and the
    configuration and seed, or a PBT member's place in its population);
  - every epoch present once, its loss and validation value identical (bit for bit: training is
    deterministic given the seed, whatever node or retry ran it);
  - every trial's final status the reference's;
  - no file written outside the study folder (the drivers' working directory, ~/ray_results, the
    system's temporary directory: dmltune's checkpoint scratch folders).

A traceback on any driver's console, a driver that hangs, and a non-zero exit without its one-line
reason each count as a difference. Prints each fault, its recovery and
the differences; writes JSON. Exit 0 when there are none, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loopback_cluster import LoopbackCluster, kill_sessions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("driver_kill", "ctrl_c", "worker_kill", "node_loss", "full_disk")
EPOCHS = 6
STUDY = {
    "seeds": [0], "resources": {"cpu": 1}, "concurrency": 2, "retries": 1,
    "dataset": {"name": "digits", "val_fraction": 0.4},
    "model": {"backbone": "small_cnn", "dim": 16},
    "train": {"epochs": EPOCHS, "batch_size": 24, "k": 8, "lr": 0.001, "batches_per_epoch": 6,
              "checkpoint_every": 1},
    "eval": {"metric": "map@r", "every": 2, "nmi": False, "similarity_bins": 0},
    "analysis": {"reference": "adaptive", "delta": 0.01},
    "arms": [
        {"name": "grid", "miner": {"name": "asms", "gamma_pos": {"grid": [0.0, 0.2]}},
         "loss": {"name": "soft_contrastive"}},
        {"name": "adaptive", "miner": {"name": "at_asms"}, "loss": {"name": "soft_contrastive"}},
        {"name": "pbt", "miner": {"name": "asms"}, "loss": {"name": "soft_contrastive"},
         "search": {"mode": "pbt", "population": 2, "perturbation_interval": 2, "quantile_fraction": 0.5,
                    "mutations": {"miner.gamma_pos": {"uniform": [0.0, 0.3]}}}},
    ],
}
VALUES = ("loss", "val/map@r")
DRIVER_TIMEOUT_S = 300  # a driver of this study needs under 2 minutes, even on a loaded 2-core machine


class Driver:
    """One `dmltune` command on the cluster; its output read by threads, so that the chaos loop can
    wait for its n-th progress line and still collect everything it prints."""

    def __init__(self, args: list[str], cwd: Path, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "dmltune", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.killed = False  # (psutil reaps a process it kills: Popen would then read exit 0)
        self.out: list[str] = []
        self.err: list[str] = []
        self.lines: queue.Queue = queue.Queue()
        self.readers = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            if into is self.out:
                self.lines.put(line)
        if into is self.out:
            self.lines.put(None)

    def wait_for_progress(self, count: int, timeout: float = 600) -> bool:
        """Until ``count`` progress lines (a trial's epoch or its end) have been printed; False when
        the driver ended first."""
        seen, deadline = 0, time.time() + timeout
        while seen < count and time.time() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                return False
            if ": epoch " in line or line.startswith("["):
                seen += 1
        return seen >= count

    def finish(self, timeout: float = DRIVER_TIMEOUT_S) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_sessions(self.proc)
            code = -999
        code = -signal.SIGKILL if self.killed else code
        for reader in self.readers:
            reader.join(timeout=30)
        return code

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; returns it (the full-disk tests use it too)."""
    filler = Path(disk) / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


class FullDisk:
    """A small tmpfs for the chaos run's study folders, and a filler that takes all its space."""

    def __init__(self, where: Path, size_mb: int):
        self.where = where
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                              capture_output=True, text=True)
        self.mounted = done.returncode == 0
        self.why_not = "" if self.mounted else (done.stderr.strip() or "mount failed")

    def fill(self) -> Path:
        return fill(self.where)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.where)], capture_output=True)


def study_file(folder: Path, name: str, storage: Path) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "storage": str(storage), **STUDY}, sort_keys=False))
    return path


def outside_files(cwd: Path) -> set[str]:
    """Files a run could leave outside its study folder: the drivers' working directory, Ray Tune's
    default results folder and dmltune's checkpoint scratch folders in the temporary directory."""
    found = {f"cwd/{p.relative_to(cwd)}" for p in cwd.rglob("*")}
    home = Path.home() / "ray_results"
    if home.exists():
        found |= {f"~/ray_results/{p.relative_to(home)}" for p in home.rglob("*")}
    temp = Path(tempfile.gettempdir())
    found |= {f"tmp/{p.name}" for p in temp.glob("dmltune-ckpt-*")}
    return found


PBT_ARMS = {arm["name"] for arm in STUDY["arms"] if arm.get("search", {}).get("mode") == "pbt"}


def final_rows(folder: Path):
    """The study's table, each trial keyed by (arm, experiment, ``index``): a PBT member by its place
    in the population (the end of its trial id; its configuration changes as it exploits), any other
    trial by its configuration and seed (Tune may give a trial it generates again, after its record
    was restored from the last good copy, a new id)."""
    import pandas as pd

    table = pd.read_parquet(folder / "trials.parquet")
    configs = sorted(c for c in table.columns if c.startswith(("config/miner.", "config/loss.")))  # what arms vary

    def key(trial: pd.DataFrame) -> str:
        first = trial.iloc[0]
        if first["arm"] in PBT_ARMS:
            return str(first["trial_id"]).rsplit("_", 1)[-1]
        return json.dumps({c[len("config/"):]: first[c] for c in configs if pd.notna(first[c])}
                          | {"seed": int(first["seed"])}, sort_keys=True, default=str)

    keys = {tid: key(rows) for tid, rows in table.groupby("trial_id", sort=False)}
    return table.assign(index=table.trial_id.map(keys))


def compare(reference, chaos) -> list[str]:
    """Every difference between the chaos run's table and the reference's (empty when none)."""
    import numpy as np

    diffs = []
    trial = ["arm", "experiment", "index"]
    ref_trials = set(map(tuple, reference[trial].drop_duplicates().values))
    got_trials = chaos.groupby(trial).trial_id.nunique()
    for key in sorted(ref_trials - set(got_trials.index)):
        diffs.append(f"trial {key} missing")
    for key in sorted(set(got_trials.index) - ref_trials):
        diffs.append(f"trial {key} not in the reference")
    for key, n in got_trials.items():
        if n != 1:
            diffs.append(f"trial {key} present {n} times")
    for key, ref in reference.groupby(trial):
        got = chaos.set_index(trial).loc[[key]] if key in got_trials.index else None
        if got is None:
            continue
        epochs = got.epoch.tolist()
        if sorted(epochs) != sorted(ref.epoch.tolist()):
            diffs.append(f"trial {key}: epochs {sorted(epochs)}, reference {sorted(ref.epoch.tolist())}")
            continue
        got = got.set_index("epoch")
        for _, row in ref.iterrows():
            for column in VALUES:
                a, b = row.get(column, np.nan), got.loc[row.epoch].get(column, np.nan)
                same = (a == b) or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))
                if not same:
                    diffs.append(f"trial {key} epoch {row.epoch} {column}: {b!r}, reference {a!r}")
        want, have = ref.sort_values("epoch").status.iloc[-1], got.sort_index().status.iloc[-1]
        if want != have:
            diffs.append(f"trial {key}: status {have}, reference {want}")
    return diffs


def inject(kind: str, driver: Driver, cluster: LoopbackCluster, disk: FullDisk | None,
           rng: random.Random) -> str | None:
    """Do the fault; say what was done (None: it could not be done now)."""
    if kind == "driver_kill":
        driver.killed = True
        kill_sessions(driver.proc)
        return "driver SIGKILLed"
    if kind == "ctrl_c":
        os.killpg(driver.proc.pid, signal.SIGINT)
        return "SIGINT sent to the driver"
    if kind == "worker_kill":
        workers = cluster.trial_workers()
        if not workers:
            return None  # between trials: the fault waits for the next progress lines
        victim = rng.choice(workers)
        victim.kill()
        return f"trial worker pid {victim.pid} SIGKILLed"
    if kind == "node_loss":
        lost = cluster.kill_worker(0)
        time.sleep(rng.uniform(1, 5))
        cluster.restart_worker(0)
        return f"worker node killed ({len(lost)} trial worker(s) on it), started again"
    if kind == "full_disk":
        filler = disk.fill()
        time.sleep(rng.uniform(2, 5))
        filler.unlink()
        return "study disk filled, freed"
    raise ValueError(kind)


def run_until_done(path: Path, folder: Path, cwd: Path, cluster: LoopbackCluster, faults: list[str],
                   rng: random.Random, disk: FullDisk | None, log: list[dict]) -> bool:
    """`dmltune run`, then `resume` after every non-zero exit, injecting ``faults`` (several in one
    driver when a fault leaves it running), until the study ends with exit 0 (False: it did not,
    after as many drivers as a run may take)."""
    command = ["run", str(path), "--address", cluster.address]
    for attempt in range(4 * len(faults) + 6):
        driver = Driver(command, cwd, cluster.env)
        event = {"command": command[0] + (" --retry-errored" if "--retry-errored" in command else "")}
        while faults:
            moment = rng.randint(1, 4)  # a run prints about 3 lines per trial (epochs 1 and 6, its end)
            if not driver.wait_for_progress(moment):
                break
            done = inject(faults[0], driver, cluster, disk, rng)
            if done is None:
                continue
            kind = faults.pop(0)
            event.setdefault("faults", []).append({"kind": kind, "after_lines": moment, "done": done})
            print(f"  fault: {kind} after {moment} progress lines: {event['faults'][-1]['done']}", flush=True)
            if kind in ("driver_kill", "ctrl_c"):
                break
        code = driver.finish()
        text = driver.text()
        logs = cwd.parent / "logs" / "drivers"
        logs.mkdir(parents=True, exist_ok=True)
        event["log"] = str(logs / f"{folder.name}-{attempt}.log")
        Path(event["log"]).write_text(text)
        event.update(exit=code, traceback="Traceback" in text, hung=code == -999,
                     last_error=next((line.strip() for line in reversed(driver.err) if "dmltune" in line), ""))
        # every failure says why in one line: `dmltune: …` (a stop) or the list of trials in error
        said = any(line.startswith("dmltune: ") or "trial(s) ended in error" in line for line in driver.err)
        event["unexplained"] = code not in (0, -signal.SIGKILL, -999) and not said
        log.append(event)
        print(f"  {event['command']}: exit {code}" + (f"  ({event['last_error']})" if event["last_error"] else "")
              + ("  TRACEBACK" if event["traceback"] else ""), flush=True)
        if code == 0:
            return True
        command = ["resume", str(folder), "--address", cluster.address] + (["--retry-errored"] if code == 1 else [])
    return False


def chaos(faults: int, seed: int, work: Path, kinds: tuple[str, ...] = KINDS, per_run: int = 6) -> dict:
    rng = random.Random(seed)
    cwd, studies = work / "cwd", work / "studies"
    for folder in (cwd, studies, work / "differing"):
        folder.mkdir(parents=True, exist_ok=True)
    disk = FullDisk(work / "disk", size_mb=160) if "full_disk" in kinds else None
    if disk is not None and not disk.mounted:
        print(f"full_disk left out: no tmpfs here ({disk.why_not})", flush=True)
        kinds = tuple(k for k in kinds if k != "full_disk")
    storage = disk.where if disk is not None and disk.mounted else work / "storage"
    cluster = LoopbackCluster(work / "logs", workers=1, cpus=1)
    started = time.time()
    try:
        before = outside_files(cwd)
        print("reference run (no faults)", flush=True)
        ref_log: list[dict] = []
        reference_path = study_file(studies, "reference", work / "reference")
        if not run_until_done(reference_path, work / "reference" / "reference", cwd, cluster, [], rng, None, ref_log):
            raise RuntimeError(f"the fault-free reference run failed: {ref_log[-1]}")
        reference = final_rows(work / "reference" / "reference")
        schedule = [rng.choice(kinds) for _ in range(faults)]
        runs, left = [], list(schedule)
        while left:
            name = f"chaos{len(runs)}"
            batch, left = left[:per_run], left[per_run:]
            print(f"{name}: faults {', '.join(batch)}", flush=True)
            log: list[dict] = []
            path = study_file(studies, name, storage)
            ended = run_until_done(path, storage / name, cwd, cluster, batch, rng, disk, log)
            left = batch + left  # those the study ended before: the next run's
            diffs = [] if ended else [f"{name}: no clean end after {len(log)} drivers"]
            if (storage / name / "trials.parquet").is_file():
                diffs += compare(reference, final_rows(storage / name))
            else:
                diffs.append(f"{name}: no trials.parquet")
            diffs += [f"{e['command']}: a traceback on the console" for e in log if e["traceback"]]
            diffs += [f"{e['command']}: did not end within {DRIVER_TIMEOUT_S} s (killed)" for e in log if e["hung"]]
            diffs += [f"{e['command']}: exit {e['exit']} without a one-line reason" for e in log if e["unexplained"]]
            stray = sorted(outside_files(cwd) - before)
            diffs += [f"written outside the study folder: {p}" for p in stray]
            injected = [f for e in log for f in e.get("faults", [])]
            runs.append({"study": name, "faults": injected, "drivers": log, "differences": diffs})
            print(f"{name}: {len(injected)} fault(s), {len(log)} driver(s), {len(diffs)} difference(s)", flush=True)
            for line in diffs:
                print(f"  DIFFERENCE {line}", flush=True)
            if diffs:  # kept for a look; the tmpfs is small
                shutil.move(str(storage / name), str(work / "differing" / name))
            shutil.rmtree(storage / name, ignore_errors=True)  # room on the tmpfs for the next run
    finally:
        cluster.close()
        if disk is not None:
            disk.close()
    injected = [f["kind"] for r in runs for f in r["faults"]]
    return {"seed": seed, "faults_requested": faults, "faults_injected": len(injected),
            "by_kind": {k: injected.count(k) for k in KINDS if injected.count(k)},
            "drivers": sum(len(r["drivers"]) for r in runs),
            "tracebacks": sum(e["traceback"] for r in runs for e in r["drivers"]),
            "differences": sum(len(r["differences"]) for r in runs), "runs": runs,
            "reference_trials": int(reference.trial_id.nunique()), "wall_s": round(time.time() - started, 1),
            "machine": f"{os.cpu_count()} CPUs"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=30, help="faults to inject, over as many runs as needed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule and moments")
    parser.add_argument("--per-run", type=int, default=6, help="faults per run of the study")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "chaos_study.json"))
    parser.add_argument("--keep", action="store_true", help="keep the working folder (its path is printed)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dmltune-chaos-"))
    print(f"working folder: {work}", flush=True)
    try:
        result = chaos(args.faults, args.seed, work, tuple(args.kinds), args.per_run)
    except RuntimeError as err:  # the cluster did not start, or the reference run failed
        print(f"chaos_study: error: {err}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n| faults injected | by kind | drivers | tracebacks | differences | wall s |\n|---|---|---|---|---|---|\n"
          f"| {result['faults_injected']} | "
          f"{', '.join(f'{k} {n}' for k, n in result['by_kind'].items())} | {result['drivers']} | "
          f"{result['tracebacks']} | {result['differences']} | {result['wall_s']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if result["differences"] == 0 and result["faults_injected"] >= args.faults else 1


if __name__ == "__main__":
    sys.exit(main())
