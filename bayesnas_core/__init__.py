"""bayesnas: BaLeNAS (Bayesian differentiable architecture search) on a compact PyTorch core.

The handful of names a lesson needs; everything else lives in its module.
"""

__version__ = "0.1.0"

from .benchmarks import NB201Table, OfficialNB201, open_benchmark
from .config import PRESETS, RunConfig, get_preset
from .data import load_search_data
from .errors import UserError
from .experiments import run_search
from .optim import Vadam
from .proxies import compute_proxy
from .search import search
from .select import argmax_arch, sample_archs, select_tf, unique_networks
from .spaces import Arch, NB201Network, NB201Supernet

__all__ = [
    "__version__",
    "Arch",
    "NB201Network",
    "NB201Supernet",
    "NB201Table",
    "OfficialNB201",
    "PRESETS",
    "RunConfig",
    "UserError",
    "Vadam",
    "argmax_arch",
    "compute_proxy",
    "get_preset",
    "load_search_data",
    "open_benchmark",
    "run_search",
    "sample_archs",
    "search",
    "select_tf",
    "unique_networks",
]
