"""Every generation method's name and declared parameters: the one place a method is registered.

A method is an ``nn.Module`` (see :mod:`.base`); its factory here imports its module only when a
trial builds one, so that reading the declarations (``dmltune list``, ``validate``) never imports
torch. Add a method by writing its class and registering a factory for it below.
"""

from __future__ import annotations

from ..registry import Param, Registry

GENERATORS = Registry("generation")


@GENERATORS.register("none")
def no_generation(**context):
    """No generated examples: every method is a no-op and there are no parameters."""
    from .base import NoGeneration

    return NoGeneration(**context)


@GENERATORS.register(
    "mirage",
    Param("virtual_ratio", float, 1.0, low=0.0, high=10.0,
          help="virtual classes per training class: N_v = round(r · N_t)"),
    Param("generated_ratio", float, 1.0, low=0.0, high=4.0,
          help="generated examples per real example in the batch (paper sweeps 0–4)"),
    Param("virtual_share", float, None, low=0.0, high=1.0, nullable=True,
          help="share of generated examples drawn from virtual classes; empty = N_v / (N_t + N_v)"),
    Param("samples_per_class", int, 1, low=1, high=1024,
          help="generated examples per drawn class (1 = independent draws)"),
    Param("noise_std", float, 0.1, low=0.0, high=10.0,
          help="σ: ε ~ N(0, σ²/d·I), so ‖ε‖ ≈ σ against a unit prototype"),
    Param("hidden", int, 512, low=1, high=65536, help="hidden width of G and D"),
    Param("lr", float, 1e-4, low=0.0, high=1.0, help="Adam learning rate of G, prototypes and D"),
    Param("recon_weight", float, 1.0, low=0.0, high=100.0, help="weight of the ElasticNet reconstruction"),
    Param("adv_weight", float, 1.0, low=0.0, high=100.0, help="weight of the adversarial term for G"),
    Param("prototype_init", str, "class_mean", choices=("class_mean", "random"),
          help="training prototypes start at their class's mean initial embedding, or random unit vectors"),
    Param("proxies", bool, True,
          help="the batch's class prototypes join the metric loss as labelled points (the paper's [12])"),
)
def mirage(**context_and_params):
    """MIRAGE: training- and virtual-class prototypes, generator G and two-head discriminator D."""
    from .mirage import Mirage

    return Mirage(**context_and_params)
