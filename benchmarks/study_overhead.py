"""Ray Tune's cost per trial and per report, with and without actor reuse.

    python benchmarks/study_overhead.py [--trials 8] [--reports 100] [--concurrency 1] [--rounds 1] [--quick]

Each row is one ``tuner.fit()`` of N very short trials, ``reuse_actors`` off or on
(``tune.TuneConfig(reuse_actors=...)``; Ray 2.60 reuses function-trainable actors when trials ask
for the same resources), at most ``--concurrency`` at once (each trial asks for CPUs / concurrency):

  noop × 1       a function trainable that reports once and does nothing else
  noop × K       the same, reporting K times (``--reports``)
  dmltune tiny   dmltune's trainable (small_cnn on scikit-learn digits, 1 epoch of 5 batches,
                 test evaluation at the end; no checkpoints)

Inside every trial a thin wrapper measures the trial's own work: the time from after its imports
to its return, minus the time spent inside ``tune.report`` calls (so importing torch/dmltune in a
fresh worker process, which actor reuse saves, counts as overhead, not work).

Columns:
  fit s           wall time of ``tuner.fit()``
  fit s/trial     fit s × concurrency / N: everything one trial costs, work included
  work s          Σ own work over the N trials
  overhead/trial  (fit s × concurrency − work s) / N: slot-seconds per trial not spent on the
                  trial's work (actor start, imports, scheduling, result handling, the fit's fixed
                  set-up and teardown shared out over the N trials)
  report ms       mean duration of one ``tune.report`` call seen from inside the trial
  marginal/report (fit s of noop × K − fit s of noop × 1) / (N (K − 1)), same reuse setting
  import s        mean time a trial spent importing dmltune's trainable (≈ 0 when its actor is reused)

dmltune's work in a fresh worker includes first-call costs (lazy imports inside data loading and
evaluation, first kernel launches), which a reused actor pays only once: compare fit s/trial for
the whole saving of actor reuse.

Runs on the CPU (no GPU needed). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name, fit_timed, write_json  # noqa: E402


def noop_trainable(config):
    """Reports ``config['reports']`` times and does nothing else."""
    import time as _time

    from ray import tune

    start, in_report = _time.perf_counter(), 0.0
    for i in range(config["reports"]):
        t = _time.perf_counter()
        tune.report({"step": i, "score": 0.0, "work_s": t - start - in_report, "report_s": in_report,
                     "reports_done": i, "import_s": 0.0})
        in_report += _time.perf_counter() - t


def dmltune_trainable(config):
    """dmltune's trainable, its reporter timing the report calls and adding the work done so far."""
    import time as _time

    t_import = _time.perf_counter()
    from dmltune.training.reporting import TuneReporter
    from dmltune.training import train

    start = _time.perf_counter()
    import_s = start - t_import
    spent = {"report": 0.0, "calls": 0}

    class Reporter(TuneReporter):
        keeps_checkpoints = False

        def report(self, metrics, checkpoint_dir=None):
            t = _time.perf_counter()
            super().report({**metrics, "work_s": t - start - spent["report"], "report_s": spent["report"],
                            "reports_done": spent["calls"], "import_s": import_s}, None)
            spent["report"] += _time.perf_counter() - t
            spent["calls"] += 1

    train(config, reporter=Reporter())


TINY = {
    "seed": 0,
    "dataset": {"name": "digits", "val_fraction": 0.4},
    "model": {"backbone": "small_cnn", "dim": 32, "freeze_bn": False},
    "miner": {"name": "at_asms"},
    "loss": {"name": "soft_contrastive"},
    "train": {"epochs": 1, "batch_size": 24, "k": 8, "batches_per_epoch": 5, "lr": 1e-3, "device": "cpu",
              "checkpoint_every": 0},
    "eval": {"every": 0, "nmi": False, "ks": [1]},
}


def run_row(kind: str, reuse: bool, args, storage: Path) -> dict:
    from ray import tune

    cpus = max(1, args.cpus // args.concurrency)
    if kind == "dmltune":
        fn, space, reports = dmltune_trainable, {**TINY, "seed": tune.grid_search(list(range(args.trials)))}, 1
    else:
        reports = args.reports if kind == "noop_k" else 1
        fn, space = noop_trainable, {"reports": reports, "i": tune.grid_search(list(range(args.trials)))}
    results, fit_s = fit_timed(tune.with_resources(fn, {"cpu": cpus}), space, storage, f"{kind}_{reuse}",
                               reuse_actors=reuse, what=f"{kind} (reuse_actors={reuse})")
    work, report_s, calls, imports = 0.0, 0.0, 0, []
    for result in results:
        last = result.metrics
        # the last report's own call is not in its report_s: the mean call time stands in for it
        work += last["work_s"]
        report_s += last["report_s"]
        calls += last["reports_done"]
        imports.append(last["import_s"])
    n = len(results)
    return {"trainable": kind, "reuse_actors": reuse, "trials": n, "reports_per_trial": reports,
            "concurrency": args.concurrency, "cpu_per_trial": cpus, "fit_s": fit_s, "work_s": work,
            "fit_s_per_trial": fit_s * args.concurrency / n, "overhead_per_trial_s": (fit_s * args.concurrency - work) / n,
            "report_call_ms": 1e3 * report_s / calls if calls else None,
            "import_s": statistics.mean(imports)}


LABELS = {"noop_1": "noop × 1 report", "noop_k": "noop × K reports", "dmltune": "dmltune tiny (digits, 1 epoch)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="N trials per fit")
    parser.add_argument("--reports", type=int, default=100, help="K reports of the noop × K trainable")
    parser.add_argument("--concurrency", type=int, default=1, help="trials at once (each asks CPUs / this)")
    parser.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1), help="CPUs given to Ray")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every row round-robin; median kept")
    parser.add_argument("--kinds", nargs="+", default=list(LABELS), choices=list(LABELS))
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    parser.add_argument("--out", default="benchmarks/results/study_overhead.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.reports = 1, 2

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    init_start = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False)
    init_s = time.perf_counter() - init_start
    samples: dict[tuple, list[dict]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="dmltune-overhead-") as tmp:
            for _ in range(args.rounds):  # round-robin: a change of load hits every row alike
                for kind in args.kinds:
                    for reuse in (False, True):
                        samples.setdefault((kind, reuse), []).append(run_row(kind, reuse, args, Path(tmp)))
        shutdown_start = time.perf_counter()
    finally:
        ray.shutdown()
    shutdown_s = time.perf_counter() - shutdown_start

    rows = []
    for (kind, reuse), runs in samples.items():
        mid = statistics.median(r["fit_s"] for r in runs)
        row = dict(min(runs, key=lambda r: abs(r["fit_s"] - mid)))
        row.update(what=LABELS[kind], rounds=len(runs))
        rows.append(row)
    for row in rows:
        if row["trainable"] == "noop_k" and args.reports > 1:
            one = next((r for r in rows if r["trainable"] == "noop_1" and r["reuse_actors"] == row["reuse_actors"]), None)
            if one:
                row["marginal_per_report_ms"] = 1e3 * (row["fit_s"] - one["fit_s"]) / (row["trials"] * (args.reports - 1))

    print(f"CPU: {cpu_name()}; Ray given {args.cpus} CPUs; ray.init {init_s:.1f} s, ray.shutdown {shutdown_s:.1f} s; "
          f"N = {args.trials} trials per fit, at most {args.concurrency} at once, K = {args.reports}")
    print(f"{'trainable':<32} {'reuse':>5} {'fit s':>7} {'fit s/trial':>11} {'work s':>7} {'overhead/trial s':>17} {'report ms':>10} "
          f"{'marginal/report ms':>19} {'import s':>9}")
    for r in rows:
        rep = f"{r['report_call_ms']:.1f}" if r["report_call_ms"] is not None else ""
        marg = f"{r['marginal_per_report_ms']:.1f}" if "marginal_per_report_ms" in r else ""
        print(f"{r['what']:<32} {str(r['reuse_actors']):>5} {r['fit_s']:>7.1f} {r['fit_s_per_trial']:>11.2f} {r['work_s']:>7.2f} "
              f"{r['overhead_per_trial_s']:>17.2f} {rep:>10} {marg:>19} {r['import_s']:>9.2f}")
    import torch

    write_json(args.out, "study_overhead", torch.device("cpu"), rows, cpus=args.cpus, trials=args.trials,
               reports=args.reports, concurrency=args.concurrency, ray_init_s=init_s, ray_shutdown_s=shutdown_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
