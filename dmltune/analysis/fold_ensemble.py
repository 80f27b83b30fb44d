"""The fold models' ensemble (the Metric Learning Reality Check's second test figure).

At the configuration selected on validation, each seed's fold models embed the test set; their
embeddings, L2-normalised per model, are concatenated (:func:`dmltune.evaluate.concatenated_embeddings`)
and evaluated as one model. The embeddings are **stored**, not recomputed: a k-fold trial writes its
final test embeddings (float16) beside its final checkpoint (``training.state.TEST_EMBEDDINGS_FILE``).
That costs N_test × d × 2 bytes per trial (CUB-200: 5,924 × 512 → 6 MB; Cars196: 8 MB; SOP: 62 MB;
digits: a few kB) and no GPU time at analysis; recomputing would need the data, the models and a
device when the report is drawn.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from .selection import Estimate, Selection, estimate


def _metric_options(name: str) -> tuple[tuple, list[int]]:
    recall = re.fullmatch(r"recall@([0-9]+)", name)
    if recall:
        return ("recall",), [int(recall.group(1))]
    return (name,), [1]


def ensemble_value(paths: list[Path], metric: str) -> float:
    """``metric`` of the concatenated, per-model L2-normalised test embeddings stored at ``paths``."""
    from ..evaluate import concatenated_embeddings, evaluate
    from ..training.state import load_test_embeddings

    stored = [load_test_embeddings(p) for p in paths]
    metrics, ks = _metric_options(metric)
    if "query" in stored[0]:
        q = concatenated_embeddings([s["query"][0] for s in stored])
        g = concatenated_embeddings([s["gallery"][0] for s in stored])
        out = evaluate(q, stored[0]["query"][1], g, stored[0]["gallery"][1], ks=ks, metrics=metrics)
    else:
        emb = concatenated_embeddings([s["test"][0] for s in stored])
        out = evaluate(emb, stored[0]["test"][1], ks=ks, metrics=metrics)
    return float(out[metric])


def ensemble_estimate(selection: Selection, folder: Path | None, test_metric: str, confidence: float) -> Estimate:
    """The ensemble's test metric over the selected configuration's seeds (NaN where a seed's fold
    models did not all store their embeddings, or the study folder is unknown)."""
    rows = selection.trials
    if folder is None or rows.empty or "test_embeddings" not in rows:
        return Estimate(math.nan, math.nan, 0)
    values = {}
    for row in rows.itertuples():
        stored = getattr(row, "test_embeddings", None)
        if not isinstance(stored, str) or not stored:
            continue
        paths = [Path(folder) / p for p in stored.split("|")]
        if all(p.is_file() for p in paths):
            values[row.seed] = ensemble_value(paths, test_metric[len("test/"):])
    if not values:
        return Estimate(math.nan, math.nan, 0)
    return estimate(pd.Series(values, dtype=float).groupby(level=0).mean(), confidence)
