"""A study on a real multi-node Ray cluster (separate `ray start` processes on loopback): a node that
dies under ``retries: 0`` leaves its trial an error with the reason, and a cluster with token
authentication refuses a driver without the token in one line, fast."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest
import yaml

from loopback_cluster import LoopbackCluster, environment, free_port, kill_sessions, start_node, wait_started
from test_lifecycle import STUDY as LIFE

STUDY = {**LIFE, "name": "faults", "concurrency": 2}  # two trials at once, retries: 0
TWO_ARMS = [{"name": "fixed", "miner": {"name": "asms", "gamma_pos": 0.1}, "loss": {"name": "soft_contrastive"}},
            {"name": "adaptive", "miner": {"name": "at_asms"}, "loss": {"name": "soft_contrastive"}}]


def write(tmp_path, **changes) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return str(path)


@pytest.mark.slow
def test_two_arms_train_side_by_side_on_two_nodes_and_a_trial_on_a_node_that_dies_is_an_error(tmp_path):
    """Two nodes of one CPU each: the study's one queue runs the two arms' trials at the same time, one
    on each node; the worker node is killed while both train: its trial ends in error, with the
    reason, the other finishes ok, and the driver exits 1."""
    epochs = 30
    path = write(tmp_path, train={**STUDY["train"], "epochs": epochs, "batches_per_epoch": 20},
                 eval={**STUDY["eval"], "every": 10}, arms=TWO_ARMS)
    cluster, driver = LoopbackCluster(tmp_path / "logs", workers=1, cpus=1), None
    try:
        driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", path, "--address", cluster.address],
                                  cwd=tmp_path, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
        training, seen = set(), []
        for line in driver.stdout:  # both trials train, one on each node
            seen.append(line)
            if f": epoch 1/{epochs}" in line:
                training.add(line.split(": epoch")[0])
            if len(training) == 2:
                break
        assert len(training) == 2, "".join(seen)[-3000:]
        worker_trial_pids = cluster.kill_worker(0)  # the worker node dies: its raylet, agents and trial's worker
        out, err = driver.communicate(timeout=300)
    finally:
        if driver is not None:
            kill_sessions(driver)
        cluster.close()
    assert worker_trial_pids, "no trial ran on the worker node"
    assert driver.returncode == 1, out[-3000:] + err[-3000:]
    rows = pd.read_parquet(tmp_path / "results" / "faults" / "trials.parquet").groupby("trial_id").tail(1)
    assert sorted(rows.status) == ["error", "ok"], rows[["trial_id", "trial_status", "status", "error", "epoch"]]
    lost, done = rows[rows.status == "error"].iloc[0], rows[rows.status == "ok"].iloc[0]
    assert lost.node_id != done.node_id and lost.epoch < epochs  # it ran on the node that died
    assert {lost.arm, done.arm} == {"fixed", "adaptive"}  # two arms at once, one on each node
    # Tune's saved state keeps the lost trial either as it was last cached (RUNNING, read back as
    # PENDING, no error file recorded) or as ERROR with Ray's words in its error file, depending on
    # when its experiment saw the loss: the table gives both the same reason
    assert lost.trial_status in ("PENDING", "ERROR"), lost.trial_status
    assert "did not finish" in lost.error and "its node died" in lost.error and "retries" in lost.error, lost.error
    assert done.trial_status == "TERMINATED" and done.epoch == epochs and done.error == ""
    assert "1 trial(s) ended in error" in err and "Traceback" not in err, err[-3000:]


@pytest.mark.slow
def test_a_cluster_with_token_authentication_refuses_a_driver_without_the_token_in_one_line(tmp_path):
    home, empty = tmp_path / "home", tmp_path / "empty"
    (home / ".ray").mkdir(parents=True)
    empty.mkdir()
    token = home / ".ray" / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    temp = tempfile.mkdtemp(prefix="dmlt-", dir="/tmp")
    port = free_port()
    head = start_node(tmp_path / "head.log", environment(RAY_AUTH_MODE="token", HOME=str(home)), "--head",
                      f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false")
    path = write(tmp_path)
    address = f"127.0.0.1:{port}"

    def validate(address=address, command="validate", **env):
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "dmltune", command, path, "--address", address],
                              cwd=tmp_path, env=environment(**env), capture_output=True, text=True, timeout=120)
        return proc, time.time() - started

    try:
        wait_started(head, tmp_path / "head.log")
        refused, took = validate(HOME=str(empty))  # neither the mode nor the token
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-3000:]
        assert "RAY_AUTH_MODE=token" in refused.stderr and "token" in refused.stderr.split("RAY_AUTH_MODE")[1]
        assert "Traceback" not in refused.stderr and took < 30, took
        refused, took = validate(command="run", HOME=str(empty))  # and run: nothing recorded
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-3000:]
        assert "RAY_AUTH_MODE=token" in refused.stderr and took < 30, took
        assert not (tmp_path / "results" / "faults" / "study.yaml").exists()
        wrong = empty / "wrong_token"
        wrong.write_text(secrets.token_hex(32))  # the mode, but another cluster's token
        refused, took = validate(HOME=str(empty), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(wrong))
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-3000:]
        assert "refused this driver's token" in refused.stderr and "RAY_AUTH_TOKEN_PATH" in refused.stderr and took < 30, took
        nowhere = f"127.0.0.1:{free_port()}"  # where no cluster answers: one line, not minutes of retries
        absent, took = validate(nowhere, HOME=str(empty), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        assert absent.returncode == 2 and absent.stderr.count("\n") == 1, absent.stderr[-3000:]
        assert f"cannot reach the Ray cluster at {nowhere}" in absent.stderr and took < 30, took
        accepted, _ = validate(HOME=str(empty), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-2000:]
        assert f"{path}: valid" in accepted.stdout
        accepted, _ = validate(HOME=str(home), RAY_AUTH_MODE="token")  # the token in ~/.ray/auth_token
        assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-2000:]
    finally:
        kill_sessions(head)
        shutil.rmtree(temp, ignore_errors=True)
