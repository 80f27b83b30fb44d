"""Turning a study folder into its answer (see docs/analysis.md).

    from dmltune.analysis import analyse, read_study_table
    result = analyse(read_study_table("results/quickstart"))
    result.summary, result.verdicts, result.match, result.expected_best, result.sensitivity
"""

from ..lazy import lazy_attributes

_HOMES = {
    "Analysis": "compare",
    "analyse": "compare",
    "default_reference": "compare",
    "Gap": "differences",
    "gap": "differences",
    "expected_best": "expected_best_curve",
    "expected_max": "expected_best_curve",
    "Estimate": "selection",
    "configurations": "selection",
    "cross_fitted": "selection",
    "estimate": "selection",
    "seed_matrix": "selection",
    "select": "selection",
    "ANALYSIS": "settings",
    "StudyTable": "trials",
    "read_study_table": "trials",
    "study_table": "trials",
    "first_match": "tuning_cost",
    "trials_for_probability": "tuning_cost",
    "INCONCLUSIVE": "verdict",
    "MATCHED": "verdict",
    "NOT_MATCHED": "verdict",
    "Verdict": "verdict",
    "arm_verdict": "verdict",
    "seeds_needed": "verdict",
}
__getattr__ = lazy_attributes(__name__, _HOMES)  # pandas and SciPy load with the first analysis

__all__ = sorted(_HOMES)
