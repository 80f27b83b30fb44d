"""How often each verdict is right: simulated studies with a known truth, analysed end to end.

    python benchmarks/verdict_calibration.py [--studies 500] [--seed 0]

Each scenario builds ``--studies`` results tables (tests/synthetic_study.py's ``simulated_table``):
an arm ``grid`` whose configurations have known true validation means, and the reference ``ref``
with true mean 0.5; every trial adds seed noise (sd = δ = 0.01 unless said), and some scenarios a
seed effect shared by both arms. Each table goes through ``dmltune.analysis.analyse`` exactly as a
study folder would. Columns:

  matched / not / inconclusive   share of studies with each verdict for ``grid``
  old rule                       share that the previous analysis called a match (any single trial
                                 ≥ reference seed mean − δ)
  paired                         share of studies where the comparison was paired over seeds
  seeds needed                   median seeds_needed of the inconclusive studies
  trials to match                for matched studies: median expected_trials_to_match, and how often
                                 its seed-bootstrap interval covers the true value (N + 1)/(m + 1)

Prints a table and writes JSON (benchmarks/results/verdict_calibration.json). No GPU needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from synthetic_study import simulated_table  # noqa: E402

from dmltune.analysis import analyse, study_table  # noqa: E402

DELTA = 0.01
SOURCE = {"eval": {"metric": "map@r"}, "arms": [{"name": "grid"}, {"name": "ref"}],
          "analysis": {"reference": "ref", "delta": DELTA, "bootstrap": 300}}

SCENARIOS = [
    # name, true config means, seeds, seed effect sd, required (verdict, bound)
    ("none matches: 12 configs 2δ below, 3 seeds", [0.5 - 2 * DELTA] * 12, 3, 0.0, ("matched", "≤ 10%")),
    ("none matches, 5 seeds", [0.5 - 2 * DELTA] * 12, 5, 0.0, ("matched", "≤ 10%")),
    ("one config 4δ above, 11 far below, 5 seeds", [0.5 + 4 * DELTA] + [0.5 - 10 * DELTA] * 11, 5, 0.0,
     ("matched", "≥ 80%")),
    ("one config 4δ above, 11 far below, 3 seeds", [0.5 + 4 * DELTA] + [0.5 - 10 * DELTA] * 11, 3, 0.0,
     ("matched", "–")),
    ("all 12 identical to the reference, 3 seeds", [0.5] * 12, 3, 0.0, ("not_matched", "≤ 10%")),
    ("best exactly at the target, 3 seeds", [0.5 - DELTA] + [0.5 - 10 * DELTA] * 11, 3, 0.0, ("matched", "≤ 5%")),
    ("none matches + shared seed effect 2δ, 3 seeds", [0.5 - 2 * DELTA] * 12, 3, 2 * DELTA, ("matched", "≤ 10%")),
    ("identical + shared seed effect 2δ, 5 seeds", [0.5] * 12, 5, 2 * DELTA, ("matched", "–")),
]


def run(name, means, seeds, seed_sd, studies, rng):
    verdicts, old, paired, needed, trials, covered = [], 0, 0, [], [], []
    true_hits = sum(m >= 0.5 - DELTA for m in means) * seeds
    true_trials = (len(means) * seeds + 1) / (true_hits + 1) if true_hits else np.inf
    for _ in range(studies):
        table = simulated_table(rng, means, 0.5, DELTA, seeds, seed_sd=seed_sd)
        a = analyse(study_table(table, SOURCE))
        row = a.match.iloc[0]
        verdicts.append(row.verdict)
        paired += row.method == "paired"
        grid = table[table.arm == "grid"]["val/map@r"]
        old += bool((grid >= table[table.arm == "ref"]["val/map@r"].mean() - DELTA).any())
        if row.verdict == "inconclusive" and np.isfinite(row.seeds_needed):
            needed.append(row.seeds_needed)
        if row.verdict == "matched":
            trials.append(row.expected_trials_to_match)
            covered.append(row.expected_trials_low <= true_trials <= row.expected_trials_high)
    share = pd.Series(verdicts).value_counts(normalize=True)
    return {"scenario": name, "studies": studies, "seeds": seeds, "configurations": len(means),
            "matched": float(share.get("matched", 0.0)), "not_matched": float(share.get("not_matched", 0.0)),
            "inconclusive": float(share.get("inconclusive", 0.0)), "old_rule_matched": old / studies,
            "paired": paired / studies, "seeds_needed_median": float(np.median(needed)) if needed else None,
            "trials_to_match_median": float(np.median(trials)) if trials else None,
            "true_trials_to_match": true_trials if np.isfinite(true_trials) else None,
            "interval_coverage": float(np.mean(covered)) if covered else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/verdict_calibration.json")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    print(f"{'scenario':<48} {'required':>16} {'matched':>8} {'not':>6} {'inconcl':>8} {'old rule':>9} "
          f"{'paired':>7} {'seeds nd':>9} {'trials':>7} {'cover':>6}")
    start = time.perf_counter()
    for name, means, seeds, seed_sd, (verdict, bound) in SCENARIOS:
        r = run(name, means, seeds, seed_sd, args.studies, rng)
        r["required"] = f"{verdict} {bound}"
        rows.append(r)
        fmt = lambda v, f: "–" if v is None else format(v, f)
        print(f"{name:<48} {r['required']:>16} {r['matched']:>8.1%} {r['not_matched']:>6.1%} "
              f"{r['inconclusive']:>8.1%} {r['old_rule_matched']:>9.1%} {r['paired']:>7.0%} "
              f"{fmt(r['seeds_needed_median'], '.0f'):>9} {fmt(r['trials_to_match_median'], '.2f'):>7} "
              f"{fmt(r['interval_coverage'], '.0%'):>6}", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")
    import torch
    from common import write_json

    write_json(args.out, "verdict_calibration", torch.device("cpu"), rows, studies=args.studies, delta=DELTA)


if __name__ == "__main__":
    main()
