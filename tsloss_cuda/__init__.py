"""tsloss_cuda: batched Vietoris–Rips persistent homology and the Topological Soft Prompt Loss.

Public API:
    pairwise_distance(x)                   batched Euclidean distances
    vr_persistence(x, maxdim=1, ...)       H0/H1 diagrams with gradients -> Diagrams
    default_max_h1(n)                      the default H1 capacity K for clouds of n points
    loss(prompts, ...)                     TSLoss
    TSLoss(...)                            stateful module (keeps the previous diagram)
    PromptTopology                         the topology a stability term compares against
    SoftPromptModel, prompt_parameters     soft prompts for transformers / PEFT models
    TopologyTracker, topology_metrics      prompt topology over training
    cpu_isa, set_cpu_isa, supported_cpu_isas   which x86 build of the CPU kernels runs (same bits)
    build_info()                           the sources the extension was built from, and if stale

Main job: python -m tsloss_cuda.train (see --help); analysis: python -m tsloss_cuda.analyze DIR.
"""
from .build_info import build_info
from .cpu_isa import cpu_isa, set_cpu_isa, supported_cpu_isas
from .cpu_isa import _apply_environment as _apply_cpu_isa_environment
from .loss import PromptTopology, TSLoss, loss
from .persistence import Diagrams, default_max_h1, pairwise_distance, vr_persistence
from .prompt_tuning import SoftPromptModel, prompt_parameters
from .tracking import TopologyTracker, topology_metrics

__all__ = [
    "Diagrams", "PromptTopology", "SoftPromptModel", "TSLoss", "TopologyTracker", "build_info",
    "cpu_isa",
    "default_max_h1", "loss", "pairwise_distance", "prompt_parameters", "set_cpu_isa",
    "supported_cpu_isas", "topology_metrics", "vr_persistence",
]
_apply_cpu_isa_environment()
__version__ = "0.1.0"
