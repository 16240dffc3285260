"""NAS-Bench-1shot1, search space 3: a one-shot space whose every cell is in NAS-Bench-101.

NAS-Bench-1shot1 (Zela, Siems and Hutter, "NAS-Bench-1Shot1: Benchmarking and Dissecting
One-shot Neural Architecture Search", ICLR 2020, arXiv:2001.10422) carves search spaces
out of NAS-Bench-101 (Ying et al., ICML 2019, arXiv:1902.09635) so a one-shot search can
be graded by the benchmark's trained results. Space 3, as ``docs/NB1SHOT1.md`` gives it:

- a cell of 7 nodes: node 0 the input, nodes 1-5 "choice blocks", node 6 the output;
- parents: node 1 takes node 0; node 2 one of {0, 1}; node 3 one of {0, 1, 2}; node 4 two
  of {0..3}; node 5 two of {0..4}; the output two of {0..5}: 9 edges (NB101's maximum)
  and ``1 * 2 * 3 * 6 * 10 * 15 = 5,400`` parent configurations;
- the op of every choice block: ``maxpool3x3``, ``conv3x3-bn-relu`` or ``conv1x1-bn-relu``;
- 363,648 architectures: per configuration, 3 ops for every choice block that has an
  outgoing edge (the others are cut off the graph; the original code gives them
  ``conv1x1-bn-relu``). They are 55,854 distinct NB101 models (by hash).

Architecture tensors (all initialised as ``1e-3 * randn`` by the search loop): ``ops``
``[5, 3]`` (a row per choice block, a column per op of :data:`CHOICE_OPS`), ``node2`` ..
``node5`` ``[1, k]`` over each block's candidate parents, and ``output`` ``[1, 6]`` over
the output's. The discrete architecture (:meth:`NB1Shot1Space3.genotype`) takes the argmax
op of every block and the top-1 / top-1 / top-2 / top-2 / top-2 parents of nodes 2, 3, 4,
5 and the output, as the original code does; the NB101 cell is that graph pruned to the
vertices on a path from input to output.

The supernet is the original one-shot model with its pitfalls fixed: batch norm momentum
0.003 (the original passed TensorFlow's decay 0.997 as PyTorch's momentum, the weight of
the *new* batch), NB101's 2x2 down-sampling pool (32 -> 16 -> 8, not 32 -> 17 -> 9), no
``.cuda()`` and no ``np.int``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .base import register_space
from .nb101_graph import (
    BN_MOMENTUM,
    CONV1X1,
    CONV3X3,
    INPUT,
    MAXPOOL3X3,
    OUTPUT,
    ConvBnRelu,
    Matrix,
    NB101Network,
    hash_labelled,
    live_vertices,
    prune,
)

__all__ = [
    "CHOICE_OPS",
    "NUM_NODES",
    "CHOICE_BLOCKS",
    "PARENT_CHOICES",
    "ARCH_SHAPES",
    "NB1Shot1Genotype",
    "SpaceCounts",
    "parent_configurations",
    "iter_architectures",
    "count_space",
    "NB1Shot1Supernet",
    "NB1Shot1Space3",
]

#: The op choices of a choice block, in the original code's order (the columns of ``ops``).
CHOICE_OPS: tuple[str, ...] = (MAXPOOL3X3, CONV3X3, CONV1X1)
NUM_NODES = 7
OUTPUT_NODE = NUM_NODES - 1
#: the choice blocks (intermediate nodes)
CHOICE_BLOCKS: tuple[int, ...] = (1, 2, 3, 4, 5)
#: node -> (candidate parents, how many it takes)
PARENT_CHOICES: dict[int, tuple[tuple[int, ...], int]] = {
    1: ((0,), 1),
    2: ((0, 1), 1),
    3: ((0, 1, 2), 1),
    4: ((0, 1, 2, 3), 2),
    5: ((0, 1, 2, 3, 4), 2),
    6: ((0, 1, 2, 3, 4, 5), 2),
}
#: the name of the architecture tensor of each node with a parent choice
_INPUT_TENSORS: dict[int, str] = {2: "node2", 3: "node3", 4: "node4", 5: "node5", 6: "output"}
#: architecture tensor -> shape; the last axis is the choice
ARCH_SHAPES: dict[str, tuple[int, ...]] = {
    "ops": (len(CHOICE_BLOCKS), len(CHOICE_OPS)),
    **{name: (1, len(PARENT_CHOICES[node][0])) for node, name in _INPUT_TENSORS.items()},
}
#: the op the original code gives a choice block without an outgoing edge (it is pruned)
_FILL_OP = CONV1X1
_HASH_LABEL = {INPUT: -1, OUTPUT: -2, CONV3X3: 0, CONV1X1: 1, MAXPOOL3X3: 2}
_MAX_TEXT = 10_000
_FORMAT_HINT = ('expected JSON {"matrix": 7x7 0/1 rows, "ops": ["input", 5 ops among '
                + ", ".join(CHOICE_OPS) + ', "output"]} where node 1 takes node 0, nodes 2 and 3 '
                "one earlier node, nodes 4, 5 and the output two earlier nodes")


# ---------------------------------------------------------------------------------
# genotypes
# ---------------------------------------------------------------------------------
def _parents_problem(matrix: Matrix) -> str | None:
    if len(matrix) != NUM_NODES or any(len(r) != NUM_NODES for r in matrix):
        return "the matrix is not 7x7"
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v not in (0, 1):
                return f"matrix[{i}][{j}] is {v}, not 0 or 1"
    if any(matrix[i][0] for i in range(NUM_NODES)):
        return "node 0 (the input) cannot have parents"
    for node, (candidates, k) in PARENT_CHOICES.items():
        parents = [i for i in range(NUM_NODES) if matrix[i][node]]
        if len(parents) != k or any(p not in candidates for p in parents):
            name = "the output" if node == OUTPUT_NODE else f"node {node}"
            return (f"{name} has parents {parents}; it takes {k} of {list(candidates)}")
    if any(matrix[OUTPUT_NODE]):
        return "the output cannot feed another node"
    return None


@dataclass(frozen=True)
class NB1Shot1Genotype:
    """A cell of space 3: the NB101 adjacency matrix (7x7, ``matrix[src][dst]``, every
    node with the parents the space allows) and the NB101 op list ``[input, op1 .. op5,
    output]``. :attr:`spec` is the cell NB101 builds (pruned), :attr:`graph_hash` its
    model hash (the key of the benchmark's records)."""

    matrix: Matrix
    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        try:
            matrix = tuple(tuple(int(v) for v in row) for row in self.matrix)
            ops = tuple(str(op) for op in self.ops)
        except (TypeError, ValueError):
            raise UserError(f"not a NAS-Bench-1shot1 space-3 cell; {_FORMAT_HINT}") from None
        object.__setattr__(self, "matrix", matrix)
        object.__setattr__(self, "ops", ops)
        problem = _parents_problem(matrix)
        if problem is None and (len(ops) != NUM_NODES or ops[0] != INPUT or ops[-1] != OUTPUT
                                or any(op not in CHOICE_OPS for op in ops[1:-1])):
            problem = f"the ops are {list(ops)}"
        if problem:
            raise UserError(f"not a NAS-Bench-1shot1 space-3 cell: {problem}; {_FORMAT_HINT}")

    @classmethod
    def _trusted(cls, matrix: Matrix, ops: tuple[str, ...]) -> "NB1Shot1Genotype":
        """A genotype the enumeration built (valid by construction), without re-checking."""
        g = object.__new__(cls)
        object.__setattr__(g, "matrix", matrix)
        object.__setattr__(g, "ops", ops)
        return g

    @classmethod
    def from_parents(cls, parents: Mapping[int, Sequence[int]],
                     node_ops: Sequence[str]) -> "NB1Shot1Genotype":
        """From the parents of nodes 2-6 (node 1 always takes node 0) and the 5 block ops."""
        m = [[0] * NUM_NODES for _ in range(NUM_NODES)]
        m[0][1] = 1
        for node, ps in parents.items():
            for p in ps:
                m[int(p)][int(node)] = 1
        return cls(tuple(map(tuple, m)), (INPUT, *node_ops, OUTPUT))

    @property
    def parents(self) -> dict[int, tuple[int, ...]]:
        """node -> its parents (ascending), for nodes 1-6."""
        return {node: tuple(i for i in range(NUM_NODES) if self.matrix[i][node])
                for node in PARENT_CHOICES}

    @property
    def node_ops(self) -> tuple[str, ...]:
        """The ops of choice blocks 1-5."""
        return self.ops[1:-1]

    @cached_property
    def spec(self) -> tuple[Matrix, tuple[str, ...]]:
        """The NB101 cell: the graph pruned to the vertices on a path from input to output."""
        return prune(self.matrix, self.ops)

    @cached_property
    def graph_hash(self) -> str:
        """The NAS-Bench-101 model hash of :attr:`spec`."""
        m, ops = self.spec
        return hash_labelled(m, [_HASH_LABEL[op] for op in ops])

    @property
    def num_parameter_free(self) -> int:
        """How many of the 5 chosen block ops are ``maxpool3x3`` (pruned blocks included)."""
        return sum(op == MAXPOOL3X3 for op in self.node_ops)

    def format(self) -> str:
        """The one-line JSON text form, ``{"matrix": [[...], ...], "ops": [...]}``."""
        return json.dumps({"matrix": [list(r) for r in self.matrix], "ops": list(self.ops)})

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def parse(cls, text: str) -> "NB1Shot1Genotype":
        """A genotype from :meth:`format`'s text; a malformed one is a one-line UserError."""
        if not isinstance(text, str) or len(text) > _MAX_TEXT:
            raise UserError(f"not a NAS-Bench-1shot1 space-3 cell text; {_FORMAT_HINT}")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            raise UserError(f"not a NAS-Bench-1shot1 space-3 cell (not JSON): {text[:80]!r}; "
                            f"{_FORMAT_HINT}") from None
        if not (isinstance(obj, dict) and set(obj) == {"matrix", "ops"}
                and isinstance(obj["matrix"], list) and isinstance(obj["ops"], list)
                and all(isinstance(r, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                    for v in r) for r in obj["matrix"])
                and all(isinstance(op, str) for op in obj["ops"])):
            raise UserError(f"not a NAS-Bench-1shot1 space-3 cell: {text[:80]!r}; {_FORMAT_HINT}")
        return cls(tuple(map(tuple, obj["matrix"])), tuple(obj["ops"]))


# ---------------------------------------------------------------------------------
# enumeration
# ---------------------------------------------------------------------------------
def parent_configurations() -> Iterator[dict[int, tuple[int, ...]]]:
    """The 5,400 parent choices of nodes 1-6 (node -> parents, ascending)."""
    choices = [list(itertools.combinations(candidates, k)) for candidates, k in PARENT_CHOICES.values()]
    for combo in itertools.product(*choices):
        yield dict(zip(PARENT_CHOICES, combo))


def _raw_architectures() -> Iterator[tuple[int, Matrix, tuple[str, ...], tuple[int, ...]]]:
    """``(configuration index, matrix, ops, live vertices)`` of every architecture."""
    for c, parents in enumerate(parent_configurations()):
        m = [[0] * NUM_NODES for _ in range(NUM_NODES)]
        for node, ps in parents.items():
            for p in ps:
                m[p][node] = 1
        matrix: Matrix = tuple(map(tuple, m))
        used = [b for b in CHOICE_BLOCKS if any(matrix[b])]
        keep = tuple(live_vertices(matrix))
        for combo in itertools.product(CHOICE_OPS, repeat=len(used)):
            ops = [INPUT] + [_FILL_OP] * len(CHOICE_BLOCKS) + [OUTPUT]
            for b, op in zip(used, combo):
                ops[b] = op
            yield c, matrix, tuple(ops), keep


def iter_architectures() -> Iterator[NB1Shot1Genotype]:
    """All 363,648 architectures of space 3: every parent configuration, with each op
    combination of its choice blocks that have an outgoing edge (blocks without one get
    ``conv1x1-bn-relu``, as in the original code; they are pruned from the NB101 cell)."""
    for _, matrix, ops, _ in _raw_architectures():
        yield NB1Shot1Genotype._trusted(matrix, ops)


@dataclass(frozen=True)
class SpaceCounts:
    """The sizes of space 3, counted by enumerating it (:func:`count_space`)."""

    parent_configurations: int
    architectures: int
    #: (configuration, pruned labelled graph) pairs: per configuration, the distinct cells
    #: after pruning (3 ops for each block left in the pruned graph), summed over configurations
    pruned_per_configuration: int
    #: distinct pruned labelled graphs (matrix and ops after pruning) over the whole space
    pruned_graphs: int
    #: distinct NB101 models (graph hashes: pruned graphs up to isomorphism)
    models: int


def count_space() -> SpaceCounts:
    """Enumerate space 3 and count it (about 10-30 s: every distinct pruned graph is hashed
    with NB101's md5 rule once)."""
    configs, archs = 0, 0
    per_config: set[tuple[int, Matrix, tuple[str, ...]]] = set()
    hashes: dict[tuple[Matrix, tuple[str, ...]], str] = {}
    pruned_matrix: dict[int, Matrix] = {}
    for c, matrix, ops, keep in _raw_architectures():
        archs += 1
        pm = pruned_matrix.get(c)
        if pm is None:
            configs += 1
            pm = pruned_matrix[c] = tuple(tuple(matrix[i][j] for j in keep) for i in keep)
        po = tuple(ops[i] for i in keep)
        per_config.add((c, pm, po))
        key = (pm, po)
        if key not in hashes:
            hashes[key] = hash_labelled(pm, [_HASH_LABEL[op] for op in po])
    return SpaceCounts(configs, archs, len(per_config), len(hashes), len(set(hashes.values())))


# ---------------------------------------------------------------------------------
# the supernet
# ---------------------------------------------------------------------------------
class _MixedOp(nn.Module):
    """The 3 candidate ops of a choice block, mixed by a weight vector ``[3]``."""

    def __init__(self, C: int, bn: dict) -> None:
        super().__init__()
        self.ops = nn.ModuleList([
            nn.MaxPool2d(3, stride=1, padding=1),
            ConvBnRelu(C, C, 3, **bn),
            ConvBnRelu(C, C, 1, **bn),
        ])  # the order of CHOICE_OPS

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        out = None
        for w, op in zip(weights.unbind(-1), self.ops):
            term = w * op(x)
            out = term if out is None else out + term
        return out


class _SearchCell(nn.Module):
    """A cell of the one-shot model: choice block ``i`` sums its own 1x1 projection of the
    cell input and the earlier blocks, weighted by its input weights (block 1: the
    projection alone), then applies the mixed op; the output is the output-weighted
    projection of the input to ``5C`` channels plus the concatenation of the
    output-weighted blocks."""

    def __init__(self, C_in: int, C: int, bn: dict) -> None:
        super().__init__()
        n = len(CHOICE_BLOCKS)
        self.proj = nn.ModuleList(ConvBnRelu(C_in, C, 1, **bn) for _ in range(n))
        self.out_proj = ConvBnRelu(C_in, n * C, 1, **bn)
        self.blocks = nn.ModuleList(_MixedOp(C, bn) for _ in range(n))

    def forward(self, s0: Tensor, w: Mapping[str, Tensor]) -> Tensor:
        states: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            p = self.proj[i](s0)
            node = i + 1
            if node in _INPUT_TENSORS:
                win = w[_INPUT_TENSORS[node]][0]
                h = win[0] * p
                for j, s in enumerate(states, start=1):
                    h = h + win[j] * s
            else:
                h = p
            states.append(block(h, w["ops"][i]))
        wo = w["output"][0]
        return wo[0] * self.out_proj(s0) + torch.cat([wo[j + 1] * s for j, s in enumerate(states)], dim=1)


class NB1Shot1Supernet(nn.Module):
    """The one-shot model of NAS-Bench-1shot1 (space 3) on NB101's macro skeleton.

    A 3x3 conv-BN-ReLU stem to ``C`` channels, ``N`` cells (9 in the original) with a 2x2
    stride-2 max-pool and doubled channels before cells ``N // 3`` and ``2N // 3``, then a
    ReLU, 1x1 conv and BN (no affine) to the last width, global average pooling and a
    linear classifier. Every batch norm uses ``bn_momentum`` (default 0.003, PyTorch's
    equivalent of NB101's TensorFlow decay 0.997) and eps 1e-5.

    ``forward(x, weights)`` takes **mixing weights** (normalised already; the supernet
    never applies a softmax): a dict with one tensor per architecture tensor of
    :data:`ARCH_SHAPES`, each of that shape, or all with a leading ``M`` for M samples,
    which returns ``[M, B, classes]`` (one pass per sample; the stem is shared).
    """

    def __init__(self, C: int = 16, N: int = 9, num_classes: int = 10, in_channels: int = 3, *,
                 bn_momentum: float = BN_MOMENTUM, affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if N < 1:
            raise UserError(f"the NAS-Bench-1shot1 supernet needs at least 1 cell, got N={N}; "
                            "set N to 9 (the original) or another positive number")
        dd = {"device": device, "dtype": dtype}
        bn = {"bn_momentum": bn_momentum, "affine": affine, "track_running_stats": track_running_stats, **dd}
        self.C, self.N, self.num_classes = C, N, num_classes
        self.stem = ConvBnRelu(in_channels, C, 3, **bn)
        self.downsample_at = tuple(sorted({N // 3, 2 * N // 3} - {0}))
        cells, C_in, C_curr = [], C, C
        for i in range(N):
            if i in self.downsample_at:
                C_curr *= 2
            cells.append(_SearchCell(C_in, C_curr, bn))
            C_in = len(CHOICE_BLOCKS) * C_curr
        self.cells = nn.ModuleList(cells)
        self.postprocess = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_curr, 1, bias=False, **dd),
            nn.BatchNorm2d(C_curr, eps=1e-5, momentum=bn_momentum, affine=False,
                           track_running_stats=track_running_stats, **dd),
        )
        self.classifier = nn.Linear(C_curr, num_classes, **dd)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def _cells_forward(self, h: Tensor, w: Mapping[str, Tensor]) -> Tensor:
        for i, cell in enumerate(self.cells):
            if i in self.downsample_at:
                h = F.max_pool2d(h, kernel_size=2, stride=2, ceil_mode=True)
            h = cell(h, w)
        h = self.postprocess(h)
        return self.classifier(h.mean(dim=(2, 3)))

    def forward(self, x: Tensor, weights: Mapping[str, Tensor]) -> Tensor:
        M = _sample_count(weights)
        stem = self.stem(x)
        if M is None:
            return self._cells_forward(stem, weights)
        return torch.stack([self._cells_forward(stem, {k: t[m] for k, t in weights.items()})
                            for m in range(M)])


def _sample_count(weights: Mapping[str, Tensor]) -> int | None:
    """None for one architecture, M for M samples; a wrong dict is a ``ValueError``."""
    if not isinstance(weights, Mapping) or set(weights) != set(ARCH_SHAPES):
        got = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
        raise ValueError(f"weights must be a dict with {sorted(ARCH_SHAPES)}, got {got}")
    lead = set()
    for name, shape in ARCH_SHAPES.items():
        s = tuple(weights[name].shape)
        if s == shape:
            lead.add(None)
        elif len(s) == len(shape) + 1 and s[1:] == shape:
            lead.add(s[0])
        else:
            raise ValueError(f"weights[{name!r}] must be {list(shape)} or [M, *{list(shape)}], got {list(s)}")
    if len(lead) != 1:
        raise ValueError("the weights must all have the same leading M, or none")
    return lead.pop()


# ---------------------------------------------------------------------------------
# the space
# ---------------------------------------------------------------------------------
def _top(values: Sequence[float], k: int) -> tuple[int, ...]:
    """The indices of the ``k`` largest values (ties: the lower index), ascending."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return tuple(sorted(order[:k]))


@register_space("nb1shot1-3")
class NB1Shot1Space3:
    """NAS-Bench-1shot1 search space 3 on the search-space protocol
    (:mod:`bayesnas_core.spaces.base`); genotypes are :class:`NB1Shot1Genotype`."""

    name = "nb1shot1-3"
    #: the ground truth its genotypes are looked up in (``--nb101-file``)
    benchmark = "nb101"

    def num_choices(self) -> int:
        """Ops a genotype chooses: one per choice block."""
        return len(CHOICE_BLOCKS)

    def arch_shapes(self) -> dict[str, tuple[int, ...]]:
        """``ops`` [5, 3], ``node2`` [1, 2], ``node3`` [1, 3], ``node4`` [1, 4], ``node5``
        [1, 5], ``output`` [1, 6]."""
        return dict(ARCH_SHAPES)

    def _check_tensor(self, tensor: str) -> None:
        if tensor not in ARCH_SHAPES:
            raise UserError(f"the nb1shot1-3 space has no architecture tensor {tensor!r}; "
                            f"use one of {', '.join(ARCH_SHAPES)}")

    def choice_names(self, tensor: str) -> tuple[str, ...]:
        """The ops (``ops``) or the candidate parents (``input``, ``node1``, ...)."""
        self._check_tensor(tensor)
        if tensor == "ops":
            return CHOICE_OPS
        node = next(n for n, name in _INPUT_TENSORS.items() if name == tensor)
        return tuple("input" if p == 0 else f"node{p}" for p in PARENT_CHOICES[node][0])

    def row_names(self, tensor: str) -> tuple[str, ...]:
        self._check_tensor(tensor)
        if tensor == "ops":
            return tuple(f"node{b}" for b in CHOICE_BLOCKS)
        return (tensor,)

    def build_supernet(self, *, C: int, N: int, num_classes: int, in_channels: int,
                       device: Any = None, dtype: Any = None, **options: Any) -> NB1Shot1Supernet:
        """The one-shot model (``N``: cells, 9 in NAS-Bench-1shot1; ``C``: stem channels,
        16 there). Options: ``bn_momentum``, ``affine``, ``track_running_stats``; this space
        has no fused cell (``fused`` / ``compile_cells`` are refused)."""
        for flag in ("fused", "compile_cells"):
            if options.pop(flag, False):
                raise UserError(f"{flag}=True is not supported by the nb1shot1-3 space; use --no-fused-cell")
        options.pop("cell_impl", None)  # a fused-cell setting; nothing to choose here
        known = {"bn_momentum", "affine", "track_running_stats"}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown nb1shot1-3 supernet options {sorted(unknown)}; known: {sorted(known)}")
        return NB1Shot1Supernet(C, N, num_classes, in_channels, device=device, dtype=dtype, **options)

    def genotype(self, arch: Mapping[str, Tensor]) -> NB1Shot1Genotype:
        """The cell of logits ``arch``: each block's argmax op; the top-1 parent of nodes 2
        and 3, the top-2 of nodes 4, 5 and the output (ties: the lower node)."""
        if not isinstance(arch, Mapping) or not set(ARCH_SHAPES) <= set(arch):
            got = sorted(arch) if isinstance(arch, Mapping) else type(arch).__name__
            raise ValueError(f"arch must be a dict with {sorted(ARCH_SHAPES)}, got {got}")
        values = {}
        for name, shape in ARCH_SHAPES.items():
            t = torch.as_tensor(arch[name]).detach()
            if tuple(t.shape) != shape:
                raise ValueError(f"arch[{name!r}] must be {list(shape)} logits, got {list(t.shape)}")
            values[name] = t.cpu().double().tolist()
        node_ops = [CHOICE_OPS[_top(row, 1)[0]] for row in values["ops"]]
        parents = {node: tuple(PARENT_CHOICES[node][0][i]
                               for i in _top(values[name][0], PARENT_CHOICES[node][1]))
                   for node, name in _INPUT_TENSORS.items()}
        return NB1Shot1Genotype.from_parents(parents, node_ops)

    def parse(self, text: str) -> NB1Shot1Genotype:
        return NB1Shot1Genotype.parse(text)

    def format(self, genotype: NB1Shot1Genotype) -> str:
        return genotype.format()

    def num_parameter_free(self, genotype: NB1Shot1Genotype) -> int:
        """How many of the 5 chosen block ops are ``maxpool3x3``."""
        return genotype.num_parameter_free

    def build_network(self, genotype: NB1Shot1Genotype | str, *, C: int = 128, N: int = 9,
                      num_classes: int = 10, in_channels: int = 3, device: Any = None,
                      dtype: Any = None) -> NB101Network:
        """The NAS-Bench-101 network of the genotype's pruned cell: stem ``C`` (128 in
        NB101), ``N`` cells in 3 stacks (9 in NB101), so its parameter count is the one the
        benchmark stores at the defaults."""
        g = self.parse(genotype) if isinstance(genotype, str) else genotype
        if N < 3 or N % 3:
            raise UserError(f"an NB101 network has 3 stacks of equal depth; use --N a multiple of 3, got {N}")
        return NB101Network(g.matrix, g.ops, stem_channels=C, num_stacks=3, modules_per_stack=N // 3,
                            num_classes=num_classes, in_channels=in_channels, device=device, dtype=dtype)
