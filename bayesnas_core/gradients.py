"""Architecture gradients: first order, DARTS's unrolled second order, batched samples, curvature.

Architecture tensors come as one tensor (NB201's ``alpha``) or as a dict of named tensors
(DARTS's ``normal`` and ``reduce``); every function returns gradients of the same shape.
``mix`` turns architecture logits (or a sample of them) into the supernet's mixing
weights; it belongs to the architecture distribution (:mod:`bayesnas_core.distributions`)
and defaults to a softmax over the last axis.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ArchTensors", "leaves", "like", "detached", "softmax_mix", "arch_gradient",
           "arch_gradient_batched", "hessian_vector_fd", "hessian_vector_exact",
           "dominant_hessian_eigenvalue"]

Batch = tuple[Tensor, Tensor]
#: one architecture tensor, or named tensors
ArchTensors = Union[Tensor, Mapping[str, Tensor]]
Mix = Callable[[ArchTensors], ArchTensors]


def leaves(arch: ArchTensors) -> list[Tensor]:
    """The tensors of ``arch`` in order."""
    return [arch] if isinstance(arch, Tensor) else list(arch.values())


def like(arch: ArchTensors, tensors: Sequence[Tensor]) -> ArchTensors:
    """``tensors`` in the structure of ``arch``."""
    if isinstance(arch, Tensor):
        (t,) = tensors
        return t
    return dict(zip(arch.keys(), tensors))


def detached(arch: ArchTensors, requires_grad: bool = False) -> ArchTensors:
    """A detached copy of the structure (leaves that require grad when asked)."""
    return like(arch, [t.detach().requires_grad_(requires_grad) for t in leaves(arch)])


def softmax_mix(arch: ArchTensors) -> ArchTensors:
    """Mixing weights ``softmax`` over the last axis of every tensor (DARTS's relaxation)."""
    return like(arch, [F.softmax(t, dim=-1) for t in leaves(arch)])


def _loss_acc(logits: Tensor, y: Tensor) -> tuple[Tensor, float]:
    loss = F.cross_entropy(logits, y)
    acc = (logits.detach().argmax(-1) == y).float().mean().item()
    return loss, acc


def _train_loss_arch_grad(model: nn.Module, arch: ArchTensors, batch: Batch, mix: Mix) -> list[Tensor]:
    a = detached(arch, True)
    loss = F.cross_entropy(model(batch[0], mix(a)), batch[1])
    return list(torch.autograd.grad(loss, leaves(a)))


def _uncompiled(model: nn.Module) -> contextlib.AbstractContextManager:
    """Cells without torch.compile (double backward goes through eager code)."""
    return model.uncompiled() if hasattr(model, "uncompiled") else contextlib.nullcontext()


@torch.no_grad()
def _add_(params: Sequence[Tensor], vecs: Sequence[Tensor], scale: float) -> None:
    for p, v in zip(params, vecs):
        p.add_(v, alpha=scale)


@contextlib.contextmanager
def _weights_restored(params: Sequence[Tensor]) -> Iterator[None]:
    """Let the body move ``params``; copy their saved values back afterwards (exactly,
    not by re-adding), also when the body raises."""
    saved = [p.detach().clone() for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def hessian_vector_fd(model: nn.Module, arch: ArchTensors, batch: Batch, v: Sequence[Tensor],
                      eps: float = 0.01, mix: Mix = softmax_mix) -> ArchTensors:
    """``d/darch (grad_w L_train . v)`` by central differences, as DARTS computes it.

    Evaluates ``grad_arch L_train`` at ``w +- R v`` with ``R = eps / ||v||`` and
    returns their difference over ``2R``. The weights are restored exactly (they are
    saved and copied back, not re-added).
    """
    weights = model.weight_parameters()
    R = eps / torch.cat([x.reshape(-1) for x in v]).norm().clamp_min(1e-12).item()
    with _weights_restored(weights):
        _add_(weights, v, R)
        g_plus = _train_loss_arch_grad(model, arch, batch, mix)
        _add_(weights, v, -2 * R)
        g_minus = _train_loss_arch_grad(model, arch, batch, mix)
    return like(arch, [(p - m) / (2 * R) for p, m in zip(g_plus, g_minus)])


def hessian_vector_exact(model: nn.Module, arch: ArchTensors, batch: Batch,
                         v: Sequence[Tensor], mix: Mix = softmax_mix) -> ArchTensors:
    """The same mixed second derivative as :func:`hessian_vector_fd`, by double backward."""
    a = detached(arch, True)
    weights = model.weight_parameters()
    with _uncompiled(model):
        loss = F.cross_entropy(model(batch[0], mix(a)), batch[1])
    gw = torch.autograd.grad(loss, weights, create_graph=True)
    dot = sum((g * vi).sum() for g, vi in zip(gw, v))
    return like(arch, list(torch.autograd.grad(dot, leaves(a))))


def _lookahead_terms(w_opt: torch.optim.Optimizer | None, weights: Sequence[Tensor]
                     ) -> tuple[list[float], list[float], list[Tensor | None]]:
    """Per weight: the momentum, the weight decay and the momentum buffer (None before
    the optimizer's first step) of ``w_opt``; zeros and no buffers without one."""
    if w_opt is None:
        return [0.0] * len(weights), [0.0] * len(weights), [None] * len(weights)
    group_of = {id(p): g for g in w_opt.param_groups for p in g["params"]}
    momenta, decays, buffers = [], [], []
    for w in weights:
        g = group_of.get(id(w))
        if g is None:
            raise ValueError("the weight optimizer does not hold every weight of the model")
        momenta.append(float(g.get("momentum", 0.0)))
        decays.append(float(g.get("weight_decay", 0.0)))
        buffers.append(w_opt.state.get(w, {}).get("momentum_buffer"))
    return momenta, decays, buffers


def arch_gradient(model: nn.Module, arch: ArchTensors, val_batch: Batch,
                  train_batch: Batch | None = None, *, order: int = 1, xi: float = 0.0,
                  eps: float = 0.01, w_opt: torch.optim.Optimizer | None = None,
                  mix: Mix = softmax_mix) -> tuple[float, ArchTensors, float]:
    """Gradient of the validation loss with respect to the architecture tensors ``arch``.

    ``order=1``: ``grad_arch L_val(w, arch)`` (``w_opt`` is not used).
    ``order=2``: DARTS's unrolled gradient (Liu et al. 2019, ``architect.py``). The
    look-ahead is one step of the weight optimizer ``w_opt`` as DARTS writes it,

        ``w' = w - xi * (momentum * buf + g + weight_decay * w)``,

    with ``g = grad_w L_train(w, arch)`` (not clipped, as in DARTS), ``buf`` the
    optimizer's momentum buffer (zero before its first step) and ``momentum`` and
    ``weight_decay`` read from the optimizer's parameter group. That is a plain-momentum
    SGD step (dampening 0), as DARTS and AutoDL's DARTS-V2 unroll, even though the
    search's real weight step is nesterov. Without ``w_opt`` it is ``w - xi * g``
    (an optimizer with neither momentum nor weight decay). The gradient is then
    ``grad_arch L_val(w', arch) - xi * H v`` with ``v = grad_w' L_val(w', arch)`` and
    ``H v`` the finite-difference term of :func:`hessian_vector_fd` at the original ``w``.
    Network weights and the optimizer's state come back unchanged.
    Returns ``(loss, grad, accuracy)``, ``grad`` shaped like ``arch``.
    """
    x, y = val_batch
    if order == 1:
        a = detached(arch, True)
        loss, acc = _loss_acc(model(x, mix(a)), y)
        return loss.item(), like(arch, list(torch.autograd.grad(loss, leaves(a)))), acc
    if order != 2 or train_batch is None:
        raise ValueError("order 2 needs a train batch")
    weights = model.weight_parameters()
    momenta, decays, buffers = _lookahead_terms(w_opt, weights)
    a = detached(arch, True)
    n = len(leaves(a))
    with _weights_restored(weights):
        train_loss = F.cross_entropy(model(train_batch[0], mix(detached(a))), train_batch[1])
        gw = torch.autograd.grad(train_loss, weights)
        with torch.no_grad():  # w' = w - xi (momentum buf + g + wd w)
            steps = []
            for w, g, m, wd, buf in zip(weights, gw, momenta, decays, buffers):
                d = g + wd * w if wd != 0.0 else g
                steps.append(d + m * buf if buf is not None and m != 0.0 else d)
        _add_(weights, steps, -xi)
        loss, acc = _loss_acc(model(x, mix(a)), y)
        grads = torch.autograd.grad(loss, [*leaves(a), *weights])
        darch, v = grads[:n], grads[n:]
    hv = leaves(hessian_vector_fd(model, arch, train_batch, v, eps, mix))
    return loss.item(), like(arch, [d - xi * h for d, h in zip(darch, hv)]), acc


def arch_gradient_batched(model: nn.Module, samples: ArchTensors, val_batch: Batch,
                          mix: Mix = softmax_mix) -> tuple[float, ArchTensors, float]:
    """First-order gradients at M architecture samples (each tensor with a leading ``M``,
    e.g. ``[M, 6, 5]``) in one batched pass.

    Sample ``k``'s loss is the mean cross-entropy at sample ``k``; the losses are
    summed, so ``grad[k]`` equals :func:`arch_gradient` at sample ``k``.
    Returns ``(mean loss, grads shaped like samples, mean accuracy)``.
    """
    x, y = val_batch
    a = detached(samples, True)
    logits = model(x, mix(a))  # [M, B, K]
    M, B = logits.shape[:2]
    losses = F.cross_entropy(logits.reshape(M * B, -1), y.repeat(M), reduction="none")
    losses = losses.view(M, B).mean(1)
    grads = torch.autograd.grad(losses.sum(), leaves(a))
    acc = (logits.detach().argmax(-1) == y).float().mean().item()
    return losses.mean().item(), like(samples, list(grads)), acc


def _norm(vs: Sequence[Tensor]) -> Tensor:
    return vs[0].norm() if len(vs) == 1 else torch.cat([v.reshape(-1) for v in vs]).norm()


def dominant_hessian_eigenvalue(model: nn.Module, arch: ArchTensors, batch: Batch,
                                iters: int = 8, generator: torch.Generator | None = None,
                                mix: Mix = softmax_mix) -> float:
    """Largest-magnitude eigenvalue of ``d^2 L_val / d arch^2`` (all architecture tensors
    as one vector) by power iteration.

    Uses exact Hessian-vector products (double backward) on one fixed batch; returns
    the Rayleigh quotient of the last iterate (signed).
    """
    a = detached(arch, True)
    la = leaves(a)
    with _uncompiled(model):
        loss = F.cross_entropy(model(batch[0], mix(a)), batch[1])
    g = torch.autograd.grad(loss, la, create_graph=True)
    v = [torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype) for t in la]
    n0 = _norm(v)
    v = [x / n0 for x in v]
    eig = 0.0
    for k in range(iters):
        hv = torch.autograd.grad(g, la, grad_outputs=v, retain_graph=k < iters - 1)
        eig = float(sum((h * x).sum() for h, x in zip(hv, v)))
        n = _norm(hv)
        if n.item() == 0.0:
            return 0.0
        v = [h / n for h in hv]
    return eig
