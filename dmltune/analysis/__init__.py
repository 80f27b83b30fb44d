"""Turning a study folder into its answer (see docs/analysis.md).

    from dmltune.analysis import analyse, read_study_table
    result = analyse(read_study_table("results/quickstart"))
    result.summary, result.match, result.sensitivity, result.reverse_gap
"""

from .compare import Analysis, analyse, default_reference
from .selection import Estimate, configurations, estimate, select
from .settings import ANALYSIS
from .trials import StudyTable, read_study_table, study_table
from .tuning_cost import best_so_far, cost_to_match

__all__ = ["ANALYSIS", "Analysis", "Estimate", "StudyTable", "analyse", "best_so_far", "configurations",
           "cost_to_match", "default_reference", "estimate", "read_study_table", "select", "study_table"]
