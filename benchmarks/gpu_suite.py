"""The GPU figures in one command: every benchmark at its target's size, one JSON and one table.

    python benchmarks/gpu_suite.py [--out benchmarks/results/gpu_suite.json] [--steps NAME ...] [--dry-run]

Each step is a subprocess with its own time limit, within 8 minutes on one H100 in all: a smoke study
through Ray Tune (4 trials at gpu 0.25), CPU-vs-CUDA agreement of every miner + loss, pair math, the
ResNet50 training step, evaluation at SOP's size and NMI, the input cache, packing 1/2/4 trials. Step
outputs (JSON, logs, peak memory) go to a folder beside ``--out``; the suite's JSON holds each step's
status, wall time, peak memory and JSON, and a PASS/FAIL line per target of docs/performance.md. Exit
status 1 when a step is not ok or a target FAILs. ``--dry-run``: every step at toy size on the CPU
(CI); GPU targets are then not judged. The GPU machine lacks Ray, Optuna and faiss: see
benchmarks/README.md (``../shared/tools/gpu-bundle.sh``).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = {"gpu": 480, "dry": 360}  # the whole suite; each step also has its own limit
# python -c PEAK_WRAPPER PEAK.json SCRIPT ARGS: runs SCRIPT, then writes its process's peak RSS and peak CUDA
# memory allocated (kept across the script's own reset_peak_memory_stats calls) to PEAK.json.
PEAK_WRAPPER = """
import json, resource, runpy, sys, torch
from pathlib import Path
peak_file, sys.argv, seen = sys.argv[1], sys.argv[2:], [0]
sys.path[0] = str(Path(sys.argv[0]).resolve().parent)
def note():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        seen[0] = max(seen[0], torch.cuda.max_memory_allocated())
reset = torch.cuda.reset_peak_memory_stats
torch.cuda.reset_peak_memory_stats = lambda *a, **k: (note(), reset(*a, **k))
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    note()
    peak = {"rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    Path(peak_file).write_text(json.dumps({**peak, **({"cuda_gib": seen[0] / 2**30} if seen[0] else {})}))
"""


def steps_table(dry: bool, faiss_gpu: bool, cpus: int) -> list[dict]:
    """Every step: name, what it measures, script, arguments and time limit (s) of this run, packages it needs."""
    def step(name, what, script, full, toy, limit, needs=()):
        """One step's entry, with the arguments and limit of this run (full or toy)."""
        return {"name": name, "what": what, "script": script, "args": (toy if dry else full).split(),
                "limit_s": limit[dry], "needs": needs}
    no_nmi = "" if faiss_gpu else " --skip-nmi"  # NMI at SOP size within the budget needs faiss-gpu
    toy_eval = "--n 300 --dim 16 --ks 1 10"
    return [
        step("study", "smoke study: 4 trials at gpu 0.25, synthetic 28 px (dmltune run)", None, "", "", (120, 120),
             ("ray",)),
        step("agreement", "every miner + loss, CPU and CUDA vs float64 (fp32, bf16)", "agreement.py",
             "--sizes 80 1000", "--sizes 20 --dim 16", (90, 60)),
        step("pair_math", "miner + loss forward + backward, B = 80 and 1000", "pair_math.py", "--sizes 80 1000",
             "--sizes 20 --dim 8 --repeats 1 --warmup 0", (90, 60)),
        step("train_step", "training step, ResNet50 224 px, B = 80", "train_step.py",
             "--backbones resnet50@224 --rounds 2", "--backbones small_cnn@28 --batch-size 10 --dim 8 --steps 1 "
             "--warmup 1 --rounds 1 --ref-workers 0", (240, 120)),  # toy: the compiled row too (compiling: ~13 s)
        step("eval", "retrieval evaluation at SOP size (60,502 × 512)" + (no_nmi and ", no NMI"), "eval.py",
             "--n 60502" + no_nmi, toy_eval + no_nmi, (120, 60), ("faiss",)),
        step("eval_nmi", "evaluation with NMI at 10,000 × 512 (2,000 clusters, 1 k-means run)", "eval.py",
             "--n 10000 --nmi-restarts 1", toy_eval + " --nmi-restarts 1", (90, 60), ("faiss",)),
        step("data", "input cache at 224 px and 28 px vs a PIL DataLoader", "data.py", "",
             "--images 12 --batch-size 10 --batches 2 --workers 0", (60, 45)),
        step("packing", "1, 2, 4 small trials at once on one GPU (Ray Tune)", "packing.py",
             f"--cases small --concurrency 1 2 4 --cpus {cpus}",
             "--cases small --concurrency 1 2 --cpus 2 --epochs 1 --batches 2 --per-class 10", (150, 120), ("ray",)),
    ]


def study_config(dry: bool, storage: Path, cpus: int) -> dict:
    """The smoke study: one arm (AT-ASMS + soft contrastive, meta-λ) × 4 seeds, all at once."""
    return {
        "name": "gpu_smoke", "storage": str(storage), "seeds": [0, 1, 2, 3], "concurrency": 4,
        "resources": {"cpu": 1} if dry else {"cpu": max(1, cpus // 4), "gpu": 0.25},
        "dataset": {"name": "synthetic", "classes": 20 if dry else 40, "per_class": 10 if dry else 100, "size": 28,
                    "channels": 1, "val_fraction": 0.3, "transform": {"preset": "28px"}},
        "model": {"backbone": "small_cnn", "dim": 32 if dry else 64},
        "train": {"epochs": 1 if dry else 3, "batch_size": 20 if dry else 100, "k": 5 if dry else 10,
                  "batches_per_epoch": 2 if dry else 50, "lr": 1e-3, "device": "cpu" if dry else "cuda"},
        "eval": {"every": 1, "nmi": True, "ks": [1, 2]},
        "arms": [{"name": "ddtas", "miner": {"name": "at_asms"},
                  "loss": {"name": "soft_contrastive", "lam": {"meta": {"init": 0.7, "scope": "head"}}}}],
    }


def study_result(folder: Path, device: str) -> dict:
    """The smoke study's trials (last row of each in trials.csv) in the benchmarks' JSON shape."""
    last = {}
    with open(folder / "gpu_smoke" / "trials.csv", newline="") as f:
        for row in csv.DictReader(f):
            last[row["trial_id"]] = row
    keys = ("trial_id", "seed", "status", "epoch", "val/map@r", "images_per_s", "error")
    return {"benchmark": "study", "device": device, "rows": [{k: r.get(k) for k in keys} for r in last.values()]}


def launch(cmd: list[str], log: Path, limit_s: float) -> tuple[int | None, float]:
    """Run ``cmd`` as its own process group, killed at the limit; its exit status (None: timed out), wall time."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:  # at the limit, or when the suite itself is interrupted
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return code, time.perf_counter() - start


def run_step(step: dict, folder: Path, args, limit_s: float) -> dict:
    """Run one step; its status, wall time, peak memory, stderr tail on failure and its JSON."""
    name, device = step["name"], "cpu" if args.dry_run else "cuda"
    out, peak = folder / f"{name}.json", folder / f"{name}.peak.json"
    for stale in (out, peak):
        stale.unlink(missing_ok=True)
    if step["script"] is None:  # the smoke study through the project's CLI
        storage = folder / "study"
        study = folder / "gpu_smoke.yaml"
        study.write_text(json.dumps(study_config(args.dry_run, storage, args.cpus), indent=1))  # JSON is YAML
        shutil.rmtree(storage / "gpu_smoke", ignore_errors=True)  # the previous run's study
        cmd = [sys.executable, "-m", "dmltune", "run", str(study)]
    else:
        script = str(ROOT / "benchmarks" / step["script"])
        cmd = [sys.executable, "-c", PEAK_WRAPPER, str(peak), script, *step["args"], "--device", device,
               "--out", str(out)]
    code, wall = launch(cmd, folder / name, limit_s)
    record = {**{k: step[k] for k in ("name", "what", "limit_s")}, "command": cmd[:1] + cmd[4:] if step["script"]
              else cmd, "returncode": code, "wall_s": wall, "status": {0: "ok", None: "TIMEOUT"}.get(code, "FAIL")}
    try:
        if step["script"] is None:
            out.write_text(json.dumps(study_result(folder / "study", device), indent=2))
        record["result"] = json.loads(out.read_text())
    except (OSError, ValueError, KeyError) as err:
        record["status"] = record["status"] if record["status"] != "ok" else "FAIL"
        record["result_error"] = f"{type(err).__name__}: {err}"
    record["peak"] = json.loads(peak.read_text()) if peak.exists() else None
    if record["status"] != "ok":
        record["stderr_tail"] = folder.joinpath(f"{name}.err").read_text()[-3000:]
    return record


def rows(record: dict, **match) -> list[dict]:
    """The rows of a step's JSON whose fields equal ``match``."""
    return [r for r in record["result"]["rows"] if all(r.get(k) == v for k, v in match.items())]


def value(record: dict, key: str, worst=None, **match) -> tuple[float, str]:
    """``key`` of the first (or ``worst``: min/max) row matching ``match``; LookupError: unmeasured."""
    found = rows(record, **match)
    if not found:
        raise LookupError(f"no row with {match}")
    r = worst(found, key=lambda row: row[key]) if worst else found[0]
    return r[key], f" ({r['case']}, B = {r['B']})" if worst else ""


R50 = {"backbone": "resnet50", "size": 224}  # train_step's judged rows (the suite runs it at B = 80)
# (step, target, judged on CUDA only, measure(record) → (value, note), passes(value), value format)
TARGETS = [
    ("study", "smoke study: 4 trials at gpu 0.25 on synthetic 28 px data end ok", False,
     lambda r: (sum(t["status"] == "ok" for t in rows(r)), f" of {len(rows(r))} trials ok"), lambda x: x == 4, "{}"),
    ("agreement", "every miner + loss on CPU and CUDA within tolerance of float64 (fp32, bf16)", False,
     lambda r: (sum(t["result"] != "PASS" for t in rows(r)), f" of {len(rows(r))} rows out of tolerance "
                f"({', '.join(sorted({t['device'] for t in rows(r)}))})"), lambda x: x == 0, "{}"),
    ("pair_math", "every miner + loss ≤ 1 ms at B = 80", True,
     lambda r: value(r, "ms", max, impl="dmltune", B=80), lambda x: x <= 1.0, "slowest {:.3f} ms"),
    ("pair_math", "≥ 3× faster than pytorch-metric-learning", True,
     lambda r: value(r, "dmltune_speedup", min, impl="pml"), lambda x: x >= 3, "least {:.1f}×"),
    ("pair_math", "≥ 100× faster than the per-anchor loop", True,
     lambda r: value(r, "dmltune_speedup", min, impl="loop"), lambda x: x >= 100, "least {:.1f}×"),
    ("eval", "full SOP evaluation (60,502 × 512, NMI included) ≤ 2 s", True,  # the row exists only with NMI
     lambda r: value(r, "seconds", what="full evaluation"), lambda x: x <= 2, "{:.2f} s"),
    ("data", "cache ≥ 20,000 img/s at 224 px", True, lambda r: value(r, "img_per_s", what="cache → crop 224 + "
     "flip + normalise"), lambda x: x >= 20000, "{:,.0f} img/s"),
    ("train_step", "plain step ≥ 2,800 img/s (ResNet50, 224 px, B = 80)", True,
     lambda r: value(r, "img_per_s", what="plain step", **R50), lambda x: x >= 2800, "{:,.0f} img/s"),
    ("train_step", "plain step ≥ 7× the papers-style reference", True,
     lambda r: value(r, "speedup_vs_reference", what="plain step", **R50), lambda x: x >= 7, "{:.1f}×"),
    ("train_step", "plain step ≥ 90 % of the bare bf16 model step", True,
     lambda r: value(r, "fraction_of_bare", what="plain step", **R50), lambda x: x >= 0.9, "{:.0%}"),
    ("train_step", "meta-λ head look-ahead ≤ 1.3× the plain step", True,
     lambda r: value(r, "ratio_to_plain", what="meta-λ, head look-ahead", **R50), lambda x: x <= 1.3, "{:.2f}×"),
    ("train_step", "meta-λ full look-ahead ≤ 4× the plain step", True,
     lambda r: value(r, "ratio_to_plain", what="meta-λ, full look-ahead", **R50), lambda x: x <= 4, "{:.2f}×"),
    ("packing", "4 concurrent small-backbone trials ≥ 2.5× one trial's aggregate img/s", True,
     lambda r: value(r, "speedup_vs_one", case="small", concurrent=4), lambda x: x >= 2.5, "{:.2f}×"),
]


def judge_targets(records: dict, notes: dict) -> list[dict]:
    """A PASS / FAIL (or n/a on a CPU) line for every target, from the steps' JSON rows."""
    out = []
    for step, text, cuda_only, measure, passes, fmt in TARGETS:
        rec = records.get(step)
        line = {"step": step, "target": text, "measured": False}
        if rec is None or rec["status"] != "ok":
            why = f"{rec['status']}" + (f" ({rec['reason']})" if "reason" in rec else "") if rec else "not run"
            line.update(status="FAIL", detail=f"unmeasured: step {why}")
        elif cuda_only and not str(rec["result"].get("device", "")).startswith("cuda"):
            line.update(status="n/a", detail="judged on CUDA only")
        else:
            try:
                x, note = measure(rec)
                line.update(status="PASS" if passes(x) else "FAIL", detail=fmt.format(x) + note, value=x,
                            measured=True)
            except (LookupError, KeyError, TypeError) as err:
                line.update(status="FAIL", detail=f"unmeasured: {notes.get(step, err)}")
        out.append(line)
    return out


def check_imports() -> tuple[dict, bool]:
    """Version (or import error) of each package the GPU machine may lack, and whether faiss sees a GPU."""
    found, modules = {}, {}
    for name in ("ray", "optuna", "faiss", "sklearn", "pandas", "pytorch_metric_learning"):
        try:
            modules[name] = importlib.import_module(name)
            found[name] = getattr(modules[name], "__version__", "ok")
        except Exception as err:  # noqa: BLE001 - a broken install counts as missing
            found[name] = f"missing ({type(err).__name__}: {err})"
    return found, "faiss" in modules and bool(getattr(modules["faiss"], "get_num_gpus", lambda: 0)())


def peak_text(rec: dict) -> str:
    """Peak memory of a step: the wrapper's CUDA / RSS figures, per trial for packing, else not reported."""
    peak = rec.get("peak") or {}
    per_trial = [r for r in (rec.get("result") or {}).get("rows", []) if "peak_rss_gib" in r]
    if per_trial:
        cuda = [r["peak_cuda_alloc_gib"] for r in per_trial if "peak_cuda_alloc_gib" in r]
        rss = max(r["peak_rss_gib"] for r in per_trial)
        return f"cuda {max(cuda):.2f} GiB/trial" if cuda else f"rss {rss:.2f} GiB/trial"
    if "cuda_gib" in peak:
        return f"cuda {peak['cuda_gib']:.2f} GiB"
    return f"rss {peak['rss_gib']:.2f} GiB" if peak else "not reported"


def print_summary(records: list[dict], targets: list[dict], budget: float) -> None:
    """The steps table and the target lines."""
    print(f"\n{'step':<11} {'status':<8} {'wall s':>7} {'limit s':>7}  {'peak memory':<22} what")
    for rec in records:
        wall = f"{rec['wall_s']:.1f}" if "wall_s" in rec else ""
        print(f"{rec['name']:<11} {rec['status']:<8} {wall:>7} {rec['limit_s']:>7.0f}  {peak_text(rec):<22} "
              f"{rec['what']}")
    print(f"(suite budget {budget:.0f} s; step outputs and logs beside the JSON)\n")
    for t in targets:
        print(f"{t['status']:<5} {t['step']:<11} {t['target']}: {t['detail']}")


def run_steps(args, imports: dict, faiss_gpu: bool, folder: Path, budget: float) -> list[dict]:
    """Run the chosen steps in order within the suite's budget; skip those lacking a package."""
    deadline = time.perf_counter() + budget
    records = []
    for step in steps_table(args.dry_run, faiss_gpu, args.cpus):
        if args.steps and step["name"] not in args.steps:
            continue
        left = deadline - time.perf_counter()
        lacking = [m for m in step["needs"] if imports.get(m, "").startswith("missing")]
        if lacking or left < 10:
            why = f"needs {', '.join(lacking)}" if lacking else "suite budget spent"
            records.append({**{k: step[k] for k in ("name", "what", "limit_s")}, "status": "SKIPPED", "reason": why})
        else:
            records.append(run_step(step, folder, args, min(step["limit_s"], left)))
        rec = records[-1]
        print(f"  {rec['name']}: {rec['status']}" + (f" in {rec['wall_s']:.1f} s" if "wall_s" in rec else
                                                     f" ({rec.get('reason')})"), flush=True)
    return records


def main(argv=None) -> int:
    """Check the packages, run the steps, judge the targets, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_suite.json")
    parser.add_argument("--dry-run", action="store_true", help="every step at toy size on the CPU (CI)")
    parser.add_argument("--steps", nargs="+", default=None, choices=[s["name"] for s in steps_table(False, False, 1)],
                        help="run only these steps")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs for Ray's trials")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("no CUDA device: run this on the GPU machine, or use --dry-run", file=sys.stderr)
        return 2
    imports, faiss_gpu = check_imports()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if cuda else 'no CUDA'}; "
          + ", ".join(f"{k} {v}" for k, v in imports.items()))
    missing = [k for k in ("ray", "optuna", "faiss") if imports[k].startswith("missing")]
    if missing:
        print(f"{', '.join(missing)} not importable: follow the bundle recipe in benchmarks/README.md "
              "(bash ../shared/tools/gpu-bundle.sh, stage its parts, source .gpu-bundle/activate.sh)")
    if args.dry_run:
        print("dry run: every step at toy size on the CPU (the 'what' column describes the full run)")
    out = Path(args.out).resolve()
    folder = out.with_suffix("")  # each step's JSON, logs and peak memory
    folder.mkdir(parents=True, exist_ok=True)
    budget = BUDGET_S["dry" if args.dry_run else "gpu"]
    records = run_steps(args, imports, faiss_gpu, folder, budget)
    notes = {} if faiss_gpu else {"eval": "NMI at SOP size within the budget needs faiss-gpu (this faiss has no GPU)"}
    targets = [t for t in judge_targets({r["name"]: r for r in records}, notes)
               if not args.steps or t["step"] in args.steps]
    print_summary(records, targets, budget)
    failed = [r["name"] for r in records if r["status"] != "ok"] + [t for t in targets if t["status"] == "FAIL"]
    out.write_text(json.dumps({
        "benchmark": "gpu_suite", "command": " ".join(["python"] + sys.argv), "dry_run": args.dry_run,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "imports": imports, "faiss_gpu": faiss_gpu, "budget_s": budget, "steps": {r["name"]: r for r in records},
        "targets": targets, "unmeasured": [t["target"] for t in targets if not t["measured"]],
        "script_targets": {r["name"]: r["result"].get("targets", {}) for r in records if "result" in r},
        "ok": not failed}, indent=2, default=str))
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
