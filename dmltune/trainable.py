"""The trainable: one function that trains and evaluates a DML model from a resolved config.

    data → model → miner → loss → step → evaluation, once per epoch reported

``train(config)`` runs inside a Ray Tune trial (reports with ``ray.tune.report``, checkpoints
through Tune, resumes from ``ray.tune.get_checkpoint()``) or standalone (one printed line per epoch,
checkpoints in a local folder). The same seed gives the same numbers whether or not the run was
interrupted and resumed from a checkpoint.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import resolve_config
from .meta_lambda import MetaLambda
from .pairs import get_loss, get_miner
from .reporting import make_reporter
from .training_state import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


def pick_device(requested: str) -> torch.device:
    """``auto``: the GPU Ray assigned to this trial (or the first one standalone), else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        from .registry import ConfigError

        raise ConfigError("train.device = 'cuda' but no CUDA GPU is visible; use device: auto or cpu")
    return torch.device("cuda", torch.cuda.current_device())


def build_optimizer(model: torch.nn.Module, train: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adam/AdamW with two parameter groups: the backbone at lr × backbone_lr_mult, the head at lr.

    (The authors' code passes an ``lr_mult`` key in its groups, which torch ignores; here the
    backbone's rate is really set.)
    """
    head = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head, "lr": train["lr"], "name": "head"}]
    if backbone:
        groups.append({"params": backbone, "lr": train["lr"] * train["backbone_lr_mult"], "name": "backbone"})
    cls = torch.optim.AdamW if train["optimizer"] == "adamw" else torch.optim.Adam
    return cls(groups, lr=train["lr"], weight_decay=train["weight_decay"])


class Evaluator:
    """Embeds an image set with the model (test-time transform) and computes retrieval metrics."""

    def __init__(self, splits, spec, transform, device, eval_cfg, train_cfg):
        from .data import ImageSource

        self.device, self.transform, self.cfg = device, transform, eval_cfg

        def source(image_set):
            if image_set is None or len(image_set) == 0:
                return None
            return ImageSource(image_set, spec.resize, device, mode=_cache_mode(train_cfg),
                               budget_bytes=train_cfg["cache_gb"] * 1e9, workers=train_cfg["workers"])

        self.val = source(splits.val)
        self.test = source(splits.test)
        self.query, self.gallery = source(splits.query), source(splits.gallery)

    @torch.no_grad()
    def embed(self, model, source, autocast) -> torch.Tensor:
        was_training = model.training
        model.eval()
        out = []
        for images, _ in source.sequential(self.cfg["batch_size"]):
            x = _to_model_input(self.transform(images, train=False), self.device)
            with autocast():
                out.append(model(x).float())
        model.train(was_training)
        return torch.cat(out)

    def metrics(self, model, which: str, autocast) -> dict[str, float]:
        from .evaluate import evaluate

        wanted = ("recall", "map@r", "r_precision") + (("nmi",) if self.cfg["nmi"] else ())
        if which == "test" and self.query is not None:
            q = self.embed(model, self.query, autocast)
            g = self.embed(model, self.gallery, autocast)
            result = evaluate(q, self.query.labels(), g, self.gallery.labels(), ks=self.cfg["ks"], metrics=wanted)
        else:
            source = self.val if which == "val" else self.test
            if source is None:
                return {}
            result = evaluate(self.embed(model, source, autocast), source.labels(), ks=self.cfg["ks"], metrics=wanted)
        return {f"{which}/{k}": v for k, v in result.items()}


def _cache_mode(train_cfg) -> str:
    return {"auto": "auto", "device": "device", "loader": "loader"}[train_cfg["cache"]]


def _to_model_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _autocast_factory(device: torch.device, amp: str):
    enabled = device.type == "cuda" and amp in ("auto", "bf16")

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)

    return autocast


def _meta_sampler(labels, cfg, batches_per_epoch):
    """Class-balanced meta batches from the training classes, one per training iteration at most,
    reproducible per epoch like the training batches."""
    from .data import ClassBalancedSampler

    batch = cfg["loss"]["lam"]["meta"]["meta_batch"]
    k = batch.get("per_class", cfg["train"]["k"])
    classes = batch.get("classes", cfg["train"]["batch_size"] // cfg["train"]["k"])
    return ClassBalancedSampler(labels, classes * k, k, batches_per_epoch=batches_per_epoch, seed=cfg["seed"] + 7919)


def _meta_loss_fn(cfg, loss_fn):
    meta = cfg["loss"]["lam"]["meta"]
    if meta["meta_loss"]:
        spec = dict(meta["meta_loss"])
        return get_loss(spec.pop("name"), **spec)
    return lambda sim, labels, mined: loss_fn(sim, labels, mined, progress=1.0, lam=meta["init"])


def train(config: Mapping[str, Any], checkpoint_root: str | Path | None = None, reporter=None) -> dict:
    """Train and evaluate one configuration; report once per epoch; return the last report.

    Inside a Ray Tune trial, reports and checkpoints go to Tune; standalone, a line per epoch is
    printed and, with ``checkpoint_root``, checkpoints are kept there and a rerun resumes from them.
    """
    from .data import BatchTransform, ClassBalancedSampler, ImageSource, TransformSpec, load_dataset
    from .models import build_model

    cfg = resolve_config(config)
    seed_everything(cfg["seed"])
    tr, ev = cfg["train"], cfg["eval"]
    reporter = reporter or make_reporter(checkpoint_root, ev["metric"])
    device = pick_device(tr["device"])
    autocast = _autocast_factory(device, tr["amp"])

    dataset = dict(cfg["dataset"])
    spec = TransformSpec.from_config(dataset.pop("transform"))
    splits = load_dataset(dataset.pop("name"), **dataset)
    model_cfg = dict(cfg["model"])
    if model_cfg["in_channels"] is None and model_cfg["backbone"] == "small_cnn":
        model_cfg["in_channels"] = splits.channels
    model = build_model(**model_cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    transform = BatchTransform(spec, model.input_spec, model.in_channels, device, seed=cfg["seed"])
    source = ImageSource(splits.train, spec.resize, device, mode=_cache_mode(tr), budget_bytes=tr["cache_gb"] * 1e9,
                         workers=tr["workers"])
    train_labels = source.labels()
    sampler = ClassBalancedSampler(splits.train.labels, tr["batch_size"], tr["k"], tr["batches_per_epoch"], cfg["seed"])
    evaluator = Evaluator(splits, spec, transform, device, ev, tr)

    miner_cfg, loss_cfg = dict(cfg["miner"]), dict(cfg["loss"])
    miner = get_miner(miner_cfg.pop("name"), **miner_cfg)
    meta_cfg = loss_cfg["lam"]["meta"] if isinstance(loss_cfg.get("lam"), dict) else None
    if meta_cfg:
        loss_cfg["lam"] = meta_cfg["init"]
    loss_fn = get_loss(loss_cfg.pop("name"), **loss_cfg)
    optimizer = build_optimizer(model, tr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(tr["lr_steps"]), gamma=tr["lr_gamma"])
    meta = None
    if meta_cfg:
        meta = MetaLambda(meta_cfg["init"], meta_cfg["lr"], meta_cfg["inner_lr"] or tr["lr"], meta_cfg["clamp"],
                          meta_cfg["every"], device=device)
        meta_sampler = _meta_sampler(splits.train.labels, cfg, len(sampler))
        meta_loss_fn = _meta_loss_fn(cfg, loss_fn)

    start_epoch, wall_total, last_val = 1, 0.0, {}
    with reporter.restore_dir() as restore:
        if restore is not None:
            state = load_checkpoint(restore, map_location=device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            sampler.load_state_dict(state["sampler"])
            transform.load_state_dict(state["transform"])
            set_rng_state(state["rng"])
            if meta is not None:
                meta.load_state_dict(state["meta"])
            start_epoch, wall_total, last_val = state["epoch"] + 1, state["wall_s"], state["last_val"]

    gpu_fraction = reporter.gpu_fraction() if device.type == "cuda" else 0.0
    report: dict = {}
    iteration = (start_epoch - 1) * len(sampler)
    for epoch in range(start_epoch, tr["epochs"] + 1):
        started = time.perf_counter()
        model.train()
        sampler.set_epoch(epoch)
        progress = epoch / tr["epochs"]
        loss_sum = torch.zeros((), device=device)
        stat_sum, stat_names, lam_sum = None, (), torch.zeros((), device=device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        images_seen = 0
        if meta is not None:
            meta_sampler.set_epoch(epoch)
            meta_batches = iter(meta_sampler)
        for images, idx in source.batches(sampler):
            x = _to_model_input(transform(images, train=True), device)
            y = train_labels[torch.as_tensor(idx, device=device)]
            with autocast():
                feats = model.features(x)
                emb = model.embed(feats)
            emb = emb.float()
            sim = emb @ emb.T
            mined = miner(sim, y)
            lam = None
            if meta is not None:
                if meta.due(iteration):
                    _meta_step(meta, model, meta_cfg["scope"], sim, y, mined, loss_fn, progress, feats,
                               next(meta_batches), source, train_labels, transform, miner, meta_loss_fn,
                               autocast, device)
                lam = meta.lam
                lam_sum = lam_sum + lam
            loss = loss_fn(sim, y, mined, progress=progress, lam=lam)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum = loss_sum + loss.detach()
            nonfinite |= ~torch.isfinite(loss.detach())
            stat_sum = mined.stat_values if stat_sum is None else stat_sum + mined.stat_values
            stat_names = mined.stat_names
            images_seen += len(idx)
            iteration += 1
        scheduler.step()
        n_iter = len(sampler)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - started
        report = {"epoch": epoch, "status": "ok", "loss": (loss_sum / n_iter).item(),
                  "images_per_s": images_seen / max(train_seconds, 1e-9)}
        report.update(zip(stat_names, (stat_sum / n_iter).tolist()))
        report.update(mined.constants)
        if meta is not None:
            report["lam"] = (lam_sum / n_iter).item()
            report["lam_end"] = meta.lam.item()
            report["lam_hypergrad"] = meta.last_hypergrad.item()
        elif loss_fn.has_lambda:
            report["lam"] = float(loss_fn.lam)
        if bool(nonfinite):
            wall_total += time.perf_counter() - started
            report.update(status="diverged", reason=f"the loss became NaN or infinite during epoch {epoch}",
                          wall_s=wall_total, gpu_s=wall_total * gpu_fraction,
                          **{f"val/{ev['metric']}": float("nan")})
            reporter.report(report)
            return report
        if ev["every"] and (epoch % ev["every"] == 0 or epoch == tr["epochs"]):
            last_val = {**evaluator.metrics(model, "val", autocast), "val_epoch": epoch}
        report.update(last_val)
        report.setdefault(f"val/{ev['metric']}", float("nan"))
        if epoch == tr["epochs"] or (ev["test_every"] and epoch % ev["test_every"] == 0):
            report.update(evaluator.metrics(model, "test", autocast))
        wall_total += time.perf_counter() - started
        report.update(epoch_s=time.perf_counter() - started, wall_s=wall_total, gpu_s=wall_total * gpu_fraction)
        save_now = epoch == tr["epochs"] or (tr["checkpoint_every"] and epoch % tr["checkpoint_every"] == 0)
        if save_now:
            with tempfile.TemporaryDirectory(prefix="dmltune-ckpt-") as tmp:
                save_checkpoint(Path(tmp), {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
                    "transform": transform.state_dict(), "rng": rng_state(),
                    "meta": meta.state_dict() if meta is not None else {}, "epoch": epoch,
                    "wall_s": wall_total, "last_val": last_val,
                })
                reporter.report(report, checkpoint_dir=Path(tmp))
        else:
            reporter.report(report)
    return report


def _meta_step(meta, model, scope, sim, y, mined, loss_fn, progress, feats, meta_idx, source, train_labels,
               transform, miner, meta_loss_fn, autocast, device):
    """One λ update from a look-ahead through the head (reusing this batch's features) or the network."""
    from torch.func import functional_call

    meta_x = _to_model_input(transform(source.batch(meta_idx), train=True), device)
    meta_y = train_labels[torch.as_tensor(meta_idx, device=device)]

    def train_loss(lam):
        return loss_fn(sim, y, mined, progress=progress, lam=lam)

    if scope == "head":
        params = dict(model.head.named_parameters())
        with torch.no_grad(), autocast():
            meta_feats = model.features(meta_x).float()

        def meta_loss(theta_hat):
            emb = torch.nn.functional.normalize(functional_call(model.head, theta_hat, (meta_feats,)), dim=1)
            s = emb @ emb.T
            return meta_loss_fn(s, meta_y, miner(s, meta_y))
    else:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.clone() for n, b in model.named_buffers()}  # the meta pass must not move BN statistics

        def meta_loss(theta_hat):
            with autocast():
                emb = functional_call(model, {**theta_hat, **buffers}, (meta_x,)).float()
            s = emb @ emb.T
            return meta_loss_fn(s, meta_y, miner(s, meta_y))

    meta.step(train_loss, params, meta_loss)
