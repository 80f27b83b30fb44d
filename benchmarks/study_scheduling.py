"""How well `dmltune run` fills a cluster's slots: today's one queue against arm-by-arm order.

    python benchmarks/study_scheduling.py [--slots 16 32] [--epoch-s 2] [--epochs 4] [--no-pbt] [--rounds 1]
                                          [--orders queue one-at-a-time]
    python benchmarks/study_scheduling.py --quickstart 2      # the real quickstart, paired rounds

A study shaped like ``studies/fixed_vs_dynamic.yaml`` (its arms, grids, Optuna and PBT searches and
seeds; design fixed, as the arms' sizes there are what the queue must place) runs through
``dmltune run`` on a local Ray with N logical CPUs (one slot per trial). The real trainable is
replaced by a stand-in that sleeps ``--epoch-s`` per epoch and reports as the real one does (epoch,
validation metric, status, checkpoints that PBT exploits): this measures scheduling, nothing else.
Each row is one fresh run in its own process, report included, in both orders:

  queue         the default: every arm's experiments in one queue (dmltune/study/queue.py)
  one-at-a-time ``--one-at-a-time``: one Tune experiment after another, arm by arm (the old order)

``--quickstart R`` instead runs the README's main job (``studies/quickstart.yaml``, the real trainable
on this machine's CPUs) R times with this tree and R times with ``--before COMMIT``'s code (from a
``git archive`` of it; without ``--before``: this tree with ``--one-at-a-time``), paired and
alternating which goes first, and prints each round's wall times and their ratio.

Columns: wall s (the ``dmltune run`` process, start to exit), the lower bound
max(total trial time / slots, longest trial) with total trial time = trials × epochs × epoch_s,
and their ratio (target: ≤ 1.2 for the queue); span s is the first trial's start to the last one's end
(the table's timestamps, whole seconds), the part that scheduling decides, and its ratio to the bound. Prints a table and writes JSON
(``benchmarks/results/study_scheduling.json`` unless ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def stand_in(config):
    """Sleeps ``DMLTUNE_STANDIN_EPOCH_S`` per epoch and reports like dmltune's trainable (a seeded value
    that depends on the configuration, so that PBT and Optuna have something to compare)."""
    import hashlib
    import json as _json
    import os as _os
    import tempfile as _tempfile
    import time as _time

    from ray import tune

    epoch_s = float(_os.environ.get("DMLTUNE_STANDIN_EPOCH_S", "2"))
    epochs = int(config["train"]["epochs"])
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = _json.loads((Path(d) / "state.json").read_text())["epoch"]
    key = _json.dumps({k: v for k, v in config.items() if k not in ("seed",)}, sort_keys=True, default=str)
    base = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8
    noise = int(hashlib.sha256(f"{key}{config['seed']}".encode()).hexdigest()[:8], 16) / 16**8
    for epoch in range(start + 1, epochs + 1):
        _time.sleep(epoch_s)
        value = 0.5 + 0.05 * base + 0.02 * (noise - 0.5) + 0.01 * epoch / epochs
        metrics = {"epoch": epoch, "val/map@r": value, "status": "ok", "wall_s": epoch * epoch_s,
                   "train/loss": 1.0 / epoch}
        if epoch == epochs:
            metrics["test/map@r"] = value - 0.1
        with _tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(_json.dumps({"epoch": epoch}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def study_file(folder: Path, epochs: int, pbt: bool) -> Path:
    """fixed_vs_dynamic.yaml with its arms and seeds, on digits (validated offline), design fixed."""
    study = yaml.safe_load((ROOT / "studies" / "fixed_vs_dynamic.yaml").read_text())
    study.update(name="scheduling", storage=str(folder / "results"), resources={"cpu": 1}, design="fixed",
                 dataset={"name": "digits", "val_fraction": 0.4},
                 model={"backbone": "small_cnn", "dim": 32, "freeze_bn": False},
                 train={"epochs": epochs, "batch_size": 24, "k": 8, "checkpoint_every": 1},
                 eval={"metric": "map@r", "every": 1})
    arms = []
    for arm in study["arms"]:
        if arm["search"]["mode"] == "pbt" if "search" in arm else False:
            if not pbt:
                continue
            arm["search"]["perturbation_interval"] = max(1, epochs // 2)
        arms.append(arm)
    study["arms"] = arms
    path = folder / "scheduling.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def trials_of(path: Path) -> int:
    from dmltune.study.schema import load_study

    study = load_study(path, check_data=False)
    return sum(a.trials_per_seed * len(study.seeds) for a in study.arms)


def child(args) -> int:
    """Inside the measured process: Ray with ``--slots`` CPUs, the stand-in trainable, then ``dmltune run``."""
    from dmltune import cli
    from dmltune.study import runner
    from dmltune.study.ray_connection import prepare_environment

    import ray

    prepare_environment(None)
    ray.init(num_cpus=args.slots, include_dashboard=False, log_to_driver=False, configure_logging=False)
    runner.tune_trainable = stand_in
    argv = ["run", str(args.child)] + (["--one-at-a-time"] if args.one_at_a_time else [])
    return cli.main(argv)


def trial_span(path: Path) -> float:
    """Seconds from the first trial's start to the last trial's end (the table's timestamps): the part of
    the wall time the scheduling decides (Ray's start, validation and the report are outside it)."""
    import pandas as pd

    table = pd.read_parquet(path.parent / "results" / "scheduling" / "trials.parquet")
    last = table.groupby(["experiment", "trial_id"]).tail(1)
    end = last["timestamp"].astype(float)
    return float(end.max() - (end - last["time_total_s"].astype(float)).min())


def measure(path: Path, slots: int, one_at_a_time: bool, epoch_s: float) -> tuple[float, float]:
    env = {**os.environ, "DMLTUNE_STANDIN_EPOCH_S": str(epoch_s), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--child", str(path), "--slots", str(slots)]
    command += ["--one-at-a-time"] if one_at_a_time else []
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=path.parent)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"dmltune run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall, trial_span(path)


def quickstart(rounds: int, out: str, before: str | None = None) -> int:
    """The README's main job, paired rounds: this tree against ``before`` (a commit, run from a
    ``git archive`` of it: the code as it was) or, without it, against this tree's ``--one-at-a-time``."""
    with tempfile.TemporaryDirectory(prefix="dmltune-before-") as old_tree:
        if before:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", before], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", old_tree], input=archive.stdout, check=True)
        versions = {"now": (ROOT, []), "before": (Path(old_tree), []) if before else (ROOT, ["--one-at-a-time"])}
        label = f"before ({before})" if before else "one-at-a-time"
        rows = []
        print(f"{'round':>5} {'now s':>8} {label + ' s':>22} {'ratio':>6}")
        for r in range(rounds):
            walls = {}
            for name in (("now", "before") if r % 2 == 0 else ("before", "now")):  # alternate who goes first
                tree, extra = versions[name]
                with tempfile.TemporaryDirectory(prefix="dmltune-qs-") as tmp:
                    command = [sys.executable, "-m", "dmltune", "run", str(tree / "studies" / "quickstart.yaml"),
                               "--set", f"storage={tmp}/results", *extra]
                    start = time.perf_counter()
                    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp,
                                          env={**os.environ, "PYTHONPATH": str(tree)})
                    walls[name] = time.perf_counter() - start
                    if done.returncode != 0:
                        raise SystemExit(f"quickstart ({name}) failed ({done.returncode}):\n{done.stderr[-3000:]}")
            rows.append({"round": r + 1, "now_s": round(walls["now"], 1), "before_s": round(walls["before"], 1),
                         "ratio": round(walls["now"] / walls["before"], 3)})
            print(f"{r + 1:>5} {walls['now']:>8.1f} {walls['before']:>22.1f} {walls['now'] / walls['before']:>6.3f}",
                  flush=True)
    total = sum(r["now_s"] for r in rows) / sum(r["before_s"] for r in rows)
    print(f"all rounds: now / {label} = {total:.3f}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"quickstart": rows, "before": before or "--one-at-a-time", "ratio": round(total, 3),
                                     "cpus": os.cpu_count()}, indent=2))
    print(f"wrote {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--epoch-s", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--no-pbt", action="store_true", help="leave the PBT arm out (the issue's first measurement)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--orders", nargs="+", choices=("queue", "one-at-a-time"), default=["queue", "one-at-a-time"],
                        help="which orders to run (default: both, paired)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "study_scheduling.json"))
    parser.add_argument("--quickstart", type=int, metavar="ROUNDS", help="time the real quickstart instead")
    parser.add_argument("--before", metavar="COMMIT",
                        help="with --quickstart: compare with this commit's code (default: --one-at-a-time)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--one-at-a-time", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.slots = args.slots[0]
        return child(args)
    if args.quickstart:
        out = args.out if args.out != parser.get_default("out") else str(Path(args.out).with_name("quickstart_rounds.json"))
        return quickstart(args.quickstart, out, args.before)

    rows = []
    print(f"{'slots':>5} {'order':<14} {'trials':>6} {'wall s':>8} {'bound s':>8} {'ratio':>6} {'span s':>7} "
          f"{'span ratio':>10}")
    for slots in args.slots:
        for _ in range(args.rounds):
            for one_at_a_time in [o == "one-at-a-time" for o in args.orders]:  # paired: both orders in each round
                with tempfile.TemporaryDirectory(prefix="dmltune-sched-") as tmp:
                    path = study_file(Path(tmp), args.epochs, not args.no_pbt)
                    trials = trials_of(path)
                    wall, span = measure(path, slots, one_at_a_time, args.epoch_s)
                trial_s = args.epochs * args.epoch_s
                bound = max(trials * trial_s / slots, trial_s)
                order = "one-at-a-time" if one_at_a_time else "queue"
                rows.append({"slots": slots, "order": order, "trials": trials, "wall_s": round(wall, 1),
                             "bound_s": round(bound, 1), "ratio": round(wall / bound, 2), "span_s": round(span, 1),
                             "span_ratio": round(span / bound, 2)})
                print(f"{slots:>5} {order:<14} {trials:>6} {wall:>8.1f} {bound:>8.1f} {wall / bound:>6.2f} {span:>7.1f} "
                      f"{span / bound:>10.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"epoch_s": args.epoch_s, "epochs": args.epochs, "pbt": not args.no_pbt,
                                          "cpus": os.cpu_count(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
