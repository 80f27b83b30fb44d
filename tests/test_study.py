"""Study files: validation before anything runs, the plan, a real run, consolidation and resume."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dmltune.registry import ConfigError
from dmltune.study import parse_study

ROOT = Path(__file__).resolve().parents[1]

STUDY = {
    "name": "tiny",
    "seeds": [0, 1],
    "resources": {"cpu": 1},
    "dataset": {"name": "digits", "val_fraction": 0.4},
    "model": {"backbone": "small_cnn", "dim": 8, "freeze_bn": False},
    "train": {"epochs": 2, "batch_size": 24, "k": 8, "lr": 0.001, "batches_per_epoch": 3},
    "eval": {"metric": "map@r", "nmi": False},
    "arms": [
        {"name": "fixed", "miner": {"name": "asms", "gamma_pos": {"grid": [0.05, 0.2]}}, "loss": {"name": "soft_contrastive"}},
        {"name": "adaptive", "miner": {"name": "at_asms"}, "loss": {"name": "soft_contrastive"}},
    ],
}


def study(**changes):
    raw = copy.deepcopy(STUDY)
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for key in path:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def test_valid_study_and_its_plan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parsed = parse_study(study())
    assert [a.name for a in parsed.arms] == ["fixed", "adaptive"]
    assert parsed.arms[0].trials_per_seed == 2 and parsed.arms[1].trials_per_seed == 1
    assert parsed.directory == tmp_path / "results" / "tiny"


@pytest.mark.parametrize("changes, fragment", [
    ({"arms__0__miner": {"name": "asmss"}}, "arm 'fixed'"),
    ({"arms__0__miner": {"name": "asms", "gama_pos": 0.1}}, "did you mean 'gamma_pos'"),
    ({"arms__0__miner": {"name": "asms", "gamma_pos": "0.1"}}, "'gamma_pos' must be a number"),
    ({"arms__0__miner": {"name": "asms", "gamma_pos": {"grid": [0.1, 3.0]}}}, "in grid [0.1, 3.0] of miner.gamma_pos"),
    ({"arms__0__miner": {"name": "asms", "gamma_pos": {"grid": []}}}, "non-empty list"),
    ({"arms__1__name": "fixed"}, "arm names must be unique"),
    ({"train__batch_size": 20}, "not divisible by train.k"),
    ({"train__k": 1}, "'k' = 1 is outside"),
    ({"resources": {"cpu": 1, "gpu": -0.5}}, "GPU fraction in (0, 1]"),
    ({"resources": {"cpu": 1, "gpu": 1.5}}, "GPU fraction in (0, 1]"),
    ({"dataset": {"name": "cub200", "root": "/nonexistent/CUB"}}, "/nonexistent/CUB/images.txt not found"),
    ({"arms__0__search": {"mode": "bayes"}}, "'mode' = 'bayes' is not valid"),
    ({"arms__1__search": {"mode": "random", "scheduler": {"asha": {"grace_period": 1}}}}, "needs max_t"),
    ({"arms__1__search": {"mode": "random", "scheduler": {"hyperband": {}}}}, "only ASHA"),
    ({"arms__1__loss": {"name": "soft_contrastive", "lam": {"meta": {"init": 0.9, "clamp": [0.1, 0.5]}}}}, "outside clamp"),
    ({"arms__0__miner": {"name": "asms", "gamma_pos": {"uniform": [0.0, 0.2]}}}, "search.mode is grid"),
    ({"arms__0__search": {"mode": "optuna"}}, "use {choice: [...]}"),
    ({"arms__0__miner": {"name": "asms", "gamma_pos": {"uniform": [0.3, 0.2]}}, "arms__0__search": {"mode": "random"}}, "low < high"),
    ({"seeds": []}, "non-empty list"),
    ({"arms": []}, "non-empty list of arms"),
    ({"optimiser": "adam"}, "unknown key"),
    ({"arms__0__lr": 0.1}, "unknown key(s) ['lr']"),
    ({"train__batch_size": 48}, "a batch needs 6 classes"),
])
def test_bad_studies_are_refused_in_one_line_naming_the_key(changes, fragment):
    with pytest.raises(ConfigError) as info:
        parse_study(study(**changes))
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message


def test_validate_command_exit_codes(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(study()))
    bad.write_text(yaml.safe_dump(study(arms__0__miner={"name": "asms", "gamma_neg": -3})))
    run = [sys.executable, "-m", "dmltune", "validate"]
    ok = subprocess.run(run + [str(good)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0 and "total" in ok.stdout and "4 trials" in ok.stdout
    ko = subprocess.run(run + [str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert ko.returncode == 2 and ko.stderr.count("\n") == 1 and "arm 'fixed'" in ko.stderr
    overridden = subprocess.run(run + [str(bad), "--set", "arms=[{name: a, loss: {name: ms}}]"],
                                capture_output=True, text=True, cwd=tmp_path)
    assert overridden.returncode == 0


def test_shipped_quickstart_is_valid():
    from dmltune.study import load_study

    parsed = load_study(ROOT / "studies" / "quickstart.yaml")
    assert {a.name for a in parsed.arms} >= {"ms_simp", "softcon_asms_grid", "softcon_at_asms", "ddtas"}


@pytest.mark.slow
def test_run_consolidate_and_resume(tmp_path, shared_ray):
    raw = study()
    raw["arms"].append({"name": "tpe", "miner": {"name": "asms", "gamma_pos": {"uniform": [0.01, 0.3]}},
                        "loss": {"name": "soft_contrastive"}, "search": {"mode": "optuna", "num_samples": 2}})
    raw["seeds"] = [0]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "dmltune", "run", str(path)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=shared_ray.env())
    assert first.returncode == 0, first.stderr[-2000:]
    assert "[5/5]" in first.stdout
    table = pd.read_parquet(tmp_path / "results" / "tiny" / "trials.parquet")
    assert table.groupby("arm").trial_id.nunique().to_dict() == {"fixed": 2, "adaptive": 1, "tpe": 2}
    assert set(table.epoch) == {1, 2} and len(table) == 10
    assert (table.status == "ok").all() and table["config/miner.gamma_pos"].notna().sum() >= 8
    ids = set(table.trial_id)
    again = subprocess.run([sys.executable, "-m", "dmltune", "resume", str(tmp_path / "results" / "tiny")],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300, env=shared_ray.env())
    assert again.returncode == 0, again.stderr[-2000:]
    after = pd.read_parquet(tmp_path / "results" / "tiny" / "trials.parquet")
    assert set(after.trial_id) == ids and len(after) == len(table)  # nothing ran again
    pd.testing.assert_frame_equal(after, table)
    assert "adaptive" in again.stdout and "to match adaptive" in again.stdout  # the summary follows
    for arm in ("fixed", "tpe"):                                                 # with every arm's verdict
        assert re.search(rf"^  {arm}\s+(matched|not_matched|inconclusive) ", again.stdout, re.M), again.stdout
    folder = tmp_path / "results" / "tiny"
    text = (folder / "report.md").read_text()  # run and resume write the report
    assert '<img src="data:image/' in (folder / "report.html").read_text() and "report.html" in first.stdout
    assert "## Tuning cost to match adaptive" in text and "| tpe |" in text
    for name in ("best_so_far", "heatmaps", "test_metric", "similarity_histograms", "mined_pairs"):
        assert (folder / "figures" / f"{name}.png").is_file(), name
    report = subprocess.run([sys.executable, "-m", "dmltune", "report", str(folder), "--reference", "fixed"],
                            capture_output=True, text=True, cwd=tmp_path, env=shared_ray.env())
    assert report.returncode == 0, report.stderr[-2000:]
    assert "to match fixed" in report.stdout and "tpe" in report.stdout


@pytest.mark.parametrize("name, arms", [
    ("fixed_vs_dynamic", 9), ("fixed_vs_dynamic_fashion", 9), ("ddtas_table1", 12), ("dynamic_sampling_ablation", 10),
])
def test_shipped_paper_studies_are_valid(name, arms, monkeypatch):
    from dmltune.study import load_study

    monkeypatch.delenv("DMLTUNE_CUB200", raising=False)
    path = ROOT / "studies" / f"{name}.yaml"
    parsed = load_study(path, check_data=False)
    assert len(parsed.arms) == arms and parsed.seeds == [0, 1, 2]
    assert parsed.notes == []  # no dynamic loss decoupled from its dsml miner's τ
    if name.startswith("fixed_vs_dynamic"):  # PBT over the same thresholds, the generic adaptive baseline
        pbt = [a for a in parsed.arms if a.search["mode"] == "pbt"]
        assert len(pbt) == 1 and pbt[0].config["protocol"]["mutable"] == ["miner.gamma_pos", "miner.gamma_neg", "loss.lam"]
    if parsed.arms[0].config["dataset"]["name"] == "cub200":
        with pytest.raises(ConfigError, match="needs dataset.root"):
            load_study(path)  # a clear error when the data is absent


TWO_NODES = """
import sys, yaml, ray
from ray.cluster_utils import Cluster
from dmltune.study import parse_study
from dmltune.study.runner import run_study

cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
try:
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(run_study(parse_study(yaml.safe_load(open(sys.argv[1])))))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
def test_study_on_a_two_node_cluster(tmp_path, monkeypatch):
    # a fresh interpreter: Ray keeps process-wide state from earlier in-process Tune runs
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    raw = study(train__epochs=1)
    raw["arms"] = [{"name": "grid", "miner": {"name": "asms", "gamma_pos": {"grid": [0.0, 0.1, 0.2]}},
                    "loss": {"name": "soft_contrastive"}}]
    raw["concurrency"] = 2
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    run = subprocess.run([sys.executable, "-c", TWO_NODES, "s.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    table = pd.read_parquet(tmp_path / "results" / "tiny" / "trials.parquet")
    assert table.trial_id.nunique() == 6 and (table.status == "ok").all(), table.error.unique()
    assert table.node_id.nunique() == 2  # trials ran on both nodes


def test_cluster_configs_pass_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    for path in (ROOT / "cluster.yaml", ROOT / "docs" / "examples" / "cluster_local.yaml"):
        config = yaml.safe_load(path.read_text())
        validate_config(prepare_config(config))
    assert yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1


def test_gpu_auto_gives_each_arm_its_backbones_share(tmp_path, monkeypatch):
    from dmltune.study.plan import plan_lines

    monkeypatch.chdir(tmp_path)
    raw = study()
    raw["resources"] = {"cpu": 1, "gpu": "auto"}
    raw["arms"][1]["model"] = {"backbone": "resnet18", "dim": 8}
    parsed = parse_study(raw, check_data=False)
    assert [a.gpu(parsed.resources["gpu"]) for a in parsed.arms] == [0.125, 0.25]  # small_cnn, resnet18
    assert parsed.arms[0].gpu(0.5) == 0.5 and parsed.arms[0].gpu(None) == 0.0
    plan = "\n".join(plan_lines(parsed))
    assert "GPU share by backbone" in plan and "(0.25 GPU per trial)" in plan
    raw["resources"]["gpu"] = "half"
    with pytest.raises(ConfigError, match="GPU fraction in \\(0, 1\\] or auto"):
        parse_study(raw, check_data=False)


def test_asha_counts_epochs_not_reports(tmp_path, monkeypatch):
    """A resumed trial reports its past epochs again, so ASHA's clock must be the epoch (Tune's
    iteration count would overrun max_t and stop the trial before its last epoch)."""
    from dmltune.study.runner import _tune_config

    monkeypatch.chdir(tmp_path)
    parsed = parse_study(study(arms__1__search={"mode": "random", "num_samples": 2,
                                                "scheduler": {"asha": {"max_t": 2, "grace_period": 1}}}))
    config = _tune_config(parsed, parsed.arms[1], "val/map@r", 0)
    assert config.scheduler._time_attr == "epoch" and config.scheduler._max_t == 2


def test_dynamic_sampling_ablation_tp_star_is_eq_10_with_lambda_half():
    from dmltune.config import resolve_config
    from dmltune.study import load_study

    parsed = load_study(ROOT / "studies" / "dynamic_sampling_ablation.yaml", check_data=False)
    arms = {a.name: resolve_config({**a.config, "seed": 0})["loss"] for a in parsed.arms}
    assert arms["tp_star"]["tp_form"] == "paper" and arms["tp_star"]["margin"] == 0.5 and arms["tp_star"]["dynamic"]
    assert arms["tp"]["margin"] == 0.5 and not arms["tp"]["dynamic"]
    for name in ("bd_star", "ms_star", "lf_star", "tp_star"):  # one τ for selection and weights
        assert (arms[name]["tau_p"], arms[name]["tau_n"]) == (0.9, 0.1)


@pytest.mark.parametrize("setting, dataset, workers, expected", [
    ("auto", {"name": "digits"}, 2, True),            # in memory: no DataLoader workers ever start
    ("auto", {"name": "folder", "root": "/x"}, 2, False),  # image files decoded by worker processes
    ("auto", {"name": "folder", "root": "/x"}, 0, True),
    (True, {"name": "folder", "root": "/x"}, 2, True),  # YAML's true
    (False, {"name": "digits"}, 0, False),
    ("false", {"name": "digits"}, 0, False),
])
def test_reuse_actors_auto_reuses_workers_where_no_trial_starts_processes(setting, dataset, workers, expected):
    from dmltune.study.schema import parse_study

    raw = {"name": "r", "reuse_actors": setting, "dataset": dataset, "train": {"workers": workers},
           "arms": [{"name": "a", "miner": {"name": "asms"}, "loss": {"name": "soft_contrastive"}}]}
    assert parse_study(raw, check_data=False).reuse_actors is expected


def test_reuse_actors_rejects_other_values_in_one_line():
    from dmltune.registry import ConfigError
    from dmltune.study.schema import parse_study

    raw = {"name": "r", "reuse_actors": "sometimes", "arms": [{"name": "a", "loss": {"name": "soft_contrastive"}}]}
    with pytest.raises(ConfigError, match="reuse_actors") as err:
        parse_study(raw, check_data=False)
    assert "\n" not in str(err.value) and "auto" in str(err.value)
