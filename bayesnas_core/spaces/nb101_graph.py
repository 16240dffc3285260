"""NAS-Bench-101 cell graphs: validation, pruning, the model hash and the network.

A NAS-Bench-101 cell ("module") is a DAG given by an upper-triangular 0/1 adjacency
matrix over ``V <= 7`` vertices and one op label per vertex: vertex 0 is ``input``, the
last is ``output``, the others are ``conv3x3-bn-relu``, ``conv1x1-bn-relu`` or
``maxpool3x3`` (Ying et al., "NAS-Bench-101: Towards Reproducible Neural Architecture
Search", ICML 2019, arXiv:1902.09635, section 2.1). A cell has at most 9 edges.

Everything here is written from that paper and the facts in ``docs/NB1SHOT1.md``:

- :func:`prune` removes every vertex that is not on a path from the input to the output,
  as the benchmark's ``ModelSpec`` does before it hashes or builds a cell;
- :func:`graph_hash` is the benchmark's model hash (the key of every record of its data
  file): labels ``input=-1``, ``output=-2``, other ops their index in
  :data:`HASH_OPS`; each vertex starts as ``md5(str((out_degree, in_degree, label)))``
  (plain Python ints: numpy ints print differently and would silently change it), then
  ``V`` rounds of ``md5(sorted in-neighbour hashes + '|' + sorted out-neighbour hashes +
  '|' + own hash)``, and the model is ``md5(str(sorted(vertex hashes)))``;
- :class:`NB101Network` is the stand-alone network the benchmark trained (its paper,
  section 2.2): a 3x3 conv-BN-ReLU stem of 128 channels, 3 stacks of 3 cells with a 2x2
  max-pool and doubled channels between stacks, global average pooling and a linear
  layer. Inside a cell the output's channels are split among the vertices that feed it
  (concatenated), interior vertices take the largest width they feed, edges out of the
  input are 1x1 conv-BN-ReLU projections, other edges are truncated to the target width
  and summed, and an input->output edge adds a projection of the input to the output.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

__all__ = [
    "INPUT",
    "OUTPUT",
    "CONV3X3",
    "CONV1X1",
    "MAXPOOL3X3",
    "HASH_OPS",
    "NB101_OPS",
    "MAX_VERTICES",
    "MAX_EDGES",
    "TF_BN_DECAY",
    "BN_MOMENTUM",
    "BN_EPS",
    "Matrix",
    "check_spec",
    "spec_problem",
    "prune",
    "live_vertices",
    "graph_hash",
    "hash_labelled",
    "num_edges",
    "nb101_problem",
    "vertex_channels",
    "ConvBnRelu",
    "NB101Network",
]

INPUT = "input"
OUTPUT = "output"
CONV3X3 = "conv3x3-bn-relu"
CONV1X1 = "conv1x1-bn-relu"
MAXPOOL3X3 = "maxpool3x3"
#: The interior ops in the order whose index is a vertex's label in the model hash.
HASH_OPS: tuple[str, ...] = (CONV3X3, CONV1X1, MAXPOOL3X3)
#: Every label a NAS-Bench-101 vertex may carry.
NB101_OPS: tuple[str, ...] = (INPUT, *HASH_OPS, OUTPUT)
#: The benchmark's limits on a (pruned) cell.
MAX_VERTICES = 7
MAX_EDGES = 9
#: TensorFlow's batch-norm decay in the benchmark's training; PyTorch's ``momentum`` is
#: the weight of the new batch, ``1 - decay``.
TF_BN_DECAY = 0.997
BN_MOMENTUM = round(1.0 - TF_BN_DECAY, 6)  # 0.003
BN_EPS = 1e-5

#: An adjacency matrix as nested tuples of plain ints (``matrix[src][dst]``).
Matrix = tuple[tuple[int, ...], ...]

_FIX = ("give a square upper-triangular 0/1 matrix and one op per vertex: 'input' first, "
        "'output' last, the others among " + ", ".join(HASH_OPS))


def _as_matrix(matrix: Any) -> Matrix:
    """Nested sequences, a numpy array or a tensor as a tuple of tuples of plain ints."""
    if isinstance(matrix, Tensor):
        matrix = matrix.detach().cpu().tolist()
    elif hasattr(matrix, "tolist"):
        matrix = matrix.tolist()
    rows = []
    for row in matrix:
        if hasattr(row, "tolist"):
            row = row.tolist()
        rows.append(tuple(int(v) for v in row))
    return tuple(rows)


def spec_problem(matrix: Any, ops: Sequence[str]) -> str | None:
    """What makes ``(matrix, ops)`` not a NAS-Bench-101 cell graph, or None.

    Checks the form only (square, strictly upper-triangular 0/1, labels); the benchmark's
    size limits are :func:`nb101_problem`'s."""
    try:
        m = _as_matrix(matrix)
    except (TypeError, ValueError):
        return "the matrix is not a nested sequence of integers"
    V = len(m)
    if V < 2:
        return f"the matrix has {V} vertices, at least 2 (input and output) are needed"
    if any(len(row) != V for row in m):
        return "the matrix is not square"
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            if v not in (0, 1):
                return f"matrix[{i}][{j}] is {v}, not 0 or 1"
            if v and j <= i:
                return (f"matrix[{i}][{j}] is an edge that does not go forward (the matrix must be "
                        "strictly upper-triangular)")
    if isinstance(ops, str):
        return "ops must be a list of op names"
    if len(ops) != V:
        return f"there are {len(ops)} ops for {V} vertices"
    if ops[0] != INPUT or ops[-1] != OUTPUT:
        return f"the first op must be {INPUT!r} and the last {OUTPUT!r}"
    for k, op in enumerate(ops[1:-1], start=1):
        if op not in HASH_OPS:
            return f"op {k} is {op!r}, not one of {', '.join(HASH_OPS)}"
    return None


def check_spec(matrix: Any, ops: Sequence[str]) -> tuple[Matrix, tuple[str, ...]]:
    """``(matrix, ops)`` as plain tuples; a malformed graph is a one-line :class:`UserError`."""
    problem = spec_problem(matrix, ops)
    if problem:
        raise UserError(f"not a NAS-Bench-101 cell graph: {problem}; {_FIX}")
    return _as_matrix(matrix), tuple(str(op) for op in ops)


def num_edges(matrix: Matrix) -> int:
    return sum(sum(row) for row in matrix)


def live_vertices(m: Matrix) -> list[int]:
    """The vertices on some path from the input (0) to the output (``V - 1``), ascending
    (``m`` a tuple of tuples of ints; these are the vertices :func:`prune` keeps)."""
    V = len(m)
    forward, stack = {0}, [0]
    while stack:
        u = stack.pop()
        for v in range(u + 1, V):
            if m[u][v] and v not in forward:
                forward.add(v)
                stack.append(v)
    backward, stack = {V - 1}, [V - 1]
    while stack:
        v = stack.pop()
        for u in range(v):
            if m[u][v] and u not in backward:
                backward.add(u)
                stack.append(u)
    return sorted(forward & backward)


def prune(matrix: Any, ops: Sequence[str]) -> tuple[Matrix, tuple[str, ...]]:
    """Remove every vertex not on a path from input to output (NB101's ``ModelSpec``).

    Returns the smaller ``(matrix, ops)``; a graph whose output cannot be reached from its
    input is a one-line :class:`UserError` (NB101 rejects it too)."""
    m, ops = check_spec(matrix, ops)
    keep = live_vertices(m)
    if len(keep) < 2:
        raise UserError("not a NAS-Bench-101 cell: no path leads from the input to the output; "
                        "add an edge chain from vertex 0 to the last vertex")
    if len(keep) == len(m):
        return m, ops
    return tuple(tuple(m[i][j] for j in keep) for i in keep), tuple(ops[i] for i in keep)


def nb101_problem(matrix: Any, ops: Sequence[str]) -> str | None:
    """Why the pruned graph is outside NAS-Bench-101 (more than 7 vertices or 9 edges), or
    None; a malformed or disconnected graph raises :class:`UserError` as :func:`prune`."""
    m, _ = prune(matrix, ops)
    if len(m) > MAX_VERTICES:
        return f"it has {len(m)} vertices after pruning, NAS-Bench-101 has at most {MAX_VERTICES}"
    if num_edges(m) > MAX_EDGES:
        return f"it has {num_edges(m)} edges after pruning, NAS-Bench-101 has at most {MAX_EDGES}"
    return None


def hash_labelled(matrix: Matrix, labels: Sequence[int]) -> str:
    """NB101's iterated md5 hash of a graph whose vertices carry integer ``labels``.

    ``matrix`` must be a tuple of tuples of plain ints and ``labels`` plain ints (see the
    module docstring: ``str`` of a numpy int differs and would change the hash)."""
    V = len(matrix)
    ins = [[u for u in range(V) if matrix[u][v]] for v in range(V)]
    outs = [[w for w in range(V) if matrix[v][w]] for v in range(V)]
    md5 = hashlib.md5
    h = [md5(str((len(outs[v]), len(ins[v]), int(labels[v]))).encode("utf-8")).hexdigest()
         for v in range(V)]
    for _ in range(V):
        h = [md5(("".join(sorted([h[u] for u in ins[v]])) + "|"
                  + "".join(sorted([h[w] for w in outs[v]])) + "|" + h[v]).encode("utf-8")).hexdigest()
             for v in range(V)]
    return md5(str(sorted(h)).encode("utf-8")).hexdigest()


def _labels(ops: Sequence[str]) -> list[int]:
    return [-1] + [HASH_OPS.index(op) for op in ops[1:-1]] + [-2]


def graph_hash(matrix: Any, ops: Sequence[str]) -> str:
    """The NAS-Bench-101 model hash of a cell graph (pruned first, as NB101 does), the key
    of its records in the benchmark's data file; equal for isomorphic cells."""
    m, o = prune(matrix, ops)
    return hash_labelled(m, _labels(o))


# ---------------------------------------------------------------------------------
# the stand-alone network
# ---------------------------------------------------------------------------------
def vertex_channels(in_channels: int, out_channels: int, matrix: Matrix) -> list[int]:
    """The width of every vertex of a (pruned) cell, as NB101 assigns them.

    The output's channels are split evenly among the vertices that feed it (the first
    ``out % fan_in`` of them get one extra); every other interior vertex takes the largest
    width among the vertices it feeds, assigned from the last vertex backwards."""
    V = len(matrix)
    ch = [0] * V
    ch[0], ch[V - 1] = in_channels, out_channels
    if V == 2:
        return ch
    fan_in = sum(matrix[v][V - 1] for v in range(1, V - 1))
    base, extra = divmod(out_channels, fan_in) if fan_in else (0, 0)
    for v in range(1, V - 1):
        if matrix[v][V - 1]:
            ch[v] = base + (1 if extra > 0 else 0)
            extra -= 1 if extra > 0 else 0
    for v in range(V - 3, 0, -1):
        if not matrix[v][V - 1]:
            for w in range(v + 1, V - 1):
                if matrix[v][w]:
                    ch[v] = max(ch[v], ch[w])
    if any(c <= 0 for c in ch[1:V - 1]):
        raise UserError(f"the cell gives a vertex no channels (widths {ch}); use out_channels >= "
                        f"the number of vertices feeding the output ({fan_in})")
    return ch


class ConvBnRelu(nn.Sequential):
    """NB101's ``conv_bn_relu``: Conv (no bias, 'same' padding) -> BatchNorm -> ReLU, the
    BatchNorm with PyTorch ``momentum`` :data:`BN_MOMENTUM` (TensorFlow's decay 0.997)
    and eps 1e-5 unless given."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, *, bn_momentum: float = BN_MOMENTUM,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        dd = {"device": device, "dtype": dtype}
        super().__init__(
            nn.Conv2d(C_in, C_out, kernel_size, padding=kernel_size // 2, bias=False, **dd),
            nn.BatchNorm2d(C_out, eps=BN_EPS, momentum=bn_momentum, affine=affine,
                           track_running_stats=track_running_stats, **dd),
            nn.ReLU(inplace=False),
        )


class _Module(nn.Module):
    """One NB101 cell of a given (pruned) graph, ``C_in`` -> ``C_out`` channels."""

    def __init__(self, matrix: Matrix, ops: Sequence[str], C_in: int, C_out: int,
                 bn_momentum: float, dd: dict) -> None:
        super().__init__()
        self.matrix, self.ops = matrix, tuple(ops)
        V = len(matrix)
        self.channels = vertex_channels(C_in, C_out, matrix)
        bn = {"bn_momentum": bn_momentum, **dd}
        self.proj = nn.ModuleDict()  # "t": 1x1 projection of the input to vertex t's width
        self.vertex_ops = nn.ModuleDict()
        for t in range(1, V - 1):
            if matrix[0][t]:
                self.proj[str(t)] = ConvBnRelu(C_in, self.channels[t], 1, **bn)
            op = ops[t]
            if op == MAXPOOL3X3:
                self.vertex_ops[str(t)] = nn.MaxPool2d(3, stride=1, padding=1)
            else:
                self.vertex_ops[str(t)] = ConvBnRelu(self.channels[t], self.channels[t],
                                                      3 if op == CONV3X3 else 1, **bn)
        if matrix[0][V - 1]:
            self.proj[str(V - 1)] = ConvBnRelu(C_in, C_out, 1, **bn)

    def forward(self, x: Tensor) -> Tensor:
        m, V = self.matrix, len(self.matrix)
        values: list[Tensor | None] = [x] + [None] * (V - 1)
        concat = []
        for t in range(1, V - 1):
            width = self.channels[t]
            terms = [values[s][:, :width] for s in range(1, t) if m[s][t]]
            if m[0][t]:
                terms.append(self.proj[str(t)](x))
            h = terms[0]
            for term in terms[1:]:
                h = h + term
            values[t] = self.vertex_ops[str(t)](h)
            if m[t][V - 1]:
                concat.append(values[t])
        if not concat:  # input -> output only
            return self.proj[str(V - 1)](x)
        out = concat[0] if len(concat) == 1 else torch.cat(concat, dim=1)
        if m[0][V - 1]:
            out = out + self.proj[str(V - 1)](x)
        return out


class NB101Network(nn.Module):
    """The network NAS-Bench-101 trained for a cell graph (pruned here first).

    Defaults are the benchmark's: stem 128 channels, 3 stacks of 3 cells, 10 classes; its
    parameter count equals the ``trainable_parameters`` the benchmark stores (batch norm
    with scale and shift, as TensorFlow's ``batch_normalization`` trains them). Batch norm
    uses ``momentum`` :data:`BN_MOMENTUM` (TensorFlow's decay 0.997) and eps 1e-5; the
    down-sampling max-pool is 2x2 stride 2 with TensorFlow's 'same' rounding (32 -> 16 ->
    8; odd sizes round up)."""

    def __init__(self, matrix: Any, ops: Sequence[str], *, stem_channels: int = 128,
                 num_stacks: int = 3, modules_per_stack: int = 3, num_classes: int = 10,
                 in_channels: int = 3, bn_momentum: float = BN_MOMENTUM,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        problem = nb101_problem(matrix, ops)
        if problem:
            raise UserError(f"not a NAS-Bench-101 cell: {problem}; remove vertices or edges")
        self.matrix, self.ops = prune(matrix, ops)
        dd = {"device": device, "dtype": dtype}
        self.stem = ConvBnRelu(in_channels, stem_channels, 3, bn_momentum=bn_momentum, **dd)
        stacks = []
        C = stem_channels
        for s in range(num_stacks):
            C_out = C * 2 if s > 0 else C
            cells, C_in = [], C
            for _ in range(modules_per_stack):
                cells.append(_Module(self.matrix, self.ops, C_in, C_out, bn_momentum, dd))
                C_in = C_out
            stacks.append(nn.Sequential(*cells))
            C = C_out
        self.stacks = nn.ModuleList(stacks)
        self.classifier = nn.Linear(C, num_classes, **dd)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for s, stack in enumerate(self.stacks):
            if s > 0:
                h = F.max_pool2d(h, kernel_size=2, stride=2, ceil_mode=True)
            h = stack(h)
        return self.classifier(h.mean(dim=(2, 3)))
