"""The bilevel search: gradients, batched Monte-Carlo, second order, resume, failures."""

from __future__ import annotations

import json

import pytest
import torch

from bayesnas_core.errors import NonFiniteLossError, UserError
from bayesnas_core.runs import RunDir
from bayesnas_core.search import (
    arch_gradient,
    arch_gradient_batched,
    dominant_hessian_eigenvalue,
    hessian_vector_exact,
    hessian_vector_fd,
    search,
)
from bayesnas_core.spaces import NB201Supernet
from bayesnas_core.config import to_dict

from conftest import make_tiny_config, make_tiny_data


def _model_and_batches(dtype=torch.float64):
    torch.manual_seed(0)
    model = NB201Supernet(C=4, N=1, num_classes=4, in_channels=1, dtype=dtype)
    data = make_tiny_data(n=16)
    tb = (data.train.x.to(dtype), data.train.y)
    vb = (data.valid.x.to(dtype), data.valid.y)
    return model, tb, vb


def test_finite_difference_hvp_matches_autograd() -> None:
    """DARTS's central difference equals the exact mixed derivative d/da (g_w . v).

    In float64 the central difference has truncation error O(R^2) and round-off
    O(1e-16 / R) with R = eps/||v||. ReLU kinks make the gradient only piecewise smooth:
    a larger R lets some pre-activations near zero change sign between w - Rv and
    w + Rv, which is the known bias of DARTS's eps = 0.01. With eps = 1e-5
    (R ~ 6e-8 here) no kink is crossed and the relative error is far below 1e-4.
    """
    model, tb, vb = _model_and_batches()
    g = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.weight_parameters()]
    before = [p.detach().clone() for p in model.weight_parameters()]
    fd = hessian_vector_fd(model, model.alpha, tb, v, eps=1e-5)
    exact = hessian_vector_exact(model, model.alpha, tb, v)
    assert exact.abs().max() > 1e-6  # a non-trivial product
    torch.testing.assert_close(fd, exact, rtol=1e-4, atol=1e-8)
    for p, b in zip(model.weight_parameters(), before):
        assert torch.equal(p, b)  # weights restored exactly


def test_second_order_gradient_matches_its_definition() -> None:
    """Order 2 = grad_a L_val(w') - xi * H v, recomputed here step by step."""
    model, tb, vb = _model_and_batches()
    xi = 0.05
    loss, grad, _ = arch_gradient(model, model.alpha, vb, tb, order=2, xi=xi, eps=1e-5)
    weights = model.weight_parameters()
    saved = [w.detach().clone() for w in weights]
    a = model.alpha.detach().requires_grad_(True)
    lt = torch.nn.functional.cross_entropy(model(tb[0], a.detach().softmax(-1)), tb[1])
    gw = torch.autograd.grad(lt, weights)
    with torch.no_grad():
        for w, gi in zip(weights, gw):
            w.sub_(xi * gi)
    lv = torch.nn.functional.cross_entropy(model(vb[0], a.softmax(-1)), vb[1])
    grads = torch.autograd.grad(lv, [a, *weights])
    with torch.no_grad():
        for w, s in zip(weights, saved):
            w.copy_(s)
    expected = grads[0] - xi * hessian_vector_exact(model, model.alpha, tb, grads[1:])
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-8)
    _, first, _ = arch_gradient(model, model.alpha, vb, order=1)
    assert not torch.allclose(grad, first)  # the unrolled term matters


def _ce_alpha_grad(model, alpha, batch):
    a = alpha.detach().requires_grad_(True)
    return torch.autograd.grad(torch.nn.functional.cross_entropy(model(batch[0], a.softmax(-1)), batch[1]), a)[0]


def test_second_order_unrolls_the_optimizers_own_step() -> None:
    """DARTS's look-ahead, by hand on a tiny float64 net: w' = w - xi (m buf + g + wd w)
    with the SGD momentum buffer (non-zero: one SGD step is taken first), its momentum
    and weight decay; then dalpha = grad_a L_val(w'), v = grad_w' L_val(w'), H v by
    central differences of grad_a L_train at the ORIGINAL w +- R v (R = eps / ||v||),
    and the gradient dalpha - xi H v. Agreement to 1e-10 (same arithmetic, summation
    order aside); the old look-ahead w - xi g is off by far more than that."""
    import copy

    model, tb, vb = _model_and_batches()
    xi, m, wd, eps = 0.05, 0.9, 0.05, 0.01
    weights = model.weight_parameters()
    w_opt = torch.optim.SGD(weights, lr=0.1, momentum=m, nesterov=True, weight_decay=wd)
    torch.nn.functional.cross_entropy(model(vb[0], model.alpha.detach().softmax(-1)), vb[1]).backward()
    w_opt.step()  # a non-zero momentum buffer
    w_opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.alpha.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    w0 = [w.detach().clone() for w in weights]
    bufs = [w_opt.state[w]["momentum_buffer"].clone() for w in weights]
    assert all(b.abs().max() > 0 for b in bufs)

    def at(ws):  # a copy of the model holding weights ws
        c = copy.deepcopy(model)
        with torch.no_grad():
            for p, w in zip(c.weight_parameters(), ws):
                p.copy_(w)
        return c

    def unrolled(step_of):  # the hand computation for the look-ahead w - xi * step
        lt = torch.nn.functional.cross_entropy(model(tb[0], model.alpha.detach().softmax(-1)), tb[1])
        g = torch.autograd.grad(lt, weights)
        w1 = [w - xi * step_of(w, gi, b) for w, gi, b in zip(w0, g, bufs)]
        m1 = at(w1)
        a = model.alpha.detach().requires_grad_(True)
        lv = torch.nn.functional.cross_entropy(m1(vb[0], a.softmax(-1)), vb[1])
        dalpha, *v = torch.autograd.grad(lv, [a, *m1.weight_parameters()])
        R = eps / torch.cat([x.reshape(-1) for x in v]).norm()
        g_plus = _ce_alpha_grad(at([w + R * x for w, x in zip(w0, v)]), model.alpha, tb)
        g_minus = _ce_alpha_grad(at([w - R * x for w, x in zip(w0, v)]), model.alpha, tb)
        return dalpha - xi * (g_plus - g_minus) / (2 * R)

    expected = unrolled(lambda w, g, b: m * b + g + wd * w)
    _, grad, _ = arch_gradient(model, model.alpha, vb, tb, order=2, xi=xi, eps=eps, w_opt=w_opt)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-10)
    for w, w_before, b in zip(weights, w0, bufs):  # weights and optimizer state untouched
        assert torch.equal(w, w_before)
        assert torch.equal(w_opt.state[w]["momentum_buffer"], b)

    old = unrolled(lambda w, g, b: g)  # the former look-ahead w - xi g
    assert (old - expected).abs().max() > 1e-6
    _, plain, _ = arch_gradient(model, model.alpha, vb, tb, order=2, xi=xi, eps=eps)
    torch.testing.assert_close(plain, old, rtol=0, atol=1e-10)  # no w_opt: w - xi g


@pytest.mark.parametrize("method,order", [("darts", 2), ("balenas", 2), ("darts", 1)])
def test_second_order_arch_step_comes_before_the_weight_step(tmp_path, monkeypatch,
                                                             method, order) -> None:
    """Second order (DARTS's train loop): every architecture gradient of a step is taken
    at the weights and momentum buffers from BEFORE that step's SGD step, with the
    optimizer passed through. First order keeps the weight step first."""
    import sys

    from bayesnas_core.search import build_arch_update

    S = sys.modules["bayesnas_core.search"]
    D = sys.modules["bayesnas_core.distributions"]  # where the methods take their gradients
    cfg = make_tiny_config(tmp_path, method=method, order=order, mc_samples=2,
                           batched_mc=False)
    model, tb, vb = _model_and_batches()
    s = cfg.search
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=s.w_lr, momentum=s.w_momentum,
                            nesterov=True, weight_decay=s.w_weight_decay)
    arch = build_arch_update(cfg, model, 16, torch.Generator().manual_seed(4))
    S.search_step(model, w_opt, arch, tb, vb, grad_clip=s.grad_clip)  # momentum buffers exist
    before = [w.detach().clone() for w in model.weight_parameters()]
    buf_before = [w_opt.state[w]["momentum_buffer"].clone() for w in model.weight_parameters()]
    seen = []
    original = D.arch_gradient

    def recording(model_, *a, **k):
        seen.append(([w.detach().clone() for w in model_.weight_parameters()],
                     [w_opt.state[w]["momentum_buffer"].clone() for w in model_.weight_parameters()],
                     k.get("w_opt")))
        return original(model_, *a, **k)

    monkeypatch.setattr(D, "arch_gradient", recording)
    S.search_step(model, w_opt, arch, tb, vb, grad_clip=s.grad_clip)
    after = [w.detach().clone() for w in model.weight_parameters()]
    assert not all(torch.equal(x, y) for x, y in zip(before, after))  # the weights moved
    assert len(seen) == (2 if method == "balenas" else 1)  # one per Monte-Carlo sample
    expect = before if order == 2 else after
    for ws, bufs, opt in seen:
        assert opt is w_opt
        assert all(torch.equal(x, y) for x, y in zip(ws, expect))
        if order == 2:
            assert all(torch.equal(x, y) for x, y in zip(bufs, buf_before))


def test_second_order_search_step_equals_the_darts_sequence(tmp_path) -> None:
    """One second-order DARTS step = Adam on arch_gradient(w, buffers before the step),
    then the clipped nesterov SGD step at the new alpha: alpha and weights bit for bit.
    The old order (weights first) gives another alpha."""
    import copy

    from bayesnas_core.search import build_arch_update, search_step

    cfg = make_tiny_config(tmp_path, method="darts", order=2)
    s = cfg.search
    model, tb, vb = _model_and_batches()

    def setup():
        m = copy.deepcopy(model)
        w = torch.optim.SGD(m.weight_parameters(), lr=s.w_lr, momentum=s.w_momentum,
                            nesterov=True, weight_decay=s.w_weight_decay)
        return m, w, build_arch_update(cfg, m, 16, None)

    def weight_step(m, w):
        w.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(tb[0], m.alpha.detach().softmax(-1)), tb[1]).backward()
        torch.nn.utils.clip_grad_norm_(m.weight_parameters(), s.grad_clip)
        w.step()

    def arch_step(m, w, a):
        _, g, _ = arch_gradient(m, m.alpha, vb, tb, order=2, xi=s.w_lr, eps=s.unrolled_eps, w_opt=w)
        m.alpha.grad = g
        a.optimizer.step()
        m.alpha.grad = None

    pm, pw, pa = setup()
    for _ in range(2):
        search_step(pm, pw, pa, tb, vb, grad_clip=s.grad_clip)
    runs = []
    for arch_first in (True, False):
        mm, w, a = setup()
        for _ in range(2):
            if arch_first:
                arch_step(mm, w, a)
            weight_step(mm, w)
            if not arch_first:
                arch_step(mm, w, a)
        runs.append(mm)
    assert torch.equal(pm.alpha, runs[0].alpha)
    assert all(torch.equal(p, q) for p, q in zip(pm.weight_parameters(), runs[0].weight_parameters()))
    assert (pm.alpha - runs[1].alpha).abs().max() > 1e-8


def test_batched_mc_gradient_equals_sequential() -> None:
    """With fixed alphas, one batched pass gives each sample's own gradient (float32,
    tolerance 1e-5 relative: only summation order differs)."""
    model, tb, vb = _model_and_batches(torch.float32)
    alphas = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(2))
    loss, grads, _ = arch_gradient_batched(model, alphas, vb)
    seq = [arch_gradient(model, alphas[k], vb)[1] for k in range(3)]
    seq_loss = sum(arch_gradient(model, alphas[k], vb)[0] for k in range(3)) / 3
    torch.testing.assert_close(grads, torch.stack(seq), rtol=1e-5, atol=1e-6)
    assert abs(loss - seq_loss) < 1e-5


def test_dominant_eigenvalue_matches_dense_hessian() -> None:
    model, tb, vb = _model_and_batches()
    a = model.alpha.detach().requires_grad_(True)
    f = lambda x: torch.nn.functional.cross_entropy(model(vb[0], x.view(6, 5).softmax(-1)), vb[1])
    H = torch.autograd.functional.hessian(f, a.reshape(-1))
    eigs = torch.linalg.eigvalsh(H)
    top = eigs[eigs.abs().argmax()].item()
    est = dominant_hessian_eigenvalue(model, model.alpha, vb, iters=200,
                                      generator=torch.Generator().manual_seed(0))
    assert est == pytest.approx(top, rel=1e-3)


@pytest.mark.parametrize("method,order,batched", [
    ("darts", 1, True), ("darts", 2, True), ("balenas", 1, True), ("balenas", 1, False),
    ("balenas", 2, False),
])
def test_search_runs_and_records(tmp_path, method, order, batched) -> None:
    cfg = make_tiny_config(tmp_path, method=method, order=order, mc_samples=2, batched_mc=batched)
    run = RunDir.create(cfg.out, "r", to_dict(cfg), env={})
    res = search(cfg, make_tiny_data(), run=run, progress=False)
    assert len(res.metrics) == 2 and len(res.history) == 2
    assert str(res.arch) == res.metrics[-1]["arch"]
    hist = json.loads((run.path / "history.json").read_text())
    assert len(hist["epochs"]) == 2 and len(hist["epochs"][0]["mu"]) == 6
    if method == "balenas":
        assert res.sigma is not None and (res.sigma > 0).all()
        assert hist["epochs"][-1]["sigma"] is not None
    else:
        assert res.sigma is None
    assert all("hessian_eig" in m for m in res.metrics)
    # alpha moved away from its initialisation
    assert not torch.allclose(torch.tensor(res.history[0]["mu"]), torch.tensor(res.history[1]["mu"]))


def test_fast_path_search_matches_plain_path(tmp_path) -> None:
    """A short BaLeNAS search on the fast path (fused cells, batched MC) ends with the
    same mu and sigma as on the plain path (unfused cells, one pass per sample): same
    noise, same gradients up to float32 summation order. Tolerance 1e-4 absolute after
    2 epochs (alpha moves ~1e-2; float32 round-off is ~1e-7 per step)."""
    results = []
    for fast in (True, False):
        cfg = make_tiny_config(tmp_path, method="balenas", mc_samples=3, batched_mc=fast,
                               fused_cell=fast)
        results.append(search(cfg, make_tiny_data(), progress=False))
    torch.testing.assert_close(results[0].mu, results[1].mu, rtol=0, atol=1e-4)
    torch.testing.assert_close(results[0].sigma, results[1].sigma, rtol=1e-4, atol=1e-6)


class _Stop(Exception):
    pass


def _fail_at_epoch(n: int, effect=None):
    """An on_epoch callback that acts at epoch ``n`` (before that epoch's checkpoint)."""
    calls = {"n": 0}

    def cb(model, arch):
        calls["n"] += 1
        if calls["n"] == n:
            if effect is None:
                raise _Stop
            effect(model)
        return {}

    return cb


def test_resume_is_bit_identical(tmp_path) -> None:
    """Interrupted after epoch 1, resumed: the same mu and sigma, bit for bit (CPU)."""
    cfg = make_tiny_config(tmp_path, method="balenas", mc_samples=3)
    cfg.search.epochs = 3
    full = search(cfg, make_tiny_data(), progress=False)

    run = RunDir.create(cfg.out, "interrupted", to_dict(cfg), env={})
    with pytest.raises(_Stop):  # epoch 1 is checkpointed; epoch 2 dies before its checkpoint
        search(cfg, make_tiny_data(), run=run, progress=False, on_epoch=_fail_at_epoch(2))
    assert run.load_checkpoint()["epoch"] == 1
    resumed = search(cfg, make_tiny_data(), run=run, resume=True, progress=False)
    assert torch.equal(resumed.mu, full.mu)
    assert torch.equal(resumed.sigma, full.sigma)
    assert [m["epoch"] for m in resumed.metrics] == [1, 2, 3]
    assert [m["epoch"] for m in run.read_metrics()] == [1, 2, 3]


def test_resume_on_another_path_continues_the_same_search(tmp_path) -> None:
    """Speed-only settings may change on resume: epoch 1 on the fast path, epochs 2-3 on
    the plain path end where 3 fast epochs do (same tolerance as the path comparison)."""
    cfg = make_tiny_config(tmp_path, method="balenas", mc_samples=3)
    cfg.search.epochs = 3
    full = search(cfg, make_tiny_data(), progress=False)
    run = RunDir.create(cfg.out, "switch", to_dict(cfg), env={})
    with pytest.raises(_Stop):
        search(cfg, make_tiny_data(), run=run, progress=False, on_epoch=_fail_at_epoch(2))
    cfg.search.batched_mc = cfg.search.fused_cell = False
    resumed = search(cfg, make_tiny_data(), run=run, resume=True, progress=False)
    torch.testing.assert_close(resumed.mu, full.mu, rtol=0, atol=1e-4)
    torch.testing.assert_close(resumed.sigma, full.sigma, rtol=1e-4, atol=1e-6)


def test_resume_with_changed_settings_is_refused(tmp_path) -> None:
    cfg = make_tiny_config(tmp_path, method="balenas")
    run = RunDir.create(cfg.out, "r", to_dict(cfg), env={})
    search(cfg, make_tiny_data(), run=run, progress=False)
    cfg.search.mc_samples = 1
    with pytest.raises(UserError, match=r"cannot resume with another configuration: search.mc_samples \(3 in the checkpoint, 1 now\)"):
        search(cfg, make_tiny_data(), run=run, resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path) -> None:
    cfg = make_tiny_config(tmp_path, method="darts")
    cfg.search.epochs = 3
    run = RunDir.create(cfg.out, "nan", to_dict(cfg), env={})

    def poison(model):  # from epoch 2 on, every forward pass returns NaN
        model.register_forward_hook(lambda m, i, out: out * float("nan"))

    with pytest.raises(NonFiniteLossError) as info:
        search(cfg, make_tiny_data(), run=run, progress=False, on_epoch=_fail_at_epoch(1, poison))
    msg = str(info.value)
    assert "non-finite loss at epoch 2 step 1" in msg
    assert "last good checkpoint (epoch 1)" in msg and "\n" not in msg
    state = run.load_checkpoint()
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("fast", [True, False])
def test_shorter_valid_split_is_cycled_and_lr_is_the_epochs_own(tmp_path, monkeypatch, fast) -> None:
    """An epoch is one pass over the train split even when valid is shorter (CIFAR-100,
    ImageNet16-120); the recorded w_lr is the rate the epoch trained with. Both paths."""
    import sys
    from dataclasses import replace

    from bayesnas_core.data import TensorSplit
    from bayesnas_core.engine import StepEngine

    data = make_tiny_data(n=64)
    data = replace(data, valid=TensorSplit(data.valid.x[:16], data.valid.y[:16]))
    cfg = make_tiny_config(tmp_path, method="darts", batched_mc=fast, fused_cell=fast)
    cfg.search.epochs = 1
    steps = []
    S = sys.modules["bayesnas_core.search"]
    D = sys.modules["bayesnas_core.distributions"]  # where the methods take their gradients  # the module (the package exports a function of that name)
    target = (StepEngine, "step") if fast else (S, "search_step")
    original = getattr(*target)

    def counting(*a, **k):
        steps.append(1)
        return original(*a, **k)

    monkeypatch.setattr(*target, counting)
    res = search(cfg, data, progress=False)
    assert len(steps) == 64 // 16  # 4 train batches, valid (1 batch) cycled
    assert res.metrics[0]["w_lr"] == cfg.search.w_lr


def test_cycle_starts_with_the_epoch_and_goes_on() -> None:
    from bayesnas_core.data import BatchIterator

    data = make_tiny_data(n=32)
    it = BatchIterator(data.valid, 8, seed=3)
    first = [y for _, y in it.epoch(5)]
    cyc = it.cycle(5)
    got = [next(cyc)[1] for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, got[:4]))
    assert not all(torch.equal(a, b) for a, b in zip(first, got[4:]))  # a new order
    assert sorted(torch.cat(got[4:]).tolist()) == sorted(torch.cat(first).tolist())
