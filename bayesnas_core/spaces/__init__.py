"""Search spaces: ops, cells, supernets, stand-alone networks and arch codecs.

Each space is one module that registers itself (:func:`register_space`); importing it
here is all that adding a space takes (see :mod:`.base`)."""

from .base import SearchSpace, get_space, register_space, space_names
from .nb201 import EDGES, NUM_EDGES, Arch, NB201Network, NB201Space, NB201Supernet
from . import darts, nb1shot1  # noqa: E402,F401  (register the DARTS and NB-1shot1 spaces)
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
    "NB201Space",
    "SearchSpace",
    "get_space",
    "register_space",
    "space_names",
]
