"""Every result of a PBT arm's trials, as the driver receives it, in ``EXPERIMENT/results_ledger.jsonl``.

Ray Tune restarts a paused trial from its checkpoint (PBT pauses members to keep them in step and
restarts exploited ones), and when it does, its loggers copy the trial's ``result.json`` back from
the storage copy, which can be older than the local file: the reports since the last upload are
lost (Ray 2.60, ``tune.logger.logger._restore_from_remote``). The ledger is appended and flushed on
each result in the driver, so the results table (:mod:`.consolidate`) can restore what Tune's files
lost. One JSON object per line: ``trial_id`` and the reported metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

LEDGER = "results_ledger.jsonl"


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def ledger_callback(folder: Path):
    """A Tune callback appending each trial result (without its config) to ``folder/LEDGER``."""
    from ray.tune import Callback

    class ResultLedger(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            row = {k: _plain(v) for k, v in result.items() if k != "config" and not isinstance(v, dict)}
            row["trial_id"] = trial.trial_id
            path = Path(folder) / LEDGER
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    return ResultLedger()


def ledger_rows(folder: Path) -> dict:
    """``{trial_id: DataFrame of its ledger rows}`` (empty when there is no ledger); a torn last line
    (a driver killed while writing) is skipped."""
    import pandas as pd

    path = Path(folder) / LEDGER
    if not path.is_file():
        return {}
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    if not rows:
        return {}
    table = pd.DataFrame(rows)
    return {trial: group.drop(columns=["trial_id"]).reset_index(drop=True) for trial, group in table.groupby("trial_id")}
