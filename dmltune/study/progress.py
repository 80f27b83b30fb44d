"""What a running study prints: a line per running trial as its epochs finish, and one per finished trial.

    grid gamma_pos=0.1 seed 0: epoch 3/10, val/map@r 0.5123, 812 img/s · study 14/63 epochs, ETA 2 min
    [4/21] grid gamma_pos=0.1 seed 0 ok: val/map@r 0.5412 (10 epochs) · 95 s
    [5/21] asha gamma_pos=0.3 seed 1 stopped: val/map@r 0.3120 (1 of 10 epochs: ASHA stopped it early) · 97 s

Epoch lines come at most every ``interval`` seconds per trial (and always for a trial's last epoch);
they are plain lines, so a log file reads like the terminal. The counters cover the whole study:
trials and epochs that finished in an earlier run count as done from the start, so a resumed study
continues at ``[k+1/N]``. The ETA comes from the epochs finished in this run only (none before the
first): their mean duration (``epoch_s``, without a trial's start-up) × the epochs left ÷ the trials
running at once. Ray Tune pickles a run's callbacks (and a restored experiment brings back
its old ones), so a callback holds only a key into this module's table of live progress objects.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

_LIVE: dict[int, "Progress"] = {}


def quiet_library_logs() -> None:
    """Keep libraries' informational logs out of the progress lines: Optuna announces every study it
    creates ("A new study created in memory ...", one per Optuna experiment) at INFO on stderr."""
    if "optuna" not in sys.modules:
        try:
            import optuna  # noqa: F401  (configures its logger at import: the level must be set after)
        except ImportError:
            return
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _trial_label(arm_name: str, paths, trial) -> str:
    searched = ""
    for path in paths:
        node = trial.config
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        value = f"{node:.4g}" if isinstance(node, float) else node
        searched += f" {path[-1]}={value}"
    fold = (trial.config.get("protocol") or {}).get("fold")
    return f"{arm_name}{searched} seed {trial.config.get('seed')}" + (f" fold {fold}" if fold is not None else "")


class Progress:
    """Study-wide counters and the lines; ``callback(arm)`` gives the Tune callback of one arm."""

    def __init__(self, total_trials: int, total_epochs: int, metric: str, done_trials: int = 0,
                 done_epochs: int = 0, interval: float = 10.0, stream=None):
        self.total, self.done, self.metric = total_trials, done_trials, metric
        self.total_epochs, self.done_epochs, self.epochs_at_start = total_epochs, done_epochs, done_epochs
        self.interval, self.stream = interval, stream
        self.started = time.perf_counter()
        self.last_line: dict[str, float] = {}
        self.epoch_seconds, self.timed_epochs = 0.0, 0  # epochs finished in this run, and their time
        self.running: set[str] = set()  # trials with a report this run that have not finished
        self.key = id(self)
        self.lock = threading.Lock()  # the experiments of one study report from several threads
        _LIVE[self.key] = self
        quiet_library_logs()

    def close(self) -> None:
        _LIVE.pop(self.key, None)

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def callback(self, arm, epochs: int):
        from ray.tune import Callback

        key, arm_name, paths = self.key, arm.name, [p for p, _ in arm.domains]
        early_stopping = bool((arm.search or {}).get("scheduler"))

        class _Lines(Callback):  # looks its Progress up by import: cloudpickle copies a closure's globals
            def on_trial_result(self, iteration, trials, trial, result, **info):
                from dmltune.study import progress

                live = progress._LIVE.get(key)
                if live is not None and not result.get("replayed"):
                    live.epoch(progress._trial_label(arm_name, paths, trial), trial.trial_id, result, epochs)

            def on_trial_complete(self, iteration, trials, trial, **info):
                from dmltune.study import progress

                live = progress._LIVE.get(key)
                if live is not None:
                    live.finished(progress._trial_label(arm_name, paths, trial), trial, "ok", epochs,
                                  early_stopping)

            def on_trial_error(self, iteration, trials, trial, **info):
                from dmltune.study import progress

                live = progress._LIVE.get(key)
                if live is not None:
                    live.finished(progress._trial_label(arm_name, paths, trial), trial, "error", epochs)

        return _Lines()

    def eta(self) -> str:
        """``, ETA …`` from the epochs finished in this run ("" before the first, or when none is left):
        their mean time × the epochs left ÷ the trials running now. Start-up (Ray, imports, the first
        data load) is in no epoch's time, so it does not inflate the estimate."""
        left = self.total_epochs - self.done_epochs
        if self.timed_epochs == 0 or left <= 0:
            return ""
        per_epoch = self.epoch_seconds / self.timed_epochs
        return f", ETA {duration(per_epoch * left / max(len(self.running), 1))}"

    def epoch(self, label: str, trial_id: str, result: dict, epochs: int) -> None:
        with self.lock:
            self._epoch(label, trial_id, result, epochs)

    def finished(self, label: str, trial, outcome: str, epochs: int, early_stopping: bool = False) -> None:
        with self.lock:
            self._finished(label, trial, outcome, epochs, early_stopping)

    def _epoch(self, label: str, trial_id: str, result: dict, epochs: int) -> None:
        self.done_epochs += 1
        seconds = result.get("epoch_s")
        if isinstance(seconds, (int, float)) and seconds == seconds and seconds >= 0:
            self.epoch_seconds += float(seconds)
            self.timed_epochs += 1
        self.running.add(trial_id)
        now, epoch = time.perf_counter(), result.get("epoch", 0)
        if now - self.last_line.get(trial_id, -1e9) < self.interval and epoch != epochs:
            return
        self.last_line[trial_id] = now
        value = result.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, float) and value == value else f"{self.metric} –"
        speed = result.get("images_per_s")
        speed_text = f", {speed:.0f} img/s" if isinstance(speed, (int, float)) else ""
        self._print(f"  {label}: epoch {epoch}/{epochs}, {shown}{speed_text} · study "
                    f"{min(self.done_epochs, self.total_epochs)}/{self.total_epochs} epochs{self.eta()}")

    def _finished(self, label: str, trial, outcome: str, epochs: int, early_stopping: bool = False) -> None:
        self.done += 1
        self.running.discard(getattr(trial, "trial_id", None))
        last = trial.last_result or {}
        ran = int(last.get("epoch", 0) or 0)
        self.done_epochs += max(0, epochs - ran)  # stopped early: none to come
        status = last.get("status", outcome) if outcome == "ok" else outcome
        trained = f"{ran} epoch{'' if ran == 1 else 's'}"
        if status == "ok" and early_stopping and ran < epochs:  # as the results table says (consolidate)
            status, trained = "stopped", f"{ran} of {epochs} epochs: ASHA stopped it early"
        value = last.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, float) else "no result"
        elapsed = time.perf_counter() - self.started
        retries = int(getattr(trial, "num_failures", 0) or 0)
        retried = f", after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
        self._print(f"[{self.done}/{self.total}] {label} {status}: {shown} ({trained}{retried}) · {elapsed:.0f} s")
