"""The NAS-Bench-201 search space: architecture codec, supernet and stand-alone network.

A cell is a DAG of 4 nodes; node ``i`` sums one op applied to every earlier node ``j``.
The 6 edges, in the benchmark's order, are ``(1,0), (2,0), (2,1), (3,0), (3,1), (3,2)``,
which is also the order of the ops in an arch string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` and the row order of alpha ``[6, 5]``.

The network (METHOD.md section 4) is a 3x3 conv stem + BN, three stages of ``N`` cells
with ``C, 2C, 4C`` channels, a stride-2 residual block between stages, then BN-ReLU,
global average pooling and a linear classifier.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .base import register_space
from .ops import OP_NAMES, PARAMETER_FREE_OPS, ResNetBasicblock, build_op, mixed_sum

__all__ = [
    "EDGES",
    "NUM_EDGES",
    "Arch",
    "NB201Supernet",
    "NB201Network",
    "NB201Space",
    "OP_NAMES",
]

MAX_NODES = 4
#: a fused node's convolution kernel(s) (see :func:`_fused_kernels`)
Kernel = Tensor | tuple[Tensor, Tensor]
#: implementations of the fused cell (see :meth:`_SearchCell.forward_folded`)
CELL_IMPLS = ("matmul", "conv", "elementwise")
#: (to_node, from_node) for each edge, in NB201 order.
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(1, MAX_NODES) for j in range(i))
NUM_EDGES = len(EDGES)
_FORMAT_HINT = (
    "expected |op~0|+|op~0|op~1|+|op~0|op~1|op~2| with ops " + ", ".join(OP_NAMES)
)


@dataclass(frozen=True)
class Arch:
    """One NB201 cell: the op on each of the 6 edges, in NB201 edge order."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ops) != NUM_EDGES or any(op not in OP_NAMES for op in self.ops):
            raise UserError(f"not a NAS-Bench-201 cell: {self.ops!r}; {_FORMAT_HINT}")

    # -- codec --------------------------------------------------------------------
    @classmethod
    def parse(cls, arch_str: str) -> "Arch":
        """Parse an NB201 arch string; a malformed one raises :class:`UserError`."""
        bad = UserError(f"not a NAS-Bench-201 arch string: {arch_str!r}; {_FORMAT_HINT}")
        if not isinstance(arch_str, str):
            raise bad
        nodes = arch_str.split("+")
        if len(nodes) != MAX_NODES - 1:
            raise bad
        ops: list[str] = []
        for i, node in enumerate(nodes, start=1):
            if not (node.startswith("|") and node.endswith("|")) or len(node) < 3:
                raise bad
            items = node[1:-1].split("|")
            if len(items) != i:
                raise bad
            for j, item in enumerate(items):
                op, sep, src = item.partition("~")
                if not sep or op not in OP_NAMES or src != str(j):
                    raise bad
                ops.append(op)
        return cls(tuple(ops))

    @classmethod
    def from_indices(cls, indices: Sequence[int]) -> "Arch":
        """Build from one op index (into :data:`OP_NAMES`) per edge."""
        return cls(tuple(OP_NAMES[int(k)] for k in indices))

    def __str__(self) -> str:
        parts, e = [], 0
        for i in range(1, MAX_NODES):
            items = []
            for j in range(i):
                items.append(f"{self.ops[e]}~{j}")
                e += 1
            parts.append("|" + "|".join(items) + "|")
        return "+".join(parts)

    @property
    def arch_str(self) -> str:
        return str(self)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(OP_NAMES.index(op) for op in self.ops)

    @classmethod
    def all(cls) -> Iterator["Arch"]:
        """All 5^6 = 15,625 cells (in lexicographic op-index order, not NB201's index order)."""
        for combo in itertools.product(range(len(OP_NAMES)), repeat=NUM_EDGES):
            yield cls.from_indices(combo)

    # -- analysis -----------------------------------------------------------------
    @property
    def num_parameter_free(self) -> int:
        """How many edges carry a parameter-free op (none, skip, pooling)."""
        return sum(op in PARAMETER_FREE_OPS for op in self.ops)

    @cached_property
    def canonical(self) -> str:
        """A string equal for cells that compute the same network (NB201's rule).

        Node values are written as expressions over the input ``0``: ``none``, or an
        input whose expression is exactly ``#`` (zero), gives the term ``#``;
        ``skip_connect`` passes its input's expression; any other op wraps it as
        ``(expr)@op``. A node is the sorted multiset sum of its terms, and the cell is
        the expression of node 3. This is NAS-Bench-201's ``to_unique_str`` with zeros
        considered, which maps the 15,625 strings to 6,466 networks. (Propagating zero
        through sums of zeros as well, e.g. ``#+#``, would merge them further, to 5,390;
        the benchmark's count is the one in use.)
        """
        exprs: list[str] = ["0"]
        e = 0
        for i in range(1, MAX_NODES):
            terms = []
            for j in range(i):
                op, src = self.ops[e], exprs[j]
                e += 1
                if op == "none" or src == "#":
                    terms.append("#")
                elif op == "skip_connect":
                    terms.append(src)
                else:
                    terms.append(f"({src})@{op}")
            exprs.append("+".join(sorted(terms)))
        return exprs[-1]


# ---------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------
def _stage_plan(C: int, N: int) -> list[tuple[int, bool]]:
    """(channels, is_reduction) for every layer after the stem."""
    return (
        [(C, False)] * N + [(2 * C, True)] + [(2 * C, False)] * N
        + [(4 * C, True)] + [(4 * C, False)] * N
    )


class _MixedOp(nn.Module):
    """All candidate ops of one edge, mixed by a weight vector."""

    def __init__(self, C: int, bn: dict, dd: dict) -> None:
        super().__init__()
        self.ops = nn.ModuleList(build_op(name, C, C, 1, **bn, **dd) for name in OP_NAMES)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return mixed_sum(x, weights, self.ops)


class _SearchCell(nn.Module):
    """A cell of mixed edges. ``forward`` is the plain evaluation, one op at a time;
    :meth:`forward_folded` computes the same function in a few large kernels."""

    def __init__(self, C: int, bn: dict, dd: dict, fused: bool = False) -> None:
        super().__init__()
        self.edges = nn.ModuleList(_MixedOp(C, bn, dd) for _ in EDGES)
        if fused and (bn["affine"] or bn["track_running_stats"]):
            raise ValueError("the fused cell needs BN without affine parameters or running stats")

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        nodes = [x]
        e = 0
        for i in range(1, MAX_NODES):
            s = None
            for j in range(i):
                t = self.edges[e](nodes[j], weights[e])
                s = t if s is None else s + t
                e += 1
            nodes.append(s)
        return nodes[-1]

    def forward_folded(self, h: Tensor, mixers: Sequence[Tensor], kernels: Sequence[Kernel],
                       impl: str = "matmul") -> Tensor:
        """The fused cell on ``[B, M, C, H, W]`` (M alpha samples folded into the batch).

        Edges leaving node ``j`` share its ReLU and one pooling, and their convolutions
        run together with ``kernels[j]`` (from :func:`_fused_kernels`); BatchNorm channels
        are ``(sample, conv channel)``, so every sample keeps its own batch statistics.
        The mixing of all out-edges is one linear map of the candidates ``[node, pool,
        conv1x1 ..., conv3x3 ...]`` by ``mixers[j]`` (from :func:`_mixers`); ``none``
        adds exactly zero.

        ``impl="matmul"``: the 1x1 and 3x3 kernels run as one 3x3 convolution (each 1x1
        kernel zero-padded, so it gets gradient only at its centre), one BatchNorm, and
        the mixing is a batched matmul. ``impl="conv"``: a 1x1 and a 3x3 convolution,
        BatchNorm through cuDNN (unit scale and zero shift given, which cuDNN needs),
        and the mixing as a grouped 1x1 convolution with weights ``mix (x) I_C``.
        ``impl="elementwise"``: ``matmul``'s convolution and BatchNorm, and each edge
        mixes its four non-zero candidates by broadcast multiply-adds, the form
        ``torch.compile`` fuses with the BatchNorm and the sums into a few kernels (eager,
        it is many small ones). All compute the same function.
        """
        if impl not in CELL_IMPLS:
            raise ValueError(f"unknown cell implementation {impl!r}; use one of {CELL_IMPLS}")
        B, M, C, H, W = h.shape
        terms: list[list[Tensor]] = [[] for _ in range(MAX_NODES)]
        node = h
        for j, out_edges in enumerate(_OUT_EDGES):
            k = len(out_edges)
            flat = node.reshape(B * M, C, H, W)
            ops = self.edges[out_edges[0]].ops
            eps = ops[_OP["nor_conv_3x3"]].op[2].eps
            pooled = ops[_OP["avg_pool_3x3"]](flat)
            r = F.relu(flat)
            if impl != "conv":
                conv = F.conv2d(r, kernels[j], padding=1)
                convs = [F.batch_norm(conv.view(B, M * 2 * k * C, H, W), None, None, training=True,
                                      momentum=0.0, eps=eps).view(B, M, 2 * k * C, H * W)]
            else:
                k1, k3 = kernels[j]
                ones, zeros = flat.new_ones(M * k * C), flat.new_zeros(M * k * C)
                convs = [F.batch_norm(c.view(B, M * k * C, H, W), None, None, ones, zeros,
                                      training=True, momentum=0.0, eps=eps).view(B, M, k * C, H * W)
                         for c in (F.conv2d(r, k1), F.conv2d(r, k3, padding=1))]
            ident, pool = node.reshape(B, M, C, H * W), pooled.view(B, M, C, H * W)
            if impl == "elementwise":
                y = convs[0]
                outs = [w[0] * ident + w[1] * pool + w[2] * y[:, :, n * C:(n + 1) * C]
                        + w[3] * y[:, :, (k + n) * C:(k + n + 1) * C]
                        for n, w in enumerate(mixers[j])]  # w [4, M, 1, 1]: skip, pool, 1x1, 3x3
            else:
                cand = torch.cat([ident, pool, *convs], dim=2)
                if impl == "matmul":
                    out = torch.bmm(mixers[j], cand.view(B * M, 2 + 2 * k, C * H * W))
                else:
                    out = F.conv2d(cand.view(B, M * (2 + 2 * k) * C, H, W), mixers[j], groups=M)
                # unbind, not indexing: its backward is one stack, not a zero-filled copy per edge
                outs = out.view(B, M, k, C * H * W).unbind(2)
            for n, t in enumerate(outs):
                terms[j + 1 + n].append(t)
            parts = terms[j + 1]
            node = parts[0]
            for t in parts[1:]:
                node = node + t
            node = node.reshape(B, M, C, H, W)
        return node


#: position of each op in a mixed edge's ``ops``
_OP = {name: i for i, name in enumerate(OP_NAMES)}
#: out-edges of each source node, in NB201 edge order (targets ascending)
_OUT_EDGES: tuple[tuple[int, ...], ...] = tuple(
    tuple(e for e, (_, src) in enumerate(EDGES) if src == j) for j in range(MAX_NODES - 1))


def _mixing_index(out_edges: Sequence[int], num_ops: int) -> list[list[int]]:
    """Rows: out-edges of one node; columns: its candidates ``[node, pool, conv1x1 of
    each out-edge, conv3x3 of each out-edge]``; entries index the flat ``[E * ops + 1]``
    weights, the last of which is zero."""
    k, zero = len(out_edges), NUM_EDGES * num_ops
    rows = []
    for n, e in enumerate(out_edges):
        row = [e * num_ops + _OP["skip_connect"], e * num_ops + _OP["avg_pool_3x3"]]
        row += [e * num_ops + _OP["nor_conv_1x1"] if m == n else zero for m in range(k)]
        row += [e * num_ops + _OP["nor_conv_3x3"] if m == n else zero for m in range(k)]
        rows.append(row)
    return rows


def _mixing_matrices(weights: Tensor, index: Sequence[Tensor]) -> list[Tensor]:
    """``[M, 6, 5]`` op weights -> per source node the ``[M, k, 2 + 2k]`` mixing matrix."""
    M = weights.shape[0]
    flat = torch.cat([weights.reshape(M, -1), weights.new_zeros(M, 1)], dim=1)
    return [flat[:, idx] for idx in index]


def _mixers(mix: Sequence[Tensor], impl: str, B: int, C: int) -> list[Tensor]:
    """The mixing matrices ``[M, k, 2 + 2k]`` in the form :meth:`_SearchCell.forward_folded`
    applies them, built once per forward and shared by every cell of width ``C``:
    ``[B * M, k, 2 + 2k]`` for the batched matmul, the grouped 1x1-convolution weight
    ``mix (x) I_C`` ``[M * k * C, (2 + 2k) * C, 1, 1]``, or for ``elementwise`` each
    out-edge's weights of its non-zero candidates ``[k, 4, M, 1, 1]``."""
    if impl == "matmul":
        return [m.expand(B, *m.shape).reshape(B * m.shape[0], *m.shape[1:]) for m in mix]
    if impl == "elementwise":  # slices only: no index tensor to copy inside a CUDA graph
        out = []
        for m in mix:
            k = m.shape[1]
            convs = [torch.diagonal(m[:, :, c:c + k], dim1=1, dim2=2)[..., None] for c in (2, 2 + k)]
            w = torch.cat([m[:, :, :2], *convs], dim=2)  # [M, k, 4]: skip, pool, 1x1, 3x3
            out.append(w.permute(1, 2, 0)[..., None, None])
        return out
    eye = torch.eye(C, device=mix[0].device, dtype=mix[0].dtype)
    return [(m[:, :, None, :, None] * eye[:, None, :]).reshape(m.shape[0] * m.shape[1] * C, -1, 1, 1)
            for m in mix]


def _fused_kernels(cells: Sequence["_SearchCell"], impl: str) -> list[list[Kernel]]:
    """Per cell and source node, the convolution kernels of the node's out-edges, for
    all ``cells`` (of one width) in a few concatenations rather than a few per node:
    ``[2kC, C, 3, 3]`` (1x1 kernels zero-padded, then the 3x3 kernels) for ``matmul``
    and ``elementwise``, or the pair ``([kC, C, 1, 1], [kC, C, 3, 3])`` for ``conv``."""
    def weights(op: str) -> list[Tensor]:
        return [cell.edges[e].ops[_OP[op]].op[1].weight
                for cell in cells for out in _OUT_EDGES for e in out]

    w1, w3 = weights("nor_conv_1x1"), weights("nor_conv_3x3")
    C = w1[0].shape[0]
    ks = [len(out) for _ in cells for out in _OUT_EDGES]
    if impl != "conv":
        padded = F.pad(torch.cat(w1), (1, 1, 1, 1)).split(C)
        parts, i = [], 0
        for k in ks:
            parts += [*padded[i:i + k], *w3[i:i + k]]
            i += k
        per_node: list[Kernel] = list(torch.cat(parts).split([2 * k * C for k in ks]))
    else:
        sizes = [k * C for k in ks]
        per_node = list(zip(torch.cat(w1).split(sizes), torch.cat(w3).split(sizes)))
    n = len(_OUT_EDGES)
    return [per_node[c * n:(c + 1) * n] for c in range(len(cells))]


def _cell_forward(cell: "_SearchCell", h: Tensor, mixers: Sequence[Tensor],
                  kernels: Sequence[Kernel], impl: str) -> Tensor:
    return cell.forward_folded(h, mixers, kernels, impl)


@functools.cache
def _compiled_cell_forward() -> Callable[..., Tensor]:
    """:func:`_cell_forward` through ``torch.compile`` (inductor fuses BN, pooling, the
    mixing and the sums around the convolutions). Built once per process; every cell of
    one shape shares a graph, because their parameters are graph inputs."""
    # one graph per (width, M, which inputs need grad, input strides): about a dozen in a
    # process that runs both methods, past dynamo's default limit of 8 (beyond it, cells
    # would silently run eagerly); the limit was called cache_size_limit before torch 2.7
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 32))
    return torch.compile(_cell_forward, dynamic=False)


def _bn_folded(bn: nn.BatchNorm2d, y: Tensor, M: int) -> Tensor:
    """BatchNorm of ``y`` ``[B * M, C, H, W]`` (sample-minor) with per-sample statistics."""
    BM, C, H, W = y.shape
    w = None if bn.weight is None else bn.weight.repeat(M)
    b = None if bn.bias is None else bn.bias.repeat(M)
    out = F.batch_norm(y.view(BM // M, M * C, H, W), None, None, w, b, training=True,
                       momentum=0.0, eps=bn.eps)
    return out.view(BM, C, H, W)


def _relu_conv_bn_folded(block: nn.Module, x: Tensor, M: int) -> Tensor:
    _, conv, bn = block.op
    return _bn_folded(bn, conv(F.relu(x)), M)


def _resblock_folded(block: ResNetBasicblock, h: Tensor) -> Tensor:
    """The stage-transition block on ``[B, M, C, H, W]``, per-sample BN statistics."""
    B, M = h.shape[:2]
    flat = h.reshape(B * M, *h.shape[2:])
    y = _relu_conv_bn_folded(block.conv_b, _relu_conv_bn_folded(block.conv_a, flat, M), M)
    out = block.downsample(flat) + y  # avg pool + 1x1 conv: no batch statistics
    return out.view(B, M, *out.shape[1:])


class _InferCell(nn.Module):
    def __init__(self, arch: Arch, C: int, dd: dict) -> None:
        super().__init__()
        self.arch = arch
        self.edges = nn.ModuleList(build_op(op, C, C, 1, **dd) for op in arch.ops)

    def forward(self, x: Tensor) -> Tensor:
        nodes = [x]
        e = 0
        for i in range(1, MAX_NODES):
            s = None
            for j in range(i):
                t = self.edges[e](nodes[j])
                s = t if s is None else s + t
                e += 1
            nodes.append(s)
        return nodes[-1]


class _Macro(nn.Module):
    """Stem, stages and head shared by the supernet and the stand-alone network."""

    def __init__(self, C: int, N: int, num_classes: int, in_channels: int, make_cell,
                 bn: dict, dd: dict) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False, **dd),
            nn.BatchNorm2d(C, track_running_stats=bn["track_running_stats"], **dd),
        )
        cells: list[nn.Module] = []
        C_prev = C
        for C_curr, reduction in _stage_plan(C, N):
            if reduction:
                cells.append(ResNetBasicblock(C_prev, C_curr, 2, True,
                                              bn["track_running_stats"], **dd))
            else:
                cells.append(make_cell(C_curr))
            C_prev = C_curr
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(
            nn.BatchNorm2d(C_prev, track_running_stats=bn["track_running_stats"], **dd),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(C_prev, num_classes, **dd)

    def head(self, x: Tensor) -> Tensor:
        x = self.lastact(x)
        return self.classifier(x.mean(dim=(2, 3)))


class NB201Supernet(nn.Module):
    """The DARTS relaxation of NB201: every edge mixes all 5 ops by mixing weights.

    ``forward(x)`` mixes by ``softmax(alpha)`` of the supernet's own logits;
    ``forward(x, weights)`` by the given mixing weights instead: ``[6, 5]`` for one
    architecture, or ``[M, 6, 5]`` for M Monte-Carlo samples, which returns logits
    ``[M, B, classes]`` computed in one
    batched pass (``torch.func.vmap``), each sample with its own BN batch statistics
    exactly as M separate passes would.

    Cell ops use BN without affine parameters (as in DARTS); with
    ``track_running_stats=False`` (the default) BN always uses batch statistics.
    ``fused=True`` computes the same function with fewer, larger kernels (the fast path):
    the M samples are folded into the batch instead of vmapped, and the edges of a node
    share one convolution, one BatchNorm and one mixing matmul. ``compile_cells=True``
    runs those fused cells through ``torch.compile``; ``cell_impl`` picks how they are
    computed (:data:`CELL_IMPLS`). Parameters and ``state_dict`` are
    the same either way.
    """

    def __init__(self, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3, *,
                 affine: bool = False, track_running_stats: bool = False, fused: bool = False,
                 compile_cells: bool = False, cell_impl: str = "matmul",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if compile_cells and not fused:
            raise ValueError("compile_cells needs fused=True")
        if cell_impl not in CELL_IMPLS:
            raise ValueError(f"unknown cell implementation {cell_impl!r}; use one of {CELL_IMPLS}")
        self.compile_cells, self.cell_impl = compile_cells, cell_impl
        dd = {"device": device, "dtype": dtype}
        bn = {"affine": affine, "track_running_stats": track_running_stats}
        self.C, self.N, self.num_classes = C, N, num_classes
        self.net = _Macro(C, N, num_classes, in_channels, lambda c: _SearchCell(c, bn, dd, fused),
                          bn, dd)
        self.fused = fused
        #: indices of each run of search cells (one stage) in ``net.cells``
        self._stages = [list(g) for is_cell, g in itertools.groupby(
            range(len(self.net.cells)), key=lambda i: isinstance(self.net.cells[i], _SearchCell))
            if is_cell]
        self.alpha = nn.Parameter(1e-3 * torch.randn(NUM_EDGES, len(OP_NAMES), **dd))
        for j, edges in enumerate(_OUT_EDGES):  # not in state_dict: derived from the space
            index = torch.tensor(_mixing_index(edges, len(OP_NAMES)), device=device)
            self.register_buffer(f"_mix_index_{j}", index, persistent=False)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def _forward(self, x: Tensor, weights: Tensor) -> Tensor:
        h = self.net.stem(x)
        for cell in self.net.cells:
            h = cell(h) if isinstance(cell, ResNetBasicblock) else cell(h, weights)
        return self.net.head(h)

    def _forward_folded(self, x: Tensor, weights: Tensor) -> Tensor:
        """``weights`` ``[M, 6, 5]`` -> logits ``[M, B, classes]``; the M samples are
        folded into the batch (``[B, M, C, H, W]``) with per-sample BN statistics."""
        M = weights.shape[0]
        mix = _mixing_matrices(weights, [getattr(self, f"_mix_index_{j}") for j in range(3)])
        h = self.net.stem(x)  # the same for every sample
        # materialised once here (the first cell would copy it anyway), so every cell of
        # a shape sees the same strides: one torch.compile graph, not two
        h = h.unsqueeze(1).expand(h.shape[0], M, *h.shape[1:]).contiguous()
        cell_forward = _compiled_cell_forward() if self.compile_cells else _cell_forward
        cells = self.net.cells
        kernels: dict[int, Kernel] = {}
        for stage in self._stages:  # each stage's kernels in a few kernels, not a few per node
            kernels.update(zip(stage, _fused_kernels([cells[i] for i in stage], self.cell_impl)))
        mixers: dict[int, list[Tensor]] = {}  # the conv form depends on the width; matmul's not
        for i, cell in enumerate(cells):
            if isinstance(cell, ResNetBasicblock):
                h = _resblock_folded(cell, h)
                continue
            key = h.shape[2] if self.cell_impl == "conv" else 0
            if key not in mixers:
                mixers[key] = _mixers(mix, self.cell_impl, h.shape[0], h.shape[2])
            h = cell_forward(cell, h, mixers[key], kernels[i], self.cell_impl)
        B, _, C, H, W = h.shape
        bn, relu = self.net.lastact
        h = relu(_bn_folded(bn, h.reshape(B * M, C, H, W), M))
        logits = self.net.classifier(h.mean(dim=(2, 3)).view(B, M, C))
        return logits.transpose(0, 1)

    def arch_tensors(self) -> dict[str, nn.Parameter]:
        """The architecture logits by name (:class:`NB201Space`'s one tensor ``alpha``)."""
        return {"alpha": self.alpha}

    def forward(self, x: Tensor, weights: Tensor | Mapping[str, Tensor] | None = None) -> Tensor:
        """Logits for mixing weights ``weights`` (``[6, 5]`` or ``[M, 6, 5]``, or the dict
        ``{"alpha": ...}`` of the search-space protocol); None mixes by ``softmax(alpha)``
        of the supernet's own logits. The supernet applies no softmax to given weights:
        the architecture distribution decides how logits or samples become weights."""
        if weights is None:
            weights = F.softmax(self.alpha, dim=-1)
        elif not isinstance(weights, Tensor):
            weights = weights["alpha"]
        if weights.dim() not in (2, 3):
            raise ValueError(f"mixing weights must be [6, 5] or [M, 6, 5], got {tuple(weights.shape)}")
        if self.fused:
            out = self._forward_folded(x, weights if weights.dim() == 3 else weights[None])
            return out if weights.dim() == 3 else out[0]
        if weights.dim() == 2:
            return self._forward(x, weights)
        return torch.func.vmap(self._forward, in_dims=(None, 0))(x, weights)

    @contextlib.contextmanager
    def uncompiled(self) -> Iterator["NB201Supernet"]:
        """Evaluate cells without ``torch.compile`` inside the block (compiled graphs do not
        support double backward, which Hessian products need)."""
        saved, self.compile_cells = self.compile_cells, False
        try:
            yield self
        finally:
            self.compile_cells = saved

    def genotype(self, alpha: Tensor | None = None) -> Arch:
        """The argmax cell of ``alpha`` (default: the supernet's own)."""
        alpha = self.alpha if alpha is None else alpha
        return Arch.from_indices(alpha.detach().argmax(dim=-1).tolist())


class NB201Network(nn.Module):
    """The stand-alone network of one cell, as NAS-Bench-201 trains it."""

    def __init__(self, arch: Arch | str, C: int = 16, N: int = 5, num_classes: int = 10,
                 in_channels: int = 3, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        arch = Arch.parse(arch) if isinstance(arch, str) else arch
        dd = {"device": device, "dtype": dtype}
        self.arch = arch
        self.net = _Macro(C, N, num_classes, in_channels, lambda c: _InferCell(arch, c, dd),
                          {"affine": True, "track_running_stats": True}, dd)

    def forward(self, x: Tensor) -> Tensor:
        h = self.net.stem(x)
        for cell in self.net.cells:
            h = cell(h)
        return self.net.head(h)


@register_space("nb201")
class NB201Space:
    """NAS-Bench-201 on the search-space protocol (:mod:`bayesnas_core.spaces.base`): one
    architecture tensor ``alpha`` ``[6, 5]`` (edges x ops), genotypes are :class:`Arch`."""

    name = "nb201"
    #: the fast-path options :func:`~bayesnas_core.search.build_supernet` passes on
    supernet_options = ("fused", "compile_cells", "cell_impl")
    #: the ground truth its genotypes are looked up in (bayesnas_core.benchmarks)
    benchmark = "nb201"

    def arch_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"alpha": (NUM_EDGES, len(OP_NAMES))}

    def num_choices(self) -> int:
        """Ops a genotype chooses: one per edge."""
        return NUM_EDGES

    def choice_names(self, tensor: str) -> tuple[str, ...]:
        return tuple(OP_NAMES)

    def row_names(self, tensor: str) -> tuple[str, ...]:
        return tuple(f"{i}<-{j}" for i, j in EDGES)

    def build_supernet(self, *, C: int, N: int, num_classes: int, in_channels: int,
                       device: Any = None, dtype: Any = None, **options: Any) -> NB201Supernet:
        return NB201Supernet(C, N, num_classes, in_channels, device=device, dtype=dtype, **options)

    def genotype(self, arch: Mapping[str, Tensor]) -> Arch:
        return Arch.from_indices(arch["alpha"].detach().argmax(dim=-1).tolist())

    def parse(self, text: str) -> Arch:
        return Arch.parse(text)

    def format(self, genotype: Arch) -> str:
        return str(genotype)

    def num_parameter_free(self, genotype: Arch) -> int:
        return genotype.num_parameter_free

    def build_network(self, genotype: Arch | str, **kwargs: Any) -> NB201Network:
        return NB201Network(genotype, **kwargs)
