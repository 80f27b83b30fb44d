"""Pretrained weights from local files only: torch hub's checkpoint folder or an explicit path.

dmltune never downloads weights. A missing file is reported with the exact paths looked in and
where to get the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..lazy import lazy_module
from ..registry import ConfigError

torch = lazy_module("torch")


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints`` by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(backbone: str, file_names: tuple[str, ...], url: str, explicit: str | None) -> Path:
    """The weights file to load: ``explicit`` if given, else the first of ``file_names`` found."""
    if explicit:
        if "\0" in explicit:
            raise ConfigError(f"model.weights: {explicit!r} contains a NUL character; give the path of a local "
                              f"{backbone} checkpoint")
        path = Path(os.path.expanduser(explicit)).absolute()
        try:
            path = path.resolve()
            found = path.is_file()
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"model.weights: {path} cannot be used ({getattr(err, 'strerror', None) or err}); "
                              f"give the path of a local {backbone} checkpoint") from None
        if not found:
            raise ConfigError(f"model.weights: file {path} does not exist; give the path of a local {backbone} checkpoint")
        return check_checkpoint_file(path, backbone)
    folder = hub_checkpoint_dir()
    for name in file_names:
        if (folder / name).is_file():
            return folder / name
    looked = ", ".join(str(folder / n) for n in file_names)
    raise ConfigError(
        f"pretrained {backbone} weights not found (looked in {looked}); dmltune does not download: "
        f"fetch {url} into {folder} (or set TORCH_HOME), or pass model.weights=PATH, or set model.pretrained=false"
    )


def check_checkpoint_file(path: Path, backbone: str) -> Path:
    """``path`` if it looks like a file ``torch.save`` wrote (a zip archive, or a pickle in the legacy
    format); an empty file (an interrupted download) or another kind of file is a ConfigError.
    Reads the first bytes only: loading is left to :func:`load_state_dict_file`."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise ConfigError(f"weights file {path} cannot be read ({err.strerror}); check its permissions") from None
    if not head:
        raise ConfigError(f"weights file {path} is empty (0 bytes; an interrupted download?); "
                          f"give a {backbone} checkpoint saved with torch.save")
    legacy_pickle = len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5
    if not (head.startswith(b"PK\x03\x04") or legacy_pickle):
        raise ConfigError(f"weights file {path} cannot be read: it is not a PyTorch checkpoint (torch.save writes a "
                          f"zip archive or a pickle; this file starts with {head!r}); give a {backbone} .pth/.pt file")
    return path


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict (also when saved as {'state_dict': ...}), read with weights_only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"weights file {path} cannot be read ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path,
                          drop_prefixes: tuple[str, ...]) -> None:
    """Load ``state`` strictly into ``module``, ignoring the classifier (``drop_prefixes``).

    Some ports store BatchNorm vectors as 1×C; those are reshaped to the model's C.
    """
    own = module.state_dict()
    cleaned = {}
    for key, value in state.items():
        if key.startswith(drop_prefixes):
            continue
        if key in own and value.shape != own[key].shape and value.numel() == own[key].numel():
            value = value.reshape(own[key].shape)
        cleaned[key] = value
    try:
        missing, unexpected = module.load_state_dict(cleaned, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).strip().splitlines()[-1].strip()
        raise ConfigError(f"weights file {path} does not fit this backbone: {first}") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and not k.startswith(drop_prefixes)]
    if missing or unexpected:
        raise ConfigError(
            f"weights file {path} does not fit this backbone: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
