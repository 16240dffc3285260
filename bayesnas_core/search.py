"""The one bilevel search loop, for DARTS and BaLeNAS, first and second order.

Methods differ only in how alpha is updated (an :class:`ArchUpdate`):

- :class:`DartsUpdate`: alpha is a point estimate, updated by Adam.
- :class:`BalenasUpdate`: alpha ~ N(mu, sigma^2), updated by :class:`~bayesnas_core.optim.Vadam`
  from the gradients at M Monte-Carlo samples (METHOD.md section 2).

Both use :func:`arch_gradient`, which is the plain validation gradient (first order) or
the unrolled DARTS gradient with a finite-difference Hessian-vector term (second order;
the look-ahead is the weight optimizer's own momentum step, as in DARTS).
One step (:func:`search_step`) is, in first order, one SGD step on a train batch, then
one architecture step on a validation batch; in second order, as in DARTS, the
architecture step comes first (it unrolls from the weights before the SGD step), then
the SGD step on the same train batch. It returns floats and does no I/O; :func:`search`
wraps it with progress bars, per-epoch records, atomic checkpoints and resume.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RunConfig, config_differences, config_from_dict, refuse_differences, to_dict
from .data import BatchIterator, SearchData
from .engine import StepEngine, engine_supported
from .errors import NonFiniteLossError, UserError
from .optim import Vadam
from .regime import epoch_regime
from .runs import RunDir, seed_everything
from .spaces import EDGES, OP_NAMES, Arch, NB201Supernet

__all__ = [
    "ArchUpdate",
    "DartsUpdate",
    "BalenasUpdate",
    "SearchResult",
    "arch_gradient",
    "arch_gradient_batched",
    "hessian_vector_fd",
    "hessian_vector_exact",
    "dominant_hessian_eigenvalue",
    "build_supernet",
    "build_arch_update",
    "search_step",
    "search",
    "check_resumable",
    "search_batches",
]

Batch = tuple[Tensor, Tensor]
EDGE_NAMES = [f"{i}<-{j}" for i, j in EDGES]


# ---------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------
def _loss_acc(logits: Tensor, y: Tensor) -> tuple[Tensor, float]:
    loss = F.cross_entropy(logits, y)
    acc = (logits.detach().argmax(-1) == y).float().mean().item()
    return loss, acc


def _train_loss_alpha_grad(model: NB201Supernet, alpha: Tensor, batch: Batch) -> Tensor:
    a = alpha.detach().requires_grad_(True)
    loss = F.cross_entropy(model(batch[0], a), batch[1])
    return torch.autograd.grad(loss, a)[0]


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


def hessian_vector_fd(model: NB201Supernet, alpha: Tensor, batch: Batch, v: Sequence[Tensor],
                      eps: float = 0.01) -> Tensor:
    """``d/dalpha (grad_w L_train . v)`` by central differences, as DARTS computes it.

    Evaluates ``grad_alpha L_train`` at ``w +- R v`` with ``R = eps / ||v||`` and
    returns their difference over ``2R``. The weights are restored exactly (they are
    saved and copied back, not re-added).
    """
    weights = model.weight_parameters()
    R = eps / torch.cat([x.reshape(-1) for x in v]).norm().clamp_min(1e-12).item()
    with _weights_restored(weights):
        _add_(weights, v, R)
        g_plus = _train_loss_alpha_grad(model, alpha, batch)
        _add_(weights, v, -2 * R)
        g_minus = _train_loss_alpha_grad(model, alpha, batch)
    return (g_plus - g_minus) / (2 * R)


def hessian_vector_exact(model: NB201Supernet, alpha: Tensor, batch: Batch,
                         v: Sequence[Tensor]) -> Tensor:
    """The same mixed second derivative as :func:`hessian_vector_fd`, by double backward."""
    a = alpha.detach().requires_grad_(True)
    weights = model.weight_parameters()
    with _uncompiled(model):
        loss = F.cross_entropy(model(batch[0], a), batch[1])
    gw = torch.autograd.grad(loss, weights, create_graph=True)
    dot = sum((g * vi).sum() for g, vi in zip(gw, v))
    return torch.autograd.grad(dot, a)[0]


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


def arch_gradient(model: NB201Supernet, alpha: Tensor, val_batch: Batch,
                  train_batch: Batch | None = None, *, order: int = 1, xi: float = 0.0,
                  eps: float = 0.01, w_opt: torch.optim.Optimizer | None = None
                  ) -> tuple[float, Tensor, float]:
    """Gradient of the validation loss with respect to ``alpha``.

    ``order=1``: ``grad_alpha L_val(w, alpha)`` (``w_opt`` is not used).
    ``order=2``: DARTS's unrolled gradient (Liu et al. 2019, ``architect.py``). The
    look-ahead is one step of the weight optimizer ``w_opt`` as DARTS writes it,

        ``w' = w - xi * (momentum * buf + g + weight_decay * w)``,

    with ``g = grad_w L_train(w, alpha)`` (not clipped, as in DARTS), ``buf`` the
    optimizer's momentum buffer (zero before its first step) and ``momentum`` and
    ``weight_decay`` read from the optimizer's parameter group. That is a plain-momentum
    SGD step (dampening 0), as DARTS and AutoDL's DARTS-V2 unroll, even though the
    search's real weight step is nesterov. Without ``w_opt`` it is ``w - xi * g``
    (an optimizer with neither momentum nor weight decay). The gradient is then
    ``grad_alpha L_val(w', alpha) - xi * H v`` with ``v = grad_w' L_val(w', alpha)`` and
    ``H v`` the finite-difference term of :func:`hessian_vector_fd` at the original ``w``.
    Network weights and the optimizer's state come back unchanged.
    Returns ``(loss, grad, accuracy)``.
    """
    x, y = val_batch
    if order == 1:
        a = alpha.detach().requires_grad_(True)
        loss, acc = _loss_acc(model(x, a), y)
        return loss.item(), torch.autograd.grad(loss, a)[0], acc
    if order != 2 or train_batch is None:
        raise ValueError("order 2 needs a train batch")
    weights = model.weight_parameters()
    momenta, decays, buffers = _lookahead_terms(w_opt, weights)
    a = alpha.detach().requires_grad_(True)
    with _weights_restored(weights):
        train_loss = F.cross_entropy(model(train_batch[0], a.detach()), train_batch[1])
        gw = torch.autograd.grad(train_loss, weights)
        with torch.no_grad():  # w' = w - xi (momentum buf + g + wd w)
            steps = []
            for w, g, m, wd, buf in zip(weights, gw, momenta, decays, buffers):
                d = g + wd * w if wd != 0.0 else g
                steps.append(d + m * buf if buf is not None and m != 0.0 else d)
        _add_(weights, steps, -xi)
        loss, acc = _loss_acc(model(x, a), y)
        grads = torch.autograd.grad(loss, [a, *weights])
        dalpha, v = grads[0], grads[1:]
    hv = hessian_vector_fd(model, alpha, train_batch, v, eps)
    return loss.item(), dalpha - xi * hv, acc


def arch_gradient_batched(model: NB201Supernet, alphas: Tensor,
                          val_batch: Batch) -> tuple[float, Tensor, float]:
    """First-order gradients at M alphas ``[M, 6, 5]`` in one batched pass.

    Sample ``k``'s loss is the mean cross-entropy at ``alphas[k]``; the losses are
    summed, so ``grad[k]`` equals :func:`arch_gradient` at ``alphas[k]``.
    Returns ``(mean loss, grads [M, 6, 5], mean accuracy)``.
    """
    x, y = val_batch
    a = alphas.detach().requires_grad_(True)
    logits = model(x, a)  # [M, B, K]
    M, B = logits.shape[:2]
    losses = F.cross_entropy(logits.reshape(M * B, -1), y.repeat(M), reduction="none")
    losses = losses.view(M, B).mean(1)
    grad = torch.autograd.grad(losses.sum(), a)[0]
    acc = (logits.detach().argmax(-1) == y).float().mean().item()
    return losses.mean().item(), grad, acc


def dominant_hessian_eigenvalue(model: NB201Supernet, alpha: Tensor, batch: Batch,
                                iters: int = 8, generator: torch.Generator | None = None) -> float:
    """Largest-magnitude eigenvalue of ``d^2 L_val / d alpha^2`` by power iteration.

    Uses exact Hessian-vector products (double backward) on one fixed batch; returns
    the Rayleigh quotient of the last iterate (signed).
    """
    a = alpha.detach().requires_grad_(True)
    with _uncompiled(model):
        loss = F.cross_entropy(model(batch[0], a), batch[1])
    (g,) = torch.autograd.grad(loss, a, create_graph=True)
    v = torch.randn(a.shape, generator=generator, device=a.device, dtype=a.dtype)
    v = v / v.norm()
    eig = 0.0
    for k in range(iters):
        (hv,) = torch.autograd.grad(g, a, grad_outputs=v, retain_graph=k < iters - 1)
        eig = float((hv * v).sum())
        n = hv.norm()
        if n.item() == 0.0:
            return 0.0
        v = hv / n
    return eig


# ---------------------------------------------------------------------------------
# architecture updates
# ---------------------------------------------------------------------------------
class ArchUpdate(Protocol):
    """How one architecture step turns validation gradients into a new alpha."""

    optimizer: torch.optim.Optimizer
    order: int  # 1: first order; 2: unrolled (second order)

    def step(self, model: NB201Supernet, val_batch: Batch, train_batch: Batch,
             xi: float, w_opt: torch.optim.Optimizer | None = None) -> dict[str, float]: ...

    def sigma(self, model: NB201Supernet) -> Tensor | None: ...


class DartsUpdate:
    """DARTS: Adam on the point estimate alpha (weight decay as in DARTS)."""

    def __init__(self, model: NB201Supernet, *, lr: float, betas: tuple[float, float],
                 weight_decay: float, order: int, eps: float = 0.01) -> None:
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=betas,
                                          weight_decay=weight_decay)
        self.order, self.eps = order, eps

    def step(self, model: NB201Supernet, val_batch: Batch, train_batch: Batch,
             xi: float, w_opt: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """One step on ``val_batch``; second order unrolls one step of ``w_opt`` on
        ``train_batch`` with rate ``xi`` (see :func:`arch_gradient`)."""
        loss, grad, acc = arch_gradient(model, model.alpha, val_batch, train_batch,
                                        order=self.order, xi=xi, eps=self.eps, w_opt=w_opt)
        model.alpha.grad = grad
        self.optimizer.step()
        model.alpha.grad = None
        return {"valid_loss": loss, "valid_acc": acc}

    def sigma(self, model: NB201Supernet) -> Tensor | None:
        return None


class BalenasUpdate:
    """BaLeNAS: Vadam on N(mu, sigma^2), from M Monte-Carlo samples of alpha.

    First order with ``batched=True`` evaluates the M samples in one batched pass;
    otherwise one pass per sample (second order always). Both consume the same noise.
    """

    def __init__(self, model: NB201Supernet, *, lr: float, betas: tuple[float, float],
                 prior_precision: float, prec_init: float, num_data: int, mc_samples: int,
                 order: int, batched: bool, generator: torch.Generator | None,
                 eps: float = 0.01) -> None:
        self.optimizer = Vadam(model.arch_parameters(), lr=lr, betas=betas,
                               prior_precision=prior_precision, prec_init=prec_init,
                               num_data=num_data, mc_samples=mc_samples, generator=generator)
        self.order, self.batched, self.eps = order, batched, eps

    def step(self, model: NB201Supernet, val_batch: Batch, train_batch: Batch,
             xi: float, w_opt: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """One step on ``val_batch``; second order unrolls one step of ``w_opt`` on
        ``train_batch`` with rate ``xi`` (see :func:`arch_gradient`)."""
        accs: list[float] = []
        if self.order == 1 and self.batched:
            def closure_batched(samples: list[Tensor]) -> tuple[float, list[Tensor]]:
                loss, grads, acc = arch_gradient_batched(model, samples[0], val_batch)
                accs.append(acc)
                return loss, [grads]

            loss = self.optimizer.step_batched(closure_batched)
        else:
            def closure() -> float:
                loss, grad, acc = arch_gradient(model, model.alpha, val_batch, train_batch,
                                                order=self.order, xi=xi, eps=self.eps,
                                                w_opt=w_opt)
                model.alpha.grad = grad  # Vadam zeroes it before every sample
                accs.append(acc)
                return loss

            loss = self.optimizer.step(closure)
        model.alpha.grad = None
        return {"valid_loss": float(loss), "valid_acc": sum(accs) / len(accs)}

    def sigma(self, model: NB201Supernet) -> Tensor | None:
        return self.optimizer.posterior_std(model.alpha)


def build_supernet(cfg: RunConfig, num_classes: int, in_channels: int) -> NB201Supernet:
    """The supernet of ``cfg.space`` on ``cfg.device`` / ``cfg.dtype``."""
    return NB201Supernet(cfg.space.C, cfg.space.N, num_classes, in_channels,
                         fused=cfg.search.fused_cell,
                         compile_cells=cfg.search.fused_cell and cfg.search.compile_cells,
                         cell_impl=cfg.search.cell_impl,
                         device=torch.device(cfg.device),
                         dtype=getattr(torch, cfg.dtype))


def build_arch_update(cfg: RunConfig, model: NB201Supernet, num_valid: int,
                      generator: torch.Generator | None) -> ArchUpdate:
    """The :class:`ArchUpdate` that ``cfg.search.method`` names."""
    s = cfg.search
    if s.method == "darts":
        return DartsUpdate(model, lr=s.a_lr, betas=tuple(s.a_betas), weight_decay=s.a_weight_decay,
                           order=s.order, eps=s.unrolled_eps)
    if s.method == "balenas":
        return BalenasUpdate(model, lr=s.a_lr, betas=tuple(s.a_betas),
                             prior_precision=s.prior_precision, prec_init=s.prec_init,
                             num_data=s.num_data or num_valid, mc_samples=s.mc_samples,
                             order=s.order, batched=s.batched_mc, generator=generator,
                             eps=s.unrolled_eps)
    raise UserError(f"unknown method {s.method!r}; use --method darts or balenas")


def search_step(model: NB201Supernet, w_opt: torch.optim.Optimizer, arch: ArchUpdate,
                train_batch: Batch, val_batch: Batch, *, grad_clip: float) -> dict[str, float]:
    """One search step on a (train, valid) pair of batches. No I/O.

    First order: one SGD step on the weights, then one architecture step (at the new
    weights). Second order, as in DARTS's train loop: the architecture step first, which
    unrolls one step of ``w_opt`` from the current weights and momentum buffers, then
    the SGD step on the same train batch (at the new alpha).
    """
    model.train()
    xi = w_opt.param_groups[0]["lr"]
    second_order = getattr(arch, "order", 1) == 2
    arch_stats: dict[str, float] = {}
    if second_order:
        arch_stats = arch.step(model, val_batch, train_batch, xi, w_opt)
    w_opt.zero_grad(set_to_none=True)
    loss, acc = _loss_acc(model(train_batch[0], model.alpha.detach()), train_batch[1])
    loss.backward()
    nn.utils.clip_grad_norm_(model.weight_parameters(), grad_clip)
    w_opt.step()
    stats = {"train_loss": loss.item(), "train_acc": acc}
    stats.update(arch_stats if second_order else arch.step(model, val_batch, train_batch, xi, w_opt))
    return stats


# ---------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """What a search produced."""

    arch: Arch  # argmax(mu) per edge
    mu: Tensor
    sigma: Tensor | None
    metrics: list[dict[str, Any]]
    history: list[dict[str, Any]]
    wall_time_s: float
    run_dir: Path | None = None


def _regime(cfg: RunConfig, arch: ArchUpdate, model: NB201Supernet, sigma: Tensor | None,
            arch_steps: int, record: dict[str, Any], num_valid: int) -> dict[str, Any]:
    """The regime quantities of :mod:`bayesnas_core.regime` for this epoch's record."""
    s = cfg.search
    state = arch.optimizer.state.get(model.alpha, {}) if sigma is not None else {}
    return epoch_regime(mu=model.alpha, sigma=sigma, a_lr=s.a_lr, arch_steps=arch_steps,
                        beta2=s.a_betas[1], num_data=s.num_data or num_valid,
                        prior_precision=s.prior_precision, exp_avg_sq=state.get("exp_avg_sq"),
                        train_acc=record["train_acc"], valid_acc=record["valid_acc"],
                        seed=cfg.seed + record["epoch"])


def search_batches(cfg: RunConfig, data: SearchData) -> tuple[BatchIterator, BatchIterator]:
    """The seeded train and valid batch iterators of a search; a split smaller than one
    batch is a one-line :class:`UserError` (callers check this before making a run folder)."""
    train_it = BatchIterator(data.train, cfg.data.batch_size, shuffle=True,
                             augment=cfg.data.augment, seed=cfg.seed)
    valid_it = BatchIterator(data.valid, cfg.data.batch_size, shuffle=True, augment=False,
                             seed=cfg.seed + 7919)
    if len(train_it) == 0 or len(valid_it) == 0:
        raise UserError(f"the search splits ({len(data.train)} / {len(data.valid)} images) are "
                        f"smaller than one batch of {cfg.data.batch_size}; lower --batch-size")
    return train_it, valid_it


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One plain progress line for a finished epoch (``free_ops``: parameter-free ops,
    none, skip or pooling, in the argmax cell's six edges)."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"train_loss {record['train_loss']:.4f}",
             f"valid_loss {record['valid_loss']:.4f}", f"valid_acc {record['valid_acc']:.3f}",
             f"free_ops {record['parameter_free_ops']}/{len(EDGES)}"]
    if "gt_cifar10_test" in record:
        parts.append(f"argmax cell CIFAR-10 test {record['gt_cifar10_test']:.2f} %")
    parts.append(f"{record['wall_time_s']:.1f} s")
    return ", ".join(parts)


def check_resumable(cfg: RunConfig, state: dict[str, Any], where: Path) -> None:
    """Refuse, in one line naming the fields, to resume ``state`` (a checkpoint) with a
    configuration that computes something else: every field must match except the
    device, the output folder and the speed-only options (fields added since the
    checkpoint was written take their defaults)."""
    stored = config_from_dict(state.get("config", {}), where=f"checkpoint in {where}")
    refuse_differences(stored, cfg, config_differences(stored, cfg), where)


def _make_generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def search(cfg: RunConfig, data: SearchData, *, run: RunDir | None = None, resume: bool = False,
           progress: bool | Callable[[str], Any] = True,
           on_epoch: Callable[[NB201Supernet, Arch], dict[str, Any]] | None = None,
           on_record: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """Run the bilevel search that ``cfg`` describes on ``data`` (already on ``cfg.device``).

    With ``run``, every epoch appends to ``metrics.jsonl`` and ``history.json`` and
    writes ``checkpoint.pt`` atomically; ``resume=True`` continues from that
    checkpoint and ends bit-identical to an uninterrupted run on the CPU.
    ``on_epoch(model, arch)`` may add fields to each epoch's record; ``on_record(record)``
    sees each finished record (``step_ms``: the mean milliseconds of the epoch's steps). ``progress``: True
    shows progress bars, a callable gets one plain line per epoch instead (for logs and
    pipes), False shows nothing.
    """
    from tqdm.auto import tqdm

    cfg.validate()
    s = cfg.search
    device = torch.device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    if data.train.x.dtype != dtype:
        data = data.to(dtype)
    seed_everything(cfg.seed)
    model = build_supernet(cfg, data.num_classes, data.in_channels)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=s.w_lr, momentum=s.w_momentum,
                            nesterov=True, weight_decay=s.w_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=s.epochs, eta_min=s.w_lr_min)
    noise = _make_generator(device, cfg.seed + 1)
    arch = build_arch_update(cfg, model, len(data.valid), noise)
    train_it, valid_it = search_batches(cfg, data)
    probe = next(iter(BatchIterator(data.valid, cfg.data.batch_size, shuffle=False).epoch(0)))

    metrics: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    start, elapsed = 0, 0.0
    if resume:
        if run is None:
            raise UserError("--resume needs a run directory")
        state = run.load_checkpoint()
        check_resumable(cfg, state, run.path)
        model.load_state_dict(state["model"])
        w_opt.load_state_dict(state["w_opt"])
        arch.optimizer.load_state_dict(state["a_opt"])
        sched.load_state_dict(state["sched"])
        noise.set_state(state["noise"])
        torch.set_rng_state(state["torch_rng"])
        metrics, history = state["metrics"], state["history"]
        start, elapsed = int(state["epoch"]), float(state["wall_time_s"])

    engine = None
    if engine_supported(s.order, s.fused_cell, s.batched_mc):
        engine = StepEngine(model, w_opt, arch.optimizer, grad_clip=s.grad_clip,
                            cuda_graph=s.cuda_graph and device.type == "cuda")

    def stop(where: str) -> NonFiniteLossError:
        kept = (f"the last good checkpoint (epoch {metrics[-1]['epoch']}) is kept in {run.path}"
                if run is not None and metrics else "no checkpoint was written")
        return NonFiniteLossError(f"non-finite loss {where}; search stopped and {kept}; lower the "
                                  f"learning rates (w_lr {s.w_lr}, a_lr {s.a_lr})")

    epochs = tqdm(range(start, s.epochs), desc=f"{s.method} search", unit="epoch",
                  disable=progress is not True, initial=start, total=s.epochs)
    for epoch in epochs:
        t0 = time.perf_counter()
        # an epoch is one pass over the train split; a shorter valid split (CIFAR-100,
        # ImageNet16-120) is cycled, a split of the same length is used exactly once
        steps = tqdm(zip(train_it.epoch(epoch), valid_it.cycle(epoch)), total=len(train_it),
                     desc=f"epoch {epoch + 1}", leave=False, disable=progress is not True)
        if engine is not None:  # the fast path: statistics stay on the device
            for step, (tb, vb) in enumerate(steps):
                engine.step(tb, vb)
                if device.type == "cpu" and not engine.last_finite():  # free on a CPU; on CUDA
                    # a per-step check would sync every step, so it waits for the epoch's end
                    raise stop(f"at epoch {epoch + 1} step {step + 1}")
            means = engine.epoch_stats()
            engine.sync_state()
            if not all(math.isfinite(v) for v in means.values()) or not torch.isfinite(model.alpha).all():
                raise stop(f"in epoch {epoch + 1}")
        else:
            sums: dict[str, float] = {}
            n = 0
            for step, (tb, vb) in enumerate(steps):
                stats = search_step(model, w_opt, arch, tb, vb, grad_clip=s.grad_clip)
                if not all(math.isfinite(v) for v in stats.values()) or not torch.isfinite(model.alpha).all():
                    raise stop(f"at epoch {epoch + 1} step {step + 1}")
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
            means = {k: v / n for k, v in sums.items()}
        steps_s = time.perf_counter() - t0
        w_lr = w_opt.param_groups[0]["lr"]  # the rate this epoch trained with
        with warnings.catch_warnings():  # the engine updates the weights without w_opt.step()
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            sched.step()
        genotype = model.genotype()
        sigma = arch.sigma(model)
        record: dict[str, Any] = {"epoch": epoch + 1, **means,
                                  "step_ms": 1000 * steps_s / len(train_it),
                                  "w_lr": w_lr, "arch": str(genotype),
                                  "parameter_free_ops": genotype.num_parameter_free}
        if s.curvature_iters > 0 and ((epoch + 1) % s.curvature_every == 0 or epoch + 1 == s.epochs):
            t_curv = time.perf_counter()
            curv_gen = _make_generator(device, cfg.seed + 31 * (epoch + 1))
            record["hessian_eig"] = dominant_hessian_eigenvalue(model, model.alpha, probe,
                                                                s.curvature_iters, curv_gen)
            record["hessian_eig_s"] = time.perf_counter() - t_curv
        record.update(_regime(cfg, arch, model, sigma, (epoch + 1) * len(train_it), record,
                              len(data.valid)))
        if on_epoch is not None:
            record.update(on_epoch(model, genotype))
        elapsed += time.perf_counter() - t0
        record["wall_time_s"] = elapsed
        metrics.append(record)
        history.append({"epoch": epoch + 1, "mu": model.alpha.detach().cpu().tolist(),
                        "sigma": None if sigma is None else sigma.detach().cpu().tolist()})
        epochs.set_postfix(valid_loss=f"{record['valid_loss']:.3f}", free_ops=genotype.num_parameter_free)
        if callable(progress):
            progress(epoch_line(record, s.epochs))
        if on_record is not None:
            on_record(record)
        if run is not None:
            run.write_metrics(metrics)
            run.write_json("history.json", {"ops": list(OP_NAMES), "edges": EDGE_NAMES,
                                            "epochs": history})
            run.save_checkpoint({
                "epoch": epoch + 1, "model": model.state_dict(), "w_opt": w_opt.state_dict(),
                "a_opt": arch.optimizer.state_dict(), "sched": sched.state_dict(),
                "noise": noise.get_state(), "torch_rng": torch.get_rng_state(),
                "metrics": metrics, "history": history, "config": to_dict(cfg),
                "wall_time_s": elapsed,
            })
    sigma = arch.sigma(model)
    return SearchResult(arch=model.genotype(), mu=model.alpha.detach().cpu().clone(),
                        sigma=None if sigma is None else sigma.detach().cpu().clone(),
                        metrics=metrics, history=history, wall_time_s=elapsed,
                        run_dir=None if run is None else run.path)

