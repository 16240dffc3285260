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
  averaged over edges) over the mean sigma: below 1, sigma is as large as mu's
  differences and a draw often leaves the argmax; near 0, draws are nearly random;
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

__all__ = ["epoch_regime", "planned_regime", "planned_regime_of", "draw_matches_argmax", "DRAWS",
           "PAPER", "matched_arch_settings", "search_split_size"]

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
    docstring); the Gaussian ones are None for a point estimate (DARTS). ``mu``, ``sigma``
    and ``exp_avg_sq`` may be dicts of named tensors (a space with several architecture
    tensors): the rows of all of them count as the edges, tensors with another number of
    choices are averaged row-weighted."""
    if not isinstance(mu, Tensor):
        return _named_regime(mu, sigma, exp_avg_sq, a_lr=a_lr, arch_steps=arch_steps, beta2=beta2,
                             num_data=num_data, prior_precision=prior_precision,
                             train_acc=train_acc, valid_acc=valid_acc, seed=seed)
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


def _named_regime(mu: Any, sigma: Any, exp_avg_sq: Any, **kw: Any) -> dict[str, Any]:
    groups: dict[int, list[str]] = {}
    for name, t in mu.items():
        groups.setdefault(t.shape[-1], []).append(name)

    def rows(d: Any, names: list[str]) -> Tensor | None:
        return None if d is None else torch.cat([d[n].reshape(-1, d[n].shape[-1]) for n in names])

    parts = [(sum(mu[n].numel() // mu[n].shape[-1] for n in names),
              epoch_regime(mu=rows(mu, names), sigma=rows(sigma, names), exp_avg_sq=rows(exp_avg_sq, names), **kw))
             for names in groups.values()]
    if len(parts) == 1:
        return parts[0][1]
    total = sum(n for n, _ in parts)
    out = dict(parts[0][1])
    every = torch.cat([t.detach().double().cpu().reshape(-1) for t in mu.values()])
    out["mu_range"] = float(every.max() - every.min())
    for key in ("ns_over_lambda", "mu_spread_over_sigma", "draw_matches_argmax"):
        vals = [(n, r[key]) for n, r in parts]
        out[key] = None if any(v is None for _, v in vals) else sum(n * v for n, v in vals) / total
    return out


def planned_regime(*, epochs: int, train_size: int, batch_size: int, a_lr: float,
                   beta2: float) -> dict[str, float]:
    """What a configuration fixes before it runs: architecture steps, alpha's possible
    travel and the warm-up of ``s`` at the end of the search."""
    steps = epochs * (train_size // batch_size)
    return {"arch_steps": steps, "alpha_travel_bound": a_lr * steps,
            "s_warmup": 1.0 - beta2 ** steps}


#: The paper's NB201 search (METHOD.md section 4: 50 epochs of 25,000 / 64 = 390 steps,
#: arch lr 3e-4, Vadam beta2 0.999, N = 25,000): the quantities the CPU presets keep
PAPER = {
    "arch_steps": 50 * (25_000 // 64),
    "alpha_travel_bound": 3e-4 * 50 * (25_000 // 64),  # 5.85
    "s_windows": 50 * (25_000 // 64) * (1 - 0.999),  # 19.5 averaging windows of s
    "num_data": 25_000,
}


def matched_arch_settings(arch_steps: int) -> dict[str, float | int]:
    """The matching rule of the CPU presets, fixed before any of their runs: for a search
    of ``arch_steps`` architecture steps, the arch lr, Vadam/Adam beta2 and Vadam's N that
    keep the paper's values of

    - alpha's possible travel ``a_lr x steps`` (5.85): ``a_lr = 5.85 / steps``;
    - the number of averaging windows of ``s``, ``steps x (1 - beta2)`` (19.5), so that
      ``s`` is as warmed up, and as much a moving average, as in the paper's search:
      ``beta2 = 1 - 19.5 / steps``;
    - the likelihood's weight ``N`` in ``N s / lambda`` (25,000), with the paper's prior.

    Everything else (weight optimizer, batch size, Monte-Carlo samples) stays at the
    paper's values; what the rule cannot set (the spread of mu over sigma, the draws'
    agreement with argmax, the supernet's train-valid gap) is measured per epoch."""
    if arch_steps < PAPER["s_windows"] * 2:
        raise ValueError(f"{arch_steps} architecture steps are too few to match the paper's "
                         f"{PAPER['s_windows']:g} averaging windows of s")
    return {"a_lr": PAPER["alpha_travel_bound"] / arch_steps,
            "beta2": 1.0 - PAPER["s_windows"] / arch_steps,
            "num_data": PAPER["num_data"]}


#: Images in each search split (train = valid) of the datasets whose split is the
#: training set cut in half (bayesnas_core.data: the shipped subset's 4,000 training
#: images, Fashion-MNIST's 60,000, CIFAR-10's 50,000), before ``--limit``
HALF_SPLITS = {"fashion-mnist-subset": 2_000, "fashion-mnist": 30_000, "cifar10": 25_000}


def search_split_size(cfg: Any) -> int:
    """Images in the search-train split of a :class:`~bayesnas_core.config.RunConfig`
    (a dataset of :data:`HALF_SPLITS`, after ``limit``)."""
    from .errors import UserError

    if cfg.data.dataset not in HALF_SPLITS:
        raise UserError(f"the split size of {cfg.data.dataset} is not known here; use one of "
                        f"{', '.join(HALF_SPLITS)}")
    full = HALF_SPLITS[cfg.data.dataset]
    return min(full, cfg.data.limit or full)


def planned_regime_of(cfg: Any) -> dict[str, float]:
    """:func:`planned_regime` of a configuration, plus ``s_windows`` (steps x (1 - beta2))
    and Vadam's ``num_data`` (N; the valid split's size when the config leaves it unset)."""
    size = search_split_size(cfg)
    s = cfg.search
    out: dict[str, float] = planned_regime(epochs=s.epochs, train_size=size,
                                           batch_size=cfg.data.batch_size, a_lr=s.a_lr,
                                           beta2=s.a_betas[1])
    out["s_windows"] = out["arch_steps"] * (1.0 - s.a_betas[1])
    out["num_data"] = s.num_data or size
    return out


def run_regime(run_dir: Any) -> list[dict[str, Any]]:
    """The regime quantities of every epoch of a finished or partial search, recomputed from
    its run directory (``config.json``, ``history.json``, ``metrics.jsonl``), so runs made
    before they were recorded can be read too. Vadam's ``N s`` comes from the recorded
    sigma (``sigma = 1 / sqrt(N s + lambda)``; from a float32 sigma exact to about 1e-6
    lambda). Needs a dataset of :data:`HALF_SPLITS`."""
    from .config import config_from_dict
    from .errors import UserError
    from .runs import RunDir

    run = RunDir(run_dir)
    if not (run.path / "config.json").is_file():
        raise UserError(f"no run directory at {run.path} (config.json missing); pass run folders")
    cfg = config_from_dict(run.read_json("config.json"), where=str(run.path / "config.json"))
    if cfg.data.dataset not in HALF_SPLITS:
        raise UserError(f"{run.path}: the regime of a {cfg.data.dataset} search needs its split "
                        f"sizes; use a run on {', '.join(HALF_SPLITS)}")
    size = search_split_size(cfg)
    steps_per_epoch = size // cfg.data.batch_size
    s = cfg.search
    lam, n = s.prior_precision, s.num_data or size
    metrics = {m["epoch"]: m for m in run.read_metrics()}
    out = []
    for h in run.read_json("history.json")["epochs"]:
        mu = torch.tensor(h["mu"], dtype=torch.float64)
        sigma = None if h["sigma"] is None else torch.tensor(h["sigma"], dtype=torch.float64)
        ns = None if sigma is None else sigma.pow(-2) - lam  # N s, per alpha
        m = metrics.get(h["epoch"], {})
        r = epoch_regime(mu=mu, sigma=sigma, a_lr=s.a_lr, arch_steps=h["epoch"] * steps_per_epoch,
                         beta2=s.a_betas[1], num_data=1 if ns is not None else None,
                         prior_precision=lam, exp_avg_sq=ns,
                         train_acc=m.get("train_acc", float("nan")),
                         valid_acc=m.get("valid_acc", float("nan")), seed=cfg.seed + h["epoch"])
        out.append({"epoch": h["epoch"], "num_data": n, **r})
    return out
