"""Issue #18, part 1: class-disjoint k-fold cross-validation as a study protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dmltune.analysis.fold_ensemble import ensemble_value
from dmltune.analysis.folds import collapse_folds
from dmltune.data import load_dataset
from dmltune.data.folds import fold_assignment, kfold_splits
from dmltune.evaluate import concatenated_embeddings, evaluate
from dmltune.registry import ConfigError
from dmltune.study import parse_study
from dmltune.study.plan import plan_lines
from dmltune.training.state import load_test_embeddings, save_test_embeddings
from synthetic_study import run_study_text


def _study(**top) -> dict:
    base = {"name": "kf", "storage": "results", "seeds": [0], "dataset": {"name": "synthetic", "classes": 24},
            "model": {"backbone": "small_cnn", "dim": 8},
            "train": {"epochs": 1, "batch_size": 8, "k": 2}, "eval": {"nmi": False},
            "protocol": {"validation": "kfold", "folds": 4},
            "arms": [{"name": "g", "miner": {"name": "asms", "gamma_pos": {"grid": [0.1, 0.2]}},
                      "loss": {"name": "soft_contrastive"}}]}
    base.update(top)
    return base


def test_kfold_splits_are_class_disjoint_cover_every_training_class_and_keep_the_test_set():
    splits = load_dataset("synthetic", classes=24, per_class=4)
    pool = sorted(set(splits.train.classes) | set(splits.val.classes))
    seen = []
    for fold in range(4):
        f = kfold_splits(splits, 4, fold, seed=3)
        assert not set(f.train.classes) & set(f.val.classes)
        assert sorted(set(f.train.classes) | set(f.val.classes)) == pool
        assert len(f.train) + len(f.val) == len(splits.train) + len(splits.val)
        # every image keeps its class: labels map back to the original class ids
        for part in (f.train, f.val):
            assert np.array_equal(np.asarray(part.classes)[part.labels],
                                  np.asarray(part.classes)[part.labels])
        assert f.test is splits.test
        seen += list(f.val.classes)
    assert sorted(seen) == pool  # each training class is validated exactly once
    assert fold_assignment(splits, 4, 3) == fold_assignment(load_dataset("synthetic", classes=24, per_class=4), 4, 3)


def test_kfold_images_stay_with_their_class():
    splits = load_dataset("digits")
    f = kfold_splits(splits, 2, 0)
    original = {}
    for part in (splits.train, splits.val):
        for image, label in zip(part.images, part.labels):
            original[image.tobytes()] = part.classes[label]
    for part in (f.train, f.val):
        for image, label in zip(part.images, part.labels):
            assert original[image.tobytes()] == part.classes[label]


def test_a_kfold_study_plans_one_trial_per_fold_and_says_so():
    study = parse_study(_study(), check_data=True)
    arm = study.arms[0]
    assert arm.folds == 4 and arm.configurations == 2 and arm.trials_per_seed == 8
    assert any("4-fold cross-validation" in line for line in plan_lines(study))
    assert parse_study(_study(protocol=None)).arms[0].trials_per_seed == 2


@pytest.mark.parametrize("protocol, match", [
    ({"validation": "loo"}, "validation"),
    ({"validation": "kfold", "folds": 1}, "folds"),
    ({"validation": "kfold", "folds": 10**9}, "folds"),
    ({"validation": "kfold", "folds": True}, "folds"),
    ({"validation": "split", "folds": 4}, "apply to validation: kfold"),
    ({"validation": "kfold", "fold": 2}, "no parameter 'fold'"),
    ("kfold", "mapping"),
])
def test_bad_protocols_are_one_line_errors(protocol, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_study(_study(protocol=protocol), check_data=False)
    assert "\n" not in str(err.value)


def test_kfold_refuses_searches_whose_folds_would_differ_and_too_many_folds():
    random_arm = {"name": "r", "miner": {"name": "asms", "gamma_pos": {"uniform": [0.0, 0.3]}},
                  "loss": {"name": "soft_contrastive"}, "search": {"mode": "random", "num_samples": 2}}
    with pytest.raises(ConfigError, match="kfold needs search.mode grid"):
        parse_study(_study(arms=[random_arm]), check_data=False)
    # digits has 5 training classes: 3 folds need 6
    with pytest.raises(ConfigError, match="at least 6 training classes"):
        parse_study(_study(dataset={"name": "digits"}, protocol={"validation": "kfold", "folds": 3}))
    # a fold's training classes must fill a batch: 12 training classes, 4 folds → 9 per fold; B/K = 10
    with pytest.raises(ConfigError, match="use fewer folds"):
        parse_study(_study(train={"epochs": 1, "batch_size": 20, "k": 2}))


def _fold_rows(status=("ok", "ok"), val=(0.4, 0.6), test=(0.2, 0.3), seed=0, gamma=0.1, wall=(10.0, 30.0)):
    return pd.DataFrame({"arm": "a", "experiment": "a", "trial_id": [f"t{seed}{gamma}{i}" for i in range(len(val))],
                         "seed": seed, "fold": list(range(len(val))), "status": list(status),
                         "val/map@r": list(val), "test/map@r": list(test), "wall_s": list(wall), "gpu_s": 0.0,
                         "config/miner.gamma_pos": gamma, "error": None,
                         "test_embeddings": [f"e{i}.pt" for i in range(len(val))]})


def test_a_configuration_is_scored_by_its_mean_over_folds_and_pays_for_every_fold():
    final = pd.concat([_fold_rows(), _fold_rows(gamma=0.2, val=(0.5, 0.7)), _fold_rows(seed=1)], ignore_index=True)
    out = collapse_folds(final, folds=2)
    assert len(out) == 3
    first = out[(out.seed == 0) & (out["config/miner.gamma_pos"] == 0.1)].iloc[0]
    assert first["val/map@r"] == pytest.approx(0.5) and first["test/map@r"] == pytest.approx(0.25)
    assert first.wall_s == pytest.approx(40.0) and first.status == "ok" and first.folds == 2
    assert first.test_embeddings == "e0.pt|e1.pt"


def test_a_failed_fold_fails_the_configuration_and_a_missing_fold_leaves_it_unfinished():
    failed = collapse_folds(_fold_rows(status=("ok", "diverged"), val=(0.5, np.nan)), folds=2).iloc[0]
    assert failed.status == "diverged" and failed.wall_s == pytest.approx(40.0)
    errored = collapse_folds(_fold_rows(status=("error", "diverged")), folds=2).iloc[0]
    assert errored.status == "error"
    missing = collapse_folds(_fold_rows(val=(0.5,), test=(0.2,), wall=(5.0,), status=("ok",)), folds=2).iloc[0]
    assert missing.status == "incomplete" and missing.test_embeddings is None


def test_the_stored_fold_embeddings_give_the_hand_computed_ensemble(tmp_path):
    # the case of test_folds_and_ensemble: Recall@1 of the ensemble is 3/4, each model alone differs
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.0, -1.0]])
    b = torch.tensor([[2.0, 0.0], [2.0, 0.2], [0.0, 3.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    paths = []
    for i, e in enumerate((a, b)):
        folder = tmp_path / f"fold{i}"
        folder.mkdir()
        paths.append(save_test_embeddings(folder, {"test": (torch.nn.functional.normalize(e, dim=1), labels)}))
    assert load_test_embeddings(paths[0])["test"][0].dtype == torch.float32
    assert ensemble_value(paths, "recall@1") == pytest.approx(0.75)
    by_hand = evaluate(concatenated_embeddings([a, b]), labels, ks=[1], metrics=["map@r"])["map@r"]
    assert ensemble_value(paths, "map@r") == pytest.approx(by_hand, abs=1e-3)  # stored as float16


def test_a_kfold_trial_validates_on_its_fold_and_stores_its_test_embeddings(tmp_path):
    from dmltune.training.loop import train
    from trial_helpers import tiny_config

    config = tiny_config(protocol={"validation": "kfold", "folds": 2, "fold": 1}, train__epochs=1,
                         train__batch_size=16)
    train(config, checkpoint_root=tmp_path)
    stored = load_test_embeddings(tmp_path / "latest" / "test_embeddings.pt")
    emb, labels = stored["test"]
    assert emb.shape == (896, 16) and len(labels) == 896
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(896), atol=2e-3, rtol=0)
    # without k-fold nothing is stored
    plain = tmp_path / "plain"
    train(tiny_config(train__epochs=1), checkpoint_root=plain)
    assert not (plain / "latest" / "test_embeddings.pt").exists()


KFOLD_STUDY = """
name: kfold_digits
storage: results
seeds: [0, 1]
concurrency: 2
protocol: {validation: kfold, folds: 2}
dataset: {name: digits}
model: {backbone: small_cnn, dim: 16}
train: {epochs: 2, batch_size: 16, k: 8, lr: 0.001, batches_per_epoch: 4}
eval: {metric: map@r, nmi: false, similarity_bins: 0}
analysis: {reference: at_asms}
arms:
  - name: asms_grid
    miner: {name: asms, gamma_pos: {grid: [0.05, 0.2]}}
    loss: {name: soft_contrastive}
  - name: at_asms
    miner: {name: at_asms}
    loss: {name: soft_contrastive}
"""


@pytest.mark.slow
def test_a_kfold_study_on_digits_runs_end_to_end_and_reports_both_test_figures(tmp_path, shared_ray):
    run, folder, table = run_study_text(tmp_path, KFOLD_STUDY, "kfold_digits", env=shared_ray.env())
    final = table.groupby("trial_id").tail(1)
    assert len(final) == (2 * 2 + 2) * 2  # (grid configurations + 1) × seeds × folds
    assert sorted(final.fold.unique()) == [0, 1] and final.test_embeddings.notna().all()
    assert all((folder / p).is_file() for p in final.test_embeddings)
    record = yaml.safe_load((folder / "folds.yaml").read_text())
    assert record["folds"] == 2 and sorted(sum(record["datasets"]["digits"].values(), [])) == [0, 1, 2, 3, 4]
    report = (folder / "report.md").read_text()
    assert "2-fold cross-validation" in report and "fold ensemble" in report
    assert "concatenated-embedding ensemble" in run.stdout
    from dmltune.analysis import analyse, read_study_table

    a = analyse(read_study_table(folder))
    row = a.summary.set_index("arm").loc["at_asms"]
    assert row.trials == 2 and 0 < row.test <= 1 and 0 < row.test_ensemble <= 1 and row.test_ensemble_n == 2
    # the configuration's validation value is the mean of its folds' values
    fold_values = final[final.arm == "at_asms"].groupby("seed")["val/map@r"].mean()
    assert a.selections["at_asms"].values.sort_index().to_numpy() == pytest.approx(fold_values.sort_index().to_numpy())
    # every fold's time is counted
    assert row.wall_h == pytest.approx(final[final.arm == "at_asms"].wall_s.sum() / 3600)
