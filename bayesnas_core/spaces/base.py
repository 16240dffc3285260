"""The search-space protocol and its registry.

A search space is everything the one search loop needs to know about a space and nothing
about how alpha is learned:

- its architecture tensors: a name -> shape table (NB201 ``{"alpha": (6, 5)}``, DARTS
  ``{"normal": (14, 8), "reduce": (14, 8)}``); the last axis is the choice a softmax is
  taken over, and ``choice_names`` / ``row_names`` name its entries and rows;
- ``build_supernet``: a module whose ``forward(x, weights)`` takes mixing weights, a dict
  with one tensor per architecture tensor, each of that shape (one architecture) or with a
  leading ``M`` (M Monte-Carlo samples, returning logits ``[M, B, classes]``); it exposes
  ``weight_parameters()``;
- ``genotype``: the discrete architecture of a dict of architecture logits (the mode of
  a distribution); ``parse`` / ``format``: the space's own text form; ``num_parameter_free``:
  the parameter-free ops of a genotype, for the diagnostics;
- ``build_network``: the stand-alone network of a genotype, trained from scratch.

Spaces register a factory under a name with :func:`register_space`; nothing is built at
import time. Adding a space is one module under ``spaces/`` that registers itself, plus
its import in ``spaces/__init__.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from torch import Tensor, nn

from ..errors import UserError

__all__ = ["SearchSpace", "register_space", "get_space", "space_names"]


@runtime_checkable
class SearchSpace(Protocol):
    """What the search loop, the selection and the trainer ask of a space."""

    name: str

    def arch_shapes(self) -> dict[str, tuple[int, ...]]:
        """Architecture tensor name -> shape; the last axis is the choice."""
        ...

    def choice_names(self, tensor: str) -> tuple[str, ...]:
        """The names along the last axis of ``tensor`` (ops, or candidate inputs)."""
        ...

    def row_names(self, tensor: str) -> tuple[str, ...]:
        """The names of the rows of ``tensor`` (edges, nodes), for histories and plots."""
        ...

    def build_supernet(self, *, C: int, N: int, num_classes: int, in_channels: int,
                       device: Any = None, dtype: Any = None, **options: Any) -> nn.Module:
        """The weight-sharing supernet; ``forward(x, weights: dict[str, Tensor])``."""
        ...

    def genotype(self, arch: Mapping[str, Tensor]) -> Any:
        """The discrete architecture that architecture logits ``arch`` select."""
        ...

    def parse(self, text: str) -> Any:
        """A genotype from its text form; a malformed one is a one-line UserError."""
        ...

    def format(self, genotype: Any) -> str:
        """The text form of a genotype (``parse(format(g)) == g``)."""
        ...

    def num_parameter_free(self, genotype: Any) -> int:
        """How many of the genotype's chosen ops have no parameters."""
        ...

    def num_choices(self) -> int:
        """How many ops a genotype chooses (the denominator of ``num_parameter_free``)."""
        ...

    def build_network(self, genotype: Any, **kwargs: Any) -> nn.Module:
        """The stand-alone network of ``genotype`` (trained from scratch)."""
        ...


_SPACES: dict[str, Callable[[], SearchSpace]] = {}


def register_space(name: str) -> Callable[[Callable[[], SearchSpace]], Callable[[], SearchSpace]]:
    """Class or factory decorator: ``@register_space("darts")``; a duplicate name raises."""
    def add(factory: Callable[[], SearchSpace]) -> Callable[[], SearchSpace]:
        if name in _SPACES:
            raise ValueError(f"search space {name!r} is registered twice")
        _SPACES[name] = factory
        return factory

    return add


def space_names() -> tuple[str, ...]:
    return tuple(_SPACES)


def get_space(name: str) -> SearchSpace:
    """A fresh instance of the registered space ``name``; unknown is a one-line UserError."""
    if name not in _SPACES:
        raise UserError(f"unknown search space {name!r}; use --space one of {', '.join(_SPACES)}")
    return _SPACES[name]()
