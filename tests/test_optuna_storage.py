"""``tracking: {optuna: {...}}``: optuna arms' searches kept in an Optuna RDB storage that
optuna-dashboard opens. Its one-line errors; the searcher's saved state names the storage by URL only
(a study folder resumed elsewhere writes into its own database), a restored search fails the trials
it forgot, and a search that starts afresh does not load an old study of its name; and a real study
whose Optuna database holds every trial as trials.parquet has it."""

import importlib.util
import pickle
import shutil

import pytest
import yaml

from dmltune.registry import ConfigError
from dmltune.study.tracking import describe, parse_tracking


def _error(section) -> str:
    with pytest.raises(ConfigError) as err:
        parse_tracking(section, "s")
    assert "\n" not in str(err.value)
    return str(err.value)


def test_storage_defaults_to_the_study_folder_and_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_tracking({"optuna": {}}, "s") == {"optuna": {"storage": None}}
    assert parse_tracking({"optuna": {"storage": "sqlite:///o.db"}}, "s") == \
        {"optuna": {"storage": f"sqlite:///{tmp_path}/o.db"}}
    if importlib.util.find_spec("psycopg"):
        assert parse_tracking({"optuna": {"storage": "postgresql://u@h/db"}}, "s") == \
            {"optuna": {"storage": "postgresql://u@h/db"}}
    else:
        assert "needs the Python driver of that database" in _error({"optuna": {"storage": "postgresql://u@h/db"}})
    assert "sqlite:///STUDY_DIR/optuna.db" in describe({"optuna": {"storage": None}})

    from dmltune.study.optuna_storage import storage_url

    assert storage_url({"optuna": {"storage": None}}, tmp_path / "st") == f"sqlite:///{tmp_path}/st/optuna.db"
    assert storage_url(None, tmp_path) is None


@pytest.mark.parametrize("section, fragment", [
    ({"optuna": None}, "study: tracking.optuna is empty"),
    ({"optuna": "sqlite:///o.db"}, "tracking.optuna must be a mapping like {storage: sqlite:////abs/path/optuna.db}"),
    ({"optuna": {"storage": "o.db"}}, "'storage' 'o.db' is not a database URL"),
    ({"optuna": {"storage": "sqlite://"}}, "is an in-memory database"),
    ({"optuna": {"storage": "sqlite:///x .db"}}, "contains spaces"),
    ({"optuna": {"url": "sqlite:///o.db"}}, "tracking.optuna has no parameter 'url'"),
    ({"optuna": {"storage": "sqlite:////no/such/folder/o.db"}}, "the folder /no/such/folder does not exist"),
    ({"optuna": {"storage": "nosuchdb://h/db"}}, "SQLAlchemy knows no database 'nosuchdb'"),
])
def test_bad_optuna_sections_are_one_line_errors(section, fragment):
    assert fragment in _error(section)


def _searcher(url: str, name: str = "s/tpe/seed_0"):
    import optuna
    from ray import tune

    from dmltune.study.optuna_storage import StoredOptunaSearch

    search = StoredOptunaSearch(metric="m", mode="max", sampler=optuna.samplers.TPESampler(seed=0),
                                storage_url=url, study_name=name)
    search.set_search_properties("m", "max", {"x": tune.uniform(0, 1)})
    return search


def _trials(url: str, name: str = "s/tpe/seed_0"):
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_saved_state_names_the_storage_by_url_and_a_restore_fails_forgotten_trials(tmp_path):
    """Saved with the database in folder a, restored from a copy in folder b after a is gone: the
    search goes on in b's database, with b's trials; the trial asked after the save is FAIL there."""
    from optuna.trial import TrialState

    (tmp_path / "a").mkdir()
    url_a, url_b = f"sqlite:///{tmp_path}/a/optuna.db", f"sqlite:///{tmp_path}/b/optuna.db"
    first = _searcher(url_a)
    configs = [first.suggest(f"t{i}") for i in range(2)]
    first.on_trial_complete("t0", {"m": 0.5})
    first.save(str(tmp_path / "searcher.pkl"))
    saved = (tmp_path / "searcher.pkl").read_bytes()
    assert b"RDBStorage" not in saved  # the storage by reference only
    from ray import cloudpickle

    from dmltune.study.optuna_storage import UnopenedStorage
    from dmltune.study.state_copy import _loads

    assert isinstance(cloudpickle.loads(saved)["_storage"], UnopenedStorage)  # any reader loads it, opening nothing
    assert _loads("searcher-state-2026-01-01_00-00-00.pkl", saved)  # resume's check finds it whole
    first.suggest("t2")  # asked, then the driver is killed before the next save
    del first
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")

    second = _searcher(url_b)  # as Tune does on restore: a search set up, then its saved state restored
    second.restore(str(tmp_path / "searcher.pkl"))
    assert second.storage_url == url_b
    assert [t.state for t in _trials(url_b)] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL]
    second.on_trial_complete("t1", {"m": 0.7})  # the unfinished trial, resumed, is told in b
    next_config = second.suggest("t3")
    trials = _trials(url_b)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    assert [t.value for t in trials[:2]] == [0.5, 0.7]
    assert [t.params for t in trials[:2]] == configs and trials[3].params == next_config
    assert not (tmp_path / "a").exists()
    pickle.dumps(_searcher(url_b))  # Tune pickles the Tuner's searcher (tuner.pkl)


def test_a_search_started_afresh_does_not_load_an_old_study_of_its_name(tmp_path):
    """An old study of the name (a folder moved aside with --fresh, its storage elsewhere) is copied
    aside when it has finished trials, and the new search starts empty."""
    import optuna

    from dmltune.study.optuna_storage import start_afresh

    url = f"sqlite:///{tmp_path}/optuna.db"
    old = _searcher(url)
    old.suggest("t0")
    old.on_trial_complete("t0", {"m": 0.25})
    start_afresh(url, "s/tpe/seed_0")
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url))
    assert len(names) == 1 and names[0].startswith("s/tpe/seed_0.old-")
    assert [t.value for t in _trials(url, names[0])] == [0.25]
    new = _searcher(url)
    new.suggest("t0")
    assert len(_trials(url)) == 1
    start_afresh(url, "s/tpe/seed_1")  # nothing of that name: nothing to do


def test_a_restored_search_whose_study_is_gone_is_one_line(tmp_path):
    from ray.tune.search import ConcurrencyLimiter

    from dmltune.study.optuna_storage import prepare_restored

    search = ConcurrencyLimiter(_searcher(f"sqlite:///{tmp_path}/a.db"), max_concurrent=1)
    with pytest.raises(ConfigError, match=r"has no study 's/tpe/seed_0'.*put the database back") as err:
        prepare_restored(search, {"storage_url": f"sqlite:///{tmp_path}/b.db", "study_name": "s/tpe/seed_0"})
    assert "\n" not in str(err.value) and not (tmp_path / "b.db").exists()  # no empty database left behind
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")
    prepare_restored(search, {"storage_url": f"sqlite:///{tmp_path}/b.db", "study_name": "s/tpe/seed_0"})
    assert search.searcher.storage_url == f"sqlite:///{tmp_path}/b.db"


STUDY = """
name: opt
seeds: [0]
resources: {cpu: 1}
concurrency: 1
retries: 0
dataset: {name: digits, val_fraction: 0.4}
model: {backbone: small_cnn, dim: 8, freeze_bn: false}
train: {epochs: 2, batch_size: 12, k: 4, lr: 0.001, batches_per_epoch: 2, workers: 0}
eval: {metric: map@r, nmi: false, similarity_bins: 0}
tracking: {optuna: {}}
arms:
  - name: tpe
    miner: {name: asms, gamma_pos: {uniform: [0.01, 0.3]}}
    loss: {name: soft_contrastive}
    search: {mode: optuna, num_samples: 3}
"""


@pytest.mark.slow
def test_a_study_keeps_its_optuna_searches_in_its_folder(tmp_path, shared_ray):
    """optuna.db in the study folder holds study ``opt/tpe/seed_0``: one COMPLETE trial per Tune trial,
    with the drawn gamma_pos and the final val/map@r as trials.parquet has them; resume keeps it."""
    import optuna
    from synthetic_study import run_study_text

    _, folder, table = run_study_text(tmp_path, STUDY, "opt", env=shared_ray.env())
    url = f"sqlite:///{folder}/optuna.db"
    [summary] = optuna.get_all_study_summaries(url)
    assert summary.study_name == "opt/tpe/seed_0"
    trials = optuna.load_study(study_name="opt/tpe/seed_0", storage=url).get_trials()
    assert len(trials) == 3 and {t.state.name for t in trials} == {"COMPLETE"}
    last = table[table.epoch == 2].sort_values("config/miner.gamma_pos")
    assert sorted(t.params["miner/gamma_pos"] for t in trials) == pytest.approx(list(last["config/miner.gamma_pos"]))
    by_gamma = {round(t.params["miner/gamma_pos"], 12): t.value for t in trials}
    assert [by_gamma[round(g, 12)] for g in last["config/miner.gamma_pos"]] == pytest.approx(list(last["val/map@r"]))
    assert yaml.safe_load((folder / "study.yaml").read_text())["tracking"] == {"optuna": {}}


def test_the_storage_does_not_change_what_the_search_draws(tmp_path):
    """The same seeded TPE search, in memory (no tracking.optuna) and in the storage, draws the same
    values, TPE's own trials after its 10 random ones included."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    plain = OptunaSearch(metric="m", mode="max", sampler=optuna.samplers.TPESampler(seed=3))
    plain.set_search_properties("m", "max", {"x": tune.uniform(0, 1)})
    stored = _searcher(f"sqlite:///{tmp_path}/o.db")
    stored._sampler = stored._ot_study.sampler = optuna.samplers.TPESampler(seed=3)
    draws = {"plain": [], "stored": []}
    for i in range(14):
        for name, search in (("plain", plain), ("stored", stored)):
            x = search.suggest(f"t{i}")["x"]
            search.on_trial_complete(f"t{i}", {"m": -(x - 0.3) ** 2})
            draws[name].append(x)
    assert draws["plain"] == draws["stored"]


@pytest.mark.slow
def test_a_killed_study_resumed_from_a_copy_keeps_its_searches_in_the_copy(tmp_path, shared_ray):
    """The driver is killed once the first trial has finished; the study folder is copied elsewhere
    and the original deleted; `resume` restores the experiment (its saved searcher state read as
    whole) and finishes the search in the copy's optuna.db: every trial of the results table is one
    COMPLETE Optuna trial there with the same drawn value, and nothing is left RUNNING. (How many
    trials the resumed search runs is Tune's restore, not the storage's: not checked here.)"""
    import subprocess
    import sys

    import optuna
    import pandas as pd

    from synthetic_study import run_killed_after_first_trial

    first = tmp_path / "first"
    run_killed_after_first_trial(first, STUDY.replace("epochs: 2,", "epochs: 3,"), shared_ray.env())
    assert (first / "results" / "opt" / "optuna.db").is_file()
    shutil.copytree(first / "results", tmp_path / "moved" / "results", symlinks=True)
    shutil.rmtree(first)  # a search still pointed at the old path would fail: its folder is gone
    folder = tmp_path / "moved" / "results" / "opt"
    resumed = subprocess.run([sys.executable, "-m", "dmltune", "resume", str(folder)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env=shared_ray.env())
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "starts over" not in resumed.stdout and "damaged" not in resumed.stdout, resumed.stdout[-2000:]
    assert not first.exists()
    table = pd.read_parquet(folder / "trials.parquet")
    drawn = sorted(table.groupby("trial_id")["config/miner.gamma_pos"].first())
    assert drawn and (table.groupby("trial_id")["epoch"].max() == 3).all()
    trials = optuna.load_study(study_name="opt/tpe/seed_0", storage=f"sqlite:///{folder}/optuna.db").get_trials()
    assert "RUNNING" not in {t.state.name for t in trials}
    complete = sorted(t.params["miner/gamma_pos"] for t in trials if t.state.name == "COMPLETE")
    assert complete == pytest.approx(drawn)
