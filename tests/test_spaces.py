"""NB201 codec, canonical form, supernet and stand-alone network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bayesnas_core import UserError
from bayesnas_core.benchmarks import NB201Table
from bayesnas_core.spaces import EDGES, OP_NAMES, Arch, NB201Network, NB201Supernet

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
MIXED = "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|avg_pool_3x3~1|nor_conv_1x1~2|"


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# Parameter counts of NAS-Bench-201's TinyNetwork (C=16, N=5, 10 classes), derived by hand:
#   stem      conv 3->16 3x3 (432) + BN affine (32)                         =       464
#   resblock  16->32 stride 2: ReLUConvBN 3x3 16->32 (4608+64)
#             + ReLUConvBN 3x3 32->32 (9216+64) + avgpool + 1x1 conv 16->32 (512) = 14,464
#   resblock  32->64: (18432+128) + (36864+128) + 2048                      =    57,600
#   lastact BN(64) = 128; classifier 64*10 + 10 = 650
#   => every cell-free part: 464 + 14,464 + 57,600 + 128 + 650              =    73,306
# A cell at C channels adds, per edge: nor_conv_3x3 9C^2 + 2C (conv + BN affine),
# nor_conv_1x1 C^2 + 2C, and nothing for none / skip_connect / avg_pool_3x3.
# Stages have C = 16, 32, 64 and 5 cells each: sum(C^2) = 5376, sum(C) = 112.
FRAME = 73_306
EXPECTED = {
    ALL_CONV3: FRAME + 5 * 6 * (9 * 5376 + 2 * 112),  # 1,531,546 (NB201 reports 1.53 MB)
    ALL_SKIP: FRAME,
    MIXED: FRAME + 5 * ((2 * 1 + 9) * 5376 + 3 * 2 * 112),  # two 1x1 + one 3x3 per cell
}


@pytest.mark.parametrize("arch_str", list(EXPECTED))
def test_standalone_parameter_count_matches_nb201(arch_str: str) -> None:
    net = NB201Network(arch_str, C=16, N=5, num_classes=10)
    assert n_params(net) == EXPECTED[arch_str]
    assert EXPECTED[ALL_CONV3] == 1_531_546


def test_round_trip_all_cells_in_nb201_order() -> None:
    table = NB201Table.load()
    assert len(table) == 15_625
    seen = set()
    for index in range(len(table)):
        s = table.arch_str(index)
        arch = Arch.parse(s)
        assert str(arch) == s
        assert table.index_of(str(arch)) == index
        seen.add(arch)
    assert seen == set(Arch.all())


def test_canonical_form_counts_nb201_unique_networks() -> None:
    assert len({a.canonical for a in Arch.all()}) == 6_466
    # isomorphic cells: the two inputs of node 2 swapped roles through skip connections
    a = Arch.parse("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|skip_connect~1|skip_connect~2|")
    b = Arch.parse("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|skip_connect~1|skip_connect~2|")
    assert a != b and a.canonical != b.canonical  # different: node 2 = x vs conv(x)
    c = Arch.parse("|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|")
    d = Arch.parse("|avg_pool_3x3~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|")
    assert c.canonical == d.canonical  # node 1 feeds nothing in either


@pytest.mark.parametrize("bad", [
    "",
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|",
    "|conv_5x5~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~3|",
    "nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
])
def test_malformed_arch_string_is_one_line_user_error(bad: str) -> None:
    with pytest.raises(UserError) as info:
        Arch.parse(bad)
    assert "\n" not in str(info.value) and "expected |op~0|" in str(info.value)


def test_edges_and_alpha_layout() -> None:
    assert EDGES == ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
    net = NB201Supernet(C=4, N=1, num_classes=3, in_channels=1)
    assert net.alpha.shape == (6, len(OP_NAMES))
    alpha = torch.full((6, 5), -5.0)
    alpha[:, OP_NAMES.index("nor_conv_3x3")] = 5.0
    assert str(net.genotype(alpha)) == ALL_CONV3


def test_supernet_with_one_hot_alpha_equals_standalone_cell() -> None:
    """A supernet whose weights are one-hot computes the chosen cell's network."""
    torch.manual_seed(0)
    sup = NB201Supernet(C=4, N=1, num_classes=3, in_channels=1, affine=True,
                        track_running_stats=False)
    arch = Arch.parse(MIXED)
    std = NB201Network(arch, C=4, N=1, num_classes=3, in_channels=1)
    # copy the supernet weights that the chosen ops use into the stand-alone network
    sd = {}
    for name, t in std.state_dict().items():
        parts = name.split(".")
        if parts[1] == "cells" and parts[3] == "edges":
            e = int(parts[4])
            src = ".".join(parts[:5] + ["ops", str(arch.indices[e])] + parts[5:])
            sd[name] = sup.state_dict().get(src, t)  # BN running stats exist only here
        elif name in sup.state_dict():
            sd[name] = sup.state_dict()[name]
        else:
            sd[name] = t
    std.load_state_dict(sd)
    std.train()  # batch statistics, like the supernet
    x = torch.randn(8, 1, 8, 8)
    onehot = torch.full((6, 5), -1e4)
    onehot[torch.arange(6), torch.tensor(arch.indices)] = 0.0
    torch.testing.assert_close(sup(x, onehot.softmax(-1)), std(x), rtol=1e-5, atol=1e-5)


def test_batched_alphas_equal_separate_passes() -> None:
    torch.manual_seed(0)
    net = NB201Supernet(C=4, N=1, num_classes=5, in_channels=3)
    x = torch.randn(16, 3, 8, 8)
    alphas = torch.randn(3, 6, 5)
    batched = net(x, alphas.softmax(-1))
    assert batched.shape == (3, 16, 5)
    for k in range(3):
        torch.testing.assert_close(batched[k], net(x, alphas[k].softmax(-1)), rtol=1e-5, atol=1e-6)


def test_parameter_free_count() -> None:
    assert Arch.parse(ALL_SKIP).num_parameter_free == 6
    assert Arch.parse(ALL_CONV3).num_parameter_free == 0
    assert Arch.parse(MIXED).num_parameter_free == 3


def test_fused_cell_equals_plain_cell() -> None:
    """Same parameters, same function: outputs and gradients (weights and alpha) agree
    to float32 round-off, for one alpha and for batched alphas."""
    torch.manual_seed(0)
    plain = NB201Supernet(C=4, N=2, num_classes=5, in_channels=3)
    fused = NB201Supernet(C=4, N=2, num_classes=5, in_channels=3, fused=True)
    fused.load_state_dict(plain.state_dict())
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    for alpha in (torch.randn(6, 5), torch.randn(3, 6, 5)):
        grads = []
        for net in (plain, fused):
            net.zero_grad()
            a = alpha.clone().requires_grad_(True)
            out = net(x, a.softmax(-1))
            F.cross_entropy(out.reshape(-1, 5), y.repeat(out.numel() // (16 * 5))).backward()
            grads.append([a.grad] + [p.grad.clone() for p in net.weight_parameters()])
            grads[-1].insert(0, out.detach())
        for g_plain, g_fused in zip(*grads):
            torch.testing.assert_close(g_fused, g_plain, rtol=1e-4, atol=1e-6)


def test_fused_cell_needs_plain_batchnorm() -> None:
    with pytest.raises(ValueError, match="fused cell"):
        NB201Supernet(C=4, N=1, affine=True, fused=True)


@pytest.mark.parametrize("impl", ["conv", "elementwise"])
def test_cell_impls_equal_the_matmul_impl(impl) -> None:
    """The fused-cell implementations compute the same function: logits and every
    gradient agree to 1e-12 in float64, for one alpha and for M=3."""
    torch.manual_seed(0)
    kw = dict(C=4, N=2, num_classes=5, in_channels=3, fused=True, dtype=torch.float64)
    a, b = NB201Supernet(**kw), NB201Supernet(**kw, cell_impl=impl)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (8,))
    for alpha in (torch.randn(6, 5, dtype=torch.float64), torch.randn(3, 6, 5, dtype=torch.float64)):
        grads = []
        for net in (a, b):
            al = alpha.clone().requires_grad_(True)
            out = net(x, al.softmax(-1))
            loss = F.cross_entropy(out.reshape(-1, 5), y.repeat(out.numel() // 40))
            grads.append([out, *torch.autograd.grad(loss, [al, *net.weight_parameters()])])
        for ga, gb in zip(*grads):
            torch.testing.assert_close(gb, ga, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="cell implementation"):
        NB201Supernet(C=4, N=1, fused=True, cell_impl="einsum")
