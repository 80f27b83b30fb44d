"""Meta-learned λ as a part of the training step: λ, its meta batches, its meta loss, the look-ahead.

The mathematics (the hypergradient and the λ updates) is :class:`dmltune.meta_lambda.MetaLambda`;
this module feeds it from a trial. At every ``every``-th iteration, before the training loss, one
meta batch from the training classes is drawn and λ is updated from a one-step look-ahead through
the embedding head (reusing the batch's features) or the whole network; the loss then uses the new λ.
With generated examples in the batch (MIRAGE) the look-ahead works on the real examples only.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch.func import functional_call, jvp

from ..data.sampler import META_BATCH_MAX_CLASSES, MetaBatchSampler
from ..meta_lambda import MetaLambda
from ..pairs import LOSSES
from ..pairs.masks import full_precision
from .parts import ADAPTIVE, Batch, TrainingPart

META_SEED_OFFSET = 7919
"""The meta batches' seed is the trial's seed plus this (a stream apart from the training batches)."""


@ADAPTIVE.register("meta")
def build_meta_lambda(settings, trial) -> TrainingPart:
    """Meta-λ when ``loss.lam`` is ``{meta: {...}}``; the do-nothing part otherwise."""
    return MetaLambdaStep(settings, trial) if settings.meta is not None else TrainingPart()


@contextlib.contextmanager
def batchnorm_without_statistics_updates(model: torch.nn.Module):
    """BatchNorm layers in training mode normalise with batch statistics but update nothing
    (a forward-mode pass may not mutate buffers)."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


def meta_batch_sampler(labels, meta, train, batches_per_epoch: int, seed: int) -> MetaBatchSampler:
    """Class-balanced meta batches from the training classes, one per meta step, reproducible per
    epoch like the training batches. By default every training class (DDTAS: the meta set holds
    "samples of all categories"), at most META_BATCH_MAX_CLASSES of them per batch, cycling through
    all classes over consecutive meta steps when there are more; ``per_class`` defaults to train.k."""
    batch = meta.meta_batch
    return MetaBatchSampler(labels, batch.get("classes"), batch.get("per_class", train.k),
                            batches_per_epoch=batches_per_epoch, seed=seed + META_SEED_OFFSET,
                            max_classes=META_BATCH_MAX_CLASSES)


class MetaLambdaStep(TrainingPart):
    """λ of the loss, learned online; reads the trial's model, miner, loss, data and runtime."""

    def __init__(self, settings, trial):
        meta, train = settings.meta, settings.train
        self.trial, self.scope, self.init = trial, meta.scope, meta.init
        self.lam = MetaLambda(meta.init, meta.lr, meta.inner_lr or train.lr, tuple(meta.clamp), meta.every,
                              device=trial.runtime.device, update=meta.update, window=meta.window, gate=meta.gate)
        self.sampler = meta_batch_sampler(trial.splits.train.labels, meta, train, len(trial.sampler), settings.seed)
        self.meta_loss_fn = (LOSSES.build(meta.meta_loss.name, meta.meta_loss.kwargs) if meta.meta_loss
                             else self._training_loss_at_init)
        self._batches = None
        self._lam_sum = torch.zeros((), device=trial.runtime.device)
        self._steps = 0

    def _training_loss_at_init(self, sim, labels, mined):
        return self.trial.loss_fn(sim, labels, mined, progress=1.0, lam=self.init)

    def start_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self._batches = iter(self.sampler)  # one per meta step: a capped meta batch cycles through the classes
        self.lam.start_epoch()
        self._lam_sum = torch.zeros((), device=self.trial.runtime.device)
        self._steps = 0

    def next_meta_batch(self):
        """The next meta batch's image indices (a step outside an epoch loop starts epoch 1's)."""
        batch = next(self._batches, None) if self._batches is not None else None
        if batch is None:
            self.sampler.set_epoch(self.sampler.epoch or 1)
            self._batches = iter(self.sampler)
            batch = next(self._batches)
        return batch

    def loss_arguments(self, batch: Batch, progress: float, iteration: int) -> dict:
        if self.lam.due(iteration):
            sim, mined = batch.sim, batch.mined
            if batch.has_extra_examples:  # the look-ahead works on the real examples only
                sim = sim[:batch.real, :batch.real]
                mined = self.trial.miner(sim, batch.y)
            self.update(sim, batch, mined, progress, self.next_meta_batch())
        self._lam_sum = self._lam_sum + self.lam.lam
        self._steps += 1
        return {"lam": self.lam.lam}

    def update(self, sim, batch: Batch, mined, progress: float, meta_idx) -> torch.Tensor:
        """One λ update from a one-step look-ahead (see MetaLambda.hypergradient_via_similarities);
        returns the hypergradient."""
        trial = self.trial
        meta_x = trial.runtime.model_input(trial.transform(trial.source.batch(meta_idx), train=True))
        meta_y = trial.train_labels[torch.as_tensor(meta_idx, device=trial.runtime.device)]
        params, meta_embed, train_embed = (self._head_look_ahead if self.scope == "head"
                                           else self._full_look_ahead)(meta_x, batch)

        def meta_loss_of(theta_hat):
            emb = meta_embed(theta_hat)
            s = emb @ emb.T
            return self.meta_loss_fn(s, meta_y, trial.miner(s, meta_y))

        def sim_tangent(v):
            def sim_of(p):
                emb = full_precision(train_embed(p))
                return emb @ emb.T

            with warnings.catch_warnings():  # torch's first jvp loads decompositions with a torch.jit notice
                warnings.simplefilter("ignore", FutureWarning)
                return jvp(sim_of, (dict(params),), (v,))[1]

        def sim_loss(s, lam):
            return trial.loss_fn(s, batch.y, mined, progress=progress, lam=lam)

        hyper = self.lam.hypergradient_via_similarities(sim, sim_loss, params, meta_loss_of, sim_tangent)
        return self.lam.apply(hyper)

    def _head_look_ahead(self, meta_x, batch: Batch):
        """Through the head only, on this batch's features (and the meta batch's, computed once)."""
        model = self.trial.model
        params = dict(model.head.named_parameters())
        dtype = model.head.weight.dtype  # features leave autocast in bf16; the head works in its own dtype
        train_feats = batch.features.detach().to(dtype)
        with torch.no_grad(), self.trial.runtime.autocast():
            meta_feats = model.features(meta_x).to(dtype)

        def head_embed(inputs):
            return lambda p: torch.nn.functional.normalize(functional_call(model.head, p, (inputs,)), dim=1)

        return params, head_embed(meta_feats), head_embed(train_feats)

    def _full_look_ahead(self, meta_x, batch: Batch):
        """Through the whole network; the meta passes leave BatchNorm's statistics alone."""
        model, autocast = self.trial.model, self.trial.runtime.autocast
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.clone() for n, b in model.named_buffers()}

        def meta_embed(p):
            with autocast():
                return full_precision(functional_call(model, {**p, **buffers}, (meta_x,)))

        def train_embed(p):  # forward-mode pass in float32: autocast has no forward-AD rules to rely on
            with batchnorm_without_statistics_updates(model):
                return functional_call(model, {**p, **buffers}, (batch.x,))

        return params, meta_embed, train_embed

    def epoch_report(self) -> dict:
        n = max(self._steps, 1)
        return {"lam": (self._lam_sum / n).item(), "lam_end": self.lam.lam.item(),
                "lam_hypergrad": self.lam.last_hypergrad.item(), **self.lam.epoch_summary()}

    def state_dict(self) -> dict:
        return self.lam.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.lam.load_state_dict(state)
