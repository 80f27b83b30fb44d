"""Generated examples for metric learning: ``none`` and MIRAGE virtual classes (METHODS.md §5).

    from dmltune.generation import build_generation
    gen = build_generation("mirage", {"virtual_ratio": 1.0}, num_classes=100, feature_dim=1024,
                           embed_dim=512, device="cuda", class_labels=train_labels)
    emb, labels = gen.generate(model.embed, gen.num_generated(len(batch)), rng, labels_from=y)
    g_opt, d_opt = gen.build_optimizers()
"""

from ..lazy import lazy_attributes
from .catalog import GENERATORS

_HOMES = {"Generation": "base", "NoGeneration": "base", "build_generation": "base", "Discriminator": "mirage",
          "Mirage": "mirage", "round_half_up": "mirage"}
__getattr__ = lazy_attributes(__name__, _HOMES)  # the nn.Modules: torch is imported when one is asked for

__all__ = [
    "GENERATORS",
    "Discriminator",
    "Generation",
    "Mirage",
    "NoGeneration",
    "build_generation",
    "round_half_up",
]
