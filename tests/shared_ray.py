"""One Ray cluster per test process, joined by the study drivers of tests that are not about Ray's
start or a driver's own processes (a killed driver, a killed worker, Ctrl-C, a lost node, a GPU
request: those still start Ray in their driver, as users do).

A driver that joins a running cluster (``RAY_ADDRESS``, as under ``ray job submit``) skips starting
Ray's head processes, the costliest part of a tiny study's start on 2 cores. The cluster is a real
``ray start --head`` process tree, in its own session and temporary folder (so a plain ``ray.init()``
elsewhere never finds it), ended with its process group: never ``ray stop``, which would end every
Ray process on the machine."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# what the cluster's workers and the drivers that join it run with (a driver that starts Ray itself
# sets the same: dmltune.study.ray_connection.prepare_environment)
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SharedRay:
    """``ray start --head --block`` in its own process group; ``address`` once it is up."""

    def __init__(self, num_cpus: int = 2, start_timeout: float = 120.0):
        self.temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths are limited
        self.port = _free_port()
        ray_cli = Path(sys.executable).with_name("ray")
        command = [str(ray_cli) if ray_cli.exists() else "ray", "start", "--head", "--block",
                   f"--port={self.port}", f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false",
                   "--disable-usage-stats", f"--temp-dir={self.temp_dir}"]
        self.log = Path(self.temp_dir) / "ray_start.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **CLUSTER_ENV})
        self.address = f"127.0.0.1:{self.port}"
        deadline = time.time() + start_timeout
        while "Ray runtime started" not in self.log.read_text():
            if self.process.poll() is not None or time.time() > deadline:
                text = self.log.read_text()[-3000:]
                self.close()
                raise RuntimeError(f"the shared Ray cluster did not start:\n{text}")
            time.sleep(0.2)

    def env(self) -> dict:
        """The environment of a driver that joins this cluster."""
        return {**os.environ, **CLUSTER_ENV, "RAY_ADDRESS": self.address}

    def close(self) -> None:
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.temp_dir, ignore_errors=True)
