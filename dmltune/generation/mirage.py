"""MIRAGE: virtual classes and generated examples (METHODS.md §5); the interface is in base.py.

MIRAGE (Jacob, Picard, Histace, ICIP 2022, §3) learns one prototype per training class and
``N_v = round(r · N_t)`` prototypes of *virtual* classes that exist only through generated examples.
A generator ``G`` maps a noisy, normalised prototype from the embedding space back to the feature
space; the model's own encoder ``E`` (``EmbeddingModel.embed``: head + L2 norm) then embeds it:

    x̃_c = E(G((p_c + ε) / ‖p_c + ε‖)),   ε ~ N(0, σ²/d · I)

Generated examples join the mini-batch with their labels. ``G`` is trained with the ElasticNet
reconstruction ``‖f − G(E(f))‖₁ + ‖f − G(E(f))‖₂²`` on real features and, on virtual-class samples,
to *maximise* the discriminator's two-head loss ``L_adv`` (real/generated + class), which pushes the
virtual classes into the space between training classes (the paper's "buffer areas"). The
discriminator ``D`` sees embeddings and minimises ``L_adv``.

This module holds the generation component only; wiring it into a training loop is the trainer's
job. See ``docs/generation.md`` for what the paper leaves open and the choices made here.

Labels. Real dataset labels are arbitrary integers; the training label set is given at build time
(``class_labels``) and prototype row ``i < N_t`` belongs to ``class_labels[i]`` (sorted). Virtual
class ``v`` (row ``N_t + v``) has label ``base − v`` with ``base = min(0, min(class_labels)) − 1``,
i.e. ``−1 − v`` for the usual non-negative labels, so a virtual label never equals a real one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.functional import with_detached_weights
from .base import EmbedFn, Generation

def round_half_up(x: float) -> int:
    """``round`` with halves going up (Python's ``round`` sends 2.5 to 2)."""
    return math.floor(x + 0.5)


def _mean_or_zero(values: Tensor) -> Tensor:
    """Mean of ``values``; an empty tensor gives a zero still connected to its graph."""
    return values.mean() if values.numel() else values.sum()


class Discriminator(nn.Module):
    """Linear + ReLU, then a real/generated logit head and a class-logit head."""

    def __init__(self, embed_dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU())
        self.real_head = nn.Linear(hidden, 1)
        self.class_head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.real_head(h).squeeze(1), self.class_head(h)


class Mirage(Generation):
    """MIRAGE: training- and virtual-class prototypes, generator G and two-head discriminator D.

    Parameters as registered (see ``docs/generation.md``). ``prototypes`` is one
    ``(N_t + N_v) × d`` parameter: rows ``0..N_t−1`` are the training classes in the order of
    ``class_labels`` (sorted), the rest are the virtual classes.
    """

    enabled = True

    def __init__(self, class_labels: Tensor, feature_dim: int, embed_dim: int, *,
                 virtual_ratio: float = 1.0, generated_ratio: float = 1.0, virtual_share: float | None = None,
                 samples_per_class: int = 1, noise_std: float = 0.1, hidden: int = 512, lr: float = 1e-4,
                 recon_weight: float = 1.0, adv_weight: float = 1.0, proxies: bool = True,
                 prototype_init: str = "class_mean"):
        super().__init__(class_labels, feature_dim, embed_dim)
        self.proxies, self.prototype_init = proxies, prototype_init
        self.num_virtual = round_half_up(virtual_ratio * self.num_train)
        self.virtual_ratio, self.generated_ratio = virtual_ratio, generated_ratio
        self.samples_per_class, self.noise_std = samples_per_class, noise_std
        self.hidden, self.lr = hidden, lr
        self.recon_weight, self.adv_weight = recon_weight, adv_weight
        total = self.num_train + self.num_virtual
        if self.num_virtual == 0:
            self.virtual_share = 0.0
        elif virtual_share is None:
            self.virtual_share = self.num_virtual / total
        else:
            self.virtual_share = virtual_share
        # Labels of virtual classes lie strictly below every real label (and below 0).
        self.virtual_base = min(0, int(class_labels.min())) - 1
        self.register_buffer("virtual_labels", self.virtual_base - torch.arange(self.num_virtual), persistent=True)

        self.prototypes = nn.Parameter(F.normalize(torch.randn(total, embed_dim), dim=1))
        self.G = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim))
        self.D = Discriminator(embed_dim, hidden, total)

    # ----- labels -------------------------------------------------------------------------------

    def is_virtual(self, labels: Tensor) -> Tensor:
        """True where a label is one of the virtual classes' labels."""
        return (labels <= self.virtual_base) & (labels > self.virtual_base - self.num_virtual)

    def label_rows(self, labels: Tensor) -> Tensor:
        """Prototype rows (= class indices of D) of real or virtual labels; unknown labels raise ValueError."""
        labels = labels.to(self.device, torch.long)
        virtual = self.is_virtual(labels)
        idx = torch.searchsorted(self.class_labels, labels).clamp_max(self.num_train - 1)
        known = self.class_labels[idx] == labels
        if not bool((known | virtual).all()):
            bad = labels[~(known | virtual)][:5].tolist()
            raise ValueError(f"generation: labels {bad} are neither training classes nor virtual classes")
        return torch.where(virtual, self.num_train + (self.virtual_base - labels), idx)

    def row_labels(self, rows: Tensor) -> Tensor:
        """Labels of prototype rows: the real label for a training row, ``base − v`` for virtual row v."""
        virtual = rows >= self.num_train
        train_idx = rows.clamp_max(self.num_train - 1)
        return torch.where(virtual, self.virtual_base - (rows - self.num_train), self.class_labels[train_idx])

    # ----- generation ---------------------------------------------------------------------------

    def num_generated(self, batch_size: int) -> int:
        """Generated examples to add to a batch of ``batch_size`` real examples."""
        return round_half_up(self.generated_ratio * batch_size)

    def split(self, n: int) -> tuple[int, int]:
        """``(training-class, virtual-class)`` counts for ``n`` generated examples."""
        n_virtual = round_half_up(self.virtual_share * n) if self.num_virtual else 0
        return n - n_virtual, n_virtual

    def _sample_device(self, generator: torch.Generator | None) -> torch.device:
        return generator.device if generator is not None else self.device

    def _draw(self, high: int, n: int, generator: torch.Generator | None) -> Tensor:
        """``n`` indices in ``[0, high)``, drawn in groups of ``samples_per_class`` identical ones."""
        k = self.samples_per_class
        draws = torch.randint(high, (math.ceil(n / k),), generator=generator,
                              device=self._sample_device(generator))
        return draws.to(self.device).repeat_interleave(k)[:n]

    def _training_rows(self, n: int, generator, labels_from: Tensor | None) -> Tensor:
        if n == 0:
            return torch.empty(0, dtype=torch.long, device=self.device)
        if labels_from is None:
            return self._draw(self.num_train, n, generator)
        pool = self.label_rows(labels_from.reshape(-1))
        if pool.numel() == 0 or bool(pool.ge(self.num_train).any()):
            raise ValueError("generation: labels_from must hold at least one label, all of training classes")
        return pool[self._draw(pool.numel(), n, generator)]

    def _virtual_rows(self, n: int, generator) -> Tensor:
        if n == 0:
            return torch.empty(0, dtype=torch.long, device=self.device)
        return self.num_train + self._draw(self.num_virtual, n, generator)

    def _latent(self, rows: Tensor, generator: torch.Generator | None) -> Tensor:
        """``(p̂_c + ε) / ‖p̂_c + ε‖`` for each row, with ``p̂`` the unit prototype."""
        d = self.embed_dim
        eps = torch.randn(rows.numel(), d, generator=generator, device=self._sample_device(generator))
        eps = eps.to(self.device, self.prototypes.dtype) * (self.noise_std / math.sqrt(d))
        return F.normalize(F.normalize(self.prototypes[rows], dim=1) + eps, dim=1)

    def generate(self, embed_fn: EmbedFn, n: int, generator: torch.Generator | None = None, *,
                 labels_from: Tensor | None = None, train_generator: bool = False) -> tuple[Tensor, Tensor]:
        """``n`` generated embeddings and their labels: training-class ones first, then virtual ones.

        ``embed_fn`` is the model's ``embed`` (head + L2 norm); gradients flow through it to the
        model and to the prototypes. G's weights are detached unless ``train_generator`` (the paper
        trains G only with the reconstruction and adversarial terms, not with the metric loss).
        With ``labels_from`` (e.g. the real batch's labels) training classes are drawn from those
        labels, so generated examples form positive pairs with real ones; otherwise uniformly
        from all training classes. Virtual classes are drawn uniformly.
        """
        if n < 0:
            raise ValueError(f"generation: n must be >= 0, got {n}")
        if n == 0:
            return self._empty()
        n_train, n_virtual = self.split(n)
        rows = torch.cat([self._training_rows(n_train, generator, labels_from),
                          self._virtual_rows(n_virtual, generator)])
        z = self._latent(rows, generator)
        features = self.G(z) if train_generator else with_detached_weights(self.G, z)
        return embed_fn(features), self.row_labels(rows)

    @torch.no_grad()
    def init_prototypes(self, embeddings: Tensor, labels: Tensor) -> None:
        """Training prototypes at the normalised mean embedding of their class (classes absent from
        ``labels`` keep their random start); virtual prototypes stay random."""
        rows = self.label_rows(labels)
        sums = torch.zeros(self.num_train + self.num_virtual, self.embed_dim, device=self.device)
        sums.index_add_(0, rows, embeddings.to(self.device, sums.dtype))
        seen = torch.zeros(len(sums), dtype=torch.bool, device=self.device)
        seen[rows] = True
        seen[self.num_train:] = False
        self.prototypes[seen] = F.normalize(sums[seen], dim=1).to(self.prototypes.dtype)

    def proxy_batch(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The unit prototypes of the distinct classes in ``labels`` (training or virtual) with their
        labels, to join the metric loss as labelled points; empty when ``proxies`` is off."""
        if not self.proxies or labels.numel() == 0:
            return self._empty()
        rows = torch.unique(self.label_rows(labels))
        return F.normalize(self.prototypes[rows], dim=1), self.row_labels(rows)

    # ----- losses -------------------------------------------------------------------------------

    def reconstruction_loss(self, features: Tensor, embed_fn: EmbedFn) -> Tensor:
        """Mean over the batch of ``‖f − G(E(f))‖₁ + ‖f − G(E(f))‖₂²``; only G gets gradients."""
        f = features.detach()
        with torch.no_grad():
            x = embed_fn(f)
        diff = f - self.G(x)
        return _mean_or_zero(diff.abs().sum(1) + diff.pow(2).sum(1))

    def generator_loss(self, features: Tensor, embed_fn: EmbedFn, generator: torch.Generator | None = None, *,
                       n_virtual: int | None = None) -> Tensor:
        """Loss minimised by G and the prototypes: ``recon_weight · L_rec − adv_weight · L_adv(x̃_v)``.

        ``L_adv(x̃_v)`` is the discriminator's loss on ``n_virtual`` fresh virtual-class samples
        (default: as many as a batch of ``len(features)`` real examples gets), with D's weights
        detached (D stays fixed): ``mean[−log(1 − D_g(x̃_v))] + mean[CE(D_c(x̃_v), y_v)]``.
        Gradients also reach the parameters ``embed_fn`` uses; do not step the model on them.
        """
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"generation: features must be B×{self.feature_dim}, got {tuple(features.shape)}")
        loss = self.recon_weight * self.reconstruction_loss(features, embed_fn)
        if n_virtual is None:
            n_virtual = self.split(self.num_generated(features.shape[0]))[1]
        if n_virtual > 0 and self.num_virtual > 0 and self.adv_weight > 0:
            rows = self._virtual_rows(n_virtual, generator)
            x = embed_fn(self.G(self._latent(rows, generator)))
            real_logit, class_logits = with_detached_weights(self.D, x)
            adv = F.softplus(real_logit).mean() + F.cross_entropy(class_logits, rows)
            loss = loss - self.adv_weight * adv
        return loss

    def discriminator_loss(self, real: Tensor, real_labels: Tensor, generated: Tensor,
                           generated_labels: Tensor) -> Tensor:
        """``L_adv`` for D on embeddings, inputs detached (only D gets gradients).

        ``mean[−log D_g(x)] + mean[CE(D_c(x), y)]`` over real embeddings plus
        ``mean[−log(1 − D_g(x̃))] + mean[CE(D_c(x̃), ỹ)]`` over all generated ones (training-class
        and virtual; the paper trains D "on the entire batch"). Classes are the N_t + N_v rows.
        """
        real_rows = self.label_rows(real_labels)
        gen_rows = self.label_rows(generated_labels)
        real_logit, real_cls = self.D(real.detach())
        real_ce = F.cross_entropy(real_cls, real_rows, reduction="none")
        loss = _mean_or_zero(F.softplus(-real_logit)) + _mean_or_zero(real_ce)
        if generated.shape[0]:
            gen_logit, gen_cls = self.D(generated.detach())
            loss = loss + F.softplus(gen_logit).mean() + F.cross_entropy(gen_cls, gen_rows)
        return loss

    # ----- parameters and statistics ------------------------------------------------------------

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``generator``: G; ``prototypes``: the prototype matrix; ``discriminator``: D.

        ``build_optimizers`` steps G and the prototypes together (the generator side) and D alone.
        """
        return {"generator": list(self.G.parameters()), "prototypes": [self.prototypes],
                "discriminator": list(self.D.parameters())}

    def prototype_embeddings(self) -> Tensor:
        """The unit-norm prototypes, ``(N_t + N_v) × d``."""
        return F.normalize(self.prototypes, dim=1)

    @torch.no_grad()
    def buffer_area_share(self) -> float:
        """Share of training prototypes whose nearest other prototype (cosine) is virtual.

        0 without virtual classes; NaN when there is no other prototype. Exact ties go to the
        lowest row, i.e. to a training prototype.
        """
        total = self.num_train + self.num_virtual
        if total < 2:
            return float("nan")
        if self.num_virtual == 0:
            return 0.0
        p = self.prototype_embeddings()
        sim = p[: self.num_train] @ p.T
        sim.diagonal().fill_(float("-inf"))  # the first N_t columns hold the rows themselves
        nearest = sim.argmax(dim=1)
        return int((nearest >= self.num_train).sum()) / self.num_train
