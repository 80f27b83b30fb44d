"""The ``analysis`` section of a study file: which arm is the reference, and how close is a match.

    analysis:
      reference: ddtas      # the arm the others are measured against (default: the last arm that
                            # runs a single configuration, i.e. needs no tuning)
      delta: 0.01           # "matched" = a validation value within delta of the reference's
      bootstrap: 1000       # random orderings of each arm's trials
      confidence: 0.95      # of every interval
      seed: 0               # of the orderings
"""

from __future__ import annotations

from ..registry import Component, Param

ANALYSIS = Component("section", "analysis", dict, (
    Param("reference", str, None, nullable=True,
          help="arm the others are compared with (default: the last single-configuration arm)"),
    Param("delta", float, 0.01, low=0.0, high=1.0, help="a trial matches when its metric ≥ reference − delta"),
    Param("bootstrap", int, 1000, low=10, high=100000, help="random orderings of the trials"),
    Param("confidence", float, 0.95, low=0.5, high=0.999, help="level of every interval"),
    Param("seed", int, 0, low=0, help="seed of the random orderings"),
))
