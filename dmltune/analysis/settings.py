"""The ``analysis`` section of a study file: which arm is the reference, how close is a match, and
how sure the verdicts must be (docs/analysis.md).

    analysis:
      reference: ddtas      # the arm the others are measured against (default: the last arm that
                            # runs a single configuration, i.e. needs no tuning)
      delta: 0.01           # "matched" = a true validation mean within delta of the reference's
      confidence: 0.95      # of every verdict and interval
      power: 0.8            # of the seeds-needed calculation for inconclusive verdicts
      probability: 0.9      # trials_needed_p90: trials to reach the target with this probability
      failure_value: 0.0    # validation value a diverged or errored seed counts as
      bootstrap: 1000       # bootstrap replicates over seeds (intervals of costs and expected best)
      seed: 0               # of the bootstrap
"""

from __future__ import annotations

from ..registry import Component, Param

ANALYSIS = Component("section", "analysis", dict, (
    Param("reference", str, None, nullable=True,
          help="arm the others are compared with (default: the last single-configuration arm)"),
    Param("delta", float, 0.01, low=0.0, high=1.0,
          help="an arm matches when a configuration's true mean is ≥ reference − delta"),
    Param("confidence", float, 0.95, low=0.5, high=0.999, help="level of every verdict and interval"),
    Param("power", float, 0.8, low=0.5, high=0.99, help="power of the seeds-needed calculation"),
    Param("probability", float, 0.9, low=0.5, high=0.999,
          help="trials needed to reach the target with this probability (column trials_needed_p90)"),
    Param("failure_value", float, 0.0, low=-1.0, high=0.0,
          help="validation value a diverged or errored seed counts as (0 = the floor of every retrieval metric; "
               "at most 0, so a failure never outranks a real result)"),
    Param("bootstrap", int, 1000, low=10, high=100000, help="bootstrap replicates over seeds"),
    Param("seed", int, 0, low=0, help="seed of the bootstrap"),
))
