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
from torch import Tensor, nn

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
    "sample_genotypes",
    "select_tf_space",
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


# ---------------------------------------------------------------------------------
# any registered space: genotypes drawn from N(mu, sigma^2), ranked on their networks
# ---------------------------------------------------------------------------------
def sample_genotypes(space: Any, mu: dict[str, Tensor], sigma: dict[str, Tensor] | None, k: int,
                     generator: torch.Generator | None = None) -> list[Any]:
    """K genotypes of ``space``: its discrete rule (``space.genotype``) applied to
    ``mu + sigma * eps`` for every architecture tensor, ``eps ~ N(0, I)`` drawn in float64
    on the generator's device, tensor by tensor in ``mu``'s order. Without ``sigma`` every
    draw is the genotype of ``mu``."""
    mu = {n: t.detach().cpu().double() for n, t in mu.items()}
    if sigma is None:
        return [space.genotype(mu)] * k
    gen_device = generator.device if generator is not None else torch.device("cpu")
    eps = {n: torch.randn((k, *t.shape), generator=generator, dtype=torch.float64,
                          device=gen_device).cpu() for n, t in mu.items()}
    return [space.genotype({n: mu[n] + sigma[n].detach().cpu().double() * eps[n][i] for n in mu})
            for i in range(k)]


def _network_for_scoring(space: Any, genotype: Any, **kwargs: Any) -> nn.Module:
    """The stand-alone network a proxy scores: without an auxiliary head where the space's
    builder has one (DARTS), so the network returns plain logits."""
    import inspect

    if "auxiliary" in inspect.signature(space.build_network).parameters:
        kwargs["auxiliary"] = False
    return space.build_network(genotype, **kwargs)


def select_tf_space(space: Any, mu: dict[str, Tensor], sigma: dict[str, Tensor] | None, *,
                    proxy: str, samples: int, num_classes: int, in_channels: int, image_size: int,
                    batch: tuple[Tensor, Tensor] | None = None, C: int = 16, N: int = 5,
                    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                    init_seed: int = 0, progress: Callable[[list[Any]], Any] | None = None) -> TFSelection:
    """BaLeNAS-TF in any registered space: draw ``samples`` genotypes, keep distinct ones
    (by their text form), score each stand-alone network at initialisation with ``proxy``
    (seeded as :func:`score_archs` does), pick the best."""
    draws = sample_genotypes(space, mu, sigma, samples, generator)
    distinct = list({space.format(g): g for g in draws}.values())
    inputs, targets = (None, None) if batch is None else (batch[0].to(device), batch[1].to(device))
    candidates = []
    for g in (progress(distinct) if progress is not None else distinct):
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(init_seed)
            net = _network_for_scoring(space, g, C=C, N=N, num_classes=num_classes,
                                       in_channels=in_channels).to(device)
        score = compute_proxy(proxy, net, inputs=inputs, targets=targets,
                              input_shape=(in_channels, image_size, image_size))
        candidates.append(Candidate(g, score.value, score.log10))
    best = max(candidates, key=lambda c: c.score).arch
    return TFSelection(proxy=proxy, samples=samples, best=best, candidates=candidates, draws=draws)
