"""Search spaces: ops, cells, supernets, stand-alone networks and arch codecs."""

from .nb201 import EDGES, NUM_EDGES, Arch, NB201Network, NB201Supernet
from .ops import OP_NAMES, OPS, PARAMETER_FREE_OPS

__all__ = [
    "EDGES",
    "NUM_EDGES",
    "OPS",
    "OP_NAMES",
    "PARAMETER_FREE_OPS",
    "Arch",
    "NB201Network",
    "NB201Supernet",
]
