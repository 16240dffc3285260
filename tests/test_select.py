"""Selection: argmax(mu), sampling from N(mu, sigma^2), de-duplication, BaLeNAS-TF."""

from __future__ import annotations

import torch

from bayesnas_core.select import argmax_arch, sample_archs, score_archs, select_tf, unique_networks
from bayesnas_core.spaces import Arch


def _mu_sigma(seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 5, generator=g), torch.full((6, 5), scale)


def test_samples_equal_argmax_as_sigma_goes_to_zero() -> None:
    mu, _ = _mu_sigma()
    target = argmax_arch(mu)
    for scale in (1e-3, 1e-6, 1e-12):
        draws = sample_archs(mu, torch.full((6, 5), scale), 200, torch.Generator().manual_seed(1))
        assert all(a == target for a in draws)
    wide = sample_archs(mu, torch.full((6, 5), 10.0), 200, torch.Generator().manual_seed(1))
    assert len(set(wide)) > 50  # with a wide posterior the samples do differ


def test_sampler_is_seeded_and_reproducible() -> None:
    mu, sigma = _mu_sigma()
    a = sample_archs(mu, sigma, 50, torch.Generator().manual_seed(3))
    b = sample_archs(mu, sigma, 50, torch.Generator().manual_seed(3))
    c = sample_archs(mu, sigma, 50, torch.Generator().manual_seed(4))
    assert a == b and a != c


def test_sampling_follows_the_gaussian() -> None:
    """Edge 0: mu = (1, 0, 0, 0, 0), sigma = 1: P(op 0 wins) is the Gaussian max
    probability, about 0.52 (numerical integral); 4,000 draws, tolerance 4 std errors."""
    mu = torch.zeros(6, 5)
    mu[:, 0] = 1.0
    draws = sample_archs(mu, torch.ones(6, 5), 4000, torch.Generator().manual_seed(0))
    frac = sum(a.ops[0] == "none" for a in draws) / len(draws)
    # P = integral phi(x-1) Phi(x)^4 dx, computed by quadrature here:
    xs = torch.linspace(-8, 10, 20001, dtype=torch.float64)
    phi = torch.exp(-0.5 * (xs - 1) ** 2) / (2 * torch.pi) ** 0.5
    Phi = 0.5 * (1 + torch.erf(xs / 2 ** 0.5))
    p = torch.trapezoid(phi * Phi ** 4, xs).item()
    assert abs(frac - p) < 4 * (p * (1 - p) / len(draws)) ** 0.5


def test_unique_networks_uses_the_canonical_form() -> None:
    a = Arch.parse("|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|")
    b = Arch.parse("|avg_pool_3x3~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|")
    c = Arch.parse("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|nor_conv_3x3~1|none~2|")
    assert a.canonical == b.canonical != c.canonical  # conv(x) vs conv(conv(x))
    assert unique_networks([a, b, c, a]) == [a, c]


def test_select_tf_picks_the_best_scoring_candidate() -> None:
    mu, sigma = _mu_sigma(scale=2.0)
    x = torch.randn(8, 1, 8, 8)
    y = torch.randint(0, 3, (8,))
    kw = dict(num_classes=3, in_channels=1, image_size=8, batch=(x, y), C=4, N=1)
    sel = select_tf(mu, sigma, proxy="synflow", samples=20, generator=torch.Generator().manual_seed(0), **kw)
    assert 1 < len(sel.candidates) <= 20 and len(sel.draws) == 20
    assert {c.arch.canonical for c in sel.candidates} == {a.canonical for a in sel.draws}
    assert len({c.arch.canonical for c in sel.candidates}) == len(sel.candidates)
    best = max(sel.candidates, key=lambda c: c.score)
    assert sel.best == best.arch
    # scores do not depend on the order cells are scored in
    rescored = score_archs([c.arch for c in reversed(sel.candidates)], proxy="synflow", **kw)
    assert [c.score for c in reversed(rescored)] == [c.score for c in sel.candidates]
    # reproducible
    again = select_tf(mu, sigma, proxy="synflow", samples=20, generator=torch.Generator().manual_seed(0), **kw)
    assert again.best == sel.best


def test_scoring_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    score_archs([argmax_arch(torch.randn(6, 5, generator=torch.Generator().manual_seed(0)))],
                proxy="synflow", num_classes=3, in_channels=1, image_size=8, C=4, N=1)
    assert torch.equal(torch.get_rng_state(), before)
