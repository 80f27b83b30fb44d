"""A real multi-node Ray cluster on one machine: separate `ray start` processes on 127.0.0.1, each in
a session of its own so that a node (its raylet, its agents and its workers) can be killed as a
machine dies. Used by the cluster fault tests and by the chaos run (benchmarks/chaos_study.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def environment(**changes) -> dict:
    """This process's environment without any Ray authentication or address setting, then ``changes``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    return {**env, **changes}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(log: Path, env: dict, *args, cpus: int = 1) -> subprocess.Popen:
    """`ray start ... --block` in a session of its own (its raylet's workers stay in that session)."""
    return subprocess.Popen([RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                             "--disable-usage-stats", "--block", *args], env=env, stdout=Path(log).open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_started(node: subprocess.Popen, log: Path, timeout=90) -> None:
    deadline = time.time() + timeout
    while "Ray runtime started" not in Path(log).read_text():
        if node.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"a Ray node did not start: {Path(log).read_text()[-3000:]}")
        time.sleep(0.2)


def session(pid: int) -> list:
    """Every live process of the session that ``pid`` leads (a node started by start_node, or a driver)."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == pid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def kill_sessions(*leaders) -> None:
    """SIGKILL every process of the sessions we started, and wait until they are gone."""
    import psutil

    for _ in range(5):  # again, for a worker a dying raylet started meanwhile
        procs = [p for leader in leaders for p in session(leader.pid)]
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=30)
        if not procs:
            break
    for leader in leaders:
        leader.wait(timeout=30)  # reaped
    left = [p for leader in leaders for p in session(leader.pid)]
    if left:
        raise RuntimeError(f"processes outlived SIGKILL: {left}")


class LoopbackCluster:
    """A head node and ``workers`` worker nodes of ``cpus`` CPUs each; ``address`` for drivers."""

    def __init__(self, logs: Path, workers: int = 1, cpus: int = 1, **env):
        self.logs = Path(logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.temp = tempfile.mkdtemp(prefix="dmlt-", dir="/tmp")  # short: Ray's socket paths live under it
        self.port, self.cpus = free_port(), cpus
        self.env = environment(RAY_AUTH_MODE="disabled", **env)
        self.address = f"127.0.0.1:{self.port}"
        self.head = self._start("head", "--head", f"--port={self.port}", "--include-dashboard=false")
        self.workers = [self.start_worker(i) for i in range(workers)]

    def _start(self, name: str, *args) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        node = start_node(log, self.env, *args, f"--temp-dir={self.temp}", cpus=self.cpus)
        try:
            wait_started(node, log)
        except BaseException:
            kill_sessions(node)
            raise
        return node

    def start_worker(self, index: int) -> subprocess.Popen:
        return self._start(f"worker{index}", f"--address={self.address}")

    def kill_worker(self, index: int) -> list[int]:
        """The worker node dies (raylet, agents and trial workers); returns the trial workers' pids."""
        node = self.workers[index]
        trials = [p.pid for p in session(node.pid) if p.name().startswith("ray::ImplicitFunc")]
        kill_sessions(node)
        return trials

    def restart_worker(self, index: int) -> None:
        self.workers[index] = self.start_worker(index)

    def trial_workers(self) -> list:
        """Every trial's worker process on any node."""
        return [p for node in [self.head, *self.workers] for p in session(node.pid)
                if p.name().startswith("ray::ImplicitFunc")]

    def close(self) -> None:
        try:
            kill_sessions(*self.workers, self.head)
        finally:
            shutil.rmtree(self.temp, ignore_errors=True)
