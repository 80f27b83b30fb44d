"""Simulated studies under each design, through the public analysis path: results tables with a
known truth → ``next_stage`` (what the runner asks when a stage ends) → more simulated trials →
``analyse``. Shared by tests/test_designs.py and benchmarks/verdict_calibration.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dmltune.analysis import analyse, study_table
from dmltune.analysis.design_table import next_stage

METRIC = "val/map@r"
REFERENCE_MEAN = 0.5


@dataclass
class Outcome:
    verdict: str
    trials: int
    stages: int
    seeds_needed: float
    advice: object = None


class World:
    """The truth of one simulated study: configuration means, a seed effect shared by every arm
    (variance ρ·sd²) and per-trial noise (the rest of each configuration's variance)."""

    def __init__(self, rng, means, sd, rho, sd_scale=None):
        self.rng, self.means, self.sd, self.rho = rng, list(means), sd, rho
        self.scale = list(sd_scale or [1.0] * len(means))
        self.effects = {}

    def effect(self, seed):
        if seed not in self.effects:
            self.effects[seed] = self.rng.normal(0.0, self.sd * np.sqrt(self.rho))
        return self.effects[seed]

    def value(self, mean, scale, seed):
        own = np.sqrt(max(scale ** 2 - self.rho, 0.0)) * self.sd
        return mean + self.effect(seed) + self.rng.normal(0.0, own)

    def rows(self, arm, configs, seeds, stage):
        out = []
        for c in configs:
            for s in seeds:
                if arm == "ref":
                    v, gp, trial = self.value(REFERENCE_MEAN, 1.0, s), 0.1, f"r_{s}"
                else:
                    v, gp, trial = self.value(self.means[c], self.scale[c], s), round(0.01 * (c + 1), 4), f"g{c}_{s}"
                out.append({"arm": arm, "experiment": arm, "trial_id": f"{trial}_st{stage}", "seed": s, "status": "ok",
                            "epoch": 1, METRIC: v, "test/map@r": v - 0.1, "wall_s": 600.0, "gpu_s": 600.0,
                            "config/miner.name": "at_asms" if arm == "ref" else "asms",
                            "config/miner.gamma_pos": gp, "stage": stage})
        return out


def source(design, seeds, delta, confidence=0.95, power=0.8):
    return {"name": "sim", "seeds": list(seeds), "eval": {"metric": "map@r"},
            "arms": [{"name": "grid", "search": {"mode": "grid"}}, {"name": "ref"}], "design": design,
            "analysis": {"reference": "ref", "delta": delta, "confidence": confidence, "power": power,
                         "bootstrap": 10}}


def simulate(rng, design, means, sd, rho, delta, seeds=3, sd_scale=None, power=0.8) -> Outcome:
    """Run one simulated study under ``design`` (the study file's ``design`` value) with ``seeds``
    study seeds (stage 1 / the first look uses them as the design says)."""
    from dmltune.study.design_settings import parse_design

    world = World(rng, means, sd, rho, sd_scale)
    study_seeds = list(range(seeds))
    src = source(design, study_seeds, delta, power=power)
    first = parse_design(design, None, study_seeds).first_seeds(study_seeds)
    rows = world.rows("grid", range(len(means)), first, 1) + world.rows("ref", [0], first, 1)
    stage = 1
    while True:
        st = study_table(pd.DataFrame(rows), src)
        plan = next_stage(st, stage)
        if plan is None:
            break
        stage = plan["stage"]
        for arm, what in plan["arms"].items():
            if arm == "ref":
                rows += world.rows("ref", [0], what["seeds"], stage)
            else:
                keys = what["keys"]
                configs = range(len(means)) if keys is None else [round(float(k) / 0.01) - 1 for k in keys]
                rows += world.rows(arm, configs, what["seeds"], stage)
    a = analyse(study_table(pd.DataFrame(rows), src))
    v = a.verdicts["grid"]
    return Outcome(v.verdict, len(rows), stage, v.seeds_needed, v.advice)
