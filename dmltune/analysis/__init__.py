"""Turning a study folder into its answer (see docs/analysis.md).

    from dmltune.analysis import analyse, read_study_table
    result = analyse(read_study_table("results/quickstart"))
    result.summary, result.verdicts, result.match, result.expected_best, result.sensitivity
"""

from .compare import Analysis, analyse, default_reference
from .differences import Gap, gap
from .expected_best import expected_best, expected_max
from .selection import Estimate, configurations, cross_fitted, estimate, seed_matrix, select
from .settings import ANALYSIS
from .trials import StudyTable, read_study_table, study_table
from .tuning_cost import first_match, trials_for_probability
from .verdict import INCONCLUSIVE, MATCHED, NOT_MATCHED, Verdict, arm_verdict, seeds_needed

__all__ = ["ANALYSIS", "Analysis", "Estimate", "Gap", "INCONCLUSIVE", "MATCHED", "NOT_MATCHED", "StudyTable",
           "Verdict", "analyse", "arm_verdict", "configurations", "cross_fitted", "default_reference", "estimate",
           "expected_best", "expected_max", "first_match", "gap", "read_study_table", "seed_matrix", "seeds_needed",
           "select", "study_table", "trials_for_probability"]
