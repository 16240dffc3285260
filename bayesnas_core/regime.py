"""The dimensionless quantities that decide a search's regime.

A scaled-down search behaves like the paper's only if these stay comparable (the
paper's NB201 setting: 50 epochs of 25,000 / 64 steps at arch lr 3e-4, N = 25,000):

- ``alpha_travel_bound``: arch lr x architecture steps so far, how far Adam or Vadam can
  have moved any alpha (each step moves it by at most about the lr);
- ``mu_range``: how far the learned alphas actually spread (max - min over all of them);
- ``s_warmup``: ``1 - beta2^steps``, the share of its stationary value that Vadam's
  moving average ``s`` of squared gradients holds (it starts at zero);
- ``ns_over_lambda``: the mean of ``N s / lambda``, the likelihood's precision against
  the prior's in the posterior precision ``N s + lambda``: near 0, sigma is the prior's;
- ``mu_spread_over_sigma``: the spread of mu across an edge's ops (population std,
  averaged over edges) over the mean sigma: below 1, samples of alpha are nearly random;
- ``draw_matches_argmax``: how often an op drawn from N(mu, sigma^2) (argmax of one
  sample per edge) is the edge's argmax(mu): 1/5 is a uniform draw, 1 a point mass;
- ``train_valid_gap``: the supernet's train minus valid accuracy in the epoch: a large
  gap means the weights fit the train split and the valid gradients steer alpha.

:func:`epoch_regime` computes them after an epoch; :func:`planned_regime` gives the ones
that follow from a configuration alone, for comparing presets before running them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["epoch_regime", "planned_regime", "draw_matches_argmax", "DRAWS"]

#: Monte-Carlo draws per edge for :func:`draw_matches_argmax`
DRAWS = 4000


def draw_matches_argmax(mu: Tensor, sigma: Tensor, *, draws: int = DRAWS, seed: int = 0) -> float:
    """Share of per-edge draws ``argmax(mu + sigma * eps)`` equal to ``argmax(mu)``
    (a private generator: the search's random streams are not touched)."""
    g = torch.Generator().manual_seed(seed)
    mu, sigma = mu.detach().double().cpu(), sigma.detach().double().cpu()
    eps = torch.randn((draws, *mu.shape), generator=g, dtype=torch.float64)
    drawn = (mu + sigma * eps).argmax(-1)
    return float((drawn == mu.argmax(-1)).double().mean())


def epoch_regime(*, mu: Tensor, sigma: Tensor | None, a_lr: float, arch_steps: int,
                 beta2: float, num_data: int | None, prior_precision: float,
                 exp_avg_sq: Tensor | None, train_acc: float, valid_acc: float,
                 seed: int = 0) -> dict[str, Any]:
    """The regime quantities after ``arch_steps`` architecture steps (see the module
    docstring); the Gaussian ones are None for a point estimate (DARTS)."""
    mu = mu.detach().double().cpu()
    out: dict[str, Any] = {
        "alpha_travel_bound": a_lr * arch_steps,
        "mu_range": float(mu.max() - mu.min()),
        "train_valid_gap": train_acc - valid_acc,
        "s_warmup": None, "ns_over_lambda": None, "mu_spread_over_sigma": None,
        "draw_matches_argmax": None,
    }
    if sigma is None:
        return out
    sigma = sigma.detach().double().cpu()
    out["s_warmup"] = 1.0 - beta2 ** arch_steps
    if exp_avg_sq is not None and num_data is not None:
        out["ns_over_lambda"] = float((num_data * exp_avg_sq.detach().double().cpu()).mean()
                                      / prior_precision)
    out["mu_spread_over_sigma"] = float(mu.std(-1, unbiased=False).mean() / sigma.mean())
    out["draw_matches_argmax"] = draw_matches_argmax(mu, sigma, seed=seed)
    return out


def planned_regime(*, epochs: int, train_size: int, batch_size: int, a_lr: float,
                   beta2: float) -> dict[str, float]:
    """What a configuration fixes before it runs: architecture steps, alpha's possible
    travel and the warm-up of ``s`` at the end of the search."""
    steps = epochs * (train_size // batch_size)
    return {"arch_steps": steps, "alpha_travel_bound": a_lr * steps,
            "s_warmup": 1.0 - beta2 ** steps}
