"""Architecture distributions: how architecture parameters become mixing weights, samples,
a mode for selection, and how one step updates them.

- :class:`PointEstimate` (``--method darts``): alpha is a point estimate, updated by Adam.
- :class:`Gaussian` (``--method balenas``): alpha ~ N(mu, sigma^2), updated by
  :class:`~bayesnas_core.optim.Vadam` from the gradients at M Monte-Carlo samples
  (METHOD.md section 2).

Both mix by a softmax of the logits (or of a sample of them). Another strategy (a
Dirichlet as in DrNAS, a Gumbel-softmax as in GDAS) is one class with the same five
members, registered with :func:`register_method`; the search loop does not change
(README, "Adding a search space or a method").
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from .errors import UserError
from .gradients import (ArchTensors, arch_gradient, arch_gradient_batched, leaves, like,
                        softmax_mix)
from .optim import Vadam

__all__ = ["ArchDistribution", "PointEstimate", "Gaussian", "register_method", "method_names",
           "build_distribution"]

Batch = tuple[Tensor, Tensor]


class ArchDistribution(Protocol):
    """One method's view of the architecture parameters ``arch`` (a tensor or a dict)."""

    arch: ArchTensors
    optimizer: torch.optim.Optimizer
    order: int  # 1: first order; 2: unrolled (second order)

    def mixing(self, logits: ArchTensors) -> ArchTensors:
        """The supernet's mixing weights for architecture logits (or a sample of them)."""
        ...

    def mode(self) -> ArchTensors:
        """The architecture logits whose discrete choice is selected (the genotype's)."""
        ...

    def samples(self, k: int, generator: torch.Generator | None = None) -> ArchTensors:
        """``k`` architecture samples, each tensor with a leading ``k``."""
        ...

    def sigma(self) -> ArchTensors | None:
        """The posterior standard deviation, for a distribution that has one."""
        ...

    def step(self, model: nn.Module, val_batch: Batch, train_batch: Batch, xi: float,
             w_opt: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """One architecture step on ``val_batch`` (second order unrolls ``w_opt`` on
        ``train_batch`` with rate ``xi``); returns ``valid_loss`` and ``valid_acc``."""
        ...


def _set_grads(arch: ArchTensors, grads: ArchTensors | None) -> None:
    for p, g in zip(leaves(arch), leaves(grads) if grads is not None else [None] * len(leaves(arch))):
        p.grad = g


class PointEstimate:
    """DARTS: Adam on the point estimate alpha (weight decay as in DARTS)."""

    def __init__(self, arch: ArchTensors, *, lr: float, betas: tuple[float, float],
                 weight_decay: float, order: int, eps: float = 0.01) -> None:
        self.arch = arch
        self.optimizer = torch.optim.Adam(leaves(arch), lr=lr, betas=betas, weight_decay=weight_decay)
        self.order, self.eps = order, eps

    def mixing(self, logits: ArchTensors) -> ArchTensors:
        return softmax_mix(logits)

    def mode(self) -> ArchTensors:
        return self.arch

    def samples(self, k: int, generator: torch.Generator | None = None) -> ArchTensors:
        return like(self.arch, [t.detach().expand(k, *t.shape) for t in leaves(self.arch)])

    def sigma(self) -> ArchTensors | None:
        return None

    def step(self, model: nn.Module, val_batch: Batch, train_batch: Batch, xi: float,
             w_opt: torch.optim.Optimizer | None = None) -> dict[str, float]:
        loss, grad, acc = arch_gradient(model, self.arch, val_batch, train_batch, order=self.order,
                                        xi=xi, eps=self.eps, w_opt=w_opt, mix=self.mixing)
        _set_grads(self.arch, grad)
        self.optimizer.step()
        _set_grads(self.arch, None)
        return {"valid_loss": loss, "valid_acc": acc}


class Gaussian:
    """BaLeNAS: Vadam on N(mu, sigma^2), from M Monte-Carlo samples of alpha.

    First order with ``batched=True`` evaluates the M samples in one batched pass;
    otherwise one pass per sample (second order always). Both consume the same noise.
    """

    def __init__(self, arch: ArchTensors, *, lr: float, betas: tuple[float, float],
                 prior_precision: float, prec_init: float, num_data: int, mc_samples: int,
                 order: int, batched: bool, generator: torch.Generator | None,
                 eps: float = 0.01) -> None:
        self.arch = arch
        self.optimizer = Vadam(leaves(arch), lr=lr, betas=betas, prior_precision=prior_precision,
                               prec_init=prec_init, num_data=num_data, mc_samples=mc_samples,
                               generator=generator)
        self.order, self.batched, self.eps = order, batched, eps

    def mixing(self, logits: ArchTensors) -> ArchTensors:
        return softmax_mix(logits)

    def mode(self) -> ArchTensors:
        return self.arch

    def samples(self, k: int, generator: torch.Generator | None = None) -> ArchTensors:
        out = []
        for mu, sd in zip(leaves(self.arch), leaves(self.sigma())):
            eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
            out.append(mu.detach() + sd * eps)
        return like(self.arch, out)

    def sigma(self) -> ArchTensors | None:
        return like(self.arch, [self.optimizer.posterior_std(p) for p in leaves(self.arch)])

    def step(self, model: nn.Module, val_batch: Batch, train_batch: Batch, xi: float,
             w_opt: torch.optim.Optimizer | None = None) -> dict[str, float]:
        accs: list[float] = []
        if self.order == 1 and self.batched:
            def closure_batched(samples: list[Tensor]) -> tuple[float, list[Tensor]]:
                loss, grads, acc = arch_gradient_batched(model, like(self.arch, samples), val_batch,
                                                         mix=self.mixing)
                accs.append(acc)
                return loss, leaves(grads)

            loss = self.optimizer.step_batched(closure_batched)
        else:
            def closure() -> float:
                loss, grad, acc = arch_gradient(model, self.arch, val_batch, train_batch,
                                                order=self.order, xi=xi, eps=self.eps,
                                                w_opt=w_opt, mix=self.mixing)
                _set_grads(self.arch, grad)  # Vadam zeroes them before every sample
                accs.append(acc)
                return loss

            loss = self.optimizer.step(closure)
        _set_grads(self.arch, None)
        return {"valid_loss": float(loss), "valid_acc": sum(accs) / len(accs)}


_METHODS: dict[str, Callable[..., ArchDistribution]] = {}


def register_method(name: str) -> Callable[[Callable[..., ArchDistribution]], Callable[..., ArchDistribution]]:
    """``@register_method("name")`` on a builder ``(cfg, arch, num_valid, generator) ->
    ArchDistribution``; a duplicate name raises."""
    def add(builder: Callable[..., ArchDistribution]) -> Callable[..., ArchDistribution]:
        if name in _METHODS:
            raise ValueError(f"search method {name!r} is registered twice")
        _METHODS[name] = builder
        return builder

    return add


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


@register_method("darts")
def _darts(cfg: Any, arch: ArchTensors, num_valid: int, generator: torch.Generator | None) -> PointEstimate:
    s = cfg.search
    return PointEstimate(arch, lr=s.a_lr, betas=tuple(s.a_betas), weight_decay=s.a_weight_decay,
                         order=s.order, eps=s.unrolled_eps)


@register_method("balenas")
def _balenas(cfg: Any, arch: ArchTensors, num_valid: int, generator: torch.Generator | None) -> Gaussian:
    s = cfg.search
    return Gaussian(arch, lr=s.a_lr, betas=tuple(s.a_betas), prior_precision=s.prior_precision,
                    prec_init=s.prec_init, num_data=s.num_data or num_valid, mc_samples=s.mc_samples,
                    order=s.order, batched=s.batched_mc, generator=generator, eps=s.unrolled_eps)


def build_distribution(cfg: Any, arch: ArchTensors, num_valid: int,
                       generator: torch.Generator | None) -> ArchDistribution:
    """The distribution ``cfg.search.method`` names, over the architecture tensors ``arch``."""
    if cfg.search.method not in _METHODS:
        raise UserError(f"unknown method {cfg.search.method!r}; use --method one of {', '.join(_METHODS)}")
    return _METHODS[cfg.search.method](cfg, arch, num_valid, generator)
