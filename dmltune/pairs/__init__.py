"""Pair miners and pair losses on the B×B similarity matrix.

    from dmltune.pairs import get_miner, get_loss, MINERS, LOSSES
    miner = get_miner("asms", gamma_pos=0.1, gamma_neg=0.01)
    mined = miner(sim, labels)            # .pos, .neg (B×B bool), .stats (dict of floats)
    loss_fn = get_loss("soft_contrastive", lam=0.7, mu=2.0, nu=40.0)
    loss = loss_fn(sim, labels, mined, progress=0.5)
"""

from .losses import LOSSES, PairLoss, get_loss
from .masks import label_masks
from .miners import MINERS, Mined, get_miner

__all__ = ["LOSSES", "MINERS", "Mined", "PairLoss", "get_loss", "get_miner", "label_masks"]
