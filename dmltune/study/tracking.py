"""Experiment tracking: every trial of a study logged to MLflow and/or Weights & Biases, through Ray
Tune's own loggers, and optuna arms' searches kept in a database that optuna-dashboard opens.

A study file may hold an optional section::

    tracking:
      mlflow:
        tracking_uri: http://127.0.0.1:5000   # or sqlite:////abs/path/mlflow.db, file:///abs/path/mlruns
        experiment: my-study                  # default: the study's name
        tags: {owner: me}                     # default: none
      wandb:
        project: my-study                     # default: the study's name
        mode: offline                         # or online; default: WANDB_MODE, else online
        dir: /abs/path                        # default: the study folder (runs in DIR/wandb/)
      optuna:
        storage: sqlite:////abs/optuna.db     # default: optuna.db in the study folder

:func:`parse_tracking` validates it (one-line ConfigErrors; mlflow and wandb must be installed: the
``tracking`` extra) and :func:`tracking_callbacks` gives the Tune callbacks of one arm (the W&B one:
:mod:`.wandb_logger`; the Optuna storage is no callback: :mod:`.optuna_storage`). MLflow's is a subclass of
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

WANDB_EXAMPLE = "{project: NAME, mode: offline}"
OPTUNA_EXAMPLE = "{storage: sqlite:////abs/path/optuna.db}"
WANDB_MODES = ("online", "offline")
MAX_WANDB_PROJECT = 128                                              # W&B's limit; and these characters it refuses:
_WANDB_PROJECT_REFUSED = set("/\\#?%:")

TRACKING = Component("section", "tracking", dict, (
    Param("mlflow", dict, None, nullable=True, help="log every trial to MLflow: " + MLFLOW_EXAMPLE),
    Param("wandb", dict, None, nullable=True, help="log every trial to Weights & Biases: " + WANDB_EXAMPLE),
    Param("optuna", dict, None, nullable=True,
          help="keep the optuna arms' searches in a database optuna-dashboard opens: " + OPTUNA_EXAMPLE
               + " ({} = optuna.db in the study folder)"),
), help="experiment tracking (optional)")

WANDB = Component("section", "tracking.wandb", dict, (
    Param("project", str, None, nullable=True, help="the W&B project of the runs; empty = the study's name"),
    Param("mode", str, None, nullable=True, choices=WANDB_MODES,
          help="online: sent while the study runs (needs `wandb login` or WANDB_API_KEY); offline: written to disk, "
               "sent later with `wandb sync DIR/wandb/offline-run-*`; empty = WANDB_MODE, else online"),
    Param("dir", str, None, nullable=True, help="where the runs' files go (DIR/wandb/); empty = the study folder"),
    Param("entity", str, None, nullable=True, help="the W&B team or user of the runs; empty = your default entity"),
), help="Weights & Biases tracking: one run per trial")

OPTUNA = Component("section", "tracking.optuna", dict, (
    Param("storage", str, None, nullable=True,
          help="an Optuna RDB storage URL (sqlite:////abs/optuna.db, postgresql://..., mysql://...); "
               "empty = sqlite:///STUDY_DIR/optuna.db"),
), help="Optuna storage of the optuna arms' searches (optuna-dashboard opens it)")

MLFLOW = Component("section", "tracking.mlflow", dict, (
    Param("tracking_uri", str, None, nullable=True,
          help="the MLflow tracking server or store (required): http://HOST:PORT, sqlite:////abs/mlflow.db, file:///abs/mlruns"),
    Param("experiment", str, None, nullable=True, help="the MLflow experiment of the runs; empty = the study's name"),
    Param("tags", dict, {}, help="extra tags of every run, {name: value}"),
), help="MLflow tracking: one run per trial")


def mlflow_installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def wandb_installed() -> bool:
    return importlib.util.find_spec("wandb") is not None


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
    for name, example in (("wandb", WANDB_EXAMPLE), ("optuna", OPTUNA_EXAMPLE)):
        if section.get(name) is not None and not isinstance(section[name], Mapping):
            raise ConfigError(f"study: tracking.{name} must be a mapping like {example}, got {short_repr(section[name])}")
    values = TRACKING.validate(section, where="study: tracking")
    for name, example in (("mlflow", MLFLOW_EXAMPLE), ("wandb", WANDB_EXAMPLE), ("optuna", "{} (optuna.db in the study folder)")):
        if name in section and values[name] is None:
            raise ConfigError(f"study: tracking.{name} is empty; give its settings like {example}")
    out = {}
    if values["mlflow"] is not None:
        out["mlflow"] = _parse_mlflow(raw, study_name)
        if not mlflow_installed():
            raise ConfigError(f"study: tracking.mlflow needs the mlflow package: {INSTALL_HINT}")
    if values["wandb"] is not None:
        out["wandb"] = _parse_wandb(values["wandb"], study_name)
        if not wandb_installed():
            raise ConfigError(f"study: tracking.wandb needs the wandb package: {INSTALL_HINT}")
    if values["optuna"] is not None:
        out["optuna"] = _parse_optuna(values["optuna"])
    return out or None


def _parse_wandb(raw: Mapping, study_name: str) -> dict:
    """``{"project", "mode", "dir", "entity"}``: the project the study's name by default, ``dir``
    absolute (None: the study folder, decided when the study runs), ``mode`` None: W&B's own choice."""
    where = "study: tracking.wandb"
    values = WANDB.validate(raw, where=where)
    project = values["project"]
    if project is None or not project.strip():
        project = study_name
    refused = sorted(_WANDB_PROJECT_REFUSED & set(project)) or [c for c in project if c.isspace() or not c.isprintable()][:1]
    if refused or len(project) > MAX_WANDB_PROJECT:
        raise ConfigError(f"{where}: 'project' {short_repr(project, 40)} is not a valid W&B project name; use at most "
                          f"{MAX_WANDB_PROJECT} characters without spaces or / \\ # ? % :")
    folder = values["dir"]
    folder = str(Path(folder).expanduser().resolve()) if folder and folder.strip() else None
    entity = values["entity"] if values["entity"] and values["entity"].strip() else None
    return {"project": project, "mode": values["mode"], "dir": folder, "entity": entity}


def _parse_optuna(raw: Mapping) -> dict:
    """``{"storage"}``: an RDB URL with a relative SQLite path made absolute; None = optuna.db in the
    study folder (decided when the study runs: resume may find the folder elsewhere)."""
    where = "study: tracking.optuna"
    url = OPTUNA.validate(raw, where=where)["storage"]
    if url is None or not url.strip():
        return {"storage": None}
    if url != url.strip() or any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"{where}: 'storage' {short_repr(url)} contains spaces or control characters; "
                          "give a URL such as sqlite:////abs/path/optuna.db")
    from sqlalchemy.engine import make_url  # optuna's RDB storage is SQLAlchemy's: what it parses, Optuna opens

    try:
        parsed = make_url(url)
    except Exception:  # sqlalchemy.exc.ArgumentError: not a URL
        parsed = None
    if parsed is None or "://" not in url:
        raise ConfigError(f"{where}: 'storage' {short_repr(url)} is not a database URL; give one such as "
                          "sqlite:////abs/path/optuna.db or postgresql://user@host/db (or {} for optuna.db in the study folder)")
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(f"{where}: 'storage' {url} is an in-memory database, which nothing else can open; "
                              "give a file, e.g. sqlite:////abs/path/optuna.db")
        database = Path(parsed.database).expanduser().resolve()
        if not database.parent.is_dir():
            raise ConfigError(f"{where}: 'storage' {url}: the folder {database.parent} does not exist; create it "
                              "or give another path")
        return {"storage": parsed.set(database=str(database)).render_as_string(hide_password=False)}
    try:
        parsed.get_dialect().import_dbapi()  # the database's Python driver (psycopg2, pymysql, ...)
    except ImportError as err:
        raise ConfigError(f"{where}: 'storage' {parsed.render_as_string()} needs the Python driver of that database, "
                          f"which is not installed ({err}); install it, or use sqlite:////abs/path/optuna.db") from None
    except Exception:  # an unknown dialect is SQLAlchemy's NoSuchModuleError
        raise ConfigError(f"{where}: 'storage' {parsed.render_as_string()}: SQLAlchemy knows no database "
                          f"'{parsed.get_backend_name()}'; use sqlite, postgresql or mysql") from None
    return {"storage": url}


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
    parts = []
    if tracking and tracking.get("mlflow"):
        m = tracking["mlflow"]
        parts.append(f"MLflow at {m['tracking_uri']}, experiment {m['experiment']!r} (one run per trial)")
    if tracking and tracking.get("wandb"):
        w = tracking["wandb"]
        mode = w["mode"] or "WANDB_MODE or online"
        parts.append(f"W&B project {w['project']!r}, {mode}, runs in {w['dir'] or 'STUDY_DIR'}/wandb (one run per trial)")
    if tracking and tracking.get("optuna"):
        parts.append(f"optuna arms' searches in {tracking['optuna']['storage'] or 'sqlite:///STUDY_DIR/optuna.db'} "
                     "(optuna-dashboard URL)")
    return "tracking: " + "; ".join(parts) if parts else None


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
                       check: bool = True, health: dict | None = None, directory: Path | None = None) -> list:
    """The Tune callbacks that log arm ``arm_name``'s trials (``[]`` without tracking). ``study_name``
    (the ``study`` tag) defaults to the experiment's name; ``check``: see :func:`check_reachable`
    (and, for W&B online, that credentials are set up); ``health``: a dict the callbacks share, where
    the first tracking failure is recorded as ``health["failure"]`` (one line) and ends tracking for
    the rest of the study; ``directory``: the study folder (W&B's files go there by default)."""
    callbacks = _wandb_callbacks(tracking, arm_name, study_name, check, directory)
    if not tracking or not tracking.get("mlflow"):
        return callbacks
    if not mlflow_installed():
        raise ConfigError(f"study: tracking.mlflow needs the mlflow package: {INSTALL_HINT}")
    m = tracking["mlflow"]
    if check:
        check_reachable(m["tracking_uri"])
    for name, value in HTTP_RETRIES.items():  # a server that goes away costs seconds, not minutes of retries
        os.environ.setdefault(name, value)
    tags = {**m.get("tags", {}), "study": study_name or m["experiment"], "arm": arm_name}
    return [_callback_class()(tracking_uri=m["tracking_uri"], experiment_name=m["experiment"], tags=tags,
                              save_artifact=False, health=health), *callbacks]


def wandb_mode(settings: dict) -> str:
    """The W&B mode the runs get: the study file's, else ``WANDB_MODE``, else online."""
    return settings["mode"] or os.environ.get("WANDB_MODE") or "online"


def _wandb_callbacks(tracking: dict | None, arm_name: str, study_name: str | None, check: bool,
                     directory: Path | None) -> list:
    if not tracking or not tracking.get("wandb"):
        return []
    if not wandb_installed():
        raise ConfigError(f"study: tracking.wandb needs the wandb package: {INSTALL_HINT}")
    w = tracking["wandb"]
    mode = {"dryrun": "offline"}.get(wandb_mode(w), wandb_mode(w))  # WANDB_MODE may also say disabled (or dryrun)
    if mode not in (*WANDB_MODES, "disabled"):
        mode = None
    if check and mode == "online":
        check_wandb_login()
    folder = w["dir"] or (str(directory) if directory is not None else None)
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    from .wandb_logger import DmltuneWandbLogger  # imports Ray and wandb: only when a callback is built

    extra = {k: v for k, v in (("mode", mode), ("dir", folder), ("entity", w["entity"])) if v is not None}
    return [DmltuneWandbLogger(project=w["project"], group=arm_name, tags=[study_name or w["project"], arm_name],
                               job_type="trial", resume="allow", **extra)]


def check_wandb_login() -> None:
    """W&B online needs credentials (``wandb login``, WANDB_API_KEY); without them each trial's run
    would fail in its logging process, unseen: one line instead, before any trial."""
    import wandb

    if not wandb.login(prompt=False, verify=False):
        raise ConfigError("study: tracking.wandb: W&B online mode needs credentials and none are set up; run "
                          "`wandb login` or set WANDB_API_KEY, or use mode: offline (and `wandb sync` later)")


def _callback_class():
    """The MLflow logger class (its module imports Ray, so it is loaded only when a callback is built)."""
    from .mlflow_logger import DmltuneMLflowLogger

    return DmltuneMLflowLogger
