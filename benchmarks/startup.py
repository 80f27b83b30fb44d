"""Start-up time of dmltune's commands and of the trainable's import, in fresh processes.

    python benchmarks/startup.py [--runs 7] [--baseline REV] [--out benchmarks/results/startup.json]

Rows, each a new Python process, timed from start to exit, runs interleaved (median; min and max
beside it):

* ``dmltune list``: every component's declared parameters;
* ``dmltune validate studies/quickstart.yaml``: the quickstart study checked, its plan printed;
* ``import dmltune.training``: what a fresh Ray worker imports before a trial starts;
* ``import torch``: the floor of the trainable's import.

With ``--baseline REV`` the same dmltune rows run from git revision REV (``git archive`` into a
temporary folder, run from there), in the same rounds, and the table gives each row's ratio to the
baseline's: a before-and-after measured in one run, under the same load.
Targets (issue #17): ``list`` and ``validate`` under 1 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from common import unpack_revision, write_json  # noqa: E402

QUICKSTART = str(ROOT / "studies" / "quickstart.yaml")
ROWS = (("dmltune list", ["-m", "dmltune", "list"]),
        ("dmltune validate studies/quickstart.yaml", ["-m", "dmltune", "validate", QUICKSTART]),
        ("import dmltune.training (the trainable)", ["-c", "import dmltune.training"]),
        ("import torch", ["-c", "import torch"]))
TARGETS = {"dmltune list": 1.0, "dmltune validate studies/quickstart.yaml": 1.0}


def seconds(args: list[str], cwd: Path) -> float:
    """Wall time of one ``python ARGS`` run in ``cwd`` (its dmltune is the one found there first)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def measure(entries: list[tuple[str, list[str], Path]], runs: int) -> dict[str, list[float]]:
    """Every entry ``runs`` times, round-robin (one untimed run of each first: the file cache warms)."""
    for _, args, cwd in entries:
        seconds(args, cwd)
    times = {label: [] for label, _, _ in entries}
    for _ in range(runs):
        for label, args, cwd in entries:
            times[label].append(seconds(args, cwd))
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", default=None, metavar="REV", help="also time the rows as of git revision REV")
    parser.add_argument("--out", default="benchmarks/results/startup.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dmltune-startup-") as tmp:
        entries = [(label, cmd, ROOT) for label, cmd in ROWS]
        if args.baseline:
            old = unpack_revision(args.baseline, Path(tmp))
            entries += [(f"{label} [{args.baseline}]", cmd, old) for label, cmd in ROWS if label != "import torch"]
        times = measure(entries, args.runs)
    rows = []
    for label, _, _ in entries:
        row = {"what": label, "median_s": statistics.median(times[label]), "min_s": min(times[label]),
               "max_s": max(times[label]), "runs": times[label]}
        old = times.get(f"{label} [{args.baseline}]")
        if old:
            row["ratio_to_baseline"] = row["median_s"] / statistics.median(old)
        rows.append(row)
    import platform

    print(f"fresh processes, {args.runs} runs each, interleaved; Python {platform.python_version()}")
    width = max(len(r["what"]) for r in rows)
    print(f"{'what':<{width}} {'median s':>9} {'min':>7} {'max':>7}" + (f" {'× base':>7}" if args.baseline else ""))
    for r in rows:
        ratio = f" {r['ratio_to_baseline']:>7.2f}" if "ratio_to_baseline" in r else ""
        print(f"{r['what']:<{width}} {r['median_s']:>9.2f} {r['min_s']:>7.2f} {r['max_s']:>7.2f}{ratio}")
    checks = {f"{label} under {limit:g} s": next(r["median_s"] for r in rows if r["what"] == label) < limit
              for label, limit in TARGETS.items()}
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    write_json(args.out, "startup", torch.device("cpu"), rows, baseline=args.baseline, runs=args.runs, targets=checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
