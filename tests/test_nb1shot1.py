"""NAS-Bench-1shot1 search space 3: its size, the discrete rule, the codec and the supernet."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from bayesnas_core.errors import UserError
from bayesnas_core.spaces.base import SearchSpace, get_space
from bayesnas_core.spaces.nb101_graph import NB101Network, graph_hash
from bayesnas_core.spaces.nb1shot1 import (
    ARCH_SHAPES,
    CHOICE_OPS,
    NB1Shot1Genotype,
    NB1Shot1Space3,
    NB1Shot1Supernet,
    count_space,
    iter_architectures,
    parent_configurations,
)


@pytest.fixture(scope="module")
def counts():
    return count_space()


def test_space_counts(counts) -> None:
    # NB1SHOT1.md: 5,400 parent configurations, 363,648 architectures, 55,854 NB101
    # models, 265,860 labelled graphs after pruning (distinct within each configuration,
    # summed; across the whole space 118,524 pruned labelled graphs are distinct)
    assert counts.parent_configurations == 5_400
    assert counts.architectures == 363_648
    assert counts.models == 55_854
    assert counts.pruned_per_configuration == 265_860
    assert counts.pruned_graphs == 118_524


def test_architecture_count_by_the_documented_rule() -> None:
    total = 0
    configs = list(parent_configurations())
    assert len(configs) == 5_400 and len({tuple(sorted(c.items())) for c in configs}) == 5_400
    for parents in configs:
        with_out_edge = {p for node, ps in parents.items() for p in ps if p != 0}
        total += 3 ** len(with_out_edge)
    assert total == 363_648


def test_enumerated_architectures_are_valid_genotypes() -> None:
    for g in itertools.islice(iter_architectures(), 0, 363_648, 997):
        assert isinstance(g, NB1Shot1Genotype)
        assert g.graph_hash == graph_hash(g.matrix, g.ops)
        assert NB1Shot1Genotype.parse(g.format()) == g


def _logits(**rows) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(rows[k], dtype=torch.float32) for k in ARCH_SHAPES}


def test_genotype_rule_on_a_hand_made_pattern() -> None:
    space = NB1Shot1Space3()
    arch = _logits(
        ops=[[0.9, 0.1, 0.0],    # node 1: maxpool3x3
             [0.0, 0.2, 0.1],    # node 2: conv3x3
             [0.0, 0.1, 0.3],    # node 3: conv1x1
             [0.5, 0.0, 0.4],    # node 4: maxpool3x3
             [0.1, 0.7, 0.2]],   # node 5: conv3x3
        node2=[[0.1, 0.4]],                       # top-1: node 1
        node3=[[0.6, 0.1, 0.2]],                  # top-1: input
        node4=[[0.1, 0.3, 0.2, 0.5]],             # top-2: nodes 1, 3
        node5=[[0.0, 0.1, 0.9, 0.2, 0.8]],        # top-2: nodes 2, 4
        output=[[0.3, 0.0, 0.1, 0.2, 0.4, 0.9]],  # top-2: nodes 4, 5
    )
    g = space.genotype(arch)
    assert g.ops == ("input", "maxpool3x3", "conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3",
                     "conv3x3-bn-relu", "output")
    assert g.parents == {1: (0,), 2: (1,), 3: (0,), 4: (1, 3), 5: (2, 4), 6: (4, 5)}
    assert g.matrix == ((0, 1, 0, 1, 0, 0, 0),
                        (0, 0, 1, 0, 1, 0, 0),
                        (0, 0, 0, 0, 0, 1, 0),
                        (0, 0, 0, 0, 1, 0, 0),
                        (0, 0, 0, 0, 0, 1, 1),
                        (0, 0, 0, 0, 0, 0, 1),
                        (0, 0, 0, 0, 0, 0, 0))
    assert space.num_parameter_free(g) == 2
    # every node reaches the output here, so nothing is pruned
    assert g.spec == (g.matrix, g.ops) and g.graph_hash == graph_hash(g.matrix, g.ops)
    # a softmax does not change the choice; ties go to the lower node
    assert space.genotype({k: torch.softmax(v, -1) for k, v in arch.items()}) == g
    tied = dict(arch, output=torch.zeros(1, 6))
    assert space.genotype(tied).parents[6] == (0, 1)


def test_pruned_blocks_leave_the_nb101_cell() -> None:
    # node 3 feeds nothing and node 2 feeds only node 3: both are pruned
    g = NB1Shot1Genotype.from_parents({2: (1,), 3: (2,), 4: (0, 1), 5: (1, 4), 6: (4, 5)},
                                      ["conv3x3-bn-relu"] * 5)
    m, ops = g.spec
    assert len(m) == 5 and ops == ("input", *["conv3x3-bn-relu"] * 3, "output")
    assert g.graph_hash == graph_hash(m, ops)


def test_codec_round_trip_and_errors() -> None:
    space = NB1Shot1Space3()
    g = next(iter_architectures())
    text = space.format(g)
    assert "\n" not in text and space.parse(text) == g
    bad = [
        "nonsense",
        '{"matrix": [[0]], "ops": []}',
        text.replace("conv1x1-bn-relu", "conv5x5", 1),
        text.replace('"output"]', '"input"]'),
    ]
    m = [list(r) for r in g.matrix]
    m[0][4] = 1 - m[0][4]  # node 4 with one or three parents
    bad.append(json.dumps({"matrix": m, "ops": list(g.ops)}))
    for text in bad:
        with pytest.raises(UserError) as e:
            space.parse(text)
        assert "\n" not in str(e.value) and "expected JSON" in str(e.value)


def test_registered_and_on_the_protocol() -> None:
    space = get_space("nb1shot1-3")
    assert isinstance(space, NB1Shot1Space3) and isinstance(space, SearchSpace)
    assert space.name == "nb1shot1-3"
    assert space.arch_shapes() == {"ops": (5, 3), "node2": (1, 2), "node3": (1, 3), "node4": (1, 4),
                                   "node5": (1, 5), "output": (1, 6)}
    assert space.choice_names("ops") == CHOICE_OPS
    assert space.choice_names("node4") == ("input", "node1", "node2", "node3")
    assert space.row_names("ops") == ("node1", "node2", "node3", "node4", "node5")
    with pytest.raises(UserError):
        space.choice_names("alpha")


def _weights(M: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lead = () if M is None else (M,)
    return {k: torch.softmax(torch.randn(*lead, *s, generator=g), -1) for k, s in ARCH_SHAPES.items()}


def test_supernet_forward_one_and_m_samples() -> None:
    torch.manual_seed(0)
    space = NB1Shot1Space3()
    net = space.build_supernet(C=2, N=3, num_classes=5, in_channels=1)
    x = torch.randn(3, 1, 8, 8)
    assert net(x, _weights()).shape == (3, 5)
    wm = _weights(M=3, seed=1)
    out = net(x, wm)
    assert out.shape == (3, 3, 5)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        out = net(x, wm)
        for m in range(3):
            torch.testing.assert_close(out[m], net(x, {k: v[m] for k, v in wm.items()}), rtol=0, atol=0)
    with pytest.raises(ValueError):
        net(x, {k: v for k, v in _weights().items() if k != "output"})
    with pytest.raises(ValueError):
        net(x, dict(_weights(), ops=torch.ones(2, 5, 3)))  # a different M from the others


def test_supernet_gradients_reach_every_weight() -> None:
    net = NB1Shot1Supernet(C=2, N=3, num_classes=3, in_channels=3)
    w = {k: v.requires_grad_() for k, v in _weights().items()}
    net(torch.randn(2, 3, 8, 8), w).square().sum().backward()
    assert all(p.grad is not None for p in net.weight_parameters())
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in w.values())
    assert len(net.weight_parameters()) == len(list(net.parameters()))


def test_supernet_bn_momentum_and_pooling() -> None:
    net = NB1Shot1Space3().build_supernet(C=2, N=9, num_classes=10, in_channels=3)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == pytest.approx(0.003) for m in bns)
    sizes = []
    for cell in net.cells:
        cell.register_forward_hook(lambda m, i, o: sizes.append((o.shape[1], o.shape[-1])))
    net(torch.randn(2, 3, 32, 32), _weights())
    # 9 cells of 5C channels; 2x2 pooling before cells 3 and 6: 32 -> 16 -> 8
    assert sizes == [(10, 32)] * 3 + [(20, 16)] * 3 + [(40, 8)] * 3


def test_supernet_options() -> None:
    space = NB1Shot1Space3()
    for flag in ("fused", "compile_cells"):
        with pytest.raises(UserError) as e:
            space.build_supernet(C=2, N=3, num_classes=2, in_channels=1, **{flag: True})
        assert "--no-fused-cell" in str(e.value)
    net = space.build_supernet(C=2, N=3, num_classes=2, in_channels=1, fused=False,
                               track_running_stats=False, dtype=torch.float64)
    assert next(net.parameters()).dtype == torch.float64
    assert all(not m.track_running_stats for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_build_network_is_the_nb101_network() -> None:
    space = NB1Shot1Space3()
    g = space.genotype({k: torch.randn(*s, generator=torch.Generator().manual_seed(3))
                        for k, s in ARCH_SHAPES.items()})
    net = space.build_network(g, C=4, N=3, num_classes=7, in_channels=1)
    assert isinstance(net, NB101Network) and net.matrix == g.spec[0]
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    ref = NB101Network(*g.spec, stem_channels=4, modules_per_stack=1, num_classes=7, in_channels=1)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters())
    assert space.build_network(space.format(g), C=4, N=3).matrix == g.spec[0]
    with pytest.raises(UserError):
        space.build_network(g, N=4)
