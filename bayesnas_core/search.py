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

import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RunConfig, config_differences, config_from_dict, refuse_differences, to_dict
from .data import BatchIterator, SearchData
from .distributions import ArchDistribution, Gaussian, PointEstimate, build_distribution
from .engine import build_accelerator
from .errors import NonFiniteLossError, UserError
from .gradients import (ArchTensors, arch_gradient, arch_gradient_batched, detached, dominant_hessian_eigenvalue,
                        hessian_vector_exact, hessian_vector_fd, leaves, like)
from .regime import epoch_regime
from .runs import RunDir, seed_everything
from .spaces import SearchSpace, get_space

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
    "arch_parameters",
    "named_arch",
    "ArchLogits",
    "search_step",
    "search",
    "check_resumable",
    "search_batches",
]

Batch = tuple[Tensor, Tensor]


# ---------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------
def _loss_acc(logits: Tensor, y: Tensor) -> tuple[Tensor, float]:
    loss = F.cross_entropy(logits, y)
    acc = (logits.detach().argmax(-1) == y).float().mean().item()
    return loss, acc


#: the names under which the architecture updates were first published here
ArchUpdate = ArchDistribution
DartsUpdate = PointEstimate
BalenasUpdate = Gaussian


def build_supernet(cfg: RunConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The supernet of ``cfg.space`` on ``cfg.device`` / ``cfg.dtype`` (the fast-path
    options go to spaces that declare them in ``supernet_options``)."""
    space = get_space(cfg.space.name)
    offered = {"fused": cfg.search.fused_cell,
               "compile_cells": cfg.search.fused_cell and cfg.search.compile_cells,
               "cell_impl": cfg.search.cell_impl}
    options = {k: v for k, v in offered.items() if k in getattr(space, "supernet_options", ())}
    return space.build_supernet(C=cfg.space.C, N=cfg.space.N, num_classes=num_classes,
                                in_channels=in_channels, device=torch.device(cfg.device),
                                dtype=getattr(torch, cfg.dtype), **options)


class ArchLogits(nn.Module):
    """The architecture logits of a supernet that holds none itself: one parameter per
    architecture tensor of the space, drawn as DARTS draws them (``1e-3 * randn``)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.tensors = nn.ParameterDict({name: nn.Parameter(1e-3 * torch.randn(*shape, device=device,
                                                                              dtype=dtype))
                                         for name, shape in shapes.items()})


def arch_parameters(model: nn.Module, space: SearchSpace) -> tuple[ArchTensors, ArchLogits | None]:
    """The architecture tensors a search learns: the supernet's own (``arch_tensors()``)
    when it has them, else a new :class:`ArchLogits` (returned too, for checkpoints). A
    space with one tensor gives that tensor, a space with several a dict by name."""
    holder = None
    if hasattr(model, "arch_tensors"):
        named = dict(model.arch_tensors())
    else:
        p = next(iter(model.parameters()))
        holder = ArchLogits(space.arch_shapes(), device=p.device, dtype=p.dtype)
        named = dict(holder.tensors.items())
    return (next(iter(named.values())) if len(named) == 1 else named), holder


def named_arch(space: SearchSpace, arch: ArchTensors) -> dict[str, Tensor]:
    """``arch`` as the dict of the search-space protocol."""
    if isinstance(arch, Tensor):
        (name,) = space.arch_shapes()
        return {name: arch}
    return dict(arch)


def build_arch_update(cfg: RunConfig, model: nn.Module, num_valid: int,
                      generator: torch.Generator | None) -> ArchDistribution:
    """The architecture distribution ``cfg.search.method`` names, over ``model``'s own
    architecture tensors (NB201's ``alpha``)."""
    arch, _ = arch_parameters(model, get_space(cfg.space.name))
    return build_distribution(cfg, arch, num_valid, generator)


def search_step(model: nn.Module, w_opt: torch.optim.Optimizer, arch: ArchDistribution,
                train_batch: Batch, val_batch: Batch, *, grad_clip: float) -> dict[str, float]:
    """One search step on a (train, valid) pair of batches. No I/O.

    First order: one SGD step on the weights at the mixing weights of the distribution's
    logits (BaLeNAS: of mu), then one architecture step (at the new weights). Second
    order, as in DARTS's train loop: the architecture step first, which unrolls one step
    of ``w_opt`` from the current weights and momentum buffers, then the SGD step on the
    same train batch (at the new alpha).
    """
    model.train()
    xi = w_opt.param_groups[0]["lr"]
    second_order = getattr(arch, "order", 1) == 2
    arch_stats: dict[str, float] = {}
    if second_order:
        arch_stats = arch.step(model, val_batch, train_batch, xi, w_opt)
    w_opt.zero_grad(set_to_none=True)
    loss, acc = _loss_acc(model(train_batch[0], arch.mixing(detached(arch.arch))), train_batch[1])
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

    arch: Any  # the genotype of mu (NB201: an Arch, argmax(mu) per edge)
    mu: ArchTensors
    sigma: ArchTensors | None
    metrics: list[dict[str, Any]]
    history: list[dict[str, Any]]
    wall_time_s: float
    run_dir: Path | None = None


def _regime(cfg: RunConfig, arch: ArchDistribution, sigma: ArchTensors | None,
            arch_steps: int, record: dict[str, Any], num_valid: int) -> dict[str, Any]:
    """The regime quantities of :mod:`bayesnas_core.regime` for this epoch's record."""
    s = cfg.search
    mu = arch.mode()
    if sigma is None:
        s_sq = None
    else:
        states = [arch.optimizer.state.get(p, {}).get("exp_avg_sq") for p in leaves(mu)]
        s_sq = None if any(t is None for t in states) else like(mu, states)
    return epoch_regime(mu=mu, sigma=sigma, a_lr=s.a_lr, arch_steps=arch_steps,
                        beta2=s.a_betas[1], num_data=s.num_data or num_valid,
                        prior_precision=s.prior_precision, exp_avg_sq=s_sq,
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


def epoch_line(record: dict[str, Any], epochs: int, choices: int = 6) -> str:
    """One plain progress line for a finished epoch (``free_ops``: parameter-free ops,
    none, skip or pooling, of the ``choices`` ops the current genotype chose: NB201's
    six edges)."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"train_loss {record['train_loss']:.4f}",
             f"valid_loss {record['valid_loss']:.4f}", f"valid_acc {record['valid_acc']:.3f}",
             f"free_ops {record['parameter_free_ops']}/{choices}"]
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
           on_epoch: Callable[[nn.Module, Any], dict[str, Any]] | None = None,
           on_record: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """Run the bilevel search that ``cfg`` describes on ``data`` (already on ``cfg.device``).

    With ``run``, every epoch appends to ``metrics.jsonl`` and ``history.json`` and
    writes ``checkpoint.pt`` atomically; ``resume=True`` continues from that
    checkpoint and ends bit-identical to an uninterrupted run on the CPU.
    ``on_epoch(model, genotype)`` may add fields to each epoch's record; ``on_record(record)``
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
    space = get_space(cfg.space.name)
    model = build_supernet(cfg, data.num_classes, data.in_channels)
    alpha, holder = arch_parameters(model, space)  # drawn after the weights, as DARTS does
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=s.w_lr, momentum=s.w_momentum,
                            nesterov=True, weight_decay=s.w_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=s.epochs, eta_min=s.w_lr_min)
    noise = _make_generator(device, cfg.seed + 1)
    arch = build_distribution(cfg, alpha, len(data.valid), noise)
    choices = space.num_choices()
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
        if holder is not None:
            holder.load_state_dict(state["arch"])
        w_opt.load_state_dict(state["w_opt"])
        arch.optimizer.load_state_dict(state["a_opt"])
        sched.load_state_dict(state["sched"])
        noise.set_state(state["noise"])
        torch.set_rng_state(state["torch_rng"])
        metrics, history = state["metrics"], state["history"]
        start, elapsed = int(state["epoch"]), float(state["wall_time_s"])

    engine = build_accelerator(cfg, space.name, model, w_opt, arch)  # None: the plain loop

    def finite_arch() -> bool:
        return all(bool(torch.isfinite(t).all()) for t in leaves(alpha))

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
            if not all(math.isfinite(v) for v in means.values()) or not finite_arch():
                raise stop(f"in epoch {epoch + 1}")
        else:
            sums: dict[str, float] = {}
            n = 0
            for step, (tb, vb) in enumerate(steps):
                stats = search_step(model, w_opt, arch, tb, vb, grad_clip=s.grad_clip)
                if not all(math.isfinite(v) for v in stats.values()) or not finite_arch():
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
        genotype = space.genotype(named_arch(space, arch.mode()))
        sigma = arch.sigma()
        record: dict[str, Any] = {"epoch": epoch + 1, **means,
                                  "step_ms": 1000 * steps_s / len(train_it),
                                  "w_lr": w_lr, "arch": space.format(genotype),
                                  "parameter_free_ops": space.num_parameter_free(genotype)}
        if s.curvature_iters > 0 and ((epoch + 1) % s.curvature_every == 0 or epoch + 1 == s.epochs):
            t_curv = time.perf_counter()
            curv_gen = _make_generator(device, cfg.seed + 31 * (epoch + 1))
            record["hessian_eig"] = dominant_hessian_eigenvalue(model, arch.mode(), probe,
                                                                s.curvature_iters, curv_gen,
                                                                mix=arch.mixing)
            record["hessian_eig_s"] = time.perf_counter() - t_curv
        record.update(_regime(cfg, arch, sigma, (epoch + 1) * len(train_it), record,
                              len(data.valid)))
        if on_epoch is not None:
            record.update(on_epoch(model, genotype))
        elapsed += time.perf_counter() - t0
        record["wall_time_s"] = elapsed
        metrics.append(record)
        history.append({"epoch": epoch + 1, "mu": _listed(arch.mode()),
                        "sigma": None if sigma is None else _listed(sigma)})
        epochs.set_postfix(valid_loss=f"{record['valid_loss']:.3f}", free_ops=record["parameter_free_ops"])
        if callable(progress):
            progress(epoch_line(record, s.epochs, choices))
        if on_record is not None:
            on_record(record)
        if run is not None:
            run.write_metrics(metrics)
            run.write_json("history.json", {**_history_axes(space, alpha), "epochs": history})
            run.save_checkpoint({
                "epoch": epoch + 1, "model": model.state_dict(), "w_opt": w_opt.state_dict(),
                "a_opt": arch.optimizer.state_dict(), "sched": sched.state_dict(),
                "noise": noise.get_state(), "torch_rng": torch.get_rng_state(),
                "metrics": metrics, "history": history, "config": to_dict(cfg),
                "wall_time_s": elapsed,
                **({} if holder is None else {"arch": holder.state_dict()}),
            })
    sigma = arch.sigma()
    return SearchResult(arch=space.genotype(named_arch(space, arch.mode())), mu=_cpu(arch.mode()),
                        sigma=None if sigma is None else _cpu(sigma),
                        metrics=metrics, history=history, wall_time_s=elapsed,
                        run_dir=None if run is None else run.path)



def _cpu(arch: ArchTensors) -> ArchTensors:
    return like(arch, [t.detach().cpu().clone() for t in leaves(arch)])


def _listed(arch: ArchTensors) -> Any:
    """A tensor as nested lists; named tensors as a dict of them (history.json)."""
    if isinstance(arch, Tensor):
        return arch.detach().cpu().tolist()
    return {k: v.detach().cpu().tolist() for k, v in arch.items()}


def _history_axes(space: SearchSpace, alpha: ArchTensors) -> dict[str, Any]:
    """history.json's names of the choices (``ops``) and rows (``edges``) of mu: lists for a
    one-tensor space (NB201), dicts by tensor name otherwise."""
    names = list(space.arch_shapes())
    if isinstance(alpha, Tensor):
        return {"ops": list(space.choice_names(names[0])), "edges": list(space.row_names(names[0]))}
    return {"ops": {n: list(space.choice_names(n)) for n in names},
            "edges": {n: list(space.row_names(n)) for n in names}}
