"""The study report's figures: one module per figure, each with ``data(analysis)`` (a tidy table),
``draw(table, facts)`` (returns the matplotlib ``Figure``, or None when there is nothing to draw),
``figure(analysis)`` (the two together) and ``caption(analysis)`` (the text report.md prints under it,
naming the figure's interval). Shared look: :mod:`.style`; shared tables: :mod:`.tables`.

Figures are built without pyplot, so they work in scripts, in Ray workers and inline in notebooks.
:func:`save_figures` writes every figure that has data as ``<name>.png`` and ``<name>.svg`` (SVG text
kept as editable ``<text>``).
"""

from __future__ import annotations

from pathlib import Path

from ..compare import Analysis
from . import (best_so_far, heatmaps, mined_pairs, pbt_schedule, similarity_histograms, style, test_metric,
               trajectories, validation_curves)

MODULES = (best_so_far, heatmaps, validation_curves, trajectories, pbt_schedule, mined_pairs, test_metric,
           similarity_histograms)
FIGURES = tuple(m.NAME for m in MODULES)
DRAW = {m.NAME: m.figure for m in MODULES}
CAPTIONS = {m.NAME: m.caption for m in MODULES}


def caption(name: str, analysis: Analysis) -> str:
    """The caption of figure ``name`` for this study (it names the figure's interval and n)."""
    return CAPTIONS[name](analysis)


def save_figures(analysis: Analysis, folder: str | Path) -> dict[str, Path]:
    """Draw every figure that has data; write ``<name>.png`` and ``<name>.svg``; return name → PNG path
    (in :data:`FIGURES` order)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in FIGURES:
        fig = DRAW[name](analysis)
        if fig is None:
            continue
        for ext in ("png", "svg"):
            style.save(fig, folder / f"{name}.{ext}")
        written[name] = folder / f"{name}.png"
    return written


__all__ = ["CAPTIONS", "DRAW", "FIGURES", "caption", "save_figures"]
