"""The searches of optuna arms kept in an Optuna RDB storage (``tracking: {optuna: {storage: URL}}``)
that ``optuna-dashboard URL`` opens: one Optuna study per experiment, named ``STUDY/ARM/seed_S``.

Ray's ``OptunaSearch`` takes ``storage`` and ``study_name`` and creates its study there; the sampler,
its seed and Tune's loop are unchanged. :class:`StoredOptunaSearch` adds what dmltune's resume needs:

* **The storage is named by its URL only.** Ray builds the storage when the Tuner is made and
  pickles it, with its absolute path, into the experiment's ``tuner.pkl`` and into every saved
  searcher state. Here it is opened when the search starts, from :attr:`storage_url`, which the
  runner sets again on a restored experiment: a study folder resumed elsewhere (copied, moved) writes
  into its own ``optuna.db``, not the old path (which may no longer exist).
* **Resume leaves no trial RUNNING for ever.** Trials the interrupted session asked Optuna for after
  the searcher's last saved state are unknown to the restored search (Tune suggests them anew);
  they are marked FAIL, so the dashboard does not show them running and TPE does not count them.
* **A search that starts afresh starts an empty study** (:func:`start_afresh`): a study of its
  name left in the storage (a driver killed before Tune recorded the experiment, or a folder moved
  aside with ``--fresh`` while the storage is outside it) would otherwise be loaded and steer TPE.
  One with finished trials is first copied to ``NAME.old-TIMESTAMP``; nothing finished is lost.
* **A trial the storage holds finished is finished for the restored search too.** A trial that
  completed after the searcher's last saved state is COMPLETE in the storage but running in that
  state, and Tune, whose record also lists it unfinished, resumes it from its last checkpoint, which
  reports its epochs again. Optuna refuses any report to a finished trial with an error, which would
  end the experiment at every resume (the study could never finish); so the restored search counts
  such a trial as completed: its replayed reports and its completion are not sent to Optuna (which
  keeps its first result), and the completion still frees its place in Tune's concurrency limiter.
"""

from __future__ import annotations

import io
import pickle
import threading
import time
from pathlib import Path

from ray.tune.search.optuna import OptunaSearch

from ..atomic import write_atomic
from ..registry import ConfigError

DEFAULT_FILE = "optuna.db"
_opening = threading.local()  # the storage a restore is reading a saved state into


def storage_url(tracking: dict | None, directory: Path) -> str | None:
    """The storage URL of a study's optuna arms (None: no ``tracking.optuna``); the default is
    ``optuna.db`` in the study folder, wherever that folder is now."""
    if not tracking or not tracking.get("optuna"):
        return None
    return tracking["optuna"]["storage"] or f"sqlite:///{Path(directory) / DEFAULT_FILE}"


def stored_search(tracking: dict | None, study: str, directory: Path, experiment_folder: Path) -> dict | None:
    """``{"storage_url", "study_name"}`` of one optuna experiment's search (None without
    ``tracking.optuna``): its study is ``STUDY/ARM/seed_S``, its folder in the study's."""
    url = storage_url(tracking, directory)
    if url is None:
        return None
    return {"storage_url": url, "study_name": f"{study}/{Path(experiment_folder).relative_to(directory).as_posix()}"}


def open_storage(url: str):
    import optuna

    return optuna.storages.RDBStorage(url)


def start_afresh(url: str, name: str) -> None:
    """Before a new search ``name``: an older study of that name leaves the storage (one with
    finished trials is copied to ``NAME.old-TIMESTAMP`` first)."""
    import optuna

    storage = open_storage(url)
    if name not in {s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)}:
        return
    old = optuna.load_study(study_name=name, storage=storage)
    if any(t.state.is_finished() for t in old.get_trials(deepcopy=False)):
        optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage,
                          to_study_name=f"{name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    optuna.delete_study(study_name=name, storage=storage)


def check_restorable(url: str, name: str) -> None:
    """A restored search needs its study in the storage: one line when it is gone."""
    import optuna
    from sqlalchemy.engine import make_url

    database = make_url(url).database if url.startswith("sqlite") else None
    if database is not None and not Path(database).is_file():  # (opening it would create an empty one)
        names = set()
    else:
        names = {s.study_name for s in optuna.study.get_all_study_summaries(open_storage(url), include_best_trial=False)}
    if name not in names:
        raise ConfigError(f"the Optuna storage {url} has no study '{name}', which this study's search keeps (tracking.optuna); "
                          "put the database back (a copied study folder needs its optuna.db), or start over with "
                          "`dmltune run --fresh`")


def prepare_restored(search, stored: dict) -> None:
    """Before a restored experiment runs: the :class:`StoredOptunaSearch` inside ``search`` (wrappers
    such as Tune's ConcurrencyLimiter hold it as ``.searcher``) gets the storage URL of the study as
    it is now, and that storage must hold its study (one line otherwise)."""
    while search is not None and not isinstance(search, StoredOptunaSearch):
        search = getattr(search, "searcher", None)
    if search is None:
        return
    check_restorable(stored["storage_url"], search._study_name)
    search.storage_url = stored["storage_url"]


class StoredOptunaSearch(OptunaSearch):
    """Ray's ``OptunaSearch`` with its study in the storage at :attr:`storage_url` (see the module)."""

    def __init__(self, *, storage_url: str, study_name: str, **kwargs):
        super().__init__(study_name=study_name, **kwargs)  # the storage is opened when the search starts
        self.storage_url = storage_url

    def _setup_study(self, mode):
        self._storage = open_storage(self.storage_url)
        super()._setup_study(mode)

    def save(self, checkpoint_path: str):
        out = io.BytesIO()
        _StoragePickler(out, self._storage).dump(self.__dict__.copy())
        write_atomic(Path(checkpoint_path), out.getvalue())  # a kill mid-write leaves the last whole state

    def restore(self, checkpoint_path: str):
        url = self.storage_url
        storage = _opening.storage = open_storage(url)
        try:
            with open(checkpoint_path, "rb") as saved:
                state = pickle.load(saved)
        finally:
            _opening.storage = None
        self.__dict__.update(state)
        self.storage_url, self._storage = url, storage
        self._fail_forgotten_trials()
        self._complete_finished_trials()

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id not in self._completed_trials:  # a finished trial's replayed reports: Optuna has them
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id not in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)

    def _complete_finished_trials(self) -> None:
        """Trials the restored search has running that the storage holds finished (completed after
        the saved state): completed in the search too (see the module)."""
        if self._ot_study is None:
            return
        finished = {t._trial_id for t in self._ot_study.get_trials(deepcopy=False) if t.state.is_finished()}
        self._completed_trials.update(tid for tid, t in self._ot_trials.items() if t._trial_id in finished)

    def _fail_forgotten_trials(self) -> None:
        """Trials still RUNNING in the storage that the restored search does not know: FAIL."""
        from optuna.trial import TrialState

        if self._ot_study is None:
            return
        known = {t._trial_id for t in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial._trial_id not in known:
                self._ot_study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


class UnopenedStorage:
    """What a saved searcher state holds in place of its storage when it is read outside a restore
    (e.g. to check that the file is whole: :mod:`.state_copy`): nothing is opened."""


def _reopened_storage():
    """The storage of a saved searcher state: the one the restore in progress opened."""
    storage = getattr(_opening, "storage", None)
    return UnopenedStorage() if storage is None else storage


class _StoragePickler(pickle.Pickler):
    """Pickles the searcher's state with its storage saved as a call to :func:`_reopened_storage`
    (a plain pickle, which any reader loads without opening a database)."""

    def __init__(self, file: io.BufferedWriter, storage):
        super().__init__(file)
        self.storage = storage

    def reducer_override(self, obj):
        if obj is not None and obj is self.storage:
            return _reopened_storage, ()
        return NotImplemented
