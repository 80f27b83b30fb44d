"""Generated examples (MIRAGE) as a part of the training step.

The generation component (:mod:`dmltune.generation`) holds the prototypes, G and D; this part wires
it into a trial: its two optimisers, its own random stream (so the model's training sees no other
change in randomness), the start of each training prototype at its class mean, the generated
examples that join each batch, and the generator and discriminator updates after the model's.
"""

from __future__ import annotations

import torch

from ..generation import build_generation
from ..models.functional import with_detached_weights
from ..pairs.masks import full_precision
from .evaluation import embed_images
from .parts import ADAPTIVE, Batch, TrainingPart

GENERATION_SEED_OFFSET = 104729
"""The generated examples' random stream is seeded with the trial's seed plus this."""

PROTOTYPE_START_IMAGES = 4096
"""At most this many training images (8 per class, at least one) give the class-mean prototype start."""


@ADAPTIVE.register("generation")
def build_generation_step(settings, trial) -> TrainingPart:
    """MIRAGE (or another registered generator) when ``generation.name`` is not ``none``."""
    return GenerationStep(settings, trial) if settings.generation.name != "none" else TrainingPart()


class GenerationStep(TrainingPart):
    """The generation component of a trial, with its optimisers, random stream and epoch sums."""

    def __init__(self, settings, trial):
        spec, device = settings.generation, trial.runtime.device
        self.trial = trial
        classes = torch.unique(trial.train_labels)
        self.module = build_generation(spec.name, spec.kwargs, len(classes), trial.model.feature_dim,
                                       settings.model["dim"], device, class_labels=classes)
        if spec.params.get("prototype_init", "class_mean") == "class_mean":
            self._start_prototypes_at_class_means()
        self.gen_optimizer, self.disc_optimizer = self.module.build_optimizers()
        self.rng = torch.Generator(device=device).manual_seed(settings.seed + GENERATION_SEED_OFFSET)
        self._sums = torch.zeros(2, device=device)
        self._steps = 0

    def _frozen_embed(self, features):  # the generator's objective must not move the model
        return torch.nn.functional.normalize(with_detached_weights(self.trial.model.head, features), dim=1)

    def _start_prototypes_at_class_means(self) -> None:
        """Embed up to 8 training images per class (at most PROTOTYPE_START_IMAGES in all, at least
        one per class) with the initial model and start each training prototype at its class mean."""
        trial, labels = self.trial, self.trial.train_labels
        per_class = max(1, min(8, PROTOTYPE_START_IMAGES // max(1, len(torch.unique(labels)))))
        order = torch.argsort(labels, stable=True)
        sorted_labels = labels[order]
        starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
        rank = torch.arange(len(order), device=labels.device) - starts
        chosen = order[rank < per_class].cpu()
        images = (trial.source.batch(part.tolist()) for part in chosen.split(256))
        embeddings = embed_images(trial.model, images, trial.transform, trial.runtime)
        self.module.init_prototypes(embeddings, labels[chosen.to(labels.device)])

    def start_epoch(self, epoch: int) -> None:
        self._sums = torch.zeros(2, device=self.trial.runtime.device)
        self._steps = 0

    def extend_batch(self, batch: Batch) -> None:
        """Generated examples join the batch with their (virtual) class labels, then the proxies."""
        gen, y = self.module, batch.y
        with self.trial.runtime.autocast():
            gen_emb, gen_y = gen.generate(self.trial.model.embed, gen.num_generated(len(y)), self.rng, labels_from=y)
        gen_emb = full_precision(gen_emb)
        proxy_emb, proxy_y = gen.proxy_batch(torch.cat([y, gen_y]))
        batch.all_embeddings = torch.cat([batch.all_embeddings, gen_emb, full_precision(proxy_emb)])
        batch.all_labels = torch.cat([batch.all_labels, gen_y, proxy_y])
        batch.extra["generated"] = (gen_emb, gen_y)

    def before_backward(self) -> None:
        if self.gen_optimizer is not None:
            self.gen_optimizer.zero_grad(set_to_none=True)  # the metric loss also trains the prototypes

    def after_update(self, batch: Batch) -> None:
        """After the model's update: the generator side (G + prototypes), then the discriminator."""
        gen, (gen_emb, gen_y) = self.module, batch.extra["generated"]
        g_loss = gen.generator_loss(batch.features.detach().float(), self._frozen_embed, self.rng)
        if self.gen_optimizer is not None:
            g_loss.backward()
            self.gen_optimizer.step()
        d_loss = gen.discriminator_loss(batch.embeddings.detach(), batch.y, gen_emb.detach(), gen_y)
        if self.disc_optimizer is not None:
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_optimizer.step()
        self._sums = self._sums + torch.stack([g_loss.detach(), d_loss.detach()])
        self._steps += 1

    def epoch_report(self) -> dict:
        g, d = (self._sums / max(self._steps, 1)).tolist()
        return {"generator_loss": g, "discriminator_loss": d}

    def evaluation_report(self) -> dict:
        return {"buffer_share": self.module.buffer_area_share()}

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "rng": self.rng.get_state(),
                "optimizers": [o.state_dict() if o is not None else None
                               for o in (self.gen_optimizer, self.disc_optimizer)]}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.rng.set_state(state["rng"].cpu() if hasattr(state["rng"], "cpu") else state["rng"])
        for optimizer, saved in zip((self.gen_optimizer, self.disc_optimizer), state["optimizers"]):
            if optimizer is not None:
                optimizer.load_state_dict(saved)
