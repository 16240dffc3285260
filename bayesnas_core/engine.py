"""The fast search step: one first-order step as pure tensor code, replayed as a CUDA graph.

:func:`~bayesnas_core.search.search_step` is the readable reference: Python floats,
``torch.optim`` objects and one ``.item()`` per statistic. On a GPU that style costs
far more than the arithmetic (thousands of small kernels, each launched from Python,
and a host sync per statistic). :class:`StepEngine` computes the same step:

1. an SGD step (nesterov, weight decay, gradient-norm clipping) on a train batch at
   ``alpha`` (BaLeNAS: at ``mu``);
2. one architecture step on a valid batch: Adam on ``alpha`` (DARTS), or Vadam on
   ``N(mu, sigma^2)`` from ``M`` samples in one batched pass (BaLeNAS);

with every hyperparameter that changes between steps held in a tensor, the optimizer
states updated in place (they are the very tensors of ``w_opt`` and the architecture
optimizer, so checkpoints do not change), and the step statistics summed on the device.
Nothing in a step reads a value back to the host, so on CUDA the whole step is captured
once in a ``torch.cuda.CUDAGraph`` and then replayed, one launch per step. Batches and
the Monte-Carlo noise are drawn outside the graph, exactly as the plain path draws them,
and copied into static buffers.

It is the same step up to floating-point round-off (summation order, and ``p - lr * g``
where torch fuses ``p.add_(g, alpha=-lr)``): ``tests/test_engine.py`` checks 1e-9 in float64.
Only first-order steps are supported; the unrolled (second-order) gradient stays on the
plain path.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .optim import Vadam
from .spaces import NB201Supernet

__all__ = ["StepEngine", "STAT_NAMES", "engine_supported", "register_accelerator", "build_accelerator"]

#: what :meth:`StepEngine.epoch_stats` averages, in order
STAT_NAMES = ("train_loss", "train_acc", "valid_loss", "valid_acc")


class StepEngine:
    """Runs first-order search steps of ``model``; ``cuda_graph=True`` replays them as a graph.

    Args:
        model: the supernet (its ``alpha`` is the architecture parameter, or ``mu``).
        w_opt: ``torch.optim.SGD`` over ``model.weight_parameters()`` (its hyperparameters
            and momentum buffers are used; ``lr`` is re-read every step).
        a_opt: ``torch.optim.Adam`` (DARTS) or :class:`~bayesnas_core.optim.Vadam` (BaLeNAS)
            over ``[model.alpha]``.
        grad_clip: max norm of the weight gradient.
        cuda_graph: capture the step in a CUDA graph (CUDA only) on the first call.
        warmup: eager steps run (and undone) before the capture.
    """

    def __init__(self, model: NB201Supernet, w_opt: torch.optim.Optimizer, a_opt: torch.optim.Optimizer,
                 *, grad_clip: float, cuda_graph: bool = False, warmup: int = 3) -> None:
        if not isinstance(w_opt, torch.optim.SGD):
            raise TypeError("StepEngine needs torch.optim.SGD for the weights")
        if not isinstance(a_opt, (Vadam, torch.optim.Adam)):
            raise TypeError("StepEngine needs Adam (DARTS) or Vadam (BaLeNAS) for alpha")
        if len(w_opt.param_groups) != 1 or len(a_opt.param_groups) != 1:
            raise ValueError("StepEngine supports one parameter group per optimizer")
        self.alpha = model.alpha
        held = a_opt.param_groups[0]["params"]
        if len(held) != 1 or held[0] is not self.alpha:
            raise ValueError("the architecture optimizer must hold exactly model.alpha")
        self.device = self.alpha.device
        if cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph needs the model on a CUDA device")
        self.model, self.w_opt, self.a_opt = model, w_opt, a_opt
        self.bayesian = isinstance(a_opt, Vadam)
        self.grad_clip = float(grad_clip)
        self.cuda_graph, self.warmup = cuda_graph, warmup
        self.graph: torch.cuda.CUDAGraph | None = None

        self.weights = list(w_opt.param_groups[0]["params"])
        wg = w_opt.param_groups[0]
        if not wg["nesterov"] or wg["dampening"] != 0 or wg.get("maximize", False):
            raise ValueError("StepEngine implements SGD with nesterov momentum and no dampening")
        self.momentum_buffers = []
        for p in self.weights:  # a zero buffer gives exactly torch's first step (buf = d_p)
            st = w_opt.state[p]
            if st.get("momentum_buffer") is None:
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            self.momentum_buffers.append(st["momentum_buffer"])
        self.lr = torch.tensor(float(wg["lr"]), device=self.device, dtype=self.alpha.dtype)
        self._lr_value = float(wg["lr"])

        ag = a_opt.param_groups[0]
        st = a_opt.state[self.alpha]
        if self.bayesian:
            self.mc = int(ag["mc_samples"])
            if not st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(self.alpha)
                st["exp_avg_sq"] = torch.full_like(
                    self.alpha, (ag["prec_init"] - ag["prior_precision"]) / ag["num_data"])
            step = float(st["step"])
        else:
            if ag.get("amsgrad") or ag.get("maximize") or ag.get("decoupled_weight_decay"):
                raise ValueError("StepEngine implements plain Adam (no amsgrad/maximize/AdamW)")
            self.mc = 1
            if not st:
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros_like(self.alpha, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(self.alpha, memory_format=torch.preserve_format)
            step = float(st["step"])
        self.exp_avg, self.exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
        # bias corrections in float64, as torch.optim computes them from a Python number
        self.a_step = torch.tensor(step, device=self.device, dtype=torch.float64)

        self._frozen = self._hyperparameters()  # a graph keeps them; only the weight lr may move

        self.sums = torch.zeros(len(STAT_NAMES), device=self.device, dtype=torch.float64)
        self.last = torch.zeros(len(STAT_NAMES), device=self.device, dtype=torch.float64)
        self.steps = 0
        self._static: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ public
    def step(self, train_batch: tuple[Tensor, Tensor], val_batch: tuple[Tensor, Tensor]) -> None:
        """One search step on these batches; statistics stay on the device.

        The weight learning rate is re-read every step (a scheduler may move it); every
        other hyperparameter is fixed when the engine is built, and changing one raises.
        """
        if self._hyperparameters() != self._frozen:
            raise ValueError("StepEngine: an optimizer hyperparameter other than the weight lr "
                             "changed; build a new engine")
        lr = float(self.w_opt.param_groups[0]["lr"])
        if lr != self._lr_value:  # the scheduler moved it: one small fill, no sync
            self.lr.fill_(lr)
            self._lr_value = lr
        self._load(train_batch, val_batch)
        if self.cuda_graph:
            with torch.cuda.device(self.device):
                if self.graph is None:
                    self._capture()
                self.graph.replay()
        else:
            self._compute()
        self.steps += 1

    def epoch_stats(self) -> dict[str, float]:
        """Mean statistics since the last call (one host sync), then reset."""
        n = max(self.steps, 1)
        values = (self.sums / n).tolist()
        self.sums.zero_()
        self.steps = 0
        return dict(zip(STAT_NAMES, values))

    def last_finite(self) -> bool:
        """Whether the last step's losses and alpha are finite (one host sync)."""
        return bool(torch.isfinite(self.last).all() and torch.isfinite(self.alpha).all())

    def sync_state(self) -> None:
        """Write the step counter back into the architecture optimizer's state (before a
        checkpoint or handing the optimizers back to the plain path)."""
        st = self.a_opt.state[self.alpha]
        t = int(round(self.a_step.item()))
        st["step"] = t if self.bayesian else torch.tensor(float(t))

    # ------------------------------------------------------------------ internals
    def _hyperparameters(self) -> tuple:
        w = {k: v for k, v in self.w_opt.param_groups[0].items() if k not in ("params", "lr")}
        a = {k: v for k, v in self.a_opt.param_groups[0].items() if k != "params"}
        return (sorted(w.items(), key=str), sorted(a.items(), key=str), self.grad_clip)

    def _load(self, train_batch: tuple[Tensor, Tensor], val_batch: tuple[Tensor, Tensor]) -> None:
        tensors = {"tx": train_batch[0], "ty": train_batch[1], "vx": val_batch[0], "vy": val_batch[1]}
        if self.bayesian:
            (eps,) = self.a_opt.noise(self.mc)  # the plain path's draw, same generator
            tensors["eps"] = eps
        for name, t in tensors.items():
            buf = self._static.get(name)
            if buf is None:
                self._static[name] = t.detach().clone()
            elif buf.shape != t.shape:
                raise ValueError(f"StepEngine: batch shape changed ({tuple(buf.shape)} -> {tuple(t.shape)}); "
                                 "use drop_last batches")
            else:
                buf.copy_(t)

    def _state_tensors(self) -> list[Tensor]:
        """Everything a step mutates (buffers too, e.g. BN running statistics)."""
        return [*self.weights, self.alpha, *self.model.buffers(), *self.momentum_buffers,
                self.exp_avg, self.exp_avg_sq, self.a_step, self.sums, self.last]

    def _capture(self) -> None:
        """Warm up on a side stream (cuDNN picks its kernels), undo the warm-up's updates
        (also when it fails), then capture one step."""
        state = self._state_tensors()
        saved = [t.detach().clone() for t in state]
        deterministic = torch.backends.cudnn.deterministic
        # cuDNN times its algorithms during the warm-up (unless determinism was asked for);
        # the capture keeps the choice; TF32 and determinism stay as the caller set them
        with torch.backends.cudnn.flags(enabled=True, benchmark=not deterministic,
                                        deterministic=deterministic,
                                        allow_tf32=torch.backends.cudnn.allow_tf32):
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            try:
                with torch.cuda.stream(side):
                    for _ in range(self.warmup):
                        self._compute()
            finally:
                torch.cuda.current_stream(self.device).wait_stream(side)
                with torch.no_grad():
                    for t, s in zip(state, saved):
                        t.copy_(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._compute()
        self.graph = graph

    def _compute(self) -> None:
        b = self._static
        model, alpha = self.model, self.alpha
        model.train()
        # ---- weight step: SGD (nesterov) on the train batch at alpha (or mu)
        with torch.enable_grad():
            logits = model(b["tx"], F.softmax(alpha.detach(), dim=-1))
            loss = F.cross_entropy(logits, b["ty"])
            grads = list(torch.autograd.grad(loss, self.weights))
        with torch.no_grad():
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_mul_(grads, torch.clamp(self.grad_clip / (total + 1e-6), max=1.0))
            g = self.w_opt.param_groups[0]
            if g["weight_decay"]:
                torch._foreach_add_(grads, self.weights, alpha=g["weight_decay"])
            torch._foreach_mul_(self.momentum_buffers, g["momentum"])
            torch._foreach_add_(self.momentum_buffers, grads)
            torch._foreach_add_(grads, self.momentum_buffers, alpha=g["momentum"])
            torch._foreach_mul_(grads, self.lr)
            torch._foreach_sub_(self.weights, grads)
            train_acc = (logits.argmax(-1) == b["ty"]).to(torch.float64).mean()
        # ---- architecture step on the valid batch
        if self.bayesian:
            v_loss, v_acc = self._vadam_step()
        else:
            v_loss, v_acc = self._adam_step()
        with torch.no_grad():
            self.last.copy_(torch.stack([loss.detach().to(torch.float64), train_acc, v_loss, v_acc]))
            self.sums.add_(self.last)

    @contextlib.contextmanager
    def _weights_constant(self) -> Iterator[None]:
        """The architecture step needs no weight gradients. Eager autograd skips them by
        itself; a compiled graph computes every input's gradient, so with compiled cells
        the weights stop requiring grad for the block (a graph of its own)."""
        if not self.model.compile_cells:
            yield
            return
        before = [p.requires_grad for p in self.weights]
        for p in self.weights:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(self.weights, before):
                p.requires_grad_(flag)

    def _adam_step(self) -> tuple[Tensor, Tensor]:
        b, alpha, g = self._static, self.alpha, self.a_opt.param_groups[0]
        with torch.enable_grad(), self._weights_constant():
            a = alpha.detach().requires_grad_(True)
            logits = self.model(b["vx"], F.softmax(a, dim=-1))
            loss = F.cross_entropy(logits, b["vy"])
            (grad,) = torch.autograd.grad(loss, a)
        with torch.no_grad():
            b1, b2 = g["betas"]
            if g["weight_decay"]:
                grad = grad.add(alpha, alpha=g["weight_decay"])
            self.a_step.add_(1)
            bc1 = 1 - torch.pow(b1, self.a_step)
            bc2 = 1 - torch.pow(b2, self.a_step)
            self.exp_avg.lerp_(grad, 1 - b1)
            self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (self.exp_avg_sq.sqrt() / bc2.sqrt().to(alpha.dtype)).add_(g["eps"])
            alpha.sub_((g["lr"] / bc1).to(alpha.dtype) * self.exp_avg / denom)
            acc = (logits.argmax(-1) == b["vy"]).to(torch.float64).mean()
        return loss.detach().to(torch.float64), acc

    def _vadam_step(self) -> tuple[Tensor, Tensor]:
        b, alpha, g = self._static, self.alpha, self.a_opt.param_groups[0]
        lam, n, M = g["prior_precision"], g["num_data"], self.mc
        with torch.no_grad():
            sigma = torch.rsqrt(n * self.exp_avg_sq + lam)
            samples = alpha.detach() + sigma * b["eps"]
        with torch.enable_grad(), self._weights_constant():
            a = samples.requires_grad_(True)
            logits = self.model(b["vx"], F.softmax(a, dim=-1))  # [M, B, K]
            B = logits.shape[1]
            losses = F.cross_entropy(logits.reshape(M * B, -1), b["vy"].repeat(M), reduction="none")
            losses = losses.view(M, B).mean(1)
            (gk,) = torch.autograd.grad(losses.sum(), a)
        with torch.no_grad():
            b1, b2 = g["betas"]
            grad, gsq = gk.mean(0), (gk * gk).mean(0)
            self.exp_avg.mul_(b1).add_(grad + (lam / n) * alpha, alpha=1.0 - b1)
            self.exp_avg_sq.mul_(b2).add_(gsq, alpha=1.0 - b2)
            self.a_step.add_(1)
            m_hat = self.exp_avg / (1 - torch.pow(b1, self.a_step)).to(alpha.dtype)
            denom = (self.exp_avg_sq / (1 - torch.pow(b2, self.a_step)).to(alpha.dtype)).sqrt_().add_(lam / n)
            alpha.addcdiv_(m_hat, denom, value=-g["lr"])
            acc = (logits.argmax(-1) == b["vy"]).to(torch.float64).mean()
        return losses.detach().mean().to(torch.float64), acc


def engine_supported(order: int, fused_cell: bool, batched_mc: bool) -> bool:
    """Whether a search with these settings runs on :class:`StepEngine` (the fast path)."""
    return order == 1 and fused_cell and batched_mc



# ---------------------------------------------------------------------------------
# accelerators: a faster step per (space, method); the plain loop is the fallback
# ---------------------------------------------------------------------------------
_ACCELERATORS: dict[tuple[str, str], Callable[..., Any]] = {}


def register_accelerator(space: str, method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@register_accelerator("nb201", "darts")`` on a builder ``(cfg, model, w_opt, dist)
    -> engine or None`` (None: this configuration runs on the plain loop); a duplicate
    pair raises. An engine has ``step(train_batch, val_batch)``, ``last_finite()``,
    ``epoch_stats()`` and ``sync_state()`` (see :class:`StepEngine`)."""
    def add(builder: Callable[..., Any]) -> Callable[..., Any]:
        if (space, method) in _ACCELERATORS:
            raise ValueError(f"an accelerator for {space}/{method} is registered twice")
        _ACCELERATORS[(space, method)] = builder
        return builder

    return add


def build_accelerator(cfg: Any, space: str, model: Any, w_opt: torch.optim.Optimizer, dist: Any) -> Any:
    """The registered accelerator of ``space`` and ``cfg.search.method`` for this
    configuration, or None: then the search runs the plain loop."""
    builder = _ACCELERATORS.get((space, cfg.search.method))
    return None if builder is None else builder(cfg, model, w_opt, dist)


def _nb201_engine(cfg: Any, model: Any, w_opt: torch.optim.Optimizer, dist: Any) -> StepEngine | None:
    s = cfg.search
    if not engine_supported(s.order, s.fused_cell, s.batched_mc):
        return None
    return StepEngine(model, w_opt, dist.optimizer, grad_clip=s.grad_clip,
                      cuda_graph=s.cuda_graph and torch.device(cfg.device).type == "cuda")


register_accelerator("nb201", "darts")(_nb201_engine)
register_accelerator("nb201", "balenas")(_nb201_engine)
