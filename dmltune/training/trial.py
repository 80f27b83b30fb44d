"""One trial's objects and its training step: data → model → miner → loss → step.

:class:`Trial` builds everything a configuration needs from its :class:`~.settings.TrialSettings`;
``step`` is one training iteration (the unit the benchmarks time) and ``run_epoch`` one epoch, with
its statistics accumulated on the device and converted once at the end. The adaptive parts
(meta-λ, generated examples, any registered in :data:`~.parts.ADAPTIVE`) are called at every hook
of the step; the ones a configuration does not use do nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..pairs import LOSSES, MINERS
from ..pairs.masks import full_precision
from .evaluation import Evaluator
from .parts import Batch, build_parts
from .runtime import Runtime, compile_backbone
from .settings import TrialSettings
from .state import rng_state, seed_everything, set_rng_state


def build_optimizer(model: torch.nn.Module, train) -> torch.optim.Optimizer:
    """Adam/AdamW with two parameter groups: the backbone at lr × backbone_lr_mult, the head at lr.

    (The authors' code passes an ``lr_mult`` key in its groups, which torch ignores; here the
    backbone's rate is really set.) ``train`` is the train section, as settings or as a dict.
    """
    get = train.get if isinstance(train, dict) else lambda key: getattr(train, key)
    head = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head, "lr": get("lr"), "name": "head"}]
    if backbone:
        groups.append({"params": backbone, "lr": get("lr") * get("backbone_lr_mult"), "name": "backbone"})
    cls = torch.optim.AdamW if get("optimizer") == "adamw" else torch.optim.Adam
    return cls(groups, lr=get("lr"), weight_decay=get("weight_decay"))


@dataclass(frozen=True)
class StepResult:
    """What one training step computed: the loss (detached), the mined pairs, and whether the loss and
    every similarity stayed finite (NaN embeddings would pass unnoticed: mining keeps no pair and the
    loss is an exact zero)."""

    loss: torch.Tensor
    mined: Any
    finite: torch.Tensor


class Trial:
    """Everything one configuration builds: data, model, miner, loss, optimizer, adaptive parts."""

    def __init__(self, settings: TrialSettings | dict):
        if not isinstance(settings, TrialSettings):  # a resolved config dict
            settings = TrialSettings.from_resolved(settings)
        self.settings = s = settings
        seed_everything(s.seed)
        self.runtime = Runtime(s.train.device, s.train.amp)
        self._build_data_and_model(s)
        self.miner = MINERS.build(s.miner.name, s.miner.kwargs)
        self.loss_fn = LOSSES.build(s.loss.name, s.loss.kwargs)
        self.optimizer = build_optimizer(self.model, s.train)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=list(s.train.lr_steps),
                                                              gamma=s.train.lr_gamma)
        self.iteration = 0
        self.parts = build_parts(s, self)

    def _build_data_and_model(self, s: TrialSettings) -> None:
        from ..data import BatchTransform, ClassBalancedSampler, TransformSpec, load_dataset
        from ..models import build_model
        from .evaluation import image_source

        spec = TransformSpec.from_config(dict(s.transform))
        self.splits = load_dataset(s.dataset.name, **s.dataset.kwargs)
        if s.protocol is not None and s.protocol.validation == "kfold":
            from ..data.folds import kfold_splits

            self.splits = kfold_splits(self.splits, s.protocol.folds, s.protocol.fold, s.protocol.fold_seed)
        model = dict(s.model)
        if model["in_channels"] is None and model["backbone"] == "small_cnn":
            model["in_channels"] = self.splits.channels
        self.model = self.runtime.place_model(build_model(**model))
        compile_backbone(self.model, s.train.compile)
        self.transform = BatchTransform(spec, self.model.input_spec, self.model.in_channels, self.runtime.device,
                                        seed=s.seed)
        self.source = image_source(self.splits.train, spec.resize, self.runtime, s.train)
        self.train_labels = self.source.labels()
        self.sampler = ClassBalancedSampler(self.splits.train.labels, s.train.batch_size, s.train.k,
                                            s.train.batches_per_epoch, s.seed)
        self.evaluator = Evaluator(self.splits, spec.resize, self.transform, self.runtime, s.eval, s.train,
                                   keep_test=s.protocol is not None and s.protocol.validation == "kfold")

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def meta(self):
        return self.parts["meta"]

    @property
    def generation(self):
        return self.parts["generation"]

    def forward(self, images: torch.Tensor, idx) -> Batch:
        """Transform and embed a uint8 batch; the adaptive parts may add examples."""
        x = self.runtime.model_input(self.transform(images, train=True))
        y = self.train_labels[torch.as_tensor(idx, device=self.runtime.device)]
        with self.runtime.autocast():
            features = self.model.features(x)
            emb = self.model.embed(features)
        emb = full_precision(emb)
        batch = Batch(x=x, y=y, features=features, embeddings=emb, all_embeddings=emb, all_labels=y)
        for part in self.parts.values():
            part.extend_batch(batch)
        return batch

    def step(self, images: torch.Tensor, idx, progress: float) -> StepResult:
        """One iteration on a uint8 batch: forward, mine, (adaptive parts), loss, backward, update."""
        batch = self.forward(images, idx)
        batch.sim = batch.all_embeddings @ batch.all_embeddings.T
        batch.mined = self.miner(batch.sim, batch.all_labels)
        arguments: dict[str, Any] = {}
        for part in self.parts.values():
            arguments.update(part.loss_arguments(batch, progress, self.iteration))
        loss = self.loss_fn(batch.sim, batch.all_labels, batch.mined, progress=progress, **arguments)
        self.optimizer.zero_grad(set_to_none=True)
        for part in self.parts.values():
            part.before_backward()
        loss.backward()
        self.optimizer.step()
        for part in self.parts.values():
            part.after_update(batch)
        self.iteration += 1
        finite = torch.isfinite(loss.detach()) & torch.isfinite(batch.sim.detach()).all()
        return StepResult(loss.detach(), batch.mined, finite)

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch; the report's training part (averages over the epoch)."""
        started, device = time.perf_counter(), self.runtime.device
        self.model.train()
        self.sampler.set_epoch(epoch)
        self.iteration = (epoch - 1) * len(self.sampler)
        progress = epoch / self.settings.train.epochs
        for part in self.parts.values():
            part.start_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        stat_sum, mined, images_seen = None, None, 0
        for images, idx in self.source.batches(self.sampler):
            result = self.step(images, idx, progress)
            loss_sum = loss_sum + result.loss
            nonfinite |= ~result.finite
            mined = result.mined
            stat_sum = mined.stat_values if stat_sum is None else stat_sum + mined.stat_values
            images_seen += len(idx)
        self.scheduler.step()
        n = len(self.sampler)
        out = {"epoch": epoch, "status": "ok", "loss": (loss_sum / n).item()}
        out.update(zip(mined.stat_names, (stat_sum / n).tolist()))
        out.update(mined.constants)
        out.update(self._loss_report())
        for part in self.parts.values():
            out.update(part.epoch_report())
        if bool(nonfinite):
            out.update(status="diverged",
                       reason=f"the loss or the embeddings became NaN or infinite during epoch {epoch}")
        out["images_per_s"] = images_seen / max(time.perf_counter() - started, 1e-9)
        return out

    def _loss_report(self) -> dict:
        """The loss's own thresholds: λ (a part may replace it with its learned value) and the τ of the
        dynamic weights (the dsml miner's unless decoupled)."""
        out = {"lam": float(self.loss_fn.lam)} if self.loss_fn.has_lambda else {}
        if self.loss_fn.dynamic:
            out.update(loss_tau_p=self.loss_fn.tau_p, loss_tau_n=self.loss_fn.tau_n)
        return out

    def evaluate(self, which: str) -> dict:
        """``val/…`` or ``test/…`` metrics, and after validation the parts' evaluation columns."""
        out = self.evaluator.metrics(self.model, which)
        if which == "val":
            for part in self.parts.values():
                out.update(part.evaluation_report())
        return out

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                "transform": self.transform.state_dict(), "rng": rng_state(),
                **{name: part.state_dict() for name, part in self.parts.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.transform.load_state_dict(state["transform"])
        set_rng_state(state["rng"])
        for name, part in self.parts.items():
            part.load_state_dict(state.get(name, {}))
