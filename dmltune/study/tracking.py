"""Experiment tracking: every trial of a study logged to MLflow, through Ray Tune's own logger.

A study file may hold an optional section::

    tracking:
      mlflow:
        tracking_uri: http://127.0.0.1:5000   # or sqlite:////abs/path/mlflow.db, file:///abs/path/mlruns
        experiment: my-study                  # default: the study's name
        tags: {owner: me}                     # default: none

:func:`parse_tracking` validates it (one-line ConfigErrors, mlflow must be installed: the
``tracking`` extra) and :func:`tracking_callbacks` gives the Tune callbacks of one arm: a subclass of
``ray.air.integrations.mlflow.MLflowLoggerCallback`` that makes one MLflow run per trial, tagged
``study``, ``arm``, ``trial_id`` and ``seed``, with the trial's config (flattened with ``/``:
``miner/name``, ``train/lr``) as parameters and every numeric report key as a metric at step
``epoch``. What it adds to Ray's callback:

* metric and parameter names are made valid for MLflow, which allows only letters, digits and
  ``_ - . / space``: ``@`` becomes ``_at_`` (``val/map@r`` is logged as ``val/map_at_r``), any other
  character ``_``; :func:`mlflow_name` gives the name of a key;
* each report is one request (``log_batch``) rather than two per key, so the driver stays quick;
* the step is the report's ``epoch``, and a resumed trial continues its MLflow run (found by its
  tags) instead of starting a new one; epochs the trial reports again after a restore (``replayed``)
  are logged only if the run does not have them yet; values that are not finite (``val/…`` before
  the first evaluation) and Ray's bookkeeping keys (``config``, ``pid``, ``timestamp``) are left out;
* an ``http(s)`` tracking server that does not answer is a one-line ConfigError before the arm
  starts, rather than MLflow's retries (minutes) inside the run.

Nothing here imports Ray or MLflow until a callback is built, so parsing a study stays light.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..config import section_mapping
from ..registry import Component, ConfigError, Param, short_repr

TRACKING_EXAMPLE = "{mlflow: {tracking_uri: http://127.0.0.1:5000}}"
MLFLOW_EXAMPLE = "{tracking_uri: http://127.0.0.1:5000, experiment: NAME}"
INSTALL_HINT = "pip install 'dmltune[tracking]'"
RESERVED_TAGS = ("study", "arm", "trial_id", "trial_name", "seed")   # set by dmltune (and Ray) on every run
DROPPED_KEYS = ("config", "pid", "timestamp", "replayed")            # never logged as metrics
MAX_EXPERIMENT_NAME = 500                                            # MLflow's limits
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 5000
BATCH = 100                                                          # params / tags per log_batch request
_VALID_NAME = re.compile(r"[/\w.\- ]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

TRACKING = Component("section", "tracking", dict, (
    Param("mlflow", dict, None, nullable=True, help="log every trial to MLflow: " + MLFLOW_EXAMPLE),
), help="experiment tracking (optional)")

MLFLOW = Component("section", "tracking.mlflow", dict, (
    Param("tracking_uri", str, None, nullable=True,
          help="the MLflow tracking server or store (required): http://HOST:PORT, sqlite:////abs/mlflow.db, file:///abs/mlruns"),
    Param("experiment", str, None, nullable=True, help="the MLflow experiment of the runs; empty = the study's name"),
    Param("tags", dict, {}, help="extra tags of every run, {name: value}"),
), help="MLflow tracking: one run per trial")


def mlflow_installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def mlflow_name(key: str) -> str:
    """``key`` as a valid MLflow metric / parameter name: ``@`` → ``_at_``, other characters MLflow
    refuses (anything but letters, digits, ``_ - . / space``) → ``_``; at most 250 characters."""
    name = str(key).replace("@", "_at_")
    name = "".join(c if _VALID_NAME.fullmatch(c) else "_" for c in name)
    return name[:MAX_KEY] or "_"


def parse_tracking(section: Any, study_name: str) -> dict | None:
    """The validated ``tracking`` section of a study (``None``: no tracking), as
    ``{"mlflow": {"tracking_uri", "experiment", "tags"}}`` with the experiment filled in (the study's
    name by default) and a local store's relative path made absolute (a study is resumed from any
    working directory). Every mistake is a one-line ConfigError."""
    section = section_mapping(section, "tracking", "study", TRACKING_EXAMPLE)
    if not section:
        return None
    raw = section.get("mlflow")
    if raw is not None and not isinstance(raw, Mapping):
        _shape_error(raw)
    if TRACKING.validate(section, where="study: tracking")["mlflow"] is None:
        if "mlflow" in section:
            raise ConfigError(f"study: tracking.mlflow is empty; give its settings like {MLFLOW_EXAMPLE}")
        return None
    mlflow = _parse_mlflow(raw, study_name)
    if not mlflow_installed():
        raise ConfigError(f"study: tracking.mlflow needs the mlflow package: {INSTALL_HINT}")
    return {"mlflow": mlflow}


def _shape_error(raw: Any) -> None:
    where = "study: tracking.mlflow"
    if isinstance(raw, str):  # `mlflow: http://...`: the URI given where its section belongs
        raise ConfigError(f"{where} must be a mapping like {{tracking_uri: {short_repr(raw, 60)}}}, got {short_repr(raw)}")
    raise ConfigError(f"{where} must be a mapping like {MLFLOW_EXAMPLE}, got {short_repr(raw)}")


def _parse_mlflow(raw: Mapping, study_name: str) -> dict:
    where = "study: tracking.mlflow"
    values = MLFLOW.validate(raw, where=where)
    uri = values["tracking_uri"]
    if uri is None or not uri.strip():
        raise ConfigError(f"{where} needs a tracking_uri, e.g. http://127.0.0.1:5000 (a server started with "
                          "`mlflow server`) or sqlite:////abs/path/mlflow.db")
    if uri != uri.strip() or any(c.isspace() or not c.isprintable() for c in uri):
        raise ConfigError(f"{where}: 'tracking_uri' {short_repr(uri)} contains spaces or control characters; "
                          "give a URI such as http://127.0.0.1:5000")
    experiment = values["experiment"]
    if experiment is None or not experiment.strip():
        experiment = study_name
    if len(experiment) > MAX_EXPERIMENT_NAME:
        raise ConfigError(f"{where}: 'experiment' is {len(experiment)} characters long; MLflow allows "
                          f"{MAX_EXPERIMENT_NAME}: {short_repr(experiment, 40)}")
    return {"tracking_uri": _absolute_store(uri), "experiment": experiment, "tags": _check_tags(values["tags"], where)}


def _check_tags(tags: Mapping, where: str) -> dict[str, str]:
    out = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not _VALID_NAME.fullmatch(key) or len(key) > MAX_KEY:
            raise ConfigError(f"{where}: tag name {short_repr(key)} is not valid; MLflow allows letters, digits, "
                              f"_ - . / and spaces (at most {MAX_KEY} characters)")
        if key in RESERVED_TAGS:
            raise ConfigError(f"{where}: tag '{key}' is set by dmltune on every run; choose another name "
                              f"(reserved: {', '.join(RESERVED_TAGS)})")
        if isinstance(value, (dict, list, tuple, set)) or value is None:
            raise ConfigError(f"{where}: tag '{key}' must be a string or a number, got {short_repr(value)}")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if len(text) > MAX_TAG_VALUE:
            raise ConfigError(f"{where}: tag '{key}' is {len(text)} characters long; keep it to {MAX_TAG_VALUE}")
        out[key] = text
    return out


def _absolute_store(uri: str) -> str:
    """A local store's relative path (``sqlite:///mlflow.db``, ``mlruns``) made absolute; anything
    else as given."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    if uri not in ("databricks", "databricks-uc") and (not _SCHEME.match(uri) or re.match(r"[A-Za-z]:[\\/]", uri)):
        # a plain path (or a Windows drive); databricks names a workspace, not a folder
        return str(Path(uri).expanduser().resolve())
    return uri


HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""MLflow's client retries a failed request 7 times over about 4 minutes by default (and waits 120 s
for an answer); for a study's per-epoch logging a few seconds will do (the environment may override)."""


def describe(tracking: dict | None) -> str | None:
    """One line for ``dmltune plan``: where the runs go, or None without tracking."""
    if not tracking or not tracking.get("mlflow"):
        return None
    m = tracking["mlflow"]
    return f"tracking: MLflow at {m['tracking_uri']}, experiment {m['experiment']!r} (one run per trial)"


def check_reachable(tracking_uri: str, timeout: float = 10.0) -> None:
    """For an ``http(s)`` URI, one request to the server (any HTTP answer will do); a connection
    that fails is a one-line ConfigError. Other stores are local: nothing to check."""
    if not tracking_uri.lower().startswith(("http://", "https://")):
        return
    import ssl
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            pass
    except urllib.error.HTTPError:  # it answered (an error code is MLflow's to explain)
        return
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(err, ssl.SSLError) or isinstance(reason, ssl.SSLError):
            return  # it answered; its certificate is for MLflow's own TLS settings to accept
        raise ConfigError(f"study: tracking.mlflow: the MLflow tracking server at {tracking_uri} does not answer "
                          f"({reason}); start it (mlflow server --host 127.0.0.1 --port PORT --backend-store-uri "
                          f"sqlite:///mlflow.db) or fix tracking_uri") from None


def tracking_callbacks(tracking: dict | None, arm_name: str, study_name: str | None = None,
                       check: bool = True, health: dict | None = None) -> list:
    """The Tune callbacks that log arm ``arm_name``'s trials (``[]`` without tracking). ``study_name``
    (the ``study`` tag) defaults to the experiment's name; ``check``: see :func:`check_reachable`;
    ``health``: a dict the callbacks share, where the first tracking failure is recorded as
    ``health["failure"]`` (one line) and ends tracking for the rest of the study."""
    if not tracking or not tracking.get("mlflow"):
        return []
    if not mlflow_installed():
        raise ConfigError(f"study: tracking.mlflow needs the mlflow package: {INSTALL_HINT}")
    m = tracking["mlflow"]
    if check:
        check_reachable(m["tracking_uri"])
    for name, value in HTTP_RETRIES.items():  # a server that goes away costs seconds, not minutes of retries
        os.environ.setdefault(name, value)
    tags = {**m.get("tags", {}), "study": study_name or m["experiment"], "arm": arm_name}
    return [_callback_class()(tracking_uri=m["tracking_uri"], experiment_name=m["experiment"], tags=tags,
                              save_artifact=False, health=health)]


def _callback_class():
    """The MLflow logger class (its module imports Ray, so it is loaded only when a callback is built)."""
    from .mlflow_logger import DmltuneMLflowLogger

    return DmltuneMLflowLogger
