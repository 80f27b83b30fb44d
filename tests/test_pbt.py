"""Issue #18, part 2: Population Based Training as an arm."""

from __future__ import annotations

import shutil

import pytest

from dmltune.registry import ConfigError
from dmltune.study import parse_study
from dmltune.training.reporting import ConsoleReporter
from synthetic_study import run_study_text
from trial_helpers import tiny_config

MUTABLE = {"mutable": ["miner.gamma_pos", "miner.gamma_neg"]}


class Member(ConsoleReporter):
    """A standalone reporter that answers as Tune trial ``name`` (PBT's donors and members)."""

    def __init__(self, name, root):
        super().__init__(root)
        self.name = name

    def trial_id(self):
        return self.name


def _config(gamma_pos, gamma_neg, epochs):
    return tiny_config(miner={"name": "asms", "gamma_pos": gamma_pos, "gamma_neg": gamma_neg}, protocol=MUTABLE,
                       train__epochs=epochs)


def test_exploit_continues_the_donors_state_exactly_with_the_new_thresholds(tmp_path):
    from dmltune.config import resolve_config
    from dmltune.training.loop import train
    from dmltune.training.state import load_checkpoint
    from dmltune.training.trial import Trial

    donor_root, member_root = tmp_path / "donor", tmp_path / "member"
    train(_config(0.1, 0.05, 2), reporter=Member("donor", donor_root))
    shutil.copytree(donor_root / "latest", member_root / "latest")  # what PBT hands the member
    member = Member("member", member_root)
    last = train(_config(0.25, 0.0, 3), reporter=member)
    # only the member's own epoch is reported: the donor's history is neither replayed nor kept
    assert [r["epoch"] for r in member.history] == [3] and not any(r.get("replayed") for r in member.history)
    assert last["exploited_from"] == "donor"
    assert last["schedule/miner.gamma_pos"] == 0.25 and last["schedule/miner.gamma_neg"] == 0.0
    assert last["gamma_pos"] == pytest.approx(0.25) and last["gamma_neg"] == pytest.approx(0.0)  # the miner used them
    # by hand: the donor's checkpoint loaded into a trial with the new thresholds, one more epoch
    trial = Trial(resolve_config(_config(0.25, 0.0, 3)))
    trial.load_state_dict(load_checkpoint(donor_root / "latest"))
    expected = trial.run_epoch(3)
    assert last["loss"] == expected["loss"]  # bit-identical: the model state is exactly the donor's
    assert last["val/map@r"] == trial.evaluate("val")["val/map@r"]
    # the donor's thresholds would have trained differently
    other = Trial(resolve_config(_config(0.1, 0.05, 3)))
    other.load_state_dict(load_checkpoint(donor_root / "latest"))
    assert other.run_epoch(3)["loss"] != expected["loss"]
    # the member's own checkpoint keeps the exploit's record and only the member's own reports
    state = load_checkpoint(member_root / "latest")
    assert state["owner"] == "member" and state["exploited_from"] == "donor"
    assert [r["epoch"] for r in state["reports"]] == [3]


def test_an_exploit_may_change_only_the_mutable_keys(tmp_path):
    from dmltune.training.loop import train

    donor_root = tmp_path / "donor"
    train(_config(0.1, 0.05, 1), reporter=Member("donor", donor_root))
    changed = _config(0.2, 0.05, 2)
    changed["train"]["lr"] = 0.01
    with pytest.raises(ConfigError, match="train.lr"):
        train(changed, reporter=Member("member", donor_root))
    plain = tiny_config(miner={"name": "asms", "gamma_pos": 0.2, "gamma_neg": 0.05}, train__epochs=2)
    with pytest.raises(ConfigError, match="miner.gamma_pos"):  # without protocol.mutable: refused as before
        train(plain, reporter=Member("member", donor_root))


def _study(search, miner=None, **extra):
    arm = {"name": "p", "miner": miner or {"name": "asms"}, "loss": {"name": "soft_contrastive"}, "search": search}
    return {"name": "pb", "storage": "results", "seeds": [0], "dataset": {"name": "digits"},
            "model": {"backbone": "small_cnn", "dim": 8}, "train": {"epochs": 4, "batch_size": 16, "k": 8},
            "arms": [arm], **extra}


GOOD = {"mode": "pbt", "population": 4, "perturbation_interval": 2,
        "mutations": {"miner.gamma_pos": {"uniform": [0.0, 0.3]}, "miner.gamma_neg": [0.0, 0.05, 0.1]}}


def test_a_pbt_arm_samples_its_mutations_and_marks_them_mutable():
    arm = parse_study(_study(GOOD), check_data=False).arms[0]
    assert arm.trials_per_seed == 4
    assert {".".join(p): d.kind for p, d in arm.domains} == {"miner.gamma_pos": "uniform", "miner.gamma_neg": "choice"}
    assert arm.config["protocol"]["mutable"] == ["miner.gamma_pos", "miner.gamma_neg"]
    from dmltune.study.pbt import hyperparam_mutations

    mutations = hyperparam_mutations(arm)
    assert mutations["miner"]["gamma_neg"] == [0.0, 0.05, 0.1] and hasattr(mutations["miner"]["gamma_pos"], "sample")


@pytest.mark.parametrize("change, match", [
    ({"population": None}, "needs search.population"),
    ({"population": 1}, "population"),
    ({"perturbation_interval": None}, "needs search.perturbation_interval"),
    ({"perturbation_interval": 4}, "never act"),
    ({"mutations": {}}, "empty"),
    ({"mutations": {"train.lr": {"uniform": [0.0001, 0.01]}}}, "SECTION.PARAMETER"),
    ({"mutations": {"miner.gamma_pos": {"grid": [0.1, 0.2]}}}, "must be a domain"),
    ({"mutations": {"miner.nonsense": {"uniform": [0.0, 0.2]}}}, "nonsense"),
    ({"mutations": {"miner.gamma_pos": {"uniform": [0.0, 5.0]}}}, "gamma_pos"),
    ({"mutations": {"miner.gamma_pos": ["a", "b"]}}, "numbers"),
    ({"num_samples": 3}, "population"),
    ({"scheduler": {"asha": {"max_t": 4}}}, "scheduler"),
])
def test_bad_pbt_arms_are_one_line_errors(change, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_study(_study({**GOOD, **change}), check_data=False)
    assert "\n" not in str(err.value)


def test_pbt_conflicts_are_named():
    with pytest.raises(ConfigError, match="set in the arm"):
        parse_study(_study(GOOD, miner={"name": "asms", "gamma_pos": 0.1}), check_data=False)
    with pytest.raises(ConfigError, match="search domain"):
        parse_study(_study(GOOD, miner={"name": "asms", "epsilon": {"grid": [0.1]}}), check_data=False)
    with pytest.raises(ConfigError, match="checkpoint"):
        parse_study({**_study(GOOD), "train": {"epochs": 4, "batch_size": 16, "k": 8, "checkpoint_every": 0}},
                    check_data=False)
    with pytest.raises(ConfigError, match="kfold needs search.mode grid"):
        parse_study(_study(GOOD, protocol={"validation": "kfold", "folds": 2}), check_data=False)


PBT_STUDY = """
name: pbt_quick
storage: results
seeds: [0]
concurrency: 2
dataset: {name: digits, val_fraction: 0.4}
model: {backbone: small_cnn, dim: 16}
train: {epochs: 3, batch_size: 24, k: 8, lr: 0.001, batches_per_epoch: 6}
eval: {metric: map@r, nmi: false, similarity_bins: 0}
analysis: {reference: softcon_at_asms, delta: 0.01}
arms:
  - name: ms_simp
    miner: {name: ms, epsilon: 0.1}
    loss: {name: ms}
  - name: softcon_at_asms
    miner: {name: at_asms}
    loss: {name: soft_contrastive}
  - name: softcon_asms_pbt
    miner: {name: asms}
    loss: {name: soft_contrastive}
    search: {mode: pbt, population: 2, perturbation_interval: 1, quantile_fraction: 0.5,
             mutations: {miner.gamma_pos: {uniform: [0.0, 0.3]}, miner.gamma_neg: {uniform: [0.0, 0.1]}}}
"""


@pytest.mark.slow
def test_a_pbt_arm_runs_beside_the_quickstart_arms_and_the_report_lists_its_cost(tmp_path, shared_ray):
    run, folder, table = run_study_text(tmp_path, PBT_STUDY, "pbt_quick", env=shared_ray.env())
    pbt = table[table.arm == "softcon_asms_pbt"]
    assert pbt.trial_id.nunique() == 2
    # every member has one row per epoch, with the thresholds it trained with
    assert pbt.groupby("trial_id").epoch.apply(sorted).tolist() == [[1, 2, 3], [1, 2, 3]]
    assert pbt["schedule/miner.gamma_pos"].notna().all()
    # with two members and quantile 0.5, the worse one exploits the better one at each perturbation
    exploited = pbt[pbt.exploited_from.notna()]
    assert len(exploited) and set(exploited.exploited_from) <= set(pbt.trial_id)
    for _, row in exploited.iterrows():  # the miner trained with the member's own (new) thresholds
        assert row["gamma_pos"] == pytest.approx(row["schedule/miner.gamma_pos"])
    from dmltune.analysis import analyse, read_study_table

    a = analyse(read_study_table(folder))
    summary = a.summary.set_index("arm")
    assert summary.loc["softcon_asms_pbt", "trials"] == 2 and summary.loc["softcon_asms_pbt", "wall_h"] > 0
    assert "best member" in a.selections["softcon_asms_pbt"].configuration
    # the cost counts both members' own epochs
    own = pbt.groupby("trial_id").epoch_s.sum().sum() / 3600
    assert summary.loc["softcon_asms_pbt", "wall_h"] == pytest.approx(own, rel=0.35)
    report = (folder / "report.md").read_text()
    assert "softcon_asms_pbt" in report and "Population Based Training" in report
    assert (folder / "figures" / "pbt_schedule.png").is_file()


@pytest.mark.parametrize("statuses, retry, restarted", [
    (["TERMINATED", "PAUSED"], False, True),
    (["TERMINATED", "ERROR"], False, False),   # the error stands: a plain resume retries nothing
    (["TERMINATED", "ERROR"], True, True),     # --retry-errored: the population again, never one member alone
    (["TERMINATED", "TERMINATED"], True, False),
])
def test_an_interrupted_population_starts_again_and_its_partial_run_is_kept(tmp_path, monkeypatch, statuses, retry,
                                                                            restarted):
    import types

    import ray.tune

    from dmltune.study.pbt import restart_interrupted_population

    folder = tmp_path / "arm" / "seed_0"
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"x")
    fake = types.SimpleNamespace(trials=[types.SimpleNamespace(status=s) for s in statuses])
    monkeypatch.setattr(ray.tune, "ExperimentAnalysis", lambda path: fake)
    line = restart_interrupted_population(folder, retry_errored=retry)
    if restarted:
        kept = [p for p in folder.parent.iterdir() if p.name.startswith("seed_0.interrupted-")]
        assert "starts again" in line and not folder.exists() and len(kept) == 1
        assert (kept[0] / "tuner.pkl").read_bytes() == b"x"
    else:
        assert line is None and folder.is_dir()


def test_an_exploited_member_that_was_pausing_trains_on(monkeypatch):
    """Ray 2.60: a member paused (saving) at a perturbation point and then exploited gets a STOP cached
    "after the save"; the save is dropped with its actor, and the STOP would end the restarted member
    after its next epoch. dmltune's scheduler drops that stale STOP (found by the chaos run)."""
    import inspect
    import types

    from ray.tune.execution import tune_controller
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    from dmltune.study.pbt import population_scheduler

    stop = inspect.getsource(tune_controller.TuneController._schedule_trial_stop)
    assert "is_saving" in stop and "_cached_trial_decisions[trial.trial_id] = TrialScheduler.STOP" in stop

    def ray_exploit(self, controller, trial, trial_to_clone):  # the part of Ray's exploit at issue
        if trial.is_saving:
            controller._cached_trial_decisions[trial.trial_id] = TrialScheduler.STOP

    monkeypatch.setattr(PopulationBasedTraining, "_exploit", ray_exploit)
    scheduler = population_scheduler(time_attr="epoch", perturbation_interval=2,
                                     hyperparam_mutations={"miner": {"gamma_pos": [0.1, 0.2]}}, synch=True)
    controller = types.SimpleNamespace(_cached_trial_decisions={"other": TrialScheduler.STOP})
    pausing = types.SimpleNamespace(trial_id="a", is_saving=True)
    scheduler._exploit(controller, pausing, None)
    assert controller._cached_trial_decisions == {"other": TrialScheduler.STOP}  # only the member's own
    controller._cached_trial_decisions["b"] = TrialScheduler.PAUSE
    scheduler._exploit(controller, types.SimpleNamespace(trial_id="b", is_saving=False), None)
    assert controller._cached_trial_decisions["b"] == TrialScheduler.PAUSE  # other decisions stand


def test_no_perturbation_at_a_members_last_epoch(monkeypatch):
    """A perturbation at the last epoch would pause and restart every member only to stop it: dmltune's
    scheduler lets a member that reports its last epoch finish; earlier epochs go to Tune's PBT."""
    import types

    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    from dmltune.study.pbt import population_scheduler

    seen = []
    monkeypatch.setattr(PopulationBasedTraining, "on_trial_result",
                        lambda self, controller, trial, result: seen.append(result["epoch"]) or TrialScheduler.PAUSE)
    scheduler = population_scheduler(time_attr="epoch", perturbation_interval=2,
                                     hyperparam_mutations={"miner": {"gamma_pos": [0.1, 0.2]}}, synch=True)
    member = types.SimpleNamespace(trial_id="a", config={"train": {"epochs": 4}})
    assert scheduler.on_trial_result(None, member, {"epoch": 2}) == TrialScheduler.PAUSE
    assert scheduler.on_trial_result(None, member, {"epoch": 4}) == TrialScheduler.CONTINUE
    assert seen == [2]
    odd = types.SimpleNamespace(trial_id="b", config={"train": {}})  # no epochs known: Tune decides
    assert scheduler.on_trial_result(None, odd, {"epoch": 4}) == TrialScheduler.PAUSE


@pytest.mark.parametrize("population", [True, False])
def test_a_member_restored_from_its_own_checkpoint_does_not_replay_its_epochs(tmp_path, monkeypatch, population):
    """PBT reads a report's epoch as progress: a member that replayed its epochs after a pause at a
    perturbation point was paused again, for ever (the chaos run). Other trials still replay."""
    from dmltune.training import loop

    config = _config(0.1, 0.05, 2) if population else tiny_config(train__epochs=2)
    loop.train({**config, "train": {**config["train"], "epochs": 1}}, reporter=Member("m", tmp_path))
    monkeypatch.setattr(loop, "in_tune_session", lambda: True)  # a restore inside a Tune trial
    member = Member("m", tmp_path)
    loop.train(config, reporter=member)
    replayed = [r["epoch"] for r in member.history if r.get("replayed")]
    assert replayed == ([] if population else [1])
    assert [r["epoch"] for r in member.history if not r.get("replayed")] == [2]
