"""The study section ``tracking: {mlflow: {...}}``: its one-line errors, and a tiny Ray Tune experiment
logged to a real MLflow tracking server (one run per trial: the config as parameters, every numeric
report key as a metric per epoch); a resumed trial continues its run."""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from dmltune.registry import ConfigError
from dmltune.study import tracking as tr
from dmltune.study.tracking import mlflow_name, parse_tracking, tracking_callbacks

URI = "http://127.0.0.1:5000"


@pytest.fixture
def with_mlflow(monkeypatch):
    """parse_tracking as if mlflow were installed (its checks do not need it)."""
    monkeypatch.setattr(tr, "mlflow_installed", lambda: True)


def _error(section, study="s") -> str:
    with pytest.raises(ConfigError) as err:
        parse_tracking(section, study)
    message = str(err.value)
    assert "\n" not in message and message.startswith("study: ")
    return message


@pytest.mark.parametrize("section", [None, {}])
def test_no_section_no_tracking(section):
    assert parse_tracking(section, "s") is None
    assert tracking_callbacks(parse_tracking(section, "s"), "arm") == []


def test_defaults_and_local_stores(with_mlflow, tmp_path, monkeypatch):
    assert parse_tracking({"mlflow": {"tracking_uri": URI}}, "study1") == {
        "mlflow": {"tracking_uri": URI, "experiment": "study1", "tags": {}}}
    got = parse_tracking({"mlflow": {"tracking_uri": URI, "experiment": "e", "tags": {"owner": "me", "n": 3}}}, "s")
    assert got["mlflow"]["experiment"] == "e" and got["mlflow"]["tags"] == {"owner": "me", "n": "3"}
    monkeypatch.chdir(tmp_path)  # a relative local store is made absolute: a study resumes from any folder
    assert parse_tracking({"mlflow": {"tracking_uri": "sqlite:///m.db"}}, "s")["mlflow"]["tracking_uri"] == \
        f"sqlite:///{tmp_path.resolve() / 'm.db'}"
    assert parse_tracking({"mlflow": {"tracking_uri": "mlruns"}}, "s")["mlflow"]["tracking_uri"] == \
        str(tmp_path.resolve() / "mlruns")
    for uri in ("sqlite:////abs/m.db", "file:///abs/mlruns", "https://mlflow.example.org", "databricks"):
        assert parse_tracking({"mlflow": {"tracking_uri": uri}}, "s")["mlflow"]["tracking_uri"] == uri


@pytest.mark.parametrize("section, fragment", [
    ("mlflow", "'tracking' must be a mapping like {mlflow: {tracking_uri:"),
    (["mlflow"], "'tracking' must be a mapping like {mlflow: {tracking_uri:"),
    ({"comet": {"project": "x"}}, "tracking has no parameter 'comet'; valid parameters: mlflow, wandb, optuna"),
    ({"mlfow": {"tracking_uri": URI}}, "no parameter 'mlfow' (did you mean 'mlflow'?)"),
    ({"mlflow": None}, "tracking.mlflow is empty; give its settings like {tracking_uri:"),
    ({"mlflow": URI}, f"tracking.mlflow must be a mapping like {{tracking_uri: '{URI}'}}"),
    ({"mlflow": [URI]}, "tracking.mlflow must be a mapping like {tracking_uri:"),
    ({"mlflow": {}}, "tracking.mlflow needs a tracking_uri, e.g. http://127.0.0.1:5000"),
    ({"mlflow": {"experiment": "e"}}, "needs a tracking_uri"),
    ({"mlflow": {"tracking_uri": "  "}}, "needs a tracking_uri"),
    ({"mlflow": {"tracking_uri": 5000}}, "'tracking_uri' must be a string, got 5000"),
    ({"mlflow": {"tracking_uri": "http://host:5000 x"}}, "contains spaces or control characters"),
    ({"mlflow": {"tracking_uri": URI, "experiment_name": "e"}},
     "tracking.mlflow has no parameter 'experiment_name' (did you mean 'experiment'?)"),
    ({"mlflow": {"tracking_uri": URI, "experiment": 3}}, "'experiment' must be a string"),
    ({"mlflow": {"tracking_uri": URI, "experiment": "x" * 501}}, "MLflow allows 500"),
    ({"mlflow": {"tracking_uri": URI, "tags": "a"}}, "'tags' must be a mapping"),
    ({"mlflow": {"tracking_uri": URI, "tags": {"arm": "x"}}}, "tag 'arm' is set by dmltune on every run"),
    ({"mlflow": {"tracking_uri": URI, "tags": {"a@b": "x"}}}, "tag name 'a@b' is not valid"),
    ({"mlflow": {"tracking_uri": URI, "tags": {"a": [1]}}}, "tag 'a' must be a string or a number"),
])
def test_bad_sections_are_one_line_errors(with_mlflow, section, fragment):
    assert fragment in _error(section)


def test_mlflow_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(tr, "mlflow_installed", lambda: False)
    assert _error({"mlflow": {"tracking_uri": URI}}) == \
        "study: tracking.mlflow needs the mlflow package: pip install 'dmltune[tracking]'"
    assert "needs a tracking_uri" in _error({"mlflow": {}})  # shape mistakes first: they need no package


def test_metric_names_are_made_valid_for_mlflow():
    assert mlflow_name("val/map@r") == "val/map_at_r"
    assert mlflow_name("test/recall@1") == "test/recall_at_1"
    assert mlflow_name("loss") == "loss" and mlflow_name("train/lr") == "train/lr"
    assert mlflow_name("λ ratio%") == "λ ratio_"
    assert len(mlflow_name("k" * 300)) == 250
    validation = pytest.importorskip("mlflow.utils.validation")
    for key in ("val/map@r", "recall@1", "a:b", "x%y", "loss"):
        if key in ("val/map@r", "recall@1"):
            assert not validation.validate_param_and_metric_name(key)  # why the names are changed
        assert validation.validate_param_and_metric_name(mlflow_name(key))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_line_error_at_once():
    pytest.importorskip("mlflow")
    uri = f"http://127.0.0.1:{_free_port()}"
    tracking = {"mlflow": {"tracking_uri": uri, "experiment": "e", "tags": {}}}
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=f"the MLflow tracking server at {uri} does not answer") as err:
        tracking_callbacks(tracking, "arm")
    assert "\n" not in str(err.value) and time.perf_counter() - started < 15


def test_callback_is_rays_and_pickles(tmp_path):
    pytest.importorskip("mlflow")
    from ray import cloudpickle
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    tracking = {"mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db", "experiment": "e", "tags": {"owner": "me"}}}
    [callback] = tracking_callbacks(tracking, "arm1", study_name="s")
    assert isinstance(callback, MLflowLoggerCallback)
    assert callback.tags == {"owner": "me", "study": "s", "arm": "arm1"}
    assert callback.experiment_name == "e" and callback.tracking_uri == tracking["mlflow"]["tracking_uri"]
    copy = cloudpickle.loads(cloudpickle.dumps(callback))  # Tune pickles a run's callbacks (tuner.pkl)
    assert type(copy) is type(callback) and copy.tags == callback.tags
    assert b"_earlier_run" not in cloudpickle.dumps(callback)  # by reference (dmltune.study.tracking), not by value


class _Trial:
    """What the callback reads of a Ray Tune trial."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config = trial_id, config

    def __str__(self):
        return f"tune_trainable_{self.trial_id}"


def _result(epoch: int, replayed: bool = False) -> dict:
    out = {"epoch": epoch, "loss": 1.0 / epoch, "val/map@r": 0.1 * epoch, "status": "ok", "done": False,
           "training_iteration": epoch + 10 * replayed, "config": {"seed": 0}, "pid": 123, "test/nmi": float("nan")}
    return {**out, "replayed": True} if replayed else out


@pytest.mark.slow
def test_resumed_trial_continues_its_run(tmp_path, monkeypatch):
    """A second session (a resumed study) logs to the trial's run from the first, skips the epochs
    it replays, and steps are epochs (not Tune's iterations, which count the replayed reports)."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    tracking = {"mlflow": {"tracking_uri": uri, "experiment": "e", "tags": {}}}
    trial = _Trial("abc12_00000", {"seed": 0, "miner": {"name": "asms", "gamma_pos": 0.1}, "train": {"lr": 1e-3}})
    first = tracking_callbacks(tracking, "arm1", study_name="s")[0]
    first.setup()
    first.log_trial_start(trial)
    for epoch in (1, 2):
        first.log_trial_result(epoch, trial, _result(epoch))
    # the process is killed here: the run stays RUNNING
    second = tracking_callbacks(tracking, "arm1", study_name="s")[0]
    second.setup()
    second.log_trial_start(trial)
    for epoch in (1, 2):
        second.log_trial_result(epoch + 2, trial, _result(epoch, replayed=True))
    second.log_trial_result(5, trial, _result(3))
    second.log_trial_end(trial)
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "arm1_abc12_00000"
    assert {k: run.data.tags[k] for k in ("study", "arm", "trial_id", "seed")} == \
        {"study": "s", "arm": "arm1", "trial_id": "abc12_00000", "seed": "0"}
    assert run.data.params == {"seed": "0", "miner/name": "asms", "miner/gamma_pos": "0.1", "train/lr": "0.001"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/map_at_r")] == \
        [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]
    assert set(run.data.metrics) == {"epoch", "loss", "val/map_at_r", "training_iteration"}  # no NaN, no bookkeeping


def _wait_until_up(uri: str, proc, log: Path, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer within {limit:.0f} s: {log.read_text()[-2000:]}")


def _stop(proc) -> None:
    """End the server and its workers (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.slow
def test_trials_are_logged_to_a_mlflow_server(tmp_path, monkeypatch, tiny_config):
    pytest.importorskip("mlflow")
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    from dmltune.training import tune_trainable

    for name, value in (("RAY_AUTH_MODE", "disabled"), ("RAY_CHDIR_TO_TRIAL_DIR", "0"),
                        ("MLFLOW_DISABLE_TELEMETRY", "true"), ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")):
        monkeypatch.setenv(name, value)
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow-server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
             "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        ray.init(address="local", include_dashboard=False, num_cpus=2, log_to_driver=False)  # while the server starts
        try:
            tracking = parse_tracking({"mlflow": {"tracking_uri": uri, "tags": {"owner": "ci"}}}, "tiny")
            cfg = tiny_config(train__epochs=2, train__batches_per_epoch=2)
            cfg["seed"] = tune.grid_search([0, 1])
            _wait_until_up(uri, server, log)
            tuner = tune.Tuner(
                tune.with_resources(tune_trainable, {"cpu": 1}), param_space=cfg,
                run_config=tune.RunConfig(name="grid", storage_path=str(tmp_path / "study"), verbose=0,
                                          callbacks=tracking_callbacks(tracking, "grid")))
            results = tuner.fit()
            assert len(results) == 2 and not results.errors
        finally:
            ray.shutdown()
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("tiny")  # the study's name by default
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
        for run in runs:
            assert {k: run.data.tags[k] for k in ("study", "arm", "owner")} == {"study": "tiny", "arm": "grid",
                                                                                 "owner": "ci"}
            params = run.data.params
            assert params["miner/name"] == "asms" and params["loss/name"] == "soft_contrastive"
            assert params["train/epochs"] == "2" and params["dataset/name"] == "digits"
            history = client.get_metric_history(run.info.run_id, "val/map_at_r")
            assert [m.step for m in history] == [1, 2] and all(0 <= m.value <= 1 for m in history)
            assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2]
            assert {"loss", "test/recall_at_1", "images_per_s", "wall_s"} <= set(run.data.metrics)
        # Ray's own TensorBoard logger (tensorboardX) writes event files in every trial folder
        events = list((tmp_path / "study" / "grid").glob("*/events.out.tfevents.*"))
        if importlib.util.find_spec("tensorboardX"):
            assert len({e.parent for e in events}) == 2, events
    finally:
        _stop(server)


@pytest.mark.slow
def test_a_tracking_server_that_goes_away_mid_study_never_stops_training(tmp_path, shared_ray):
    """The MLflow server dies while the first trial trains: every trial still finishes, the failure
    is one line (no traceback) with the server's address, and the exit code is 1."""
    pytest.importorskip("mlflow")
    from test_lifecycle import STUDY, final_rows

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow-server.log"
    env = {**shared_ray.env(), "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
             "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path, env=env)
    driver = None
    try:
        study = {**STUDY, "tracking": {"mlflow": {"tracking_uri": uri}},
                 "train": {**STUDY["train"], "epochs": 6, "batches_per_epoch": 10}}
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(study))
        _wait_until_up(uri, server, log)
        started = time.monotonic()
        driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", str(path)], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for line in driver.stdout:  # the first trial trains and is being logged
            if "epoch 1/6" in line:
                break
        _stop(server)
        out, err = driver.communicate(timeout=300)
        took = time.monotonic() - started
    finally:
        _stop(server)
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 1, out[-2000:] + err[-3000:]
    assert f"MLflow tracking at {uri} failed" in err and "Traceback" not in err, err[-3000:]
    assert "every result is in trials.parquet" in err
    rows = final_rows(tmp_path / "results" / "life")
    assert list(rows.status) == ["ok", "ok"] and (rows.epoch == 6).all()
    assert took < 150, took  # seconds of retries, not MLflow's default minutes
