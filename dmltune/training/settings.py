"""A trial's configuration resolved once, into frozen typed objects.

``TrialSettings.resolve(config)`` validates a plain config dict (what Ray Tune passes a trial; see
:mod:`dmltune.config`) and turns it into the objects the training code reads. It is the only place
where a section is taken apart: the meta-λ section of ``loss.lam`` becomes :class:`MetaSettings` and
the loss keeps its initial λ, ``dataset.transform`` becomes its own spec, and so on. The fields of
``TrainSettings``, ``EvalSettings`` and ``MetaSettings`` are generated from the declared parameters
(``config.TRAIN_PARAMS``, ``config.EVAL_PARAMS``, ``meta_lambda.META_PARAMS``), so a parameter is
declared once and appears here without being retyped.
"""

from __future__ import annotations

from dataclasses import dataclass, make_dataclass
from types import MappingProxyType
from typing import Any, Mapping

from ..config import EVAL_PARAMS, PROTOCOL_PARAMS, TRAIN_PARAMS, resolve_config
from ..meta_lambda import META_PARAMS
from ..registry import Param


def _frozen(value: Any) -> Any:
    """Lists become tuples and dicts read-only mappings, recursively."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _settings_class(name: str, params: tuple[Param, ...], doc: str):
    fields = [(p.name, p.kind if not p.nullable else Any) for p in params]
    cls = make_dataclass(name, fields, frozen=True)
    cls.__module__, cls.__doc__ = __name__, doc
    return cls


TrainSettings = _settings_class("TrainSettings", TRAIN_PARAMS, "The ``train`` section (config.TRAIN_PARAMS).")
EvalSettings = _settings_class("EvalSettings", EVAL_PARAMS, "The ``eval`` section (config.EVAL_PARAMS).")
MetaSettings = _settings_class("MetaSettings", META_PARAMS, "``loss.lam.meta`` (meta_lambda.META_PARAMS).")
ProtocolSettings = _settings_class("ProtocolSettings", PROTOCOL_PARAMS,
                                   "The ``protocol`` section (config.PROTOCOL_PARAMS): k-fold validation, PBT.")


def _section(cls, values: Mapping):
    return cls(**{k: _frozen(v) for k, v in values.items()})


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component by name with its validated parameters (build it with its registry)."""

    name: str
    params: Mapping[str, Any]

    @classmethod
    def from_section(cls, section: Mapping[str, Any], name_key: str = "name") -> "ComponentSpec":
        params = {k: v for k, v in section.items() if k != name_key}
        return cls(section[name_key], _frozen(params))

    @property
    def kwargs(self) -> dict[str, Any]:
        """The parameters as a plain dict of plain values (tuples back to lists)."""
        return {k: _thawed(v) for k, v in self.params.items()}


def _thawed(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


@dataclass(frozen=True)
class TrialSettings:
    """Everything one trial runs, validated; ``meta`` is None unless λ is meta-learned."""

    seed: int
    dataset: ComponentSpec
    transform: Mapping[str, Any]
    model: Mapping[str, Any]
    miner: ComponentSpec
    loss: ComponentSpec
    meta: Any  # MetaSettings | None
    generation: ComponentSpec
    train: Any  # TrainSettings
    eval: Any  # EvalSettings
    protocol: Any = None  # ProtocolSettings (None: one validation split, nothing mutable)

    @classmethod
    def resolve(cls, config: Mapping[str, Any], where: str = "config") -> "TrialSettings":
        """Validate ``config`` (ConfigError naming ``where`` and the key) and resolve it."""
        return cls.from_resolved(resolve_config(config, where))

    @classmethod
    def from_resolved(cls, cfg: Mapping[str, Any]) -> "TrialSettings":
        dataset = dict(cfg["dataset"])
        transform = dataset.pop("transform")
        loss = dict(cfg["loss"])
        meta = None
        if isinstance(loss.get("lam"), Mapping):  # meta-learned λ: the loss starts at its init
            meta = dict(loss["lam"]["meta"])
            loss["lam"] = meta["init"]
            meta["meta_loss"] = ComponentSpec.from_section(meta["meta_loss"]) if meta["meta_loss"] else None
        return cls(seed=cfg["seed"], dataset=ComponentSpec.from_section(dataset), transform=_frozen(transform),
                   model=_frozen(cfg["model"]), miner=ComponentSpec.from_section(cfg["miner"]),
                   loss=ComponentSpec.from_section(loss), meta=_section(MetaSettings, meta) if meta else None,
                   generation=ComponentSpec.from_section(cfg["generation"]),
                   train=_section(TrainSettings, cfg["train"]), eval=_section(EvalSettings, cfg["eval"]),
                   protocol=_section(ProtocolSettings, cfg["protocol"]) if "protocol" in cfg else None)
