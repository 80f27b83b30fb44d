"""Comparison plots of an analysed study: the names this module always had, drawn by the figure
modules of :mod:`dmltune.analysis.figures` (one module per figure, a shared style).

Every ``*_figure`` function takes an :class:`~dmltune.analysis.Analysis` and returns a matplotlib
``Figure`` (``None`` when the study has nothing to draw for it, e.g. no searched arm for the
heatmaps). ``save_figures`` writes all of them as ``figures/<name>.png`` and ``.svg``.
"""

from __future__ import annotations

from .figures import CAPTIONS, DRAW, FIGURES, caption, save_figures
from .figures.best_so_far import figure as best_so_far_figure
from .figures.heatmaps import figure as heatmaps_figure
from .figures.mined_pairs import figure as mined_pairs_figure
from .figures.pbt_schedule import figure as pbt_schedule_figure
from .figures.similarity_histograms import figure as similarity_histograms_figure
from .figures.style import METRIC_RANGE, metric_limits, save
from .figures.test_metric import figure as test_metric_figure
from .figures.trajectories import SNR_SIGNIFICANT
from .figures.trajectories import figure as trajectories_figure
from .figures.validation_curves import figure as validation_curves_figure

__all__ = ["CAPTIONS", "DRAW", "FIGURES", "METRIC_RANGE", "SNR_SIGNIFICANT", "best_so_far_figure", "caption",
           "heatmaps_figure", "metric_limits", "mined_pairs_figure", "pbt_schedule_figure", "save",
           "save_figures", "similarity_histograms_figure", "test_metric_figure", "trajectories_figure",
           "validation_curves_figure"]
