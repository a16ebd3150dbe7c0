"""tsloss_cuda: batched Vietoris–Rips persistent homology and the Topological Soft Prompt Loss.

Public API:
    pairwise_distance(x)                   batched Euclidean distances
    vr_persistence(x, maxdim=1, ...)       H0/H1 diagrams with gradients -> Diagrams
    loss(prompts, ...)                     TSLoss
    TSLoss(...)                            stateful module (keeps the previous diagram)
    SoftPromptModel, prompt_parameters     soft prompts for transformers / PEFT models
    TopologyTracker, topology_metrics      prompt topology over training

Main job: python -m tsloss_cuda.train (see --help); analysis: python -m tsloss_cuda.analyze DIR.
"""
from .loss import PromptTopology, TSLoss, loss
from .persistence import Diagrams, default_max_h1, pairwise_distance, vr_persistence
from .prompt_tuning import SoftPromptModel, prompt_parameters
from .tracking import TopologyTracker, topology_metrics

__all__ = [
    "Diagrams", "PromptTopology", "SoftPromptModel", "TSLoss", "TopologyTracker", "default_max_h1",
    "loss", "pairwise_distance", "prompt_parameters", "topology_metrics", "vr_persistence",
]
__version__ = "0.1.0"
