"""Retrieval evaluation of a trial's model on its validation and test images.

:func:`embed_images` is the one eval-mode embedding loop; the evaluator and MIRAGE's prototype start
both use it.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..pairs.masks import full_precision
from .runtime import Runtime


@torch.no_grad()
def embed_images(model: torch.nn.Module, batches: Iterable[torch.Tensor], transform, runtime: Runtime) -> torch.Tensor:
    """Embeddings (float32) of uint8 image batches with the test-time transform, the model in eval mode
    (its training mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    out = []
    for images in batches:
        x = runtime.model_input(transform(images, train=False))
        with runtime.autocast():
            out.append(full_precision(model(x)))
    model.train(was_training)
    return torch.cat(out)


def image_source(image_set, resize, runtime: Runtime, train_settings):
    """The decoded-image source of a split (None for an empty or absent split)."""
    from ..data import ImageSource

    if image_set is None or len(image_set) == 0:
        return None
    return ImageSource(image_set, resize, runtime.device, mode=train_settings.cache,
                       budget_bytes=train_settings.cache_gb * 1e9, workers=train_settings.workers)


class Evaluator:
    """Embeds the validation or test images and computes the retrieval metrics of ``eval``."""

    def __init__(self, splits, resize, transform, runtime: Runtime, eval_settings, train_settings,
                 keep_test: bool = False):
        self.transform, self.runtime, self.settings = transform, runtime, eval_settings
        self.keep_test = keep_test  # keep the last test embeddings (k-fold: the fold models' ensemble)
        self.test_embeddings: dict | None = None
        self.val = image_source(splits.val, resize, runtime, train_settings)
        self.test = image_source(splits.test, resize, runtime, train_settings)
        self.query = image_source(splits.query, resize, runtime, train_settings)
        self.gallery = image_source(splits.gallery, resize, runtime, train_settings)

    def embed(self, model, source) -> torch.Tensor:
        images = (images for images, _ in source.sequential(self.settings.batch_size))
        return embed_images(model, images, self.transform, self.runtime)

    def _evaluate(self) -> Callable:
        from ..evaluate import NMI_DEFAULTS, evaluate

        s = self.settings
        wanted = ("recall", "map@r", "r_precision") + (("nmi",) if s.nmi else ())
        options = {key: getattr(s, key) for key in NMI_DEFAULTS}
        return lambda *args: evaluate(*args, ks=list(s.ks), metrics=wanted, **options)

    def _keep(self, **sets) -> None:
        if self.keep_test:
            self.test_embeddings = {name: (emb.detach().cpu(), labels.cpu()) for name, (emb, labels) in sets.items()}

    def metrics(self, model, which: str) -> dict[str, float]:
        """``val/…`` or ``test/…`` metrics (query against gallery where the dataset has them)."""
        from ..evaluate import histogram_columns, similarity_histograms

        evaluate = self._evaluate()
        if which == "test" and self.query is not None:
            q, g = self.embed(model, self.query), self.embed(model, self.gallery)
            self._keep(query=(q, self.query.labels()), gallery=(g, self.gallery.labels()))
            return {f"test/{k}": v for k, v in evaluate(q, self.query.labels(), g, self.gallery.labels()).items()}
        source = self.val if which == "val" else self.test
        if source is None:
            return {}
        emb = self.embed(model, source)
        if which == "test":
            self._keep(test=(emb, source.labels()))
        result = {f"{which}/{k}": v for k, v in evaluate(emb, source.labels()).items()}
        if which == "val" and self.settings.similarity_bins:
            hist = similarity_histograms(emb, source.labels(), bins=self.settings.similarity_bins)
            result.update(histogram_columns("val_simhist", *hist))
        return result
