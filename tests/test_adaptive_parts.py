"""A third adaptive method is one new part plus one registry line: a toy part registered here runs at
every hook of the step, reports its column, and resumes exactly, without any change to Trial."""

from __future__ import annotations

import pytest
import torch

from dmltune.training import ADAPTIVE, Trial, TrainingPart, train
from dmltune.training.reporting import ConsoleReporter
from dmltune.training.settings import TrialSettings
from trial_helpers import full_and_resumed, tiny_config

HOOKS = ("start_epoch", "extend_batch", "loss_arguments", "before_backward", "after_update", "epoch_report",
         "evaluation_report")


class ToyPart(TrainingPart):
    """A moving average of the batch's mean similarity, kept across epochs and checkpoints."""

    def __init__(self, rate: float):
        self.rate, self.calls = rate, []
        self.average = torch.zeros(())

    def start_epoch(self, epoch):
        self.calls.append("start_epoch")

    def extend_batch(self, batch):
        self.calls.append("extend_batch")
        assert batch.sim is None and batch.all_embeddings.shape[0] == batch.real

    def loss_arguments(self, batch, progress, iteration):
        self.calls.append("loss_arguments")
        assert batch.sim is not None and batch.mined is not None
        return {}

    def before_backward(self):
        self.calls.append("before_backward")

    def after_update(self, batch):
        self.calls.append("after_update")
        self.average = (1 - self.rate) * self.average + self.rate * batch.sim.detach().mean()

    def epoch_report(self):
        self.calls.append("epoch_report")
        return {"toy_average": self.average.item()}

    def evaluation_report(self):
        self.calls.append("evaluation_report")
        return {"toy_evaluated": True}

    def state_dict(self):
        return {"average": self.average.clone()}

    def load_state_dict(self, state):
        self.average = state["average"].clone()


@pytest.fixture
def toy_registered(request):
    @ADAPTIVE.register("toy")  # the one registry line
    def build_toy(settings, trial):
        return ToyPart(rate=0.5) if settings.seed >= 0 else TrainingPart()

    request.addfinalizer(lambda: ADAPTIVE._items.pop("toy"))
    return build_toy


def test_the_parts_shipped_are_registered_and_off_by_default():
    assert {"meta", "generation"} <= set(ADAPTIVE)
    trial = Trial(TrialSettings.resolve(tiny_config(train__batches_per_epoch=2)))
    assert all(type(part) is TrainingPart for part in trial.parts.values())  # the do-nothing versions
    assert trial.state_dict()["meta"] == {} and trial.state_dict()["generation"] == {}


def test_a_toy_part_runs_at_every_hook_in_order(toy_registered):
    trial = Trial(TrialSettings.resolve(tiny_config(train__batches_per_epoch=2)))
    toy = trial.parts["toy"]
    report = trial.run_epoch(1)
    step = ["extend_batch", "loss_arguments", "before_backward", "after_update"]
    assert toy.calls == ["start_epoch", *step, *step, "epoch_report"]
    assert report["toy_average"] == toy.average.item() != 0
    assert trial.evaluate("val")["toy_evaluated"] is True and set(toy.calls) == set(HOOKS)
    assert "toy" in trial.state_dict()


def test_a_toy_part_resumes_exactly_and_changes_nothing_else(tmp_path, toy_registered):
    cfg = tiny_config(train__epochs=3, train__batches_per_epoch=3)
    full, resumed = full_and_resumed(cfg, tmp_path, stop_after_epoch=1)
    assert [r["toy_average"] for r in full[1:]] == [r["toy_average"] for r in resumed]
    ADAPTIVE._items.pop("toy")
    try:
        without = ConsoleReporter(None)
        train(cfg, reporter=without)
    finally:
        ADAPTIVE.register("toy")(toy_registered)
    for a, b in zip(full, without.history):
        assert a["loss"] == b["loss"] and a["val/map@r"] == b["val/map@r"] and "toy_average" not in b
