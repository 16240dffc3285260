"""Tests for bayesnas_core.proxies: each proxy against an independent computation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesnas_core.errors import UserError
from bayesnas_core.proxies import (
    PROXIES,
    ProxyScore,
    compute_proxy,
    get_proxy,
    grasp,
    register_proxy,
    signed_log10,
    snip,
    synflow,
)


def _conv_bn_net(seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(4, 5),
    )
    # Non-trivial BN affine parameters and running statistics: if BN were applied
    # (rather than bypassed) in SynFlow, the score would change.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-2.0, 2.0)
                m.bias.uniform_(-1.0, 1.0)
                m.running_mean.uniform_(-1.0, 1.0)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _batch(seed: int = 1, n: int = 6, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, classes, (n,), generator=g)


# ----------------------------------------------------------------------------- SynFlow


def test_synflow_two_layer_linear_closed_form() -> None:
    # f(x) = W2 W1 x, no biases. SynFlow runs on |W1|, |W2| with x = 1 (all ones):
    #   R = 1^T |W2| |W1| 1 = sum_{k,i,j} |W2|_{ki} |W1|_{ij}.
    #   dR/d|W1|_{ij} = sum_k |W2|_{ki} = colsum(|W2|)_i
    #   dR/d|W2|_{ki} = sum_j |W1|_{ij} = rowsum(|W1|)_i
    # Score = sum_ij |W1|_ij colsum(|W2|)_i + sum_ki |W2|_ki rowsum(|W1|)_i = R + R = 2R.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 5, bias=False), nn.Linear(5, 3, bias=False))
    a1 = net[0].weight.detach().double().abs()
    a2 = net[1].weight.detach().double().abs()
    R = float((torch.ones(1, 3, dtype=torch.float64) @ a2 @ a1 @ torch.ones(7, 1, dtype=torch.float64)).item())
    assert R > 0
    assert synflow(net, input_shape=(7,)) == pytest.approx(2 * R, rel=1e-12)


def test_synflow_bypasses_batchnorm() -> None:
    net = _conv_bn_net()
    net.train()
    score = synflow(net, input_shape=(3, 6, 6))

    # Independent computation: the same net built by hand without BN, in float64, |w|.
    ref = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).double()
    with torch.no_grad():
        for dst, src in [(ref[0], net[0]), (ref[2], net[3]), (ref[6], net[9])]:
            dst.weight.copy_(src.weight.abs())
            if src.bias is not None:
                dst.bias.copy_(src.bias.abs())
    ref(torch.ones(1, 3, 6, 6, dtype=torch.float64)).sum().backward()
    expected = sum(float((m.weight * m.weight.grad).abs().sum().detach()) for m in (ref[0], ref[2], ref[6]))
    assert score == pytest.approx(expected, rel=1e-12)

    # And BN really matters here: keeping it (eval mode, float64, |params|) differs.
    kept = copy.deepcopy(net).double().eval()
    with torch.no_grad():
        for p in kept.parameters():
            p.abs_()
    kept(torch.ones(1, 3, 6, 6, dtype=torch.float64)).sum().backward()
    with_bn = sum(float((kept[i].weight * kept[i].weight.grad).abs().sum().detach()) for i in (0, 3, 9))
    assert with_bn != pytest.approx(expected, rel=1e-6)


def test_synflow_uses_no_data_and_is_deterministic() -> None:
    net = _conv_bn_net(dropout=0.5)  # dropout active in train mode: SynFlow runs in eval
    net.train()
    x1, y1 = _batch(1)
    x2, _ = _batch(2)
    scores = {
        synflow(net, input_shape=(3, 6, 6)),
        synflow(net, input_shape=(3, 6, 6)),
        synflow(net, inputs=x1),
        synflow(net, inputs=x2 * 100.0, targets=y1),
        compute_proxy("synflow", net, inputs=x1, targets=y1).value,
    }
    assert len(scores) == 1


def test_synflow_is_float64() -> None:
    # 30 layers of 32x32 weights all equal to 10 (sign alternating): with ones input
    # the output is 320^30 ~ 1e75, which overflows float32 (max ~3e38). The exact
    # score is 30 * 32 * 320^30 (each layer contributes R, see the closed-form test,
    # summed over the 32 outputs) ~ 1e78.
    layers = [nn.Linear(32, 32, bias=False) for _ in range(30)]
    with torch.no_grad():
        for i, lin in enumerate(layers):
            lin.weight.fill_(10.0 if i % 2 else -10.0)
    net = nn.Sequential(*layers)
    score = synflow(net, input_shape=(32,))
    assert math.isfinite(score)
    assert score == pytest.approx(30 * 32 * 320.0**30, rel=1e-12)


# ----------------------------------------------------------------------------- SNIP


def test_snip_matches_autograd() -> None:
    net = _conv_bn_net()
    net.train()
    x, y = _batch()
    score = snip(net, inputs=x, targets=y)

    ref = copy.deepcopy(net)
    F.cross_entropy(ref(x), y).backward()
    expected = sum(float((ref[i].weight * ref[i].weight.grad).abs().sum().detach()) for i in (0, 3, 9))
    assert score == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- GraSP


def test_grasp_logistic_regression_closed_form() -> None:
    # Logistic regression, logits = W x + b, L = mean_i CE(softmax(W x_i + b), y_i).
    #   g = dL/dW = (1/n) sum_i (p_i - e_{y_i}) x_i^T
    #   H vec(G) as a matrix = (1/n) sum_i (diag(p_i) - p_i p_i^T) G x_i x_i^T
    # GraSP = sum(-W * H g). The bias is not a Conv/Linear weight, so it is held fixed.
    torch.manual_seed(0)
    n, d, c = 8, 4, 3
    net = nn.Linear(d, c).double()
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.randint(0, c, (n,))
    W = net.weight.detach()
    p = torch.softmax(x @ W.T + net.bias.detach(), dim=1)
    G = (p - F.one_hot(y, c).double()).T @ x / n
    Hg = torch.zeros_like(W)
    for i in range(n):
        A = torch.diag(p[i]) - torch.outer(p[i], p[i])
        Hg += torch.outer(A @ G @ x[i], x[i]) / n
    expected = float((-W * Hg).sum())
    assert grasp(net, inputs=x, targets=y) == pytest.approx(expected, rel=1e-10)


def test_grasp_matches_hvp_on_mlp() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(10, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    b1, b2 = net[0].bias.detach(), net[2].bias.detach()

    def loss(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)

    ws = (net[0].weight.detach(), net[2].weight.detach())
    g = torch.autograd.functional.jacobian(loss, ws)
    _, hg = torch.autograd.functional.hvp(loss, ws, g)
    expected = float(sum((-w * h).sum() for w, h in zip(ws, hg)))
    score = compute_proxy("grasp", net, inputs=x, targets=y)
    assert score.value == pytest.approx(expected, rel=1e-10)
    assert score.name == "grasp"


# ----------------------------------------------------------------------------- no mutation


@pytest.mark.parametrize("name", ["synflow", "snip", "grasp"])
@pytest.mark.parametrize("train", [True, False])
def test_proxies_leave_the_net_unchanged(name: str, train: bool) -> None:
    net = _conv_bn_net()
    net.train(train)
    net[4].eval()  # mixed per-module flags must come back as they were
    net[3].weight.requires_grad_(False)
    old_grad = torch.full_like(net[0].weight, 0.5)
    net[0].weight.grad = old_grad
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [m.training for m in net.modules()]
    x, y = _batch()
    out_before = _eval_output(net, x)

    compute_proxy(name, net, inputs=x, targets=y, input_shape=(3, 6, 6))

    after = net.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype, k
        assert torch.equal(after[k], v), k
    assert [m.training for m in net.modules()] == flags
    assert net[0].weight.grad is old_grad and torch.equal(old_grad, torch.full_like(old_grad, 0.5))
    assert all(p.grad is None for n, p in net.named_parameters() if n != "0.weight")
    assert not net[3].weight.requires_grad and net[0].weight.requires_grad
    assert all("forward" not in m.__dict__ for m in net.modules())
    assert torch.equal(_eval_output(net, x), out_before)  # BN applied again, same numbers


def _eval_output(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The net's eval-mode output, leaving its training flags as they were."""
    flags = [m.training for m in net.modules()]
    with torch.no_grad():
        out = net.eval()(x)
    for m, f in zip(net.modules(), flags):
        m.training = f
    return out


def test_synflow_restores_the_net_when_forward_fails() -> None:
    net = _conv_bn_net()
    net.train()
    with pytest.raises(RuntimeError):
        synflow(net, input_shape=(5, 6, 6))  # wrong channel count
    assert all(m.training for m in net.modules())
    assert all("forward" not in m.__dict__ for m in net.modules())


def test_proxies_run_under_no_grad() -> None:
    net = _conv_bn_net()
    x, y = _batch()
    with torch.no_grad():
        expected = {n: compute_proxy(n, net, inputs=x, targets=y).value for n in PROXIES}
    assert expected == {n: compute_proxy(n, net, inputs=x, targets=y).value for n in PROXIES}


# ----------------------------------------------------------------------------- registry


def test_duplicate_registration_raises() -> None:
    with pytest.raises(KeyError, match="synflow"):
        register_proxy("synflow")(lambda net, **kw: 0.0)
    assert PROXIES["synflow"] is synflow


def test_unknown_proxy_is_a_user_error() -> None:
    with pytest.raises(UserError) as info:
        get_proxy("foo")
    msg = str(info.value)
    assert "'foo'" in msg and "grasp, snip, synflow" in msg and "\n" not in msg
    with pytest.raises(UserError):
        compute_proxy("foo", nn.Linear(2, 2), input_shape=(2,))


def test_missing_arguments_are_user_errors() -> None:
    net = _conv_bn_net()
    x, _ = _batch()
    with pytest.raises(UserError, match="input_shape"):
        compute_proxy("synflow", net)
    for name in ("snip", "grasp"):
        with pytest.raises(UserError, match="targets"):
            compute_proxy(name, net, inputs=x)


# ----------------------------------------------------------------------------- log10


def test_log10_convention_is_monotone_and_signed() -> None:
    values = [-1e30, -5.0, -1.0, -1e-9, 0.0, 1e-9, 0.5, 9.0, 1e12, 1e300, math.inf]
    logs = [ProxyScore.from_value("x", v).log10 for v in values]
    assert all(a < b for a, b in zip(logs, logs[1:]))
    assert signed_log10(0.0) == 0.0
    assert signed_log10(9.0) == pytest.approx(1.0)
    assert signed_log10(-9.0) == pytest.approx(-1.0)
    assert signed_log10(1e12) == pytest.approx(12.0)
    score = compute_proxy("synflow", nn.Linear(3, 2, bias=False), input_shape=(3,))
    assert score.log10 == signed_log10(score.value)
