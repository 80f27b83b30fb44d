"""The trainable: one function that trains and evaluates a DML model from a resolved config.

    data → model → miner → loss → step → evaluation, once per epoch reported

``train(config)`` runs inside a Ray Tune trial (reports with ``ray.tune.report``, checkpoints
through Tune, resumes from ``ray.tune.get_checkpoint()``) or standalone (one printed line per epoch,
checkpoints in a local folder). The same seed gives the same numbers whether or not the run was
interrupted and resumed from a checkpoint.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import warnings

import torch

from torch.func import functional_call, jvp

from .config import resolve_config
from .meta_lambda import META_BATCH_MAX_CLASSES, MetaBatchSampler, MetaLambda
from .pairs import get_loss, get_miner
from .pairs.masks import full_precision
from .reporting import in_tune_session, make_reporter
from .training_state import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


def pick_device(requested: str) -> torch.device:
    """``auto``: the GPU Ray assigned to this trial (or the first one standalone), else the CPU.

    Inside a Tune trial that was given no GPU, ``auto`` means the CPU even on a GPU machine: Ray may
    not hide the node's GPUs from such a trial, and using one would take it from trials that own it.
    """
    from .registry import ConfigError

    if requested == "cpu":
        return torch.device("cpu")
    if in_tune_session():
        import ray

        if not ray.get_gpu_ids():
            if requested == "cuda":
                raise ConfigError("train.device = 'cuda' but the trial holds no GPU; give the study resources.gpu")
            return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise ConfigError("train.device = 'cuda' but no CUDA GPU is visible; use device: auto or cpu")
        return torch.device("cpu")
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
        from .evaluate import evaluate, histogram_columns, nmi_options, similarity_histograms

        wanted = ("recall", "map@r", "r_precision") + (("nmi",) if self.cfg["nmi"] else ())
        if which == "test" and self.query is not None:
            q = self.embed(model, self.query, autocast)
            g = self.embed(model, self.gallery, autocast)
            result = evaluate(q, self.query.labels(), g, self.gallery.labels(), ks=self.cfg["ks"], metrics=wanted,
                              **nmi_options(self.cfg))
        else:
            source = self.val if which == "val" else self.test
            if source is None:
                return {}
            emb = self.embed(model, source, autocast)
            result = evaluate(emb, source.labels(), ks=self.cfg["ks"], metrics=wanted, **nmi_options(self.cfg))
            if which == "val" and self.cfg["similarity_bins"]:
                hist = similarity_histograms(emb, source.labels(), bins=self.cfg["similarity_bins"])
                return {**{f"val/{k}": v for k, v in result.items()}, **histogram_columns("val_simhist", *hist)}
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
    """Class-balanced meta batches from the training classes, one per meta step, reproducible per
    epoch like the training batches. By default every training class (DDTAS: the meta set holds
    "samples of all categories"), at most META_BATCH_MAX_CLASSES of them per batch, cycling through
    all classes over consecutive meta steps when there are more; ``per_class`` defaults to train.k."""
    batch = cfg["loss"]["lam"]["meta"]["meta_batch"]
    k = batch.get("per_class", cfg["train"]["k"])
    return MetaBatchSampler(labels, batch.get("classes"), k, batches_per_epoch=batches_per_epoch,
                            seed=cfg["seed"] + 7919, max_classes=META_BATCH_MAX_CLASSES)


def _meta_loss_fn(cfg, loss_fn):
    meta = cfg["loss"]["lam"]["meta"]
    if meta["meta_loss"]:
        spec = dict(meta["meta_loss"])
        return get_loss(spec.pop("name"), **spec)
    return lambda sim, labels, mined: loss_fn(sim, labels, mined, progress=1.0, lam=meta["init"])


class Trial:
    """Everything one configuration builds: data, model, miner, loss, optimizer, meta-λ.

    ``step`` is one training iteration (the unit the benchmarks time); ``run_epoch`` one epoch with
    its statistics accumulated on the device and converted once at the end.
    """

    def __init__(self, cfg: dict):
        from .data import BatchTransform, ClassBalancedSampler, ImageSource, TransformSpec, load_dataset
        from .models import build_model

        self.cfg = cfg
        tr = cfg["train"]
        seed_everything(cfg["seed"])
        self.device = device = pick_device(tr["device"])
        self.autocast = _autocast_factory(device, tr["amp"])

        dataset = dict(cfg["dataset"])
        spec = TransformSpec.from_config(dataset.pop("transform"))
        self.splits = splits = load_dataset(dataset.pop("name"), **dataset)
        model_cfg = dict(cfg["model"])
        if model_cfg["in_channels"] is None and model_cfg["backbone"] == "small_cnn":
            model_cfg["in_channels"] = splits.channels
        self.model = build_model(**model_cfg).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.transform = BatchTransform(spec, self.model.input_spec, self.model.in_channels, device, seed=cfg["seed"])
        self.source = ImageSource(splits.train, spec.resize, device, mode=_cache_mode(tr),
                                  budget_bytes=tr["cache_gb"] * 1e9, workers=tr["workers"])
        self.train_labels = self.source.labels()
        self.sampler = ClassBalancedSampler(splits.train.labels, tr["batch_size"], tr["k"], tr["batches_per_epoch"],
                                            cfg["seed"])
        self.evaluator = Evaluator(splits, spec, self.transform, device, cfg["eval"], tr)

        miner_cfg, loss_cfg = dict(cfg["miner"]), dict(cfg["loss"])
        self.miner = get_miner(miner_cfg.pop("name"), **miner_cfg)
        meta_cfg = loss_cfg["lam"]["meta"] if isinstance(loss_cfg.get("lam"), dict) else None
        if meta_cfg:
            loss_cfg["lam"] = meta_cfg["init"]
        self.loss_fn = get_loss(loss_cfg.pop("name"), **loss_cfg)
        self.optimizer = build_optimizer(self.model, tr)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=list(tr["lr_steps"]),
                                                              gamma=tr["lr_gamma"])
        self.meta = self.meta_sampler = self.meta_loss_fn = None
        self.meta_scope = meta_cfg["scope"] if meta_cfg else None
        if meta_cfg:
            self.meta = MetaLambda(meta_cfg["init"], meta_cfg["lr"], meta_cfg["inner_lr"] or tr["lr"],
                                   meta_cfg["clamp"], meta_cfg["every"], device=device, update=meta_cfg["update"],
                                   window=meta_cfg["window"], gate=meta_cfg["gate"])
            self.meta_sampler = _meta_sampler(splits.train.labels, cfg, len(self.sampler))
            self.meta_loss_fn = _meta_loss_fn(cfg, self.loss_fn)
        self.generation = None
        if cfg["generation"]["name"] != "none":
            self._build_generation(cfg)
        self.iteration = 0

    def _build_generation(self, cfg: dict) -> None:
        """Generated examples (MIRAGE): the component, its two optimisers and its own random stream,
        so the model's training sees no other change in randomness."""
        from .generation import build_generation

        params = {k: v for k, v in cfg["generation"].items() if k != "name"}
        classes = torch.unique(self.train_labels)
        self.generation = build_generation(cfg["generation"]["name"], params, len(classes), self.model.feature_dim,
                                           cfg["model"]["dim"], self.device, class_labels=classes)
        if params.get("prototype_init", "class_mean") == "class_mean":
            self._init_prototypes_from_class_means()
        self.gen_optimizer, self.disc_optimizer = self.generation.build_optimizers()
        self.gen_rng = torch.Generator(device=self.device).manual_seed(cfg["seed"] + 104729)
        head = self.model.head

        def embed_without_model_grads(features):  # the generator's objective must not move the model
            weights = {name: p.detach() for name, p in head.named_parameters()}
            return torch.nn.functional.normalize(functional_call(head, weights, (features,)), dim=1)

        self._frozen_embed = embed_without_model_grads

    @torch.no_grad()
    def _init_prototypes_from_class_means(self, images_total: int = 4096) -> None:
        """Embed up to 8 training images per class (at most ``images_total`` in all, at least one per
        class) with the initial model and start each training prototype at its class mean."""
        labels = self.train_labels
        per_class = max(1, min(8, images_total // max(1, len(torch.unique(labels)))))
        order = torch.argsort(labels, stable=True)
        sorted_labels = labels[order]
        starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
        rank = torch.arange(len(order), device=labels.device) - starts
        chosen = order[rank < per_class].cpu()
        was_training = self.model.training
        self.model.eval()
        out = []
        for part in chosen.split(256):
            x = _to_model_input(self.transform(self.source.batch(part.tolist()), train=False), self.device)
            with self.autocast():
                out.append(full_precision(self.model(x)))
        self.model.train(was_training)
        self.generation.init_prototypes(torch.cat(out), labels[chosen.to(labels.device)])

    def _generation_step(self, feats, emb, y, gen_emb, gen_y) -> torch.Tensor:
        """After the model's update: the generator side (G + prototypes), then the discriminator."""
        gen = self.generation
        g_loss = gen.generator_loss(feats.detach().float(), self._frozen_embed, self.gen_rng)
        if self.gen_optimizer is not None:
            g_loss.backward()
            self.gen_optimizer.step()
        d_loss = gen.discriminator_loss(emb.detach(), y, gen_emb.detach(), gen_y)
        if self.disc_optimizer is not None:
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_optimizer.step()
        return torch.stack([g_loss.detach(), d_loss.detach()])

    def step(self, images: torch.Tensor, idx, progress: float, meta_idx=None):
        """One iteration on a uint8 batch: transform, forward, mine, (meta-λ), loss, backward, update."""
        device = self.device
        x = _to_model_input(self.transform(images, train=True), device)
        y = self.train_labels[torch.as_tensor(idx, device=device)]
        gen = self.generation
        with self.autocast():
            feats = self.model.features(x)
            emb = self.model.embed(feats)
            if gen is not None:  # generated examples join the batch with their (virtual) class labels
                gen_emb, gen_y = gen.generate(self.model.embed, gen.num_generated(len(y)), self.gen_rng, labels_from=y)
        emb = full_precision(emb)
        batch_emb, batch_y = emb, y
        if gen is not None:
            gen_emb = full_precision(gen_emb)
            proxy_emb, proxy_y = gen.proxy_batch(torch.cat([y, gen_y]))
            batch_emb = torch.cat([emb, gen_emb, full_precision(proxy_emb)])
            batch_y = torch.cat([y, gen_y, proxy_y])
        sim = batch_emb @ batch_emb.T
        mined = self.miner(sim, batch_y)
        lam = None
        if self.meta is not None:
            if meta_idx is not None and self.meta.due(self.iteration):
                self.last_input = x
                real = len(y)  # the look-ahead works on the real examples only
                real_sim = sim[:real, :real] if gen is not None else sim
                real_mined = self.miner(real_sim, y) if gen is not None else mined
                _meta_step(self, real_sim, y, real_mined, progress, meta_idx, feats)
            lam = self.meta.lam
        loss = self.loss_fn(sim, batch_y, mined, progress=progress, lam=lam)
        self.optimizer.zero_grad(set_to_none=True)
        if gen is not None and self.gen_optimizer is not None:
            self.gen_optimizer.zero_grad(set_to_none=True)  # the metric loss also trains the prototypes
        loss.backward()
        self.optimizer.step()
        if gen is not None:
            self.gen_losses = self._generation_step(feats, emb, y, gen_emb, gen_y)
        self.iteration += 1
        # NaN embeddings would pass unnoticed: mining keeps no pair and the loss is an exact zero
        finite = torch.isfinite(loss.detach()) & torch.isfinite(sim.detach()).all()
        return loss.detach(), mined, finite

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch; the report's training part (averages over the epoch)."""
        tr, device = self.cfg["train"], self.device
        started = time.perf_counter()
        self.model.train()
        self.sampler.set_epoch(epoch)
        self.iteration = (epoch - 1) * len(self.sampler)
        progress = epoch / tr["epochs"]
        meta_batches = None
        if self.meta is not None:
            self.meta_sampler.set_epoch(epoch)
            meta_batches = iter(self.meta_sampler)  # one per meta step: a capped meta batch cycles through the classes
            self.meta.start_epoch()
        loss_sum = torch.zeros((), device=device)
        lam_sum = torch.zeros((), device=device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        stat_sum, mined, images_seen = None, None, 0
        gen_sum = torch.zeros(2, device=device)
        for images, idx in self.source.batches(self.sampler):
            meta_idx = next(meta_batches) if meta_batches and self.meta.due(self.iteration) else None
            loss, mined, finite = self.step(images, idx, progress, meta_idx)
            loss_sum = loss_sum + loss
            if self.generation is not None:
                gen_sum = gen_sum + self.gen_losses
            nonfinite |= ~finite
            stat_sum = mined.stat_values if stat_sum is None else stat_sum + mined.stat_values
            if self.meta is not None:
                lam_sum = lam_sum + self.meta.lam
            images_seen += len(idx)
        self.scheduler.step()
        n = len(self.sampler)
        out = {"epoch": epoch, "status": "ok", "loss": (loss_sum / n).item()}
        out.update(zip(mined.stat_names, (stat_sum / n).tolist()))
        out.update(mined.constants)
        if self.loss_fn.dynamic:  # the τ of the dynamic weights (the dsml miner's unless decoupled)
            out.update(loss_tau_p=self.loss_fn.tau_p, loss_tau_n=self.loss_fn.tau_n)
        if self.meta is not None:
            out.update(lam=(lam_sum / n).item(), lam_end=self.meta.lam.item(),
                       lam_hypergrad=self.meta.last_hypergrad.item(), **self.meta.epoch_summary())
        elif self.loss_fn.has_lambda:
            out["lam"] = float(self.loss_fn.lam)
        if self.generation is not None:
            out["generator_loss"], out["discriminator_loss"] = (gen_sum / n).tolist()
        if bool(nonfinite):
            out.update(status="diverged",
                       reason=f"the loss or the embeddings became NaN or infinite during epoch {epoch}")
        out["images_per_s"] = images_seen / max(time.perf_counter() - started, 1e-9)
        return out

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                "transform": self.transform.state_dict(), "rng": rng_state(),
                "meta": self.meta.state_dict() if self.meta is not None else {},
                "generation": self._generation_state()}

    def _generation_state(self) -> dict:
        if self.generation is None:
            return {}
        return {"module": self.generation.state_dict(), "rng": self.gen_rng.get_state(),
                "optimizers": [o.state_dict() if o is not None else None
                               for o in (self.gen_optimizer, self.disc_optimizer)]}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.transform.load_state_dict(state["transform"])
        set_rng_state(state["rng"])
        if self.meta is not None:
            self.meta.load_state_dict(state["meta"])
        if self.generation is not None:
            gen = state["generation"]
            self.generation.load_state_dict(gen["module"])
            self.gen_rng.set_state(gen["rng"].cpu() if hasattr(gen["rng"], "cpu") else gen["rng"])
            for optimizer, saved in zip((self.gen_optimizer, self.disc_optimizer), gen["optimizers"]):
                if optimizer is not None:
                    optimizer.load_state_dict(saved)


def train(config: Mapping[str, Any], checkpoint_root: str | Path | None = None, reporter=None) -> dict:
    """Train and evaluate one configuration; report once per epoch; return the last report.

    Inside a Ray Tune trial, reports and checkpoints go to Tune; standalone, a line per epoch is
    printed and, with ``checkpoint_root``, checkpoints are kept there and a rerun resumes from them.
    """
    cfg = resolve_config(config)
    tr, ev = cfg["train"], cfg["eval"]
    reporter = reporter or make_reporter(checkpoint_root, ev["metric"])
    trial = Trial(cfg)
    start_epoch, wall_total, last_val, history = 1, 0.0, {}, []
    with reporter.restore_dir() as restore:
        if restore is not None:
            state = load_checkpoint(restore, map_location=trial.device)
            trial.load_state_dict(state)
            start_epoch, wall_total, last_val = state["epoch"] + 1, state["wall_s"], state["last_val"]
            history = list(state["reports"]) if "reports" in state else [state["report"]] if "report" in state else []
    # In Tune, every epoch up to the checkpoint is reported again. The driver writes results to a
    # staging folder and copies them to the study folder in the background, so a driver killed after
    # recording the checkpoint can leave the stored results some epochs behind it; the table keeps
    # one row per epoch, so a repeated report changes nothing.
    if in_tune_session():
        for past in history:
            reporter.report({**past, "replayed": True})  # the table prefers the original row where it exists

    gpu_fraction = reporter.gpu_fraction() if trial.device.type == "cuda" else 0.0
    selection = f"val/{ev['metric']}"
    report: dict = {}
    for epoch in range(start_epoch, tr["epochs"] + 1):
        started = time.perf_counter()
        report = trial.run_epoch(epoch)
        if report["status"] == "diverged":
            wall_total += time.perf_counter() - started
            report.update(wall_s=wall_total, gpu_s=wall_total * gpu_fraction, **{selection: float("nan")})
            reporter.report(report)
            return report
        if ev["every"] and (epoch % ev["every"] == 0 or epoch == tr["epochs"]):
            last_val = {**trial.evaluator.metrics(trial.model, "val", trial.autocast), "val_epoch": epoch}
            if trial.generation is not None:
                last_val["buffer_share"] = trial.generation.buffer_area_share()
        report.update(last_val)
        report.setdefault(selection, float("nan"))
        if epoch == tr["epochs"] or (ev["test_every"] and epoch % ev["test_every"] == 0):
            report.update(trial.evaluator.metrics(trial.model, "test", trial.autocast))
        wall_total += time.perf_counter() - started
        report.update(epoch_s=time.perf_counter() - started, wall_s=wall_total, gpu_s=wall_total * gpu_fraction)
        history.append(report)
        due = epoch == tr["epochs"] or (tr["checkpoint_every"] and epoch % tr["checkpoint_every"] == 0)
        if due and reporter.keeps_checkpoints:
            with tempfile.TemporaryDirectory(prefix="dmltune-ckpt-") as tmp:
                save_checkpoint(Path(tmp), {**trial.state_dict(), "epoch": epoch, "wall_s": wall_total,
                                            "last_val": last_val, "reports": history})
                reporter.report(report, checkpoint_dir=Path(tmp))
        else:
            reporter.report(report)
    return report


@contextlib.contextmanager
def _batchnorm_without_statistics_updates(model: torch.nn.Module):
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


def _meta_step(trial: Trial, sim, y, mined, progress, meta_idx, feats) -> None:
    """One λ update from a one-step look-ahead through the head (reusing this batch's features)
    or the whole network; see MetaLambda.hypergradient_via_similarities."""
    model, device, autocast = trial.model, trial.device, trial.autocast
    meta_x = _to_model_input(trial.transform(trial.source.batch(meta_idx), train=True), device)
    meta_y = trial.train_labels[torch.as_tensor(meta_idx, device=device)]

    def sim_loss(s, lam):
        return trial.loss_fn(s, y, mined, progress=progress, lam=lam)

    def meta_loss_of(emb):
        s = emb @ emb.T
        return trial.meta_loss_fn(s, meta_y, trial.miner(s, meta_y))

    def similarities(embed_fn):
        def sim_of(p):
            emb = full_precision(embed_fn(p))
            return emb @ emb.T
        return sim_of

    if trial.meta_scope == "head":
        params = dict(model.head.named_parameters())
        dtype = model.head.weight.dtype  # features leave autocast in bf16; the head works in its own dtype
        train_feats = feats.detach().to(dtype)
        with torch.no_grad(), autocast():
            meta_feats = model.features(meta_x).to(dtype)

        def head_embed(inputs):
            return lambda p: torch.nn.functional.normalize(functional_call(model.head, p, (inputs,)), dim=1)

        meta_embed, train_embed = head_embed(meta_feats), head_embed(train_feats)
    else:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.clone() for n, b in model.named_buffers()}  # the meta passes must not move BN statistics
        train_x = _to_model_input(trial.last_input, device)

        def meta_embed(p):
            with autocast():
                return full_precision(functional_call(model, {**p, **buffers}, (meta_x,)))

        def train_embed(p):  # forward-mode pass in float32: autocast has no forward-AD rules to rely on
            with _batchnorm_without_statistics_updates(model):
                return functional_call(model, {**p, **buffers}, (train_x,))

    def sim_tangent(v):
        with warnings.catch_warnings():  # torch's first jvp loads decompositions with a torch.jit notice
            warnings.simplefilter("ignore", FutureWarning)
            return jvp(similarities(train_embed), (dict(params),), (v,))[1]

    hyper = trial.meta.hypergradient_via_similarities(
        sim, sim_loss, params, lambda theta_hat: meta_loss_of(meta_embed(theta_hat)), sim_tangent)
    trial.meta.apply(hyper)


def tune_trainable(config: Mapping[str, Any]) -> None:
    """The function Ray Tune runs: ``train`` without a return value (a returned dict would be
    reported to Tune a second time as an extra result)."""
    train(config)
