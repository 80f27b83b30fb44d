"""The study section ``tracking: {wandb: {...}}``: its one-line errors, the callback it builds (Ray
Tune's ``WandbLoggerCallback``), and a tiny real study logged offline (``WANDB_MODE=offline``): one
W&B run folder per trial, holding the trial's configuration and its per-epoch metrics, read back
from the run's own record (the ``.wandb`` file)."""

import json
from pathlib import Path

import pytest
import yaml

from dmltune.registry import ConfigError
from dmltune.study import tracking as tr
from dmltune.study.tracking import describe, parse_tracking, tracking_callbacks
from synthetic_study import tiny_study


def _error(section) -> str:
    with pytest.raises(ConfigError) as err:
        parse_tracking(section, "s")
    message = str(err.value)
    assert "\n" not in message and message.startswith("study: ")
    return message


def test_wandb_section_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "wandb_installed", lambda: True)
    monkeypatch.chdir(tmp_path)
    assert parse_tracking({"wandb": {"mode": "offline"}}, "my-study") == \
        {"wandb": {"project": "my-study", "mode": "offline", "dir": None, "entity": None}}
    assert parse_tracking({"wandb": {"project": "p", "dir": "runs", "entity": "team"}}, "s") == \
        {"wandb": {"project": "p", "mode": None, "dir": str(tmp_path / "runs"), "entity": "team"}}
    both = parse_tracking({"wandb": {}, "mlflow": {"tracking_uri": "http://h:5000"}}, "s") if tr.mlflow_installed() else None
    if both:
        assert set(both) == {"wandb", "mlflow"}
        assert "MLflow at http://h:5000" in describe(both) and "W&B project 's'" in describe(both)


@pytest.mark.parametrize("section, fragment", [
    ({"wandb": None}, "study: tracking.wandb is empty; give its settings like {project: NAME, mode: offline}"),
    ({"wandb": "p"}, "tracking.wandb must be a mapping like {project: NAME, mode: offline}, got 'p'"),
    ({"wandb": {"mode": "dryrun"}}, "'mode' = 'dryrun' is not valid; choose one of 'online', 'offline'"),
    ({"wandb": {"project": "a/b"}}, "'project' 'a/b' is not a valid W&B project name"),
    ({"wandb": {"project": "x" * 129}}, "at most 128 characters"),
    ({"wandb": {"projekt": "p"}}, "tracking.wandb has no parameter 'projekt' (did you mean 'project'?)"),
    ({"wandb": {"project": 3}}, "'project' must be a string"),
    ({"wandb": {}, "wand": {}}, "tracking has no parameter 'wand' (did you mean 'wandb'?)"),
])
def test_bad_wandb_sections_are_one_line_errors(monkeypatch, section, fragment):
    monkeypatch.setattr(tr, "wandb_installed", lambda: True)
    assert fragment in _error(section)


def test_wandb_missing_names_the_extra(monkeypatch):
    monkeypatch.setattr(tr, "wandb_installed", lambda: False)
    assert _error({"wandb": {"mode": "offline"}}) == \
        "study: tracking.wandb needs the wandb package: pip install 'dmltune[tracking]'"
    assert "'mode' = 'x' is not valid" in _error({"wandb": {"mode": "x"}})  # shape first: it needs no package


def test_online_without_credentials_is_one_line_before_any_trial(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))           # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    tracking = parse_tracking({"wandb": {"mode": "online"}}, "s")
    with pytest.raises(ConfigError, match=r"W&B online mode needs credentials.*`wandb login`.*mode: offline"):
        tracking_callbacks(tracking, "arm", "s")
    assert tracking_callbacks(tracking, "arm", "s", check=False)  # the check is the driver's, once


def test_callback_is_rays_with_the_study_settings(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from ray import cloudpickle
    from ray.air.integrations.wandb import WandbLoggerCallback

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracking = parse_tracking({"wandb": {"project": "p", "mode": "offline"}}, "s")
    [callback] = tracking_callbacks(tracking, "arm1", "s", directory=tmp_path / "study")
    assert isinstance(callback, WandbLoggerCallback) and callback.project == "p" and callback.group == "arm1"
    assert callback.kwargs == {"mode": "offline", "dir": str(tmp_path / "study"), "tags": ["s", "arm1"],
                               "job_type": "trial", "resume": "allow"}
    assert (tmp_path / "study").is_dir()
    callback.setup()  # Ray's own check asks for an API key unless WANDB_MODE says offline: the study's mode does
    assert "WANDB_MODE" not in __import__("os").environ
    copy = cloudpickle.loads(cloudpickle.dumps(callback))  # Tune pickles a run's callbacks
    assert type(copy) is type(callback) and copy.kwargs == callback.kwargs
    monkeypatch.setenv("WANDB_MODE", "offline")  # no mode in the file: W&B's variable decides
    [callback] = tracking_callbacks(parse_tracking({"wandb": {}}, "s"), "arm1", "s")
    assert callback.kwargs["mode"] == "offline" and "dir" not in callback.kwargs
    monkeypatch.setenv("WANDB_MODE", "disabled")  # passed on: the logging processes may not see the variable
    [callback] = tracking_callbacks(parse_tracking({"wandb": {}}, "s"), "arm1", "s")
    assert callback.kwargs["mode"] == "disabled"
    callback.setup()  # no API key needed


def test_replayed_epochs_are_not_logged_again():
    pytest.importorskip("wandb")
    [callback] = tracking_callbacks(parse_tracking({"wandb": {"mode": "offline"}}, "s"), "arm1", "s")
    sent = []
    callback._trial_logging_actors["t"] = object()  # as if its logging process were running
    callback._trial_queues["t"] = type("Queue", (), {"put": lambda self, item: sent.append(item[1])})()
    callback.log_trial_result(3, "t", {"epoch": 1, "replayed": True, "loss": 1.0})
    callback.log_trial_result(4, "t", {"epoch": 2, "loss": 0.5})
    assert [r["epoch"] for r in sent] == [2]


def wandb_records(path: Path):
    """The records of a W&B run file (``run-ID.wandb``): W&B's transaction log, in LevelDB's log
    format (a 7-byte header ``:W&B`` + magic + version, then 32 KiB blocks of chunks with a 7-byte
    header: CRC, length, type FULL/FIRST/MIDDLE/LAST) of ``wandb_internal_pb2.Record`` messages.
    wandb 0.30+ has no Python reader for it, and writes no files/config.yaml offline."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    position, block, parts = 7, 32768, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        parts += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL, LAST
            yield wandb_internal_pb2.Record.FromString(parts)
            parts = b""


def read_run(folder: Path) -> dict:
    """An offline run folder as {"run": its run record, "config": the final config, "history": [{key: value}]}."""
    [log] = folder.glob("run-*.wandb")
    run, config, history = None, {}, []
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    return {"run": run, "config": config, "history": history}


STUDY = tiny_study("wb", train={**tiny_study("wb")["train"], "epochs": 2},
                   tracking={"wandb": {"project": "wb-test"}})


@pytest.mark.slow
def test_a_study_logged_offline_has_one_run_per_trial_with_its_config_and_epochs(tmp_path, shared_ray):
    pytest.importorskip("wandb")
    from synthetic_study import run_study_text

    env = {**shared_ray.env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    _, folder, table = run_study_text(tmp_path, yaml.safe_dump(STUDY), "wb", env=env)
    runs = sorted((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs
    seen = set()
    for run_folder in runs:
        run = read_run(run_folder)
        assert run["run"] is not None, (run_folder, [(p.name, p.stat().st_size) for p in run_folder.rglob("*")],
                                        (run_folder / "logs" / "debug-internal.log").read_text()[-3000:])
        trial_id = run["run"].run_id
        rows = table[table.trial_id == trial_id].sort_values("epoch")
        assert len(rows) == 2, (trial_id, sorted(set(table.trial_id)))
        seen.add(trial_id)
        assert run["run"].project == "wb-test" and run["run"].run_group == "grid"
        assert list(run["run"].tags) == ["wb", "grid"]
        config = run["config"]
        assert config["seed"] == 0 and config["miner"]["name"] == "asms"
        assert config["miner"]["gamma_pos"] == rows["config/miner.gamma_pos"].iloc[0]
        assert config["train"]["epochs"] == 2 and config["dataset"]["name"] == "digits"
        epochs = [h for h in run["history"] if "epoch" in h]
        assert [h["epoch"] for h in epochs] == [1, 2]
        assert [h["val/map@r"] for h in epochs] == pytest.approx(list(rows["val/map@r"]))
        assert [h["loss"] for h in epochs] == pytest.approx(list(rows["loss"]))
        assert "test/recall@1" in epochs[-1]
    assert seen == set(table.trial_id)


def test_list_names_the_tracking_sections(capsys):
    from dmltune.cli import build_parser, main

    help_text = build_parser()._subparsers._group_actions[0].choices["list"].format_help()
    assert "tracking" in help_text
    assert main(["list", "tracking.wandb"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tracking.wandb") and all(f"\n  {key} " in out for key in ("project", "mode", "dir", "entity"))
    assert main(["list", "tracking"]) == 0
    out = capsys.readouterr().out
    assert all(title in out for title in ("tracking (", "tracking.mlflow (", "tracking.wandb (", "tracking.optuna ("))
