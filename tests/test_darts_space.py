"""The DARTS CNN space: codec, genotype rule, supernet, evaluation networks and counting.

Published numbers checked here: DARTS (Liu et al., ICLR 2019, arXiv:1806.09055, Table 1 and
Table 3) reports 3.3M parameters for DARTS-V2 on CIFAR-10 (20 cells, C=36, auxiliary head
excluded) and 4.7M parameters / 574M multiply-adds in the ImageNet mobile setting (14 cells,
C=48); PC-DARTS (Xu et al., ICLR 2020, arXiv:1907.05737, Table 1) reports 3.6M.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bayesnas_core.errors import UserError
from bayesnas_core.spaces.base import get_space
from bayesnas_core.spaces.counting import count_multiply_adds, count_parameters
from bayesnas_core.spaces.darts import (
    DARTS_EDGES,
    GENOTYPES,
    PRIMITIVES,
    DartsNetworkCIFAR,
    DartsNetworkImageNet,
    DartsSpace,
    DartsSupernet,
    Genotype,
    drop_path,
)

SPACE = DartsSpace()

# DARTS_V2 exactly as DARTS's genotypes.py prints it (its repr).
DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
# PC-DARTS's CIFAR cell as its genotypes.py prints it (concat as range(2, 6)), over lines.
PC_DARTS_TEXT = """Genotype(
    normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1),
            ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)],
    normal_concat=range(2, 6),
    reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2),
            ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)],
    reduce_concat=range(2, 6))"""


def _softmax_weights(M: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (14, 8) if M is None else (M, 14, 8)
    return {k: F.softmax(torch.randn(shape, generator=g), dim=-1) for k in ("normal", "reduce")}


# ---------------------------------------------------------------------------------
# the space's tables
# ---------------------------------------------------------------------------------
def test_registered_and_tables() -> None:
    space = get_space("darts")
    assert isinstance(space, DartsSpace) and space.name == "darts"
    assert space.arch_shapes() == {"normal": (14, 8), "reduce": (14, 8)}
    assert space.choice_names("normal") == PRIMITIVES == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
        "dil_conv_3x3", "dil_conv_5x5")
    rows = space.row_names("reduce")
    assert len(rows) == len(DARTS_EDGES) == 14
    assert rows[:5] == ("2<-0", "2<-1", "3<-0", "3<-1", "3<-2") and rows[-1] == "5<-4"
    with pytest.raises(UserError, match="'normal' or 'reduce'"):
        space.row_names("alpha")


# ---------------------------------------------------------------------------------
# codec
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(GENOTYPES))
def test_parse_format_round_trip(name: str) -> None:
    g = GENOTYPES[name]
    text = SPACE.format(g)
    assert SPACE.parse(text) == g
    assert SPACE.format(SPACE.parse(text)) == text
    assert SPACE.parse(name) == g  # by name
    assert SPACE.parse(name.upper().replace("-", "_")) == g  # DARTS_V2 spelling


def test_format_is_darts_repr_and_published_text_parses() -> None:
    assert SPACE.format(GENOTYPES["darts-v2"]) == DARTS_V2_TEXT
    assert SPACE.parse(DARTS_V2_TEXT) == GENOTYPES["darts-v2"]
    assert SPACE.parse(PC_DARTS_TEXT) == GENOTYPES["pc-darts"]  # range(2, 6), line breaks


def _with(field: str, value: str) -> str:
    """DARTS-V2's text with one field's value replaced by ``value`` (Python source)."""
    fields = dict(zip(Genotype._fields, _split_fields(DARTS_V2_TEXT)))
    fields[field] = value
    return "Genotype(" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")"


def _split_fields(text: str) -> list[str]:
    """The four keyword values of a one-line ``Genotype(...)`` text."""
    body = text[len("Genotype("):-1]
    out, depth, cur = [], 0, ""
    for ch in body:
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [v.partition("=")[2] for v in out]


BAD_TEXTS = {
    "empty": "",
    "not a call": "[('sep_conv_3x3', 0)]",
    "syntax": "Genotype(normal=[",
    "other function": "__import__('os')",
    "eval inside": _with("normal", "__import__('os').listdir('.')"),
    "positional": "Genotype([], [2, 3, 4, 5], [], [2, 3, 4, 5])",
    "missing field": "Genotype(normal=[], normal_concat=[2, 3, 4, 5], reduce=[])",
    "extra field": DARTS_V2_TEXT[:-1] + ", extra=1)",
    "seven pairs": _with("normal", repr([("sep_conv_3x3", 0)] * 7)),
    "not pairs": _with("normal", repr([("sep_conv_3x3", 0, 1)] * 8)),
    "empty cells": "Genotype(normal=[], normal_concat=[2, 3, 4, 5], reduce=[], reduce_concat=[2, 3, 4, 5])",
    "unknown op": _with("reduce", repr([("conv_7x7", 0)] + [("max_pool_3x3", 1)] * 7)),
    "none op": _with("normal", repr([("none", 0)] + [("sep_conv_3x3", 1)] * 7)),
    "input too late": _with("normal", repr([("sep_conv_3x3", 2)] + [("sep_conv_3x3", 1)] * 7)),
    "last node too late": _with("reduce", repr([("max_pool_3x3", 1)] * 7 + [("skip_connect", 5)])),
    "negative input": _with("normal", repr([("sep_conv_3x3", -1)] + [("sep_conv_3x3", 1)] * 7)),
    "bool input": _with("normal", repr([("sep_conv_3x3", True)] + [("sep_conv_3x3", 1)] * 7)),
    "expression": _with("normal", "[('sep_conv_3x3', 0)] * 8"),
    "bad concat": _with("reduce_concat", "[2, 3, 3, 5]"),
    "concat out of range": _with("normal_concat", "[1, 2, 3]"),
    "unknown name": "darts-v3",
}
#: what the message must say, for the cases that reach validation
REASONS = {
    "empty": "not Python syntax", "syntax": "not Python syntax", "not a call": "not a Genotype",
    "other function": "not a Genotype",
    "eval inside": "not a literal", "expression": "not a literal", "positional": "by keyword",
    "missing field": "exactly the keywords", "extra field": "exactly the keywords",
    "seven pairs": "8 \\(op, input\\) pairs", "empty cells": "8 \\(op, input\\) pairs",
    "not pairs": "not an \\(op, input\\) pair", "bool input": "not an \\(op, input\\) pair",
    "unknown op": "unknown op 'conv_7x7'", "none op": "'none', which a genotype never chooses",
    "input too late": "takes input 2, but node 0 may take 0..1",
    "last node too late": "takes input 5, but node 3 may take 0..4",
    "negative input": "takes input -1", "bad concat": "increasing", "concat out of range": "increasing",
    "unknown name": "unknown genotype name",
}


@pytest.mark.parametrize("case", list(BAD_TEXTS))
def test_malformed_text_is_one_line_user_error(case: str) -> None:
    with pytest.raises(UserError, match=REASONS[case]) as err:
        SPACE.parse(BAD_TEXTS[case])
    msg = str(err.value)
    assert "\n" not in msg and "expected Genotype(" in msg and "darts-v2" in msg


def test_code_in_text_is_never_run(tmp_path) -> None:
    target = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(target)!r}).touch()"
    for text in (payload, _with("normal", payload), _with("normal_concat", payload),
                 f"Genotype(**{{'normal': {payload}}})"):
        with pytest.raises(UserError):
            SPACE.parse(text)
    assert not target.exists()
    with pytest.raises(UserError):
        SPACE.parse(None)  # type: ignore[arg-type]


def test_num_parameter_free() -> None:
    # pooling and skip ops over both cells (16 chosen ops)
    assert SPACE.num_parameter_free(GENOTYPES["darts-v2"]) == 2 + 8
    assert SPACE.num_parameter_free(GENOTYPES["darts-v1"]) == 3 + 8
    assert SPACE.num_parameter_free(GENOTYPES["pc-darts"]) == 2 + 1


# ---------------------------------------------------------------------------------
# genotype rule
# ---------------------------------------------------------------------------------
def _logits(entries: dict[tuple[int, str], float]) -> torch.Tensor:
    t = torch.zeros(14, 8)
    for (edge, op), v in entries.items():
        t[edge, PRIMITIVES.index(op)] = v
    return t


def test_genotype_rule() -> None:
    # edges: node 2 <- 0, 1 (rows 0, 1); node 3 <- 0, 1, 2 (rows 2-4); node 4 <- 0..3 (rows
    # 5-8); node 5 <- 0..4 (rows 9-13)
    normal = _logits({
        (0, "sep_conv_3x3"): 3.0, (1, "dil_conv_5x5"): 5.0,  # both kept, stronger first
        (2, "none"): 10.0, (3, "max_pool_3x3"): 2.0, (4, "skip_connect"): 4.0,  # none ignored
        (5, "avg_pool_3x3"): 1.0, (8, "sep_conv_5x5"): 3.0,
        (10, "sep_conv_3x3"): 2.5, (13, "dil_conv_3x3"): 2.0,
    })
    # ranking is by softmax weight, not by logit: a row split between two ops loses to a
    # smaller single peak (3, 3 -> 0.43 each; 2.5 alone -> 0.64); all-zero rows tie, and ties
    # keep the lower input and the first op (max_pool_3x3), as DARTS's stable sort does
    reduce = _logits({
        (0, "max_pool_3x3"): 3.0, (0, "avg_pool_3x3"): 3.0, (1, "sep_conv_3x3"): 2.5,
        (2, "max_pool_3x3"): 3.0, (2, "avg_pool_3x3"): 3.0, (3, "skip_connect"): 2.5,
        (4, "dil_conv_5x5"): 2.6,
    })
    g = SPACE.genotype({"normal": normal, "reduce": reduce})
    assert g == Genotype(
        normal=[("dil_conv_5x5", 1), ("sep_conv_3x3", 0), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("sep_conv_5x5", 3), ("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("dil_conv_3x3", 4)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("dil_conv_5x5", 2), ("skip_connect", 1),
                ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1)],
        reduce_concat=[2, 3, 4, 5],
    )
    assert SPACE.parse(SPACE.format(g)) == g
    with pytest.raises(ValueError, match=r"\[14, 8\]"):
        SPACE.genotype({"normal": normal[None], "reduce": reduce})


# ---------------------------------------------------------------------------------
# supernet
# ---------------------------------------------------------------------------------
def test_supernet_layout() -> None:
    net = SPACE.build_supernet(C=4, N=8, num_classes=3, in_channels=1)
    assert isinstance(net, DartsSupernet) and len(net.cells) == 8
    assert [i for i, c in enumerate(net.cells) if c.reduction] == [2, 5]
    assert all(len(c.edges) == 14 and len(c.edges[0].ops) == 8 for c in net.cells)
    assert net.stem[0].out_channels == 12  # stem multiplier 3
    assert net.classifier.in_features == 4 * 16  # multiplier 4 x C after two doublings
    params = net.weight_parameters()
    assert {id(p) for p in params} == {id(p) for p in net.parameters()}
    assert not any(p.shape == (14, 8) for p in params)  # no architecture parameters
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not m.track_running_stats for m in bns)
    assert all(m.weight is None for c in net.cells for m in c.modules()
               if isinstance(m, torch.nn.BatchNorm2d))  # non-affine cells


def test_supernet_options() -> None:
    for flag in ("fused", "compile_cells"):
        with pytest.raises(UserError, match="--no-fused-cell"):
            SPACE.build_supernet(C=4, N=2, num_classes=3, in_channels=1, **{flag: True})
    net = SPACE.build_supernet(C=4, N=2, num_classes=3, in_channels=1, fused=False,
                               cell_impl="matmul", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in net.parameters())


def test_supernet_forward_one_and_m_samples() -> None:
    torch.manual_seed(0)
    net = SPACE.build_supernet(C=4, N=5, num_classes=3, in_channels=2)
    x = torch.randn(2, 2, 8, 8)
    w1 = _softmax_weights()
    assert net(x, w1).shape == (2, 3)
    wm = _softmax_weights(M=3, seed=1)
    out = net(x, wm)
    assert out.shape == (3, 2, 3)
    for m in range(3):
        single = net(x, {k: v[m] for k, v in wm.items()})
        assert torch.allclose(out[m], single, rtol=0.0, atol=1e-6)
    assert not torch.allclose(out[0], out[1])  # samples differ
    with pytest.raises(ValueError):
        net(x, {"normal": w1["normal"]})
    with pytest.raises(ValueError):
        net(x, {"normal": w1["normal"], "reduce": wm["reduce"]})


def test_supernet_backward_reaches_every_weight_and_the_mixing_weights() -> None:
    torch.manual_seed(0)
    net = SPACE.build_supernet(C=4, N=3, num_classes=3, in_channels=1)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    alpha = {k: torch.zeros(2, 14, 8, requires_grad=True) for k in ("normal", "reduce")}
    logits = net(x, {k: F.softmax(a, dim=-1) for k, a in alpha.items()})
    loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(2))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.weight_parameters())
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alpha.values())


# ---------------------------------------------------------------------------------
# evaluation networks
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, published", [("darts-v2", 3.3), ("pc-darts", 3.6), ("darts-v1", 3.2)])
def test_cifar_parameter_counts_match_papers(name: str, published: float) -> None:
    # DARTS prints 3.3M for both of its cells; its published DARTS_V1 genotype builds to
    # 3,169,414 (3.2M): it is DARTS_V2 less one dil_conv_3x3 per normal cell, exactly
    # sum over the 18 normal cells of 9C + C^2 + 2C = 179,928 fewer parameters.
    net = SPACE.build_network(name)
    assert isinstance(net, DartsNetworkCIFAR) and len(net.cells) == 20
    params = count_parameters(net)
    assert round(params / 1e6, 1) == published
    assert count_parameters(net, exclude_auxiliary=False) > params  # the aux head exists
    if name == "darts-v1":
        assert count_parameters(SPACE.build_network("darts-v2")) - params == 179_928


def test_cifar_multiply_adds() -> None:
    # 528M for DARTS-V2 at 32x32 is the figure later papers tabulate for it
    net = SPACE.build_network("darts-v2")
    assert round(count_multiply_adds(net, (3, 32, 32)) / 1e6) == 528
    assert net.training  # mode restored


def test_imagenet_mobile_setting() -> None:
    net = SPACE.build_network("darts-v2", imagenet=True)
    assert isinstance(net, DartsNetworkImageNet) and len(net.cells) == 14
    assert net.classifier.out_features == 1000
    params = count_parameters(net)
    assert round(params / 1e6, 1) == 4.7
    assert count_multiply_adds(net, (1, 3, 224, 224)) < 600e6  # DARTS reports 574M


def test_multiply_add_arithmetic() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
                                torch.nn.Conv2d(8, 8, 3, padding=1, groups=4),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5))
    expected = 9 * 3 * 8 * 16 + 9 * 2 * 8 * 16 + 128 * 5
    assert count_multiply_adds(model, (3, 8, 8)) == expected
    assert count_multiply_adds(model, (4, 3, 8, 8)) == expected  # per input


def test_eval_network_outputs_and_auxiliary_head() -> None:
    torch.manual_seed(0)
    net = SPACE.build_network("darts-v2", C=4, N=3, num_classes=7, auxiliary=True)
    x = torch.randn(2, 3, 32, 32)  # the CIFAR head expects 8x8 features at 2/3 depth
    logits, aux = net(x)
    assert logits.shape == aux.shape == (2, 7)
    net.eval()
    assert net(x).shape == (2, 7)
    plain = SPACE.build_network(GENOTYPES["darts-v2"], C=4, N=3, auxiliary=False)
    assert plain.auxiliary_head is None and plain(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    loss_net = SPACE.build_network(PC_DARTS_TEXT, C=4, N=3, num_classes=7)
    logits, aux = loss_net(x)
    y = torch.tensor([0, 1])
    (F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)).backward()
    assert all(p.grad is not None for p in loss_net.parameters())


def test_drop_path_only_in_training_and_not_on_identity() -> None:
    torch.manual_seed(0)
    net = SPACE.build_network("darts-v2", C=4, N=3, auxiliary=False, drop_path_prob=0.0)
    x = torch.randn(4, 3, 8, 8)
    base_train = net(x)
    net.drop_path_prob = 0.6  # set per epoch, as DARTS does
    torch.manual_seed(1)
    assert not torch.allclose(net(x), base_train)  # training: paths dropped
    net.eval()
    ref = net(x)
    assert torch.equal(net(x), ref)  # eval: deterministic ...
    net.drop_path_prob = 0.0
    assert torch.equal(net(x), ref)  # ... and the same as without drop path

    # an all-skip normal cell is untouched by drop path (identity ops are never dropped)
    skips = [("skip_connect", 0), ("skip_connect", 1)] * 4
    g = Genotype(normal=skips, normal_concat=[2, 3, 4, 5], reduce=skips, reduce_concat=[2, 3, 4, 5])
    cell = SPACE.build_network(g, C=4, N=3, auxiliary=False).cells[0]
    assert not cell.reduction and cell.training
    s = torch.randn(4, 12, 8, 8)
    assert torch.equal(cell(s, s, 0.9), cell(s, s, 0.0))

    y = drop_path(torch.ones(1000, 2), 0.25)
    kept = y[:, 0] != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert 0.65 < kept.float().mean() < 0.85
    assert torch.equal(drop_path(x, 0.0), x)


def test_factorized_reduce_halves_any_size_and_dtype_passes_down() -> None:
    from bayesnas_core.spaces.darts import FactorizedReduce

    op = FactorizedReduce(3, 6, dtype=torch.float64)
    assert op(torch.randn(2, 3, 8, 8, dtype=torch.float64)).shape == (2, 6, 4, 4)
    assert op(torch.randn(2, 3, 7, 7, dtype=torch.float64)).shape == (2, 6, 4, 4)
    net = SPACE.build_network("pc-darts", C=4, N=3, auxiliary=False, dtype=torch.float64)
    assert net(torch.randn(2, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64


# ---------------------------------------------------------------------------------
# picture
# ---------------------------------------------------------------------------------
def test_draw_genotype_smoke() -> None:
    from matplotlib.figure import Figure

    from bayesnas_core.viz import draw_genotype, new_axes

    fig = draw_genotype(GENOTYPES["pc-darts"])
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "sep_conv_5x5" in texts and "$c_{k-2}$" in texts and "$c_{k}$" in texts
    axes = new_axes((8.0, 3.0), ncols=2)
    assert draw_genotype(DARTS_V2_TEXT, axes=axes) is axes
    assert "max_pool_3x3" in [t.get_text() for t in axes[1].texts]
    with pytest.raises(UserError):
        draw_genotype("not a genotype")
