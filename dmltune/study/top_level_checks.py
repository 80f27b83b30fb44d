"""Checks of a study's own values (everything but its arms' settings): the shapes of its values,
the study and arm names, the storage folder, the seeds, the per-trial resources and the analysis
section. Each raises a one-line ConfigError that names the key and shows a valid value."""

from __future__ import annotations

import re
from pathlib import Path

from ..config import check_seed, section_mapping
from ..registry import ConfigError, short_repr

SIMPLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # study and arm names: they become folder names
MAX_NAME = 100                                              # characters of a study or arm name
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")                  # never a storage folder


VALUE_SHAPES = ("resources", "analysis", "arms", "seeds", "storage")


def check_value_shape(raw: dict, key: str) -> None:
    """``raw[key]`` (one of VALUE_SHAPES) has the right type, before its contents are validated:
    ``seeds: 3`` names the key and the shape it needs. Each key is checked on its own, so that
    every wrong shape is listed in one pass."""
    if key == "resources":
        section_mapping(raw.get("resources"), "resources", "study", "{cpu: 1, gpu: 0.5}")
    elif key == "analysis":
        section_mapping(raw.get("analysis"), "analysis", "study", "{reference: ARM, delta: 0.01}")
    elif key == "arms" and raw.get("arms") is not None and not isinstance(raw["arms"], list):
        raise ConfigError("study: 'arms' must be a list of arms like [{name: a, miner: {name: asms}, loss: "
                          f"{{name: soft_contrastive}}}}], got {short_repr(raw['arms'])}")
    elif key == "seeds" and raw.get("seeds") is not None and not isinstance(raw["seeds"], list):
        raise ConfigError(f"study: 'seeds' must be a list of integers like [0, 1, 2], got {short_repr(raw['seeds'])}")
    elif key == "storage" and "storage" in raw and not isinstance(raw["storage"], str):
        raise ConfigError(f"study: 'storage' must be a folder path such as results, got {short_repr(raw['storage'])}")


def check_simple_name(name, where: str) -> str:
    """``name`` as a study or arm name: a simple name (it becomes a folder name) of at most MAX_NAME characters."""
    if not isinstance(name, str) or not SIMPLE_NAME.fullmatch(name):
        raise ConfigError(f"{where}: 'name' must be a simple name (letters, digits, _ . -), got {short_repr(name)}")
    if len(name) > MAX_NAME:
        raise ConfigError(f"{where}: 'name' is {len(name)} characters long; keep it to {MAX_NAME} "
                          f"(it becomes a folder name): {short_repr(name, 40)}")
    return name


def check_storage(storage: str, name: str) -> None:
    """``storage/name`` can be the study's folder: not a system folder, no file in the way."""
    if not storage.strip():
        raise ConfigError("study: 'storage' is empty; give the folder that holds study folders, e.g. storage: results")
    if "\0" in storage:
        raise ConfigError(f"study: 'storage' {short_repr(storage)} contains a NUL character; give a folder path")
    try:
        folder = Path(storage).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as err:
        raise ConfigError(f"study: 'storage' {short_repr(storage)} is not a usable folder ({err}); "
                          "give a folder path such as results") from None
    for system in SYSTEM_FOLDERS:
        if folder == Path(system) or Path(system) in folder.parents:
            raise ConfigError(f"study: 'storage' {short_repr(storage)} is under {system}, a system folder; "
                              "give a folder of your own, e.g. storage: results")
    _check_no_file_in_the_way(storage, folder / name)


def _check_no_file_in_the_way(storage: str, target: Path) -> None:
    """The nearest existing folder of ``target`` (itself or a parent) is a usable folder, not a file."""
    for path in (target, *target.parents):
        try:
            if not path.exists():
                continue
            if not path.is_dir():
                raise ConfigError(f"study: 'storage' {short_repr(storage)} is not writable: {path} is a file, "
                                  "not a folder; choose another storage folder (or move the file)")
        except OSError as err:
            raise ConfigError(f"study: 'storage' {short_repr(storage)}: {path} cannot be used ({err.strerror}); "
                              "choose another storage folder") from None
        return


def check_seeds(seeds: list) -> None:
    """A non-empty list of distinct seeds, each one a trial's random generators accept."""
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"study: 'seeds' must be a non-empty list of non-negative integers, got {short_repr(seeds)}")
    for seed in seeds:
        check_seed(seed, "study", key="seeds")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"study: 'seeds' lists a seed twice: {short_repr(seeds)}")


def check_resources_section(study: dict) -> dict:
    """The per-trial resources, ``{cpu: N, gpu: fraction or auto}``, with defaults."""
    res = study.get("resources") or {}
    if not isinstance(res, dict) or set(res) - {"cpu", "gpu"}:
        raise ConfigError(f"study: resources must be {{cpu: N, gpu: fraction}}, got {res!r}")
    cpu = res.get("cpu", 1)
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0:
        raise ConfigError(f"study: resources.cpu must be a positive number, got {cpu!r}")
    out = {"cpu": cpu}
    gpu = res.get("gpu")
    if gpu == "auto":  # a fraction per arm, from its backbone (see Arm.gpu)
        out["gpu"] = "auto"
    elif gpu is not None and gpu != 0:  # 0, empty or left out: CPU-only trials
        if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or not 0 < gpu <= 1:
            raise ConfigError(f"study: resources.gpu must be a GPU fraction in (0, 1] or auto, got {gpu!r}; "
                              "for CPU-only trials set it to 0 or leave it out")
        out["gpu"] = float(gpu)
    return out


def check_analysis(section, arm_names: list[str]) -> None:
    """The ``analysis`` section (reference arm, delta, ...) is valid, so the report cannot fail late."""
    from ..analysis.settings import ANALYSIS

    if section is None:
        return
    if not isinstance(section, dict):
        raise ConfigError(f"study: 'analysis' must be a mapping like {{reference: ARM, delta: 0.01}}, got {section!r}")
    settings = ANALYSIS.validate(section, where="study: analysis")
    if settings["reference"] is not None and settings["reference"] not in arm_names:
        raise ConfigError(f"study: analysis.reference {settings['reference']!r} is not an arm; "
                          f"choose one of {', '.join(arm_names)}")
