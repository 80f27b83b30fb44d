"""Shared fixtures, and the settings every test process runs with.

The suite runs in parallel (pytest-xdist, ``-n`` in pyproject.toml) on as few as 2 cores. Each test
process, and every process it starts (study drivers, Ray workers), computes with one intra-op
thread: torch's default of one thread per core, times several test processes, oversubscribes the
cores, and OpenMP's spinning threads then slow a 2-second in-process training run to minutes."""

import os
import signal
import sys
from pathlib import Path

# a suite started in the background by a non-interactive shell inherits an ignored SIGINT, and so
# would every study driver it starts: the Ctrl-C test needs Python's own handler, as in a terminal
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # loopback_cluster, for fault tests

import pytest  # noqa: E402

from trial_helpers import tiny_config as _tiny_config  # noqa: E402


@pytest.fixture
def tiny_config():
    """``tiny_config(**changes)``: the shared tiny trainable config (tests/trial_helpers.py), changed."""
    return _tiny_config


@pytest.fixture(scope="session")
def shared_ray():
    """A Ray cluster started once per test process (tests/shared_ray.py), for study drivers whose test
    is not about starting Ray: pass ``env=shared_ray.env()`` to the driver's subprocess."""
    from shared_ray import SharedRay

    cluster = SharedRay()
    try:
        yield cluster
    finally:
        cluster.close()


def pytest_configure(config):
    """In CI (``CI`` set, as root, with apt-get), install Debian's Chromium for report.html's browser
    check before any test process collects (tests/test_report_html.py skips it, naming this install,
    where no Chromium is found). Elsewhere nothing is installed: a test run does not change the machine."""
    import shutil
    import subprocess

    if hasattr(config, "workerinput") or not os.environ.get("CI") or os.environ.get("DMLTUNE_NO_BROWSER_INSTALL"):
        return
    if shutil.which("chromium") or shutil.which("chromium-browser") or not shutil.which("apt-get"):
        return
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(command, env=env, timeout=600, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as error:
        print(f"conftest: could not install chromium ({error}); the browser check will be skipped")


def pytest_collection_modifyitems(config, items):
    """The slow tests first (in their usual order), then the rest. xdist's ``load`` schedule with
    ``--maxschedchunk 1`` (pyproject.toml) hands out tests one by one as processes free up, so the
    long real-process tests start at once in every process, and the many short ones fill the last
    minutes instead of one long test running alone at the end. (``worksteal``, or ``load`` with its
    default chunks, would give the first quarter or third of the list, every slow test, to one
    process.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
