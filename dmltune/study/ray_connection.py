"""Joining Ray: in-process (a new local instance, never a stray `ray start` cluster) or a cluster at
an address, probed once so that an absent cluster or a refused token is one line within seconds;
and the process settings a study driver runs with."""

from __future__ import annotations

import os

from ..registry import ConfigError


def prepare_environment(address: str | None) -> None:
    import logging

    # a failed trial is one progress line and, at the end, one line with its reason (the full traceback
    # is in its error file and the table): Tune's own multi-line tracebacks would bury them
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    syncer = logging.getLogger("ray.train._internal.syncer")
    if not any(isinstance(f, OneLineSyncFailure) for f in syncer.filters):
        syncer.addFilter(OneLineSyncFailure())
    if address is None and not os.environ.get("RAY_ADDRESS"):  # Ray starts here (see start_ray)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Ctrl-C stops the whole study (Tune's own handler would end only the current arm and let the
    # next one start, with no trace in the exit code); resume continues from the last checkpoints
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0: no tables
    # short trials checkpoint every epoch by design; Tune's advice about snapshot frequency is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class OneLineSyncFailure:
    """Tune copies its experiment record into the study folder after each save, and when a copy fails
    (a full disk) it logs the copy's whole traceback as it launches the next one. That next copy
    replaces the record whole, and a record cut off at a stop is repaired by ``resume``
    (state_copy.py): the console gets one line, not a traceback."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        if not message.startswith("Last sync command failed"):
            return True
        reason = next((line.strip() for line in reversed(message.splitlines()) if line.strip()), "")
        record.msg, record.args, record.exc_info, record.exc_text = (
            f"dmltune: Tune could not copy its experiment record into the study folder ({reason[:200]}); "
            "it copies it again at its next save", None, None, None)
        return True


def token_message(address: str) -> str:
    where = "(~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN); see the README, 'On a Ray cluster'"
    if os.environ.get("RAY_AUTH_MODE") == "token":
        return f"the Ray cluster at {address} refused this driver's token: give the cluster's own token {where}"
    return (f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token and give the "
            f"cluster's token {where}")


def probe_address(address: str) -> None:
    """For a plain ``HOST:PORT``, one quick try before ``ray.init``, which retries a refusing or absent
    cluster for minutes with a stderr line per try: an absent cluster or a refused token is one line."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in host:
        return
    import socket
    import sys

    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({err.strerror or 'timed out'}); "
                          "start it or check --address") from None
    from ray._raylet import GcsClient

    sys.stderr.flush()
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)  # Ray's C++ client logs a refusal on stderr itself
    try:
        GcsClient(address=address)
        refused = False
    except Exception as err:
        refused = type(err).__name__ == "AuthenticationError"
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)
    if refused:
        raise ConfigError(token_message(address))


def start_ray(address: str | None) -> bool:
    """Start Ray in-process or join ``address``; True when started here (and to be shut down here).
    Without ``address``, a driver started by ``ray job submit`` joins its cluster (``RAY_ADDRESS``);
    otherwise Ray starts here, also where ``ray start`` left a cluster that ``ray.init()`` would join."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        probe_address(address)
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as err:
        if type(err).__name__ == "AuthenticationError":
            raise ConfigError(token_message(address)) from None
        if address is not None and isinstance(err, (ConnectionError, TimeoutError)):
            auth = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                    "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token "
                    "(see the README, 'On a Ray cluster')")
            raise ConfigError(f"cannot reach the Ray cluster at {address} ({err}); start it or check --address{auth}") from None
        raise
    return True


def cluster_resources(address: str) -> dict:
    """The resource totals of the Ray cluster at ``address`` (joined briefly)."""
    import ray

    prepare_environment(address)
    started_here = start_ray(address)
    try:
        return dict(ray.cluster_resources())
    finally:
        if started_here:
            ray.shutdown()
