"""Choosing the final cell from the learned architecture distribution.

- BaLeNAS: ``argmax(mu)`` on every edge.
- BaLeNAS-TF (METHOD.md section 3): draw K cells from N(mu, sigma^2) (argmax per edge of
  each sample), keep one cell per distinct network (NB201's canonical form), score each
  stand-alone network at initialisation with a zero-cost proxy, and pick the best.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .proxies import compute_proxy
from .spaces import Arch, NB201Network

__all__ = [
    "argmax_arch",
    "sample_archs",
    "unique_networks",
    "score_archs",
    "Candidate",
    "TFSelection",
    "select_tf",
]


def argmax_arch(mu: Tensor) -> Arch:
    """The cell with the largest ``mu`` on every edge."""
    return Arch.from_indices(mu.detach().argmax(dim=-1).tolist())


def sample_archs(mu: Tensor, sigma: Tensor | None, k: int,
                 generator: torch.Generator | None = None) -> list[Arch]:
    """K cells: ``argmax(mu + sigma * eps)`` per edge, ``eps ~ N(0, I)`` (seeded).

    Noise is drawn in float64 on the generator's device (CPU when ``generator`` is
    None). Without ``sigma`` (a DARTS point estimate) every sample is the argmax cell.
    """
    mu = mu.detach().cpu().double()
    if sigma is None:
        return [argmax_arch(mu)] * k
    sigma = sigma.detach().cpu().double()
    gen_device = generator.device if generator is not None else torch.device("cpu")
    eps = torch.randn((k, *mu.shape), generator=generator, dtype=torch.float64,
                      device=gen_device).cpu()
    draws = (mu + sigma * eps).argmax(dim=-1)
    return [Arch.from_indices(row.tolist()) for row in draws]


def unique_networks(archs: list[Arch]) -> list[Arch]:
    """Keep the first cell of each distinct network (by :attr:`Arch.canonical`)."""
    seen: set[str] = set()
    out: list[Arch] = []
    for a in archs:
        if a.canonical not in seen:
            seen.add(a.canonical)
            out.append(a)
    return out


@dataclass
class Candidate:
    """One sampled cell and its proxy score."""

    arch: Arch
    score: float
    log10: float


@dataclass
class TFSelection:
    """The result of BaLeNAS-TF selection."""

    proxy: str
    samples: int  # K drawn
    best: Arch
    candidates: list[Candidate]  # distinct networks, in draw order
    draws: list[Arch] = field(default_factory=list)  # all K draws, duplicates included


def score_archs(archs: list[Arch], *, proxy: str, num_classes: int, in_channels: int,
                image_size: int, batch: tuple[Tensor, Tensor] | None = None, C: int = 16,
                N: int = 5, device: torch.device | str = "cpu", init_seed: int = 0,
                progress: Callable[[list[Arch]], Any] | None = None) -> list[Candidate]:
    """Score each cell's stand-alone network at initialisation with ``proxy``.

    Every network is initialised on the CPU from the CPU generator seeded with
    ``init_seed`` (the global RNG state is restored afterwards, CUDA's is never touched)
    and then moved to ``device``, so a cell's score depends neither on the order it is
    scored in nor on the device. ``batch`` is the labelled batch SNIP and GraSP need;
    SynFlow uses none.
    """
    inputs, targets = (None, None) if batch is None else (batch[0].to(device), batch[1].to(device))
    out: list[Candidate] = []
    for arch in (progress(archs) if progress is not None else archs):
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(init_seed)
            net = NB201Network(arch, C, N, num_classes, in_channels).to(device)
        score = compute_proxy(proxy, net, inputs=inputs, targets=targets,
                              input_shape=(in_channels, image_size, image_size))
        out.append(Candidate(arch, score.value, score.log10))
    return out


def select_tf(mu: Tensor, sigma: Tensor | None, *, proxy: str, samples: int,
              generator: torch.Generator | None = None, **score_kw: Any) -> TFSelection:
    """BaLeNAS-TF: draw ``samples`` cells, keep distinct networks, score, pick the best.

    ``score_kw`` goes to :func:`score_archs` (sizes, batch, device, init seed).
    """
    draws = sample_archs(mu, sigma, samples, generator)
    candidates = score_archs(unique_networks(draws), proxy=proxy, **score_kw)
    best = max(candidates, key=lambda c: c.score).arch
    return TFSelection(proxy=proxy, samples=samples, best=best, candidates=candidates, draws=draws)
