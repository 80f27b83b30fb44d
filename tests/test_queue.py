"""The study queue (dmltune/study/queue.py) without Ray: admission order and demand, the old one-at-a-time
order, resource shapes, a failing experiment, Ctrl-C, and stages submitted while the queue runs."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dmltune.study.queue import Job, QueueStopped, StudyQueue


@dataclasses.dataclass
class _Table:  # the fields of a StudyTable the per-arm planner reads
    final: object
    arms: list


def job(name: str, planned: int = 2, done: int = 0, shape=(1, 0.0), **kw) -> Job:
    return Job(SimpleNamespace(name=name.split("/")[0]), SimpleNamespace(folder=Path(name)), planned, done, shape, **kw)


class Recorder:
    """A stand-in for running an experiment: each job takes ``seconds``, finishing its trials one by one
    (as the Tune callback reports them), and checks the queue's stop flag as a Tune loop would."""

    def __init__(self, seconds: float = 0.05, fail: str | None = None):
        self.seconds, self.fail = seconds, fail
        self.started: list[str] = []
        self.running: set[str] = set()
        self.most_at_once = 0
        self.lock = threading.Lock()
        self.queue: StudyQueue | None = None

    def __call__(self, j: Job) -> None:
        name = str(j.experiment.folder)
        with self.lock:
            self.started.append(name)
            self.running.add(name)
            self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            for _ in range(j.remaining):
                deadline = time.monotonic() + self.seconds
                while time.monotonic() < deadline:
                    if self.queue.stop.is_set():
                        raise QueueStopped()
                    time.sleep(0.005)
                if name == self.fail:
                    raise OSError(28, "No space left on device")
                self.queue.finished_trial(j.key)
        finally:
            with self.lock:
                self.running.discard(name)


def run_queue(jobs, slots=2, one_at_a_time=False, **kw):
    rec = kw.pop("recorder", None) or Recorder()
    q = StudyQueue(rec, slots, one_at_a_time, **kw)
    rec.queue = q
    for j in jobs:
        q.submit(j)
    q.run()
    return rec, q


def test_jobs_start_in_queue_order_and_side_by_side_while_slots_are_free():
    rec, q = run_queue([job("ref", 1), job("a", 1), job("b", 1), job("c", 4)], slots=4)
    assert rec.started[0] == "ref" and rec.started == ["ref", "a", "b", "c"]
    assert rec.most_at_once >= 3  # the small experiments did not wait for each other
    assert not q.active and not q.pending


def test_a_job_waits_while_the_started_ones_hold_every_slot():
    rec, _ = run_queue([job("a", 4), job("b", 4), job("c", 1)], slots=2)
    assert rec.most_at_once == 2 and rec.started == ["a", "b", "c"]


def test_a_job_finished_in_an_earlier_run_holds_no_slot():
    q = StudyQueue(lambda j: None, 2)
    q.active = [job("resumed", 8, done=8), job("a", 2)]
    assert q._committed() == 1 and q._admissible(job("b", 2))


def shares_of(jobs, slots, active=None):
    q = StudyQueue(lambda j: None, slots)
    q.active = list(jobs)
    for j in jobs:
        j.limiter = SimpleNamespace(max_concurrent=0)
    q._share()
    return [j.limiter.max_concurrent for j in jobs]


def test_free_slots_are_shared_by_the_trials_left_and_the_reference_takes_what_it_needs_first():
    ref, small, big = job("ref", 3, first=True), job("small", 4), job("big", 36)
    shares = shares_of([ref, small, big], 16)
    assert shares[0] == 3 and sum(shares) == 16 and shares[2] > shares[1] >= 1
    assert shares_of([job("a", 1), job("b", 1)], 16) == [1, 1]  # never more than the trials left


def test_an_arms_concurrency_holds_for_its_experiments_together_and_a_population_runs_whole():
    a1, a2 = job("a/seed_0", 12, cap=3), job("a/seed_1", 12, cap=3)
    pop = job("p/seed_0", 8, together=8)
    shares = shares_of([a1, a2, pop, job("other", 30)], 16)
    assert shares[0] + shares[1] == 3 and pop.limiter.max_concurrent == 0  # the population is not bounded
    assert sum(shares) - shares[2] == 16 - 8


def test_a_population_starts_after_the_reference_and_waits_for_its_slots_at_once():
    """A population goes before the grids submitted ahead of it (its slots are free early on), but it
    needs them all at once: it waits while the reference holds two of the four, and the grid behind it
    waits too (otherwise the grid's trials would take the slots as the reference's free up)."""
    rec, _ = run_queue([job("ref", 2, first=True), job("a", 6), job("pop", 2, together=4)], slots=4)
    assert rec.started == ["ref", "pop", "a"] and rec.most_at_once == 1


def test_a_population_whose_members_have_ended_holds_no_slot():
    q = StudyQueue(lambda j: None, 8)
    q.active = [job("pop", 4, done=4, together=4), job("a", 2)]
    assert q._committed() == 1 and q._admissible(job("pop2", 4, together=4))
    assert shares_of([job("pop", 4, done=4, together=4), job("a", 20)], 8)[1] == 8


def test_an_arm_with_a_cap_starts_no_more_experiments_than_its_cap():
    rec, _ = run_queue([job("a/seed_0", 2, cap=1), job("a/seed_1", 2, cap=1), job("b", 2)], slots=8)
    assert rec.started[:2] == ["a/seed_0", "b"] and rec.most_at_once == 2


def test_one_at_a_time_is_the_old_order():
    rec, _ = run_queue([job("a", 1), job("b", 1), job("c", 1)], slots=8, one_at_a_time=True)
    assert rec.most_at_once == 1 and rec.started == ["a", "b", "c"]


def test_experiments_of_another_resource_shape_never_run_at_once():
    rec, _ = run_queue([job("cpu", 1, shape=(1, 0.0)), job("gpu", 1, shape=(1, 0.5)), job("cpu2", 1)], slots=8)
    assert rec.started == ["cpu", "cpu2", "gpu"]  # the CPU-only ones side by side, the other after them


def test_a_failing_experiment_stops_the_others_and_its_error_is_raised():
    rec = Recorder(seconds=0.05, fail="bad")
    with pytest.raises(OSError, match="No space"):
        run_queue([job("long", 40), job("bad", 1)], slots=8, recorder=rec)
    assert not rec.running  # the long one was stopped, not left running


def test_ctrl_c_stops_every_running_experiment(monkeypatch):
    rec = Recorder(seconds=0.05)
    q = StudyQueue(rec, 8)
    rec.queue = q
    for name in ("a", "b"):
        q.submit(job(name, 100))
    calls = {"n": 0}
    real_get = q.ended.get

    def interrupted_get(timeout=None):  # the user presses Ctrl-C while the main thread waits
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_get(timeout=0.05)

    monkeypatch.setattr(q.ended, "get", interrupted_get)
    with pytest.raises(KeyboardInterrupt):
        q.run()
    assert q.stop.is_set() and not rec.running


def test_a_later_stage_is_submitted_when_the_queue_runs_dry_and_runs_in_the_same_queue():
    stages = [[job("ref/s2", 1), job("a/s2", 1)]]

    def on_idle():
        if stages:
            for j in stages.pop(0):
                q_holder["q"].submit(j)

    rec = Recorder()
    q = StudyQueue(rec, 4, on_idle=on_idle)
    q_holder = {"q": q}
    rec.queue = q
    q.submit(job("ref", 1))
    q.run()
    assert rec.started == ["ref", "ref/s2", "a/s2"]


def test_a_finished_job_is_reported_to_on_done():
    seen = []
    run_queue([job("a", 1), job("b", 1)], slots=4, on_done=lambda j: seen.append(str(j.experiment.folder)))
    assert sorted(seen) == ["a", "b"]


def test_a_sequential_arm_gets_its_next_look_while_another_arm_still_runs_the_first(monkeypatch, tmp_path):
    """The per-arm planner: arm 'a' and the reference have finished look 1 while 'b' still runs it:
    a's look 2 is planned from the reference's and a's rows through look 1 only, recorded with the
    reference's new seeds, and queued; b's look 2 later brings no second set of reference seeds."""
    import pandas as pd

    from dmltune.analysis import design_table
    from dmltune.analysis import trials as trials_module
    from dmltune.study import runner

    arms = [SimpleNamespace(name=n) for n in ("ref", "a", "b")]
    study = SimpleNamespace(arms=arms, design=SimpleNamespace(kind="sequential", staged=True), source={},
                            directory=tmp_path, name="s")
    final = pd.DataFrame({"arm": ["ref", "a", "b", "ref"], "stage": [1, 1, 1, 2], "seed": [0, 0, 0, 3]})
    asked = []

    def next_stage(st, done):
        assert sorted(st.arms) == sorted(set(st.final.arm))  # only the pair's arms: no arm without rows
        asked.append((sorted(set(st.final.arm)), int(st.final.stage.max()), done))
        arm = next(a for a in sorted(set(st.final.arm)) if a != "ref")
        return {"stage": done + 1, "why": f"{arm} in play", "arms": {arm: {"keys": None, "seeds": [3, 4]},
                                                                   "ref": {"keys": None, "seeds": [3, 4]}}}

    recorded = []
    monkeypatch.setattr(runner, "consolidate", lambda study, interrupted=False: final)
    monkeypatch.setattr(trials_module, "study_table",
                        lambda table, source: _Table(final=final, arms=["ref", "a", "b"]))
    monkeypatch.setattr(design_table, "next_stage", next_stage)
    monkeypatch.setattr(design_table, "with_rows", lambda st, rows: dataclasses.replace(st, final=rows))
    monkeypatch.setattr(runner, "stage_entries_of", lambda study: [])
    monkeypatch.setattr(runner, "stage_entry", lambda study, st, plan: {"stage": plan["stage"], "why": plan["why"],
                                                                        "arms": plan["arms"]})
    monkeypatch.setattr(runner, "fit_budget", lambda study, st, entry: (entry, None))
    monkeypatch.setattr(runner, "stage_trials", lambda study, entry: (len(entry["arms"]), 0))
    monkeypatch.setattr(runner, "queue_order", lambda study: arms)
    import dmltune.study.experiments as experiments_module
    import dmltune.study.stages as stages_module

    monkeypatch.setattr(stages_module, "record_stage", lambda directory, kind, entry: recorded.append(entry))
    monkeypatch.setattr(experiments_module, "_stage_experiments",
                        lambda study, arm, entry, grid: [SimpleNamespace(stage=entry["stage"], folder=Path(f"{arm.name}+s2"))]
                        if arm.name in entry["arms"] else [])
    work = StudyQueue(lambda j: None, 2)
    still_running = job("b", 3)
    still_running.experiment.stage = 1
    work.active = [still_running]
    progress = SimpleNamespace(total=0, total_epochs=0)
    later = runner._LaterStages(study, work, progress, lambda arm, e: Job(arm, e, 1), "ref")

    later.job_done(None)  # ref and a are done with look 1; b is not
    assert asked == [(["a", "ref"], 1, 1)]  # a's look from ref and a through look 1 (ref's look-2 row left out)
    assert [sorted(e["arms"]) for e in recorded] == [["a", "ref"]]
    assert sorted(j.arm.name for j in work.pending) == ["a", "ref"]

    work.active, work.pending = [], []  # b's look 1 and everything queued are done
    later.job_done(None)
    # a's look 3 brings the reference's look-3 seeds; b's look 2 none: the reference's look 2 is recorded
    assert [(e["stage"], sorted(e["arms"])) for e in recorded] == [(2, ["a", "ref"]), (3, ["a", "ref"]), (2, ["b"])]


def test_the_live_table_takes_at_most_a_twentieth_of_the_time(monkeypatch):
    """A refresh that took t seconds waits 20 t before the next (and never less than ``every_s``), so
    that a large study's live table does not take the CPU its trials need."""
    from dmltune.study import runner

    calls = []

    def slow_consolidate(study, interrupted=False):
        calls.append(interrupted)
        time.sleep(0.05)

    monkeypatch.setattr(runner, "consolidate", slow_consolidate)
    live = runner.LiveTable(SimpleNamespace(), every_s=0.0)
    live.trials(1)
    assert calls == [True] and live.wait_s >= 20 * 0.05
    live.trials(2)  # within 20 × 0.05 s of the last: skipped
    assert calls == [True]
    live.last -= live.wait_s
    live.trials(3)
    assert calls == [True, True]


def test_a_later_looks_configurations_that_make_a_whole_grid_run_as_one_experiment(tmp_path):
    """Every cell of a grid still undecided at a look: one experiment (one set of workers) over those
    values and the look's seeds; any other set of cells: one experiment per cell, as before; a stage
    already started with one folder per cell keeps that layout."""
    from dmltune.study.experiments import _stage_experiments

    study = SimpleNamespace(directory=tmp_path)
    arm = SimpleNamespace(name="grid", search={"mode": "grid"})
    whole = [{"miner.gamma_pos": p, "miner.gamma_neg": n} for p in (0.05, 0.2) for n in (0.0, 0.05)]
    entry = {"stage": 2, "arms": {"grid": {"cells": whole, "seeds": [3, 4]}}}
    (one,) = _stage_experiments(study, arm, entry, list)
    assert one.folder == tmp_path / "grid+s2" and one.fixed and one.stage == 2
    assert one.values == {"miner.gamma_pos": [0.05, 0.2], "miner.gamma_neg": [0.0, 0.05], "seed": [3, 4]}
    part = {"stage": 3, "arms": {"grid": {"cells": whole[:3], "seeds": [5, 6, 7]}}}
    per_cell = list(_stage_experiments(study, arm, part, list))
    assert [e.folder.name for e in per_cell] == ["grid+s3c0", "grid+s3c1", "grid+s3c2"]
    assert per_cell[2].values == {"miner.gamma_pos": [0.2], "miner.gamma_neg": [0.0], "seed": [5, 6, 7]}
    assert [e.folder.name for e in _stage_experiments(study, arm, {**entry, "stage": 4}, list)] == ["grid+s4"]
    (tmp_path / "grid+s4c0").mkdir()  # started by a version that ran one folder per cell
    assert len(list(_stage_experiments(study, arm, {**entry, "stage": 4}, list))) == 4
