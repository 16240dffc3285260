"""The DARTS CNN search space: ops, genotype codec, supernet and stand-alone networks.

DARTS (Liu, Simonyan and Yang, "DARTS: Differentiable Architecture Search", ICLR 2019,
arXiv:1806.09055) searches two cell types, a *normal* cell and a *reduction* cell. A cell
has two inputs (the outputs of the two previous cells, numbered 0 and 1) and 4
intermediate nodes (numbered 2..5); node ``i`` may take any earlier node as input, which
gives ``2 + 3 + 4 + 5 = 14`` edges, each a choice among 8 ops. The cell's output is the
channel concatenation of the 4 intermediate nodes. The architecture is therefore two
tensors of logits, ``normal`` and ``reduce``, each ``[14, 8]`` (rows: edges in the order
:data:`DARTS_EDGES`; columns: ops in the order :data:`PRIMITIVES`).

A discrete architecture is a :data:`Genotype`, the same named tuple DARTS uses, so the
genotypes printed in papers and code paste in: every intermediate node keeps two incoming
edges, each with one op, written ``(op, input)`` in ``normal`` / ``reduce`` (8 pairs).

Everything here is written from the descriptions in the DARTS paper and the layout of its
public code (``operations.py``, ``model_search.py``, ``model.py``, ``genotypes.py``): the
ops, the search network (stem ``3C``, ``N`` cells with reductions at ``N // 3`` and
``2N // 3``), the evaluation networks for CIFAR (20 cells, C=36, auxiliary head at 2/3
depth, drop path) and ImageNet (the mobile setting: 14 cells, C=48), so a genotype gets
exactly the parameter count the papers report (DARTS-V2: 3.3M on CIFAR-10, 4.7M on
ImageNet). The supernet differs from DARTS's in one way only: it takes mixing weights (the
softmax is the caller's, see ``spaces/base.py``) and holds no architecture parameters.
"""

from __future__ import annotations

import abc
import ast
import collections
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .base import register_space
from .ops import ReLUConvBN, Zero, mixed_sum

__all__ = [
    "PRIMITIVES",
    "PARAMETER_FREE_PRIMITIVES",
    "DARTS_EDGES",
    "NUM_DARTS_EDGES",
    "STEPS",
    "Genotype",
    "GENOTYPES",
    "DARTS_OPS",
    "build_darts_op",
    "FactorizedReduce",
    "SepConv",
    "DilConv",
    "drop_path",
    "DartsSupernet",
    "DartsNetworkCIFAR",
    "DartsNetworkImageNet",
    "DartsSpace",
]

#: The DARTS op vocabulary, in DARTS's order (``PRIMITIVES`` in its ``genotypes.py``); the
#: column order of the ``normal`` and ``reduce`` tensors.
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
#: The ops a genotype may choose that :meth:`DartsSpace.num_parameter_free` counts: pooling
#: and skip (``none`` is never chosen). A strided skip is a FactorizedReduce, which does
#: have weights; it is counted anyway, as the DARTS literature counts skips.
PARAMETER_FREE_PRIMITIVES: frozenset[str] = frozenset({"max_pool_3x3", "avg_pool_3x3", "skip_connect"})
#: intermediate nodes per cell
STEPS = 4
#: (to_node, from_node) of each edge, in DARTS's order: node ``i + 2`` for ``i`` in 0..3
#: takes inputs ``0 .. i + 1`` (nodes 0, 1 are the cell inputs ``c_{k-2}``, ``c_{k-1}``).
DARTS_EDGES: tuple[tuple[int, int], ...] = tuple(
    (i + 2, j) for i in range(STEPS) for j in range(i + 2))
NUM_DARTS_EDGES = len(DARTS_EDGES)  # 14
_CONCAT = [2, 3, 4, 5]

#: DARTS's genotype type, field for field, so published genotypes paste in unchanged.
Genotype = collections.namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

# Published genotypes. DARTS_V1 (first order) and DARTS_V2 (second order): the cells found
# by DARTS on CIFAR-10, from ``genotypes.py`` of the DARTS code (Liu et al., ICLR 2019,
# arXiv:1806.09055). PC-DARTS: the CIFAR-10 cell ``PC_DARTS_cifar`` from ``genotypes.py``
# of the PC-DARTS code (Xu et al., ICLR 2020, arXiv:1907.05737), whose concat is written
# there as ``range(2, 6)``, here as the equal list.
GENOTYPES: dict[str, Genotype] = {
    "darts-v1": Genotype(
        normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
        reduce_concat=[2, 3, 4, 5],
    ),
    "darts-v2": Genotype(
        normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
        reduce_concat=[2, 3, 4, 5],
    ),
    "pc-darts": Genotype(
        normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
                ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
        reduce_concat=[2, 3, 4, 5],
    ),
}

_FORMAT_HINT = (
    "expected Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], "
    "reduce=[...], reduce_concat=[2, 3, 4, 5]) with 8 (op, input) pairs per cell, the pair "
    "of node k (0-3) taking inputs 0..k+1, ops among " + ", ".join(PRIMITIVES[1:])
    + "; or a shipped name: " + ", ".join(GENOTYPES)
)
_MAX_TEXT = 20_000  # longer text is refused before it is parsed


# ---------------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------------
class FactorizedReduce(nn.Module):
    """DARTS's stride-2 identity: ReLU, two 1x1 stride-2 convs (the second shifted by one
    pixel), concatenated, then BN. On odd sizes the shifted input is zero-padded by one
    pixel so both halves agree (DARTS needs even sizes; on even sizes this is DARTS's op)."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        dd = {"device": device, "dtype": dtype}
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False, **dd)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False, **dd)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats, **dd)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        H, W = x.shape[-2:]
        if H % 2 or W % 2:
            shifted = F.pad(shifted, (0, W % 2, 0, H % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class SepConv(nn.Module):
    """DARTS's separable conv: (ReLU, depthwise k x k, pointwise 1x1, BN) twice; only the
    first depthwise conv is strided."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        bn = {"affine": affine, "track_running_stats": track_running_stats}
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in,
                      bias=False, **dd),
            nn.Conv2d(C_in, C_in, 1, padding=0, bias=False, **dd),
            nn.BatchNorm2d(C_in, **bn, **dd),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False, **dd),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False, **dd),
            nn.BatchNorm2d(C_out, **bn, **dd),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """DARTS's dilated separable conv: ReLU, depthwise k x k with dilation, pointwise 1x1, BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False, **dd),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False, **dd),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats, **dd),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


#: name -> factory ``(C, stride, affine, track_running_stats, device, dtype) -> Module``
DARTS_OPS: dict[str, Callable[..., nn.Module]] = {}


def _register_darts_op(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a DARTS op factory under ``name``; a duplicate name raises."""
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in DARTS_OPS:
            raise KeyError(f"DARTS op {name!r} is already registered")
        DARTS_OPS[name] = fn
        return fn

    return add


def build_darts_op(name: str, C: int, stride: int, *, affine: bool = True,
                   track_running_stats: bool = True, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> nn.Module:
    """The DARTS op ``name`` on ``C`` channels (``C`` in, ``C`` out) with ``stride``."""
    try:
        factory = DARTS_OPS[name]
    except KeyError:
        raise KeyError(f"unknown DARTS op {name!r}; known: {', '.join(DARTS_OPS)}") from None
    return factory(C, stride, affine=affine, track_running_stats=track_running_stats,
                   device=device, dtype=dtype)


@_register_darts_op("none")
def _none(C: int, stride: int, **_: Any) -> nn.Module:
    return Zero(C, C, stride)


@_register_darts_op("max_pool_3x3")
def _max_pool(C: int, stride: int, **_: Any) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


@_register_darts_op("avg_pool_3x3")
def _avg_pool(C: int, stride: int, **_: Any) -> nn.Module:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


@_register_darts_op("skip_connect")
def _skip(C: int, stride: int, **kw: Any) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(C, C, **kw)


@_register_darts_op("sep_conv_3x3")
def _sep3(C: int, stride: int, **kw: Any) -> nn.Module:
    return SepConv(C, C, 3, stride, 1, **kw)


@_register_darts_op("sep_conv_5x5")
def _sep5(C: int, stride: int, **kw: Any) -> nn.Module:
    return SepConv(C, C, 5, stride, 2, **kw)


@_register_darts_op("dil_conv_3x3")
def _dil3(C: int, stride: int, **kw: Any) -> nn.Module:
    return DilConv(C, C, 3, stride, 2, 2, **kw)


@_register_darts_op("dil_conv_5x5")
def _dil5(C: int, stride: int, **kw: Any) -> nn.Module:
    return DilConv(C, C, 5, stride, 4, 2, **kw)


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest by
    ``1 / (1 - drop_prob)`` (DARTS's ``drop_path``, not in place)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x / keep * mask


def _preprocess(C_prev_prev: int, C_prev: int, C: int, reduction_prev: bool, bn: dict,
                dd: dict) -> tuple[nn.Module, nn.Module]:
    """A cell's input adapters: s0 is halved in size if the previous cell reduced."""
    pre0 = (FactorizedReduce(C_prev_prev, C, **bn, **dd) if reduction_prev
            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, **bn, **dd))
    return pre0, ReLUConvBN(C_prev, C, 1, 1, 0, **bn, **dd)


def _cell_plan(N: int) -> list[bool]:
    """Whether each of the ``N`` cells is a reduction cell (at ``N // 3`` and ``2N // 3``)."""
    return [i in (N // 3, 2 * N // 3) for i in range(N)]


# ---------------------------------------------------------------------------------
# search network
# ---------------------------------------------------------------------------------
class _MixedOp(nn.Module):
    """All 8 ops of one edge, mixed by a weight vector. Pooling is followed by a BN without
    affine parameters, as in DARTS's search ``MixedOp``."""

    def __init__(self, C: int, stride: int, bn: dict, dd: dict) -> None:
        super().__init__()
        ops = []
        for name in PRIMITIVES:
            op = build_darts_op(name, C, stride, **bn, **dd)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(
                    C, affine=False, track_running_stats=bn["track_running_stats"], **dd))
            ops.append(op)
        self.ops = nn.ModuleList(ops)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return mixed_sum(x, weights, self.ops)


class _SearchCell(nn.Module):
    """A DARTS search cell: 14 mixed edges, the 4 intermediate nodes concatenated."""

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool,
                 bn: dict, dd: dict) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = _preprocess(C_prev_prev, C_prev, C, reduction_prev, bn, dd)
        self.edges = nn.ModuleList(
            _MixedOp(C, 2 if reduction and j < 2 else 1, bn, dd) for _, j in DARTS_EDGES)

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for _ in range(STEPS):
            s = None
            for h in list(states):
                t = self.edges[e](h, weights[e])
                s = t if s is None else s + t
                e += 1
            states.append(s)
        return torch.cat(states[-STEPS:], dim=1)


class DartsSupernet(nn.Module):
    """DARTS's search network (``model_search.Network``) on mixing weights.

    A ``3x3`` conv stem to ``3C`` channels + BN, ``N`` search cells (DARTS's ``layers``;
    reductions at ``N // 3`` and ``2N // 3``, doubling the channels), global average pooling
    and a linear classifier. ``forward(x, weights)`` takes the mixing weights of every edge,
    ``{"normal": [14, 8], "reduce": [14, 8]}`` (already softmaxed: the supernet applies no
    softmax and holds no architecture parameters), and returns logits ``[B, classes]``; with a
    leading ``M`` on both tensors it returns ``[M, B, classes]``, sample ``m`` computed exactly
    as a separate call with ``weights[...][m]`` would (the stem once, the cells per sample).

    Cell ops use BN without affine parameters (as in DARTS); ``track_running_stats=False``
    (the default) makes every BN use batch statistics, in training and eval mode alike.
    """

    def __init__(self, C: int = 16, N: int = 8, num_classes: int = 10, in_channels: int = 3, *,
                 affine: bool = False, track_running_stats: bool = False, stem_multiplier: int = 3,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        bn = {"affine": affine, "track_running_stats": track_running_stats}
        self.C, self.N, self.num_classes = C, N, num_classes
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False, **dd),
            nn.BatchNorm2d(C_curr, track_running_stats=track_running_stats, **dd),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        cells: list[_SearchCell] = []
        reduction_prev = False
        for reduction in _cell_plan(N):
            if reduction:
                C_curr *= 2
            cells.append(_SearchCell(C_prev_prev, C_prev, C_curr, reduction, reduction_prev, bn, dd))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, STEPS * C_curr
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(C_prev, num_classes, **dd)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the network (there are no architecture parameters here)."""
        return list(self.parameters())

    def _cells_forward(self, stem: Tensor, normal: Tensor, reduce: Tensor) -> Tensor:
        s0 = s1 = stem
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.classifier(s1.mean(dim=(2, 3)))

    def forward(self, x: Tensor, weights: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(weights, Mapping) or set(weights) != {"normal", "reduce"}:
            got = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
            raise ValueError(f"weights must be a dict with 'normal' and 'reduce', got {got}")
        normal, reduce = weights["normal"], weights["reduce"]
        shape = (NUM_DARTS_EDGES, len(PRIMITIVES))
        ok = (normal.shape == reduce.shape and normal.dim() in (2, 3)
              and tuple(normal.shape[-2:]) == shape)
        if not ok:
            raise ValueError(f"weights must be [14, 8] or [M, 14, 8] each (the same), got "
                             f"{tuple(normal.shape)} and {tuple(reduce.shape)}")
        stem = self.stem(x)  # the same for every sample
        if normal.dim() == 2:
            return self._cells_forward(stem, normal, reduce)
        return torch.stack([self._cells_forward(stem, n, r)
                            for n, r in zip(normal.unbind(0), reduce.unbind(0))])


# ---------------------------------------------------------------------------------
# evaluation networks
# ---------------------------------------------------------------------------------
class _EvalCell(nn.Module):
    """A cell of a genotype (DARTS's ``model.Cell``); drop path on non-identity ops."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, dd: dict) -> None:
        super().__init__()
        bn = {"affine": True, "track_running_stats": True}
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = _preprocess(C_prev_prev, C_prev, C, reduction_prev, bn, dd)
        pairs = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.multiplier = len(self.concat)
        self.indices = [int(j) for _, j in pairs]
        self.ops = nn.ModuleList(
            build_darts_op(name, C, 2 if reduction and j < 2 else 1, **bn, **dd) for name, j in pairs)

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self.ops) // 2):
            s = None
            for k in (2 * i, 2 * i + 1):
                op = self.ops[k]
                h = op(states[self.indices[k]])
                if self.training and drop_prob > 0.0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                s = h if s is None else s + h
            states.append(s)
        return torch.cat([states[i] for i in self.concat], dim=1)


class _AuxiliaryHead(nn.Module):
    """DARTS's auxiliary classifier: ReLU, 5x5 avg pool, 1x1 conv to 128 + BN + ReLU, 2x2 conv
    to 768 (+ BN, CIFAR only: DARTS's ImageNet head omits it) + ReLU, linear."""

    def __init__(self, C: int, num_classes: int, *, pool_stride: int, bn_768: bool, dd: dict) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False, **dd),
            nn.BatchNorm2d(128, **dd),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False, **dd),
        ]
        if bn_768:
            layers.append(nn.BatchNorm2d(768, **dd))
        layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class _EvalNetwork(nn.Module, abc.ABC):
    """The cells, auxiliary head and classifier shared by the CIFAR and ImageNet networks;
    each of them provides its own stems."""

    def _build_cells(self, genotype: Genotype, C: int, N: int, num_classes: int, C_stem: int,
                     reduction_prev: bool, auxiliary: bool, imagenet: bool, dd: dict) -> None:
        self.N, self.auxiliary = N, auxiliary
        self.drop_path_prob = 0.0
        C_prev_prev, C_prev, C_curr = C_stem, C_stem, C
        cells: list[_EvalCell] = []
        C_aux = C_prev
        for i, reduction in enumerate(_cell_plan(N)):
            if reduction:
                C_curr *= 2
            cell = _EvalCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, dd)
            cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * N // 3:
                C_aux = C_prev
        self.cells = nn.ModuleList(cells)
        self.auxiliary_head = (
            _AuxiliaryHead(C_aux, num_classes, pool_stride=2 if imagenet else 3,
                           bn_768=not imagenet, dd=dd) if auxiliary else None)
        self.classifier = nn.Linear(C_prev, num_classes, **dd)

    @abc.abstractmethod
    def _stems(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The first two cell inputs (s0, s1) from the images."""

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Logits; ``(logits, logits_aux)`` in training mode with the auxiliary head."""
        s0, s1 = self._stems(x)
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self.N // 3 and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(s1.mean(dim=(2, 3)))
        return (logits, logits_aux) if logits_aux is not None else logits


class DartsNetworkCIFAR(_EvalNetwork):
    """DARTS's CIFAR evaluation network (``model.NetworkCIFAR``): a 3x3 conv stem to ``3C``
    + BN, ``N`` cells of ``genotype`` (reductions at ``N // 3`` and ``2N // 3``), an auxiliary
    head after cell ``2N // 3`` (used in training mode only; it assumes 8x8 features, i.e.
    32x32 images), global average pooling and a linear classifier. Drop path applies in
    training mode to every op but the identity, with probability ``drop_path_prob``, an
    attribute the training loop sets per epoch as DARTS does."""

    def __init__(self, genotype: Genotype, C: int = 36, N: int = 20, num_classes: int = 10,
                 in_channels: int = 3, *, auxiliary: bool = True, drop_path_prob: float = 0.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.genotype = genotype
        C_stem = 3 * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False, **dd),
            nn.BatchNorm2d(C_stem, **dd),
        )
        self._build_cells(genotype, C, N, num_classes, C_stem, False, auxiliary, False, dd)
        self.drop_path_prob = drop_path_prob

    def _stems(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.stem(x)
        return s, s


class DartsNetworkImageNet(_EvalNetwork):
    """DARTS's ImageNet evaluation network (``model.NetworkImageNet``, the mobile setting with
    ``C=48``, ``N=14``): ``stem0`` (3x3 stride-2 conv to ``C/2``, BN, ReLU, 3x3 stride-2 conv
    to ``C``, BN) and ``stem1`` (ReLU, 3x3 stride-2 conv, BN), so 224x224 images reach the
    cells at 28x28; the cells start as after a reduction; the auxiliary head after cell
    ``2N // 3`` (7x7 features) has no BN after its 768-channel conv, as in DARTS's code.
    Global average pooling (DARTS: ``AvgPool2d(7)``, the same on 224x224 images)."""

    def __init__(self, genotype: Genotype, C: int = 48, N: int = 14, num_classes: int = 1000,
                 in_channels: int = 3, *, auxiliary: bool = True, drop_path_prob: float = 0.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.genotype = genotype
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(C // 2, **dd),
            nn.ReLU(inplace=False),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(C, **dd),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(C, **dd),
        )
        self._build_cells(genotype, C, N, num_classes, C, True, auxiliary, True, dd)
        self.drop_path_prob = drop_path_prob

    def _stems(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


# ---------------------------------------------------------------------------------
# codec
# ---------------------------------------------------------------------------------
def _bad(text: Any, why: str) -> UserError:
    shown = repr(text) if len(repr(text)) <= 80 else repr(text)[:77] + "..."
    return UserError(f"not a DARTS genotype: {shown} ({why}); {_FORMAT_HINT}")


def _check_cell(pairs: Any, concat: Any, which: str, text: Any) -> tuple[list[tuple[str, int]], list[int]]:
    """Validated copies of one cell's (op, input) pairs and concat list."""
    if not isinstance(pairs, (list, tuple)) or len(pairs) != 2 * STEPS:
        raise _bad(text, f"{which} must list {2 * STEPS} (op, input) pairs")
    out: list[tuple[str, int]] = []
    for p, pair in enumerate(pairs):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str)
                or not isinstance(pair[1], int) or isinstance(pair[1], bool)):
            raise _bad(text, f"{which}[{p}] is not an (op, input) pair")
        op, j = pair
        if op == "none":
            raise _bad(text, f"{which}[{p}] is 'none', which a genotype never chooses")
        if op not in PRIMITIVES:
            raise _bad(text, f"{which}[{p}] has unknown op {op!r}")
        if not 0 <= j <= p // 2 + 1:
            raise _bad(text, f"{which}[{p}] takes input {j}, but node {p // 2} may take 0..{p // 2 + 1}")
        out.append((op, j))
    if isinstance(concat, range):
        concat = list(concat)
    if (not isinstance(concat, (list, tuple)) or not concat
            or any(not isinstance(c, int) or isinstance(c, bool) for c in concat)
            or any(not 2 <= c <= STEPS + 1 for c in concat)
            or any(a >= b for a, b in zip(concat, concat[1:]))):
        raise _bad(text, f"{which}_concat must be increasing nodes among 2..{STEPS + 1}")
    return out, list(concat)


def _normalize(g: Any, text: Any = None) -> Genotype:
    """A validated :data:`Genotype` with lists of tuples (``text``: what to show in errors)."""
    text = g if text is None else text
    if not all(hasattr(g, f) for f in Genotype._fields):
        raise _bad(text, "not a Genotype")
    normal, normal_concat = _check_cell(g.normal, g.normal_concat, "normal", text)
    reduce, reduce_concat = _check_cell(g.reduce, g.reduce_concat, "reduce", text)
    return Genotype(normal=normal, normal_concat=normal_concat, reduce=reduce,
                    reduce_concat=reduce_concat)


def _literal(node: ast.expr, field: str, text: str) -> Any:
    """The value of one keyword: a Python literal, or ``range(a, b)`` for a concat."""
    if (field.endswith("concat") and isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "range" and not node.keywords and 1 <= len(node.args) <= 2
            and all(isinstance(a, ast.Constant) and type(a.value) is int and abs(a.value) < 100
                    for a in node.args)):
        return list(range(*(a.value for a in node.args)))  # type: ignore[union-attr]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _bad(text, f"{field} is not a literal") from None


def _parse_text(text: str) -> Genotype:
    """``Genotype(normal=..., ...)`` with literal keyword values; nothing is evaluated."""
    if len(text) > _MAX_TEXT:
        raise _bad(text, f"longer than {_MAX_TEXT} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise _bad(text, "not Python syntax") from None
    call = tree.body
    if isinstance(call, (ast.Name, ast.BinOp)) and "(" not in text:  # darts-v3, DARTS_V3
        raise _bad(text, "unknown genotype name")
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "Genotype"):
        raise _bad(text, "not a Genotype(...) call")
    if call.args:
        raise _bad(text, "fields must be given by keyword")
    names = [k.arg for k in call.keywords]
    if sorted(n or "**" for n in names) != sorted(Genotype._fields):
        raise _bad(text, "needs exactly the keywords " + ", ".join(Genotype._fields))
    fields = {k.arg: _literal(k.value, k.arg, text) for k in call.keywords if k.arg}
    return _normalize(Genotype(**fields), text)


def _name_key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


# ---------------------------------------------------------------------------------
# the space
# ---------------------------------------------------------------------------------
@register_space("darts")
class DartsSpace:
    """The DARTS CNN space behind the :class:`~bayesnas_core.spaces.base.SearchSpace`
    protocol: two ``[14, 8]`` architecture tensors, ``normal`` and ``reduce``."""

    name = "darts"

    def num_choices(self) -> int:
        """Ops a genotype chooses: 8 per cell, normal and reduction."""
        return 2 * 2 * STEPS

    def arch_shapes(self) -> dict[str, tuple[int, ...]]:
        shape = (NUM_DARTS_EDGES, len(PRIMITIVES))
        return {"normal": shape, "reduce": shape}

    def _check_tensor(self, tensor: str) -> None:
        if tensor not in ("normal", "reduce"):
            raise UserError(f"the DARTS space has no architecture tensor {tensor!r}; "
                            "use 'normal' or 'reduce'")

    def choice_names(self, tensor: str) -> tuple[str, ...]:
        """The 8 op names (the columns of ``tensor``)."""
        self._check_tensor(tensor)
        return PRIMITIVES

    def row_names(self, tensor: str) -> tuple[str, ...]:
        """``"2<-0"``, ...: the edges into node ``i`` from node ``j`` (0, 1: cell inputs)."""
        self._check_tensor(tensor)
        return tuple(f"{i}<-{j}" for i, j in DARTS_EDGES)

    def build_supernet(self, *, C: int, N: int, num_classes: int, in_channels: int,
                       device: Any = None, dtype: Any = None, **options: Any) -> DartsSupernet:
        """DARTS's search network (``N``: cells, 8 in DARTS's search). ``affine`` and
        ``track_running_stats`` pass to the cells' BN; other options are ignored, except
        ``fused`` / ``compile_cells``, which this space does not have."""
        for flag in ("fused", "compile_cells"):
            if options.get(flag):
                raise UserError(f"{flag}=True is not supported by the DARTS space; use --no-fused-cell")
        return DartsSupernet(C, N, num_classes, in_channels,
                             affine=bool(options.get("affine", False)),
                             track_running_stats=bool(options.get("track_running_stats", False)),
                             device=device, dtype=dtype)

    def genotype(self, arch: Mapping[str, Tensor]) -> Genotype:
        """DARTS's discretisation of logits ``{"normal": [14, 8], "reduce": [14, 8]}``: after a
        softmax over each row, every intermediate node keeps the 2 incoming edges whose
        strongest op other than ``none`` is largest (ties: the lower input), each with that
        op; pairs are listed strongest edge first, as DARTS lists them."""
        shape = (NUM_DARTS_EDGES, len(PRIMITIVES))
        cells = {}
        for key in ("normal", "reduce"):
            t = torch.as_tensor(arch[key]).detach()
            if tuple(t.shape) != shape:
                raise ValueError(f"arch[{key!r}] must be [14, 8] logits, got {tuple(t.shape)}")
            cells[key] = _derive(F.softmax(t.cpu().double(), dim=-1).tolist())
        return Genotype(normal=cells["normal"], normal_concat=list(_CONCAT),
                        reduce=cells["reduce"], reduce_concat=list(_CONCAT))

    def parse(self, text: str) -> Genotype:
        """A genotype from its DARTS text form (``range(a, b)`` concats accepted) or the name
        of a shipped one (:data:`GENOTYPES`, case and ``_``/``-`` insensitive). The text is
        parsed, never evaluated; a malformed one is a one-line :class:`UserError`."""
        if not isinstance(text, str):
            raise _bad(text, "not a string")
        key = _name_key(text)
        if key in GENOTYPES:
            return _normalize(GENOTYPES[key])
        return _parse_text(text.strip())

    def format(self, genotype: Genotype) -> str:
        """The DARTS repr, ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3,
        4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])``."""
        return repr(_normalize(genotype))

    def num_parameter_free(self, genotype: Genotype) -> int:
        """How many of the 16 chosen ops (both cells) are pooling or skip connections."""
        g = _normalize(genotype)
        return sum(op in PARAMETER_FREE_PRIMITIVES for op, _ in g.normal + g.reduce)

    def build_network(self, genotype: Genotype | str, *, C: int | None = None, N: int | None = None,
                      num_classes: int | None = None, in_channels: int = 3, auxiliary: bool = True,
                      drop_path_prob: float = 0.0, imagenet: bool = False, device: Any = None,
                      dtype: Any = None) -> DartsNetworkCIFAR | DartsNetworkImageNet:
        """The evaluation network of ``genotype`` (a Genotype, its text or a shipped name):
        CIFAR (defaults ``C=36``, ``N=20``, 10 classes) or, with ``imagenet=True``, ImageNet
        in the mobile setting (defaults ``C=48``, ``N=14``, 1000 classes)."""
        g = self.parse(genotype) if isinstance(genotype, str) else _normalize(genotype)
        if imagenet:
            return DartsNetworkImageNet(g, 48 if C is None else C, 14 if N is None else N,
                                        1000 if num_classes is None else num_classes, in_channels,
                                        auxiliary=auxiliary, drop_path_prob=drop_path_prob,
                                        device=device, dtype=dtype)
        return DartsNetworkCIFAR(g, 36 if C is None else C, 20 if N is None else N,
                                 10 if num_classes is None else num_classes, in_channels,
                                 auxiliary=auxiliary, drop_path_prob=drop_path_prob,
                                 device=device, dtype=dtype)


def _derive(weights: Sequence[Sequence[float]]) -> list[tuple[str, int]]:
    """DARTS's ``_parse`` on one cell's softmaxed ``[14, 8]`` weights."""
    none = PRIMITIVES.index("none")
    gene: list[tuple[str, int]] = []
    start = 0
    for i in range(STEPS):
        rows = weights[start:start + i + 2]

        def strength(j: int) -> float:
            return max(w for k, w in enumerate(rows[j]) if k != none)

        for j in sorted(range(i + 2), key=lambda j: -strength(j))[:2]:  # stable: ties keep order
            best = max((k for k in range(len(PRIMITIVES)) if k != none), key=lambda k: rows[j][k])
            gene.append((PRIMITIVES[best], j))
        start += i + 2
    return gene
