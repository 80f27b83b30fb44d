"""One queue for the whole study: every arm's Tune experiments side by side on the same Ray cluster.

Each experiment (an arm's grid, one seed of a random, Optuna or PBT arm, a later stage's block) is
still its own Tune run, with its own searcher, scheduler, folder and record, exactly as when arms ran
one after another: what a folder holds, how it resumes and how it is read back do not change. The
queue runs these Tune drivers in threads of the study's one driver process, each fitting its
experiment while the others fit theirs, and lets Ray place their trials on whatever slots are free
(Ray's documented way to share a cluster between Tune runs, ray-project/ray#32560; one Tuner cannot
hold ASHA, PBT and Optuna arms at once, since its scheduler and searcher are global to the run).

Admission: experiments start in the queue's order: the reference arm's first (an interrupted study
can then already be compared), then PBT populations, then the rest in the order submitted. A
population needs all its members' slots at once and its members wait for each other (synchronous
PBT), so it starts best while slots are free, before the grids and searches fill them; started
later, its first members would train and then wait, paused, while the others' slots drain. A
further experiment starts while the started ones do not hold every slot (see ``_committed``).
``one_at_a_time`` is the old order: an experiment starts when the previous one ended.

Stopping: Ctrl-C reaches the driver's main thread; the queue then sets its stop flag, which each
running experiment's callback turns into :class:`QueueStopped` at its next step (what a Ctrl-C did
to the one running experiment before), and waits for them. An experiment that fails (full disk,
deleted folder) stops the others the same way, and its error is raised.
"""

from __future__ import annotations

import itertools
import os
import queue as _queue
import threading
from dataclasses import dataclass, field
from typing import Callable

_LIVE: dict[int, "StudyQueue"] = {}
_JOB_IDS = itertools.count()
_STARTING = threading.Lock()
"""Held from an experiment's Tuner construction until its Tune loop is set up: Tune registers the
trainable in a process-wide registry that is not safe for two threads at once (Ray 2.60)."""


def _debugging() -> bool:
    return bool(os.environ.get("DMLTUNE_QUEUE_DEBUG"))


def _debug(text: str) -> None:
    import sys
    import time

    if _debugging():
        print(f"queue {time.monotonic():.1f} {text}", file=sys.stderr, flush=True)


class QueueStopped(BaseException):
    """Ends one experiment's Tune loop when the study stops. A BaseException, as KeyboardInterrupt is,
    so that Tune lets it through without marking trials finished: what it leaves is what a Ctrl-C
    left, and ``resume`` continues it."""


@dataclass(eq=False)
class Job:
    """One experiment in the queue. ``planned``: its trials in all; ``done``: those finished (in an
    earlier run, or since); ``shape``: its trials' resources (experiments of different shapes never
    run at once: Tune keeps one resource request per trainable name)."""

    arm: object
    experiment: object
    planned: int
    done: int = 0
    shape: tuple = ()
    together: int = 0                # trials that must run at once (a PBT population); 0: any number
    cap: int | None = None           # the arm's ``search.concurrency``: its trials at once, all experiments
    first: bool = False              # the reference arm's: its trials take the slots they need first
    key: int = field(default_factory=lambda: next(_JOB_IDS))
    thread: threading.Thread | None = None
    error: BaseException | None = None
    starting: bool = False
    limiter: object = None           # has ``max_concurrent``: set by the runner once the Tuner is built
    share: int = 1

    def start(self) -> None:
        """Before the experiment's Tuner is built: wait for any other experiment's set-up to end."""
        _debug(f"wait {self.experiment.folder}")
        _STARTING.acquire()
        _debug(f"start {self.experiment.folder}")
        self.starting = True

    def started(self) -> None:
        """The experiment's Tune loop is set up (its callbacks' ``setup``), or its fit ended."""
        if self.starting:
            _debug(f"set up {self.experiment.folder}")
            self.starting = False
            _STARTING.release()

    @property
    def remaining(self) -> int:
        return max(self.planned - self.done, 0)


class StudyQueue:
    """Runs ``run(job)`` for every submitted job, several at once (see the module's text).

    ``slots``: trials the cluster runs at once; ``on_idle()`` is called when every job has ended and
    may submit more (a design's next stage); ``on_done(job)`` after each job that ended well;
    ``on_trials(n)`` now and then with the number of trials finished so far."""

    def __init__(self, run: Callable[[Job], None], slots: int, one_at_a_time: bool = False,
                 on_done: Callable[[Job], None] | None = None, on_idle: Callable[[], None] | None = None,
                 on_trials: Callable[[int], None] | None = None):
        self.run_job, self.slots, self.one_at_a_time = run, max(int(slots), 1), one_at_a_time
        self.on_done, self.on_idle, self.on_trials = on_done, on_idle, on_trials
        self.trials_finished = 0
        self.pending: list[Job] = []
        self.active: list[Job] = []
        self.ended: _queue.Queue = _queue.Queue()
        self.stop = threading.Event()
        self.key = id(self)
        self.lock = threading.Lock()

    def submit(self, job: Job) -> None:
        self.pending.append(job)

    def running_arms(self) -> list[str]:
        return list(dict.fromkeys(job.arm.name for job in self.active))

    def _admissible(self, job: Job) -> bool:
        return not self.active or (not self._held_back(job) and self._fits(job))

    def _held_back(self, job: Job) -> bool:
        """Whether ``job`` must wait whatever slots are free; later jobs may start before it."""
        if self.one_at_a_time or any(a.shape != job.shape for a in self.active):
            return True
        arm_active = sum(a.arm.name == job.arm.name for a in self.active)
        return job.cap is not None and arm_active >= job.cap

    def _fits(self, job: Job) -> bool:
        if job.together:  # a population needs its slots at once
            return self._committed() + job.together <= self.slots
        return self._committed() < self.slots

    def _committed(self) -> int:
        """Slots the started experiments hold at least: a population's members, the reference's trials
        (it takes the slots it needs first), one for any other; nothing once its trials have ended
        (an experiment still saving its record, or stopping its workers, leaves its slots free)."""
        return sum(self._holds(j) for j in self.active)

    def _holds(self, job: Job) -> int:
        if not job.remaining:
            return 0
        if job.together:
            return job.together
        if job.first:
            return min(job.remaining, job.cap or job.remaining, self.slots)
        return 1

    def _ordered(self) -> list[Job]:
        """The pending jobs in the order they may start (see the module's text); the submitted order
        when one at a time."""
        if self.one_at_a_time:
            return list(self.pending)
        return sorted(self.pending, key=lambda j: (not j.first, not j.together))  # stable: else as submitted

    def _next(self) -> Job | None:
        """The first pending job that may start now, in queue order: a job held back by its arm's cap
        or its resource shape is passed over; one that waits for slots keeps every later one waiting."""
        for job in self._ordered():
            if not self.active:
                return job
            if self._held_back(job):
                if self.one_at_a_time:
                    return None
                continue
            return job if self._fits(job) else None
        return None

    def _admit(self) -> None:
        while (job := self._next()) is not None:
            self.pending.remove(job)
            job.thread = threading.Thread(target=self._work, args=(job,), name=f"dmltune-{job.experiment.folder.name}",
                                          daemon=True)
            job.thread.start()  # then listed: a Ctrl-C between the two leaves no unstarted thread to wait for
            self.active.append(job)
            _debug(f"admit {job.experiment.folder} ({job.remaining} trials left)")
        self._share()

    def _share(self) -> None:
        """Each started experiment's bound on its running trials: the reference arm's experiments take
        what they can use, the other free slots are shared out by the trials each still has to run
        (at least one each; an arm's ``search.concurrency`` holds for the
        arm's experiments together). An experiment keeps its Ray workers from trial to trial (actor
        reuse), so a share held through an experiment saves worker start-ups; a share freed when an
        experiment ends goes to those with the most left."""
        flexible = [j for j in self.active if not j.together and j.remaining]
        if not flexible:
            return
        shares = {j.key: 1 for j in flexible}
        arm_total: dict[str, int] = {}
        for j in flexible:
            arm_total[j.arm.name] = arm_total.get(j.arm.name, 0) + 1
        left = self.slots - sum(self._holds(j) for j in self.active if j.together) - len(flexible)
        for j in flexible:  # the reference arm first: an interrupted study can then be compared early
            if j.first and left > 0:
                extra = min(left, j.remaining - 1, (j.cap - arm_total[j.arm.name]) if j.cap else left)
                shares[j.key] += max(extra, 0)
                arm_total[j.arm.name] += max(extra, 0)
                left -= max(extra, 0)
        while left > 0:
            open_ = [j for j in flexible if shares[j.key] < j.remaining
                     and (j.cap is None or arm_total[j.arm.name] < j.cap)]
            if not open_:
                break
            best = max(open_, key=lambda j: j.remaining / shares[j.key])
            shares[best.key] += 1
            arm_total[best.arm.name] += 1
            left -= 1
        if _debugging() and any(j.share != shares[j.key] for j in flexible):
            _debug("shares " + ", ".join(f"{j.experiment.folder.name} {shares[j.key]} ({j.remaining} left)"
                                         for j in flexible))
        for j in flexible:
            j.share = shares[j.key]
            if j.limiter is not None and not self.one_at_a_time:
                j.limiter.max_concurrent = j.share

    def _work(self, job: Job) -> None:
        try:
            self.run_job(job)
        except QueueStopped:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, which raises it
            job.error = err
        finally:
            job.started()
            self.ended.put(job)

    def job(self, job_key: int) -> Job | None:
        return next((job for job in self.active if job.key == job_key), None)

    def finished_trial(self, job_key: int) -> None:
        """A trial of the job ``job_key`` ended (ok, stopped early or in error)."""
        with self.lock:
            self.trials_finished += 1
            for job in self.active:
                if job.key == job_key:
                    job.done += 1

    def run(self) -> None:
        """Until every job (and whatever ``on_idle`` adds) has ended; on an error or Ctrl-C the running
        experiments are stopped first, then the error is raised."""
        _LIVE[self.key] = self
        try:
            while True:
                self._admit()
                if not self.active:
                    if self.on_idle is not None:
                        self.on_idle()
                    if not self.pending:
                        return
                    continue
                try:
                    job = self.ended.get(timeout=0.5)
                except _queue.Empty:
                    self._share()
                    if self.on_trials is not None:
                        self.on_trials(self.trials_finished)
                    continue
                self.active.remove(job)
                _debug(f"ended {job.experiment.folder}")
                if job.error is not None:
                    raise job.error
                if self.on_done is not None and not self.stop.is_set():
                    self.on_done(job)
        except BaseException:
            self.halt()
            raise
        finally:
            _LIVE.pop(self.key, None)

    def halt(self, wait_s: float = 60.0) -> None:
        """Stop every running experiment at its next step and wait for it (at most ``wait_s`` in all)."""
        import time

        self.stop.set()
        deadline = time.monotonic() + wait_s
        for job in list(self.active):
            if job.thread is not None and job.thread.ident is not None:
                job.thread.join(timeout=max(deadline - time.monotonic(), 0.1))

    def callback(self, job: Job):
        """The Tune callback of ``job``'s experiment: counts its finished trials for the admission, and
        stops its Tune loop when the study stops. It holds only keys (Tune pickles callbacks)."""
        from ray.tune import Callback

        queue_key, job_key = self.key, job.key

        class _QueueLink(Callback):  # looks its queue up by import: cloudpickle copies a closure's globals
            def setup(self, **info):
                from dmltune.study import queue

                owner = queue._LIVE.get(queue_key)
                job = owner.job(job_key) if owner is not None else None
                if job is not None:
                    job.started()

            def on_step_begin(self, iteration, trials, **info):
                from dmltune.study import queue

                owner = queue._LIVE.get(queue_key)
                if owner is not None and owner.stop.is_set():
                    raise queue.QueueStopped()

            def on_trial_complete(self, iteration, trials, trial, **info):
                from dmltune.study import queue

                owner = queue._LIVE.get(queue_key)
                if owner is not None:
                    owner.finished_trial(job_key)

            on_trial_error = on_trial_complete

            def on_trial_start(self, iteration, trials, trial, **info):
                from dmltune.study import queue

                if queue._debugging():
                    queue._debug(f"trial {trial.trial_id} started ({sum(t.status == 'PENDING' for t in trials)} "
                                 "pending)")

        return _QueueLink()
