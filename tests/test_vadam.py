"""Tests for :class:`bayesnas_core.optim.Vadam` (METHOD.md section 2)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch.func import functional_call, grad, vmap

from bayesnas_core.optim import Vadam

DT = torch.float64


def _quadratic(w: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a * (w - c) ** 2).sum()


def test_one_and_two_steps_match_hand_computation() -> None:
    a = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    c = torch.tensor([0.5, 0.0, -1.0], dtype=DT)
    mu0 = torch.tensor([0.3, -1.2, 2.0], dtype=DT)
    lr, b1, b2, lam, prec_init, n, m_mc = 0.1, 0.9, 0.99, 0.7, 2.0, 10, 2
    w = mu0.clone().requires_grad_(True)
    opt = Vadam([w], lr=lr, betas=(b1, b2), prior_precision=lam, prec_init=prec_init,
                num_data=n, mc_samples=m_mc, generator=torch.Generator().manual_seed(123))

    def closure() -> torch.Tensor:
        loss = _quadratic(w, a, c)
        loss.backward()
        return loss

    ref_gen = torch.Generator().manual_seed(123)
    mu, m = mu0.clone(), torch.zeros(3, dtype=DT)
    s = torch.full((3,), (prec_init - lam) / n, dtype=DT)
    for t in (1, 2):
        sigma = 1.0 / torch.sqrt(n * s + lam)
        eps = torch.randn((m_mc, 3), generator=ref_gen, dtype=DT)
        samples = mu + sigma * eps
        gk = a * (samples - c)
        g, gsq = gk.mean(0), (gk**2).mean(0)
        expected_loss = torch.stack([_quadratic(x, a, c) for x in samples]).mean()
        m = b1 * m + (1 - b1) * (g + lam / n * mu)
        s = b2 * s + (1 - b2) * gsq
        mu = mu - lr * (m / (1 - b1**t)) / (torch.sqrt(s / (1 - b2**t)) + lam / n)

        loss = opt.step(closure)
        state = opt.state[w]
        assert state["step"] == t
        torch.testing.assert_close(loss, expected_loss, atol=1e-7, rtol=0)
        torch.testing.assert_close(w.detach(), mu, atol=1e-7, rtol=0)
        torch.testing.assert_close(state["exp_avg"], m, atol=1e-7, rtol=0)
        torch.testing.assert_close(state["exp_avg_sq"], s, atol=1e-7, rtol=0)
        sigma_next = 1.0 / torch.sqrt(n * s + lam)
        torch.testing.assert_close(opt.posterior_std(w), sigma_next, atol=1e-7, rtol=0)
        torch.testing.assert_close(w.grad, g, atol=1e-7, rtol=0)
    assert not torch.equal(mu, mu0)


def test_gradients_are_zeroed_between_samples() -> None:
    # The closure never zeroes p.grad: an optimizer that forgot to clear it would see
    # v, 2v, 3v (accumulated) and average to 2v; one that summed would see 3v.
    v = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    mu0 = torch.tensor([0.1, 0.2, 0.3], dtype=DT)
    w = mu0.clone().requires_grad_(True)
    lam, n, b1, b2 = 1.0, 100, 0.5, 0.999
    opt = Vadam([w], lr=1e-2, betas=(b1, b2), prior_precision=lam, prec_init=3.0,
                num_data=n, mc_samples=3, generator=torch.Generator().manual_seed(0))

    def closure() -> torch.Tensor:
        loss = (w * v).sum()
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(w.grad, v, atol=1e-12, rtol=0)
    m_expected = (1 - b1) * (v + lam / n * mu0)
    torch.testing.assert_close(opt.state[w]["exp_avg"], m_expected, atol=1e-12, rtol=0)
    s_expected = b2 * (3.0 - lam) / n + (1 - b2) * v**2
    torch.testing.assert_close(opt.state[w]["exp_avg_sq"], s_expected, atol=1e-12, rtol=0)


def test_gsq_is_mean_of_squares() -> None:
    # g_k = w_k (loss 0.5 |w|^2), so gsq must be mean_k w_k^2, not (mean_k w_k)^2.
    w = torch.zeros(4, dtype=DT, requires_grad=True)
    lam, n, b2 = 1.0, 1, 0.9
    opt = Vadam([w], lr=1e-2, betas=(0.5, b2), prior_precision=lam, prec_init=lam,
                num_data=n, mc_samples=3, generator=torch.Generator().manual_seed(7))
    seen: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        seen.append(w.detach().clone())
        loss = 0.5 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    xs = torch.stack(seen)
    # The closure saw exactly the samples mu + sigma * eps of the seeded generator.
    ref = Vadam([torch.zeros(4, dtype=DT)], prior_precision=lam, prec_init=lam, num_data=n,
                mc_samples=3, generator=torch.Generator().manual_seed(7)).sample()[0]
    torch.testing.assert_close(xs, ref, atol=0, rtol=0)
    mean_of_sq = (1 - b2) * (xs**2).mean(0)
    sq_of_mean = (1 - b2) * xs.mean(0) ** 2
    assert (mean_of_sq - sq_of_mean).abs().min() > 1e-3  # the two candidates differ
    torch.testing.assert_close(opt.state[w]["exp_avg_sq"], mean_of_sq, atol=1e-12, rtol=0)


def _small_problem(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model = model.to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5)
    x = torch.randn(8, 3, generator=g, dtype=DT)
    y = torch.randn(8, 1, generator=g, dtype=DT)
    return model, x, y


def test_step_and_step_batched_agree() -> None:
    model_a, x, y = _small_problem()
    model_b = copy.deepcopy(model_a)
    unused_a = torch.zeros(2, dtype=DT, requires_grad=True)  # gradient always None
    unused_b = unused_a.detach().clone().requires_grad_(True)
    kw = dict(lr=0.05, prior_precision=0.5, prec_init=4.0, num_data=50, mc_samples=3)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    opt_a = Vadam([*model_a.parameters(), unused_a], generator=gen_a, **kw)
    opt_b = Vadam([*model_b.parameters(), unused_b], generator=gen_b, **kw)
    names = [n for n, _ in model_b.named_parameters()]

    def closure() -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(model_a(x), y)
        loss.backward()
        return loss

    def loss_fn(params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = functional_call(model_b, dict(zip(names, params)), (x,))
        return torch.nn.functional.mse_loss(out, y)

    def closure_batched(samples: list[torch.Tensor]):
        model_samples = tuple(samples[: len(names)])
        losses = vmap(loss_fn)(model_samples)
        grads = vmap(grad(loss_fn))(model_samples)
        return losses.mean(), [*grads, None]

    for _ in range(3):
        loss_a = opt_a.step(closure)
        loss_b = opt_b.step_batched(closure_batched)
        torch.testing.assert_close(loss_a, loss_b, atol=1e-12, rtol=0)
    for pa, pb in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
        torch.testing.assert_close(pa, pb, atol=1e-12, rtol=0)
        assert opt_a.state[pa].keys() == opt_b.state[pb].keys()
        for key in opt_a.state[pa]:
            torch.testing.assert_close(torch.as_tensor(opt_a.state[pa][key]),
                                       torch.as_tensor(opt_b.state[pb][key]), atol=1e-12, rtol=0)
    assert not opt_a.state[unused_a] and torch.equal(unused_a, torch.zeros(2, dtype=DT))
    assert opt_a.state[next(model_a.parameters())]["step"] == 3


def test_state_dict_round_trip_resumes_exactly() -> None:
    model, x, y = _small_problem(1)
    hp = dict(lr=0.02, betas=(0.6, 0.99), prior_precision=0.3, prec_init=2.5, num_data=77,
              mc_samples=2)
    gen = torch.Generator().manual_seed(11)
    opt = Vadam(model.parameters(), generator=gen, **hp)

    def make_closure(net: torch.nn.Module):
        def closure() -> torch.Tensor:
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            return loss
        return closure

    for _ in range(2):
        opt.step(make_closure(model))
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "model": model.state_dict(), "gen": gen.get_state()}, buf)
    for _ in range(3):
        opt.step(make_closure(model))

    buf.seek(0)
    ckpt = torch.load(buf)
    model2, _, _ = _small_problem(2)  # different starting values, overwritten below
    model2.load_state_dict(ckpt["model"])
    gen2 = torch.Generator()
    gen2.set_state(ckpt["gen"])
    opt2 = Vadam(model2.parameters(), generator=gen2)  # default hyperparameters
    opt2.load_state_dict(ckpt["opt"])
    for key, value in hp.items():
        assert opt2.param_groups[0][key] == value, key
    assert opt2.state[next(model2.parameters())]["step"] == 2
    for _ in range(3):
        opt2.step(make_closure(model2))
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def test_bayesian_linear_regression_matches_mean_field_posterior() -> None:
    r"""Vadam recovers the posterior of Bayesian linear regression.

    Model: y_i = x_i^T w + e_i, e_i ~ N(0, 1/beta), prior w ~ N(0, I/lam), n = 200, d = 2,
    x_ij = c_j * (+-1) (Rademacher scaled per column, c = (1, 2)). The loss is the per-example
    NLL f_i(w) = beta/2 (y_i - x_i^T w)^2 with num_data = n, so n * mean_i f_i + lam/2 |w|^2 is
    the negative log joint. Exact posterior: precision A = beta X^T X + lam I, mean
    A^{-1} beta X^T y; the mean-field (diagonal) optimum has std
    1/sqrt(A_jj) = 1/sqrt(beta n c_j^2 + lam).

    Fixed point of Vadam with one example per step (the gradient-magnitude curvature
    estimate needs per-example gradients: with the full-batch gradient E[g^2] carries no
    data noise and sigma scales like n^{-1/4}, not n^{-1/2}):
    * mean: E[g + lam/n mu] = 0. g is linear in w, so the Monte-Carlo average is the
      gradient at mu and mu* is the exact posterior mean.
    * s: s_j = mean_i E_eps[g_ij^2] = beta^2 c_j^2 (RSS/n + sum_k c_k^2 sigma_k^2), with
      RSS = sum_i r_i^2, r_i = x_i^T mu* - y_i, and sigma_k = 1/sqrt(n s_k + lam). So
      n s_j = beta c_j^2 (beta RSS + n beta sum_k c_k^2 sigma_k^2) ~= beta c_j^2 (beta RSS + d).
      beta RSS ~ chi^2_{n-d}, so in expectation n s_j = beta n c_j^2: the mean-field precision.
      For one data set, beta RSS/n has relative sd sqrt(2/n) = 10%, i.e. 5% on sigma. The
      test solves this fixed point numerically (``sigma_fp``).

    Tolerances:
    * sigma vs sigma_fp: 3%. The EMA of s (b2 = 0.999, T = 4000) keeps b2^T = 1.8% of
      its zero start (+0.9% on sigma) plus EMA noise of about 1% (epochs are reshuffled,
      so each EMA window sees every example ~5 times).
    * sigma vs mean-field optimum: 15% = three sd of the chi-square effect above (this
      seed gives 0.94).
    * mean vs exact mean: 0.25 mean-field sd. Reshuffled epochs and lr decayed
      geometrically 2e-2 -> 1e-4 leave errors below 0.08 sd over 10 seeds.
    """
    n, d, beta, lam, steps, lr0, lr1 = 200, 2, 4.0, 1.0, 4000, 2e-2, 1e-4
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 2.0], dtype=DT)
    X = (torch.randint(0, 2, (n, d), generator=g).to(DT) * 2 - 1) * scale
    noise = torch.randn(n, generator=g, dtype=DT) / math.sqrt(beta)
    y = X @ torch.tensor([1.0, -0.5], dtype=DT) + noise
    A = beta * X.T @ X + lam * torch.eye(d, dtype=DT)
    mu_exact = torch.linalg.solve(A, beta * X.T @ y)
    sigma_mf = A.diag().rsqrt()

    r = X @ mu_exact - y
    sigma_fp = sigma_mf.clone()
    for _ in range(50):
        n_s = beta**2 * (X**2).T @ (r**2 + (X**2) @ sigma_fp**2)
        sigma_fp = (n_s + lam).rsqrt()

    w = torch.zeros(d, dtype=DT, requires_grad=True)
    opt = Vadam([w], lr=lr0, betas=(0.5, 0.999), prior_precision=lam, prec_init=lam,
                num_data=n, mc_samples=1, generator=torch.Generator().manual_seed(1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (lr1 / lr0) ** (t / steps))
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(steps // n)])
    for i in order.tolist():
        xi, yi = X[i], y[i]

        def closure() -> torch.Tensor:
            loss = 0.5 * beta * (yi - xi @ w) ** 2
            loss.backward()
            return loss

        opt.step(closure)
        sched.step()

    sigma = opt.posterior_std(w)
    assert ((w.detach() - mu_exact).abs() / sigma_mf).max() < 0.25
    torch.testing.assert_close(sigma, sigma_fp, rtol=0.03, atol=0)
    torch.testing.assert_close(sigma, sigma_mf, rtol=0.15, atol=0)
    # The per-coordinate scale is learned: column 2 is twice as large, sigma half as large.
    assert abs(sigma[1] / sigma[0] - 0.5) < 0.01


def test_parameter_without_gradient_is_skipped_and_counter_not_advanced() -> None:
    used = torch.ones(2, dtype=DT, requires_grad=True)
    sometimes = torch.ones(2, dtype=DT, requires_grad=True)
    opt = Vadam([used, sometimes], lr=0.1, num_data=10, mc_samples=2,
                generator=torch.Generator().manual_seed(0))
    use_both = [True]

    def closure() -> torch.Tensor:
        loss = (used**2).sum() + (sometimes.sum() if use_both[0] else 0.0)
        loss.backward()
        return loss

    opt.step(closure)
    use_both[0] = False
    before = sometimes.detach().clone()
    opt.step(closure)
    assert opt.state[used]["step"] == 2
    assert opt.state[sometimes]["step"] == 1
    assert sometimes.grad is None
    torch.testing.assert_close(sometimes, before, atol=0, rtol=0)  # restored to mu, not updated


def test_posterior_and_sampling_before_any_step() -> None:
    w = torch.zeros(3, 2, dtype=DT, requires_grad=True)
    b = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = Vadam([{"params": [w]}, {"params": [b], "prec_init": 4.0}], prec_init=100.0, mc_samples=2,
                generator=torch.Generator().manual_seed(3))
    (mw, sw), (mb, sb) = opt.posterior()
    torch.testing.assert_close(sw, torch.full((3, 2), 0.1, dtype=DT))
    torch.testing.assert_close(sb, torch.full((5,), 0.5, dtype=DT))
    torch.testing.assert_close(opt.posterior_std(b), sb)
    assert torch.equal(opt.posterior_mean(w), mw) and opt.posterior_mean(w) is not w
    xs = opt.sample()
    assert [tuple(x.shape) for x in xs] == [(2, 3, 2), (2, 5)]
    big = opt.sample(4000)[1]
    assert abs(big.std().item() - 0.5) < 0.03  # sd of the sample sd ~ 0.5/sqrt(2*20000)
    with pytest.raises(ValueError, match="not one of"):
        opt.posterior_std(torch.zeros(1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mc_samples": 0}, "mc_samples"),
        ({"num_data": 0}, "num_data"),
        ({"prec_init": 0.5, "prior_precision": 1.0}, "prec_init"),
        ({"lr": 0.0}, "lr"),
        ({"betas": (0.5, 1.0)}, "betas"),
        ({"prior_precision": 0.0, "prec_init": 1.0}, "prior_precision"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Vadam([torch.zeros(2, requires_grad=True)], **kwargs)


def test_invalid_group_and_step_arguments_raise() -> None:
    w = torch.zeros(2, requires_grad=True)
    opt = Vadam([w], mc_samples=2)
    with pytest.raises(ValueError, match="closure"):
        opt.step(None)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="shape"):
        opt.step_batched(lambda samples: (torch.tensor(0.0), [torch.zeros(3, 2)]))
    with pytest.raises(ValueError, match="mc_samples"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "mc_samples": -1})
    opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "mc_samples": 3})
    with pytest.raises(ValueError, match="share mc_samples"):
        opt.step(lambda: None)
