"""tsloss_cuda: batched Vietoris–Rips persistent homology and the Topological Soft Prompt Loss.

Public API:
    pairwise_distance(x)                   batched Euclidean distances
    vr_persistence(x, maxdim=1, ...)       H0/H1 diagrams with gradients -> Diagrams
    loss(prompts, ...)                     TSLoss
    TSLoss(...)                            stateful module (keeps the previous diagram)
"""
from .loss import PromptTopology, TSLoss, loss
from .persistence import Diagrams, default_max_h1, pairwise_distance, vr_persistence

__all__ = [
    "Diagrams", "PromptTopology", "TSLoss", "default_max_h1", "loss", "pairwise_distance",
    "vr_persistence",
]
__version__ = "0.1.0"
