"""`dmltune validate` finds every problem before any trial (issue #25): every independent problem in
one pass (one line each, exit 2, `run` the same list), the machine's requests, warnings for
plausible mistakes, `--no-data`, no download, `--set arms.NAME...`, list items checked."""

import socket
from pathlib import Path

import pytest
import yaml

import dmltune.study.resources as resources
from dmltune.cli import main
from dmltune.config_files import apply_overrides
from dmltune.registry import ConfigError, ConfigErrors, Param
from dmltune.study import load_study

ROOT = Path(__file__).resolve().parents[1]
STUDY = {
    "name": "v", "seeds": [0], "resources": {"cpu": 1},
    "dataset": {"name": "digits", "val_fraction": 0.4},
    "model": {"backbone": "small_cnn", "dim": 8},
    "train": {"epochs": 2, "batch_size": 24, "k": 8},
    "arms": [{"name": "a", "miner": {"name": "asms"}, "loss": {"name": "soft_contrastive"}},
             {"name": "b", "loss": {"name": "soft_contrastive"}}],
}


@pytest.fixture
def write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # storage: results lands here
    monkeypatch.setattr(resources, "local_resources", lambda: {"CPU": 2, "GPU": 0})  # a 2-CPU machine, no GPU

    def write(study: dict, name: str = "study.yaml") -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        return str(path)

    return write


def errors(capsys, argv) -> list[str]:
    """``dmltune argv`` exits 2 before anything runs: its stderr lines, each ``dmltune: error: ...``."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().split("\n")
    assert all(line.startswith("dmltune: error: ") for line in lines), captured.err
    return [line.removeprefix("dmltune: error: ") for line in lines]


def test_every_independent_problem_is_listed_in_one_pass_and_run_refuses_with_the_same_list(write, capsys):
    study = {**STUDY, "seeds": [0, 0], "resources": {"cpu": 4},
             "dataset": {"name": "cub200", "root": "/nonexistent/CUB_200_2011"},
             "model": {"backbone": "resnet18", "dim": 8, "weights": "/nonexistent/w.pth"},
             "arms": [{"name": "a", "miner": {"name": "asms", "gamma_pos": 9.0}, "loss": {"name": "soft_contrastive"}},
                      {"name": "b", "loss": {"name": "soft_contrastve"}},
                      {"name": "c", "loss": {"name": "ms"}}]}
    path = write(study)
    lines = errors(capsys, ["validate", path])
    expected = ["study: 'seeds' lists a seed twice",                               # a top-level value
                "arm 'a': miner 'asms': 'gamma_pos' = 9",                          # one arm
                "arm 'b': loss.name: unknown loss 'soft_contrastve'",              # another arm
                "dataset 'cub200': /nonexistent/CUB_200_2011/images.txt not found",  # the data path ...
                "model.weights: file /nonexistent/w.pth does not exist",           # ... and the weights
                "resources.cpu = 4 per trial, but this machine has 2 CPUs"]        # the machine
    assert len(lines) == len(expected), lines
    for line, fragment in zip(lines, expected):
        assert fragment in line, (fragment, line)
    assert errors(capsys, ["run", path]) == lines  # the same list, before Ray starts or any trial
    assert not (Path(path).parent / "results").exists()
    with pytest.raises(ConfigErrors) as info:  # for Python callers: one ConfigError listing each
        load_study(path)
    assert isinstance(info.value, ConfigError) and len(info.value.lines) == 5  # (no machine check there)


def test_a_broken_shared_section_is_one_line_not_one_per_arm(write, capsys):
    lines = errors(capsys, ["validate", write({**STUDY, "train": 5, "seeds": 3})])
    assert len(lines) == 2 and "'train' must be a mapping" in lines[0] and "'seeds' must be a list" in lines[1]
    lines = errors(capsys, ["validate", write({**STUDY, "model": {"backbone": "small_cnn", "dim": 1}})])
    assert lines == ["study (shared by all arms): model: 'dim' = 1 is outside its valid range [2, 8192]"]


def test_the_shipped_paper_study_shows_all_four_problems_of_a_fresh_machine_at_once(write, capsys, monkeypatch,
                                                                                       tmp_path):
    monkeypatch.delenv("DMLTUNE_CUB200", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no weights there
    lines = errors(capsys, ["validate", str(ROOT / "studies" / "fixed_vs_dynamic.yaml")])
    assert len(lines) == 4, lines
    assert "needs dataset.root" in lines[0] and "bn_inception weights not found" in lines[1]
    assert "resources.cpu = 4 per trial" in lines[2] and "resources.gpu asks for 0.5 GPU" in lines[3]


def test_no_data_plans_the_shipped_study_without_its_data_or_weights(write, capsys, monkeypatch, tmp_path):
    import dmltune.data

    monkeypatch.delenv("DMLTUNE_CUB200", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_reading(*args, **kwargs):
        raise AssertionError("--no-data read a dataset")

    monkeypatch.setattr(dmltune.data, "load_dataset", no_reading)
    assert main(["validate", str(ROOT / "studies" / "fixed_vs_dynamic.yaml"), "--no-data"]) == 0
    out = capsys.readouterr().out
    assert "fixed_vs_dynamic.yaml: valid (its structure; --no-data)" in out
    assert "ddtas" in out and "147 trials so far" in out  # the plan
    unchecked = next(line for line in out.splitlines() if line.startswith("not checked (--no-data): "))
    assert "cub200" in unchecked and "bn_inception pretrained" in unchecked and "this machine" in unchecked
    # the structure is still checked
    lines = errors(capsys, ["validate", str(ROOT / "studies" / "fixed_vs_dynamic.yaml"), "--no-data",
                            "--set", "arms.ddtas.eval.metric=recall@1"])
    assert len(lines) == 1 and "arms differ in eval.metric" in lines[0] and "'recall@1' in arm 'ddtas'" in lines[0]


def test_validate_never_downloads(write, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("validate opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    path = write({**STUDY, "dataset": {"name": "fashion_mnist", "root": "/nonexistent/fashion"}})
    for command in ("validate", "run"):
        lines = errors(capsys, [command, path, "--set", "dataset.download=true"])
        assert len(lines) == 1 and "dataset.download is true, but a study never downloads" in lines[0]
    lines = errors(capsys, ["validate", path])  # the files missing: no advice the study would then refuse
    assert len(lines) == 1 and "/nonexistent/fashion" in lines[0] and "download" not in lines[0]


def test_pretrained_on_a_backbone_without_weights_is_refused_as_train_refuses_it(write, capsys):
    path = write({**STUDY, "arms": [STUDY["arms"][0], {**STUDY["arms"][1], "model": {"pretrained": True}}]})
    assert errors(capsys, ["validate", path]) == [
        "arm 'b': model: backbone 'small_cnn' has no pretrained weights; set model.pretrained=false or give model.weights"]
    assert errors(capsys, ["validate", path, "--no-data"])[0].startswith("arm 'b': model: backbone 'small_cnn'")


def test_requests_the_machine_cannot_meet(write, capsys, monkeypatch):
    cuda = {**STUDY, "train": {**STUDY["train"], "device": "cuda"}}
    lines = errors(capsys, ["validate", write({**cuda, "resources": {"cpu": 1, "gpu": 0.5}})])
    assert len(lines) == 2 and "0.5 GPU per trial, but this machine has no GPU; set resources.gpu: 0" in lines[0]
    assert "arms 'a', 'b': train.device is cuda, but this machine has no GPU" in lines[1]
    monkeypatch.setattr(resources, "local_resources", lambda: {"CPU": 2, "GPU": 1})
    assert main(["validate", write({**cuda, "resources": {"cpu": 1, "gpu": 0.5}})]) == 0
    capsys.readouterr()
    lines = errors(capsys, ["validate", write(cuda)])  # a GPU here, but the trials are given none
    assert lines == ["arm 'a': train.device is cuda, but its trials are given no GPU (resources.gpu is 0 or left "
                     "out); set resources.gpu (a fraction, or auto) or train.device: auto"]


def test_the_advice_for_a_machine_without_gpu_is_a_value_that_is_accepted(write, capsys):
    lines = errors(capsys, ["validate", write({**STUDY, "resources": {"cpu": 1, "gpu": 0.25}})])
    assert "set resources.gpu: 0 (train on the CPU)" in lines[0]
    assert main(["validate", write({**STUDY, "resources": {"cpu": 1, "gpu": 0.25}}), "--set", "resources.gpu=0"]) == 0
    assert main(["validate", write({**STUDY, "resources": {"cpu": 1, "gpu": 0}})]) == 0


def test_plausible_mistakes_are_warned_about_and_not_refused(write, capsys):
    study = {**STUDY, "dataset": {"name": "synthetic", "classes": 20, "per_class": 4, "size": 8},
             "train": {"epochs": 2, "batch_size": 16, "k": 8},
             "arms": [{"name": "a", "loss": {"name": "contrastive"}},
                      {"name": "b", "loss": {"name": "contrastive"}, "model": {"backbone": "resnet18"}},
                      {"name": "c", "loss": {"name": "contrastive"}, "miner": {"name": "asms", "gamma_pos": {"choice": [0.1, 0.2]}},
                       "search": {"mode": "random", "num_samples": 2, "scheduler": {"asha": {"max_t": 10}}}}]}
    assert main(["validate", write(study)]) == 0
    captured = capsys.readouterr()
    assert "study.yaml: valid" in captured.out
    warnings = captured.err.strip().split("\n")
    assert all(w.startswith("dmltune: warning: ") for w in warnings) and len(warnings) == 5, warnings
    k = [w for w in warnings if "train.k = 8 is larger than the 4 image(s) of synthetic's smallest training class" in w]
    assert len(k) == 3 and "arm 'a'" in k[0]  # every arm: they share train.k
    assert any("arm 'c': search.scheduler.asha.max_t = 10 is above train.epochs = 2" in w for w in warnings)
    assert any("arm 'b': backbone resnet18 is an ImageNet network" in w and "synthetic's 8 × 8 images" in w
               for w in warnings)
    assert main(["validate", write({**STUDY, "model": {"backbone": "resnet18"}})]) == 0  # digits: 8 × 8 too
    assert "backbone resnet18 is an ImageNet network" in capsys.readouterr().err


def test_set_addresses_one_arm_by_name(write, capsys):
    raw = apply_overrides(STUDY, ["arms.b.train.lr=0.5", "arms.a.miner.gamma_pos={grid: [0.1, 0.2]}", "train.epochs=3"])
    assert raw["arms"][1]["train"] == {"lr": 0.5} and "train" not in raw["arms"][0]
    assert raw["arms"][0]["miner"]["gamma_pos"] == {"grid": [0.1, 0.2]} and raw["train"]["epochs"] == 3
    assert STUDY["arms"][1] == {"name": "b", "loss": {"name": "soft_contrastive"}}  # the input is not changed
    study = load_study(write(STUDY), overrides=["arms.b.train.lr=0.5"])
    assert [arm.resolved["train"]["lr"] for arm in study.arms] == [1e-5, 0.5]
    lines = errors(capsys, ["validate", write(STUDY), "--set", "arms.bb.train.lr=0.5"])
    assert lines == ["--set 'arms.bb.train.lr=0.5': arms has no arm named 'bb' (did you mean 'b'?); choose one of a, b"]


def test_list_items_are_checked_one_by_one():
    steps = Param("lr_steps", list, [], low=1, item=int, increasing=True)
    assert steps.check([2, 5], "train") == [2, 5]
    for value, message in [([0], "'lr_steps[0]' = 0 is outside its valid range [1, inf]"),
                           ([1, 2.5], "'lr_steps[1]' must be an integer, got 2.5"),
                           ([1, True], "'lr_steps[1]' must be an integer, got True"),
                           ([3, 3], "'lr_steps' must be increasing"),
                           ("3", "'lr_steps' must be a list")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            steps.check(value, "train")
    assert steps.describe_range() == "a list of int in [1, inf], increasing"


# every list parameter of the registry, and what checks its items (each with a one-line error)
ITEMS_CHECKED_ELSEWHERE = {
    "ks": "config._check_eval: positive integers (+ eval.metric among them)",
    "mutable": "config._check_protocol: each a numeric parameter of a mutable section",
    "clamp": "meta_lambda.check_clamp: [lo, hi], lo ≤ hi, init inside",
    "seeds": "top_level_checks.check_seeds: distinct integers in 0 … 2**63 − 1",
    "arms": "schema._parse_arm: each arm a mapping, checked whole",
    "looks": "design_settings.parse_design: increasing integers ≥ 2",
}


def test_every_list_parameter_has_its_items_checked():
    from dmltune.listing import _list_groups
    from dmltune.registry import Registry

    params = []
    for _, what in _list_groups():
        components = what.values() if isinstance(what, Registry) else [what[1]]
        params += [p for component in components for p in component.params if p.kind is list]
    from dmltune.study.design_settings import SEQUENTIAL

    params += [p for p in SEQUENTIAL.params if p.kind is list]
    assert {p.name for p in params} >= {"lr_steps", "ks", "clamp", "seeds", "looks"}
    for p in params:
        assert p.item is not None or p.name in ITEMS_CHECKED_ELSEWHERE, f"list parameter {p.name}: items unchecked"
