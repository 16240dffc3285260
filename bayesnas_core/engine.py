"""The fast search step: one search step as pure tensor code, replayed as a CUDA graph.

:func:`~bayesnas_core.search.search_step` is the readable reference: Python floats,
``torch.optim`` objects and one ``.item()`` per statistic. On a GPU that style costs
far more than the arithmetic (thousands of small kernels, each launched from Python,
and a host sync per statistic). :class:`StepEngine` computes the same step:

1. an SGD step (nesterov, weight decay, gradient-norm clipping) on a train batch at
   ``alpha`` (BaLeNAS: at ``mu``);
2. one architecture step on a valid batch: Adam on ``alpha`` (DARTS), or Vadam on
   ``N(mu, sigma^2)`` from ``M`` samples in one batched pass (BaLeNAS);

or, in second order (``order=2``), as DARTS's train loop orders it, the architecture step
first, from DARTS's unrolled gradient (one look-ahead step of the weight optimizer, then the
finite-difference Hessian-vector term; :func:`~bayesnas_core.gradients.arch_gradient`), at
``alpha`` or at each of the ``M`` samples in turn (each sample has its own look-ahead
weights, so they are not batched), then the SGD step on the same train batch;

with every hyperparameter that changes between steps held in a tensor, the optimizer
states updated in place (they are the very tensors of ``w_opt`` and the architecture
optimizer, so checkpoints do not change), and the step statistics summed on the device.
Nothing in a step reads a value back to the host, so on CUDA the whole step is captured
once in a ``torch.cuda.CUDAGraph`` and then replayed, one launch per step. Batches and
the Monte-Carlo noise are drawn outside the graph, exactly as the plain path draws them,
and copied into static buffers.

It is the same step up to floating-point round-off (summation order, and ``p - lr * g``
where torch fuses ``p.add_(g, alpha=-lr)``): ``tests/test_engine.py`` checks 1e-9 in float64,
in first and second order. The finite-difference radius ``eps / ||v||`` stays a tensor here
(the plain path reads it back as a Python float).
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
    """Runs search steps of ``model``; ``cuda_graph=True`` replays them as a graph.

    Args:
        model: the supernet (its ``alpha`` is the architecture parameter, or ``mu``).
        w_opt: ``torch.optim.SGD`` over ``model.weight_parameters()`` (its hyperparameters
            and momentum buffers are used; ``lr`` is re-read every step).
        a_opt: ``torch.optim.Adam`` (DARTS) or :class:`~bayesnas_core.optim.Vadam` (BaLeNAS)
            over ``[model.alpha]``.
        grad_clip: max norm of the weight gradient.
        cuda_graph: capture the step in a CUDA graph (CUDA only) on the first call.
        warmup: eager steps run (and undone) before the capture.
        order: 1 (first order) or 2 (DARTS's unrolled gradient, look-ahead rate the
            weight lr of each step, as the plain path's ``xi``).
        unrolled_eps: second order's finite-difference radius ``eps / ||v||``.
    """

    def __init__(self, model: NB201Supernet, w_opt: torch.optim.Optimizer, a_opt: torch.optim.Optimizer,
                 *, grad_clip: float, cuda_graph: bool = False, warmup: int = 3, order: int = 1,
                 unrolled_eps: float = 0.01) -> None:
        if order not in (1, 2):
            raise ValueError(f"StepEngine: order must be 1 or 2, got {order}")
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
        self.order, self.unrolled_eps = order, float(unrolled_eps)
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
        return (sorted(w.items(), key=str), sorted(a.items(), key=str), self.grad_clip, self.order,
                self.unrolled_eps)

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
        self.model.train()
        if self.order == 2:  # as DARTS: the architecture step unrolls from the current weights
            v_loss, v_acc = self._unrolled_vadam_step() if self.bayesian else self._unrolled_adam_step()
            loss, train_acc = self._weight_step()
        else:
            loss, train_acc = self._weight_step()
            v_loss, v_acc = self._vadam_step() if self.bayesian else self._adam_step()
        with torch.no_grad():
            self.last.copy_(torch.stack([loss, train_acc, v_loss, v_acc]))
            self.sums.add_(self.last)

    def _weight_step(self) -> tuple[Tensor, Tensor]:
        """SGD (nesterov) on the train batch at alpha (or mu); returns loss and accuracy."""
        b, model, alpha = self._static, self.model, self.alpha
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
        return loss.detach().to(torch.float64), train_acc

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

    def _arch_grad(self, a: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``grad_a`` of the loss on ``(x, y)`` at logits ``a`` and the current weights;
        returns the gradient, the loss and the logits."""
        with torch.enable_grad(), self._weights_constant():
            a = a.detach().requires_grad_(True)
            logits = self.model(x, F.softmax(a, dim=-1))
            loss = F.cross_entropy(logits, y)
            (grad,) = torch.autograd.grad(loss, a)
        return grad, loss, logits

    def _adam_step(self) -> tuple[Tensor, Tensor]:
        b = self._static
        grad, loss, logits = self._arch_grad(self.alpha, b["vx"], b["vy"])
        self._adam_update(grad)
        with torch.no_grad():
            acc = (logits.argmax(-1) == b["vy"]).to(torch.float64).mean()
        return loss.detach().to(torch.float64), acc

    @torch.no_grad()
    def _adam_update(self, grad: Tensor) -> None:
        """torch.optim.Adam's step on alpha with this gradient (weight decay added to it)."""
        alpha, g = self.alpha, self.a_opt.param_groups[0]
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

    def _sigma(self) -> Tensor:
        g = self.a_opt.param_groups[0]
        return torch.rsqrt(g["num_data"] * self.exp_avg_sq + g["prior_precision"])

    def _vadam_step(self) -> tuple[Tensor, Tensor]:
        b, alpha, M = self._static, self.alpha, self.mc
        with torch.no_grad():
            samples = alpha.detach() + self._sigma() * b["eps"]
        with torch.enable_grad(), self._weights_constant():
            a = samples.requires_grad_(True)
            logits = self.model(b["vx"], F.softmax(a, dim=-1))  # [M, B, K]
            B = logits.shape[1]
            losses = F.cross_entropy(logits.reshape(M * B, -1), b["vy"].repeat(M), reduction="none")
            losses = losses.view(M, B).mean(1)
            (gk,) = torch.autograd.grad(losses.sum(), a)
        self._vadam_update(gk)
        with torch.no_grad():
            acc = (logits.argmax(-1) == b["vy"]).to(torch.float64).mean()
        return losses.detach().mean().to(torch.float64), acc

    @torch.no_grad()
    def _vadam_update(self, gk: Tensor) -> None:
        """Vadam's update of mu from the ``[M, ...]`` gradients at the M samples."""
        alpha, g = self.alpha, self.a_opt.param_groups[0]
        lam, n = g["prior_precision"], g["num_data"]
        b1, b2 = g["betas"]
        grad, gsq = gk.mean(0), (gk * gk).mean(0)
        self.exp_avg.mul_(b1).add_(grad + (lam / n) * alpha, alpha=1.0 - b1)
        self.exp_avg_sq.mul_(b2).add_(gsq, alpha=1.0 - b2)
        self.a_step.add_(1)
        m_hat = self.exp_avg / (1 - torch.pow(b1, self.a_step)).to(alpha.dtype)
        denom = (self.exp_avg_sq / (1 - torch.pow(b2, self.a_step)).to(alpha.dtype)).sqrt_().add_(lam / n)
        alpha.addcdiv_(m_hat, denom, value=-g["lr"])

    # ---- second order
    def _unrolled_adam_step(self) -> tuple[Tensor, Tensor]:
        grad, loss, acc = self._unrolled_gradient(self.alpha.detach())
        self._adam_update(grad)
        return loss, acc

    def _unrolled_vadam_step(self) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            samples = self.alpha.detach() + self._sigma() * self._static["eps"]
        # one unrolled gradient per sample, in turn, as Vadam.step runs its closure
        grads, losses, accs = zip(*(self._unrolled_gradient(samples[k]) for k in range(self.mc)))
        self._vadam_update(torch.stack(grads))
        return torch.stack(losses).mean(), torch.stack(accs).mean()

    def _unrolled_gradient(self, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """DARTS's unrolled gradient at architecture logits ``a`` as tensor code
        (:func:`~bayesnas_core.gradients.arch_gradient` with ``order=2``):
        ``w' = w - xi (momentum buf + g + wd w)``, then ``grad_a L_val(w', a) - xi H v``
        with ``v = grad_w' L_val(w', a)`` and ``H v`` by central differences at
        ``w +- R v``, ``R = eps / ||v||``. The weights come back exactly (copied from a
        saved clone). Returns the gradient, the validation loss and accuracy at ``w'``."""
        b, model, weights = self._static, self.model, self.weights
        g = self.w_opt.param_groups[0]
        saved = [w.detach().clone() for w in weights]
        with torch.enable_grad():
            loss = F.cross_entropy(model(b["tx"], F.softmax(a.detach(), dim=-1)), b["ty"])
            steps = list(torch.autograd.grad(loss, weights))  # not clipped, as in DARTS
        with torch.no_grad():
            if g["weight_decay"]:
                torch._foreach_add_(steps, weights, alpha=g["weight_decay"])
            if g["momentum"]:
                torch._foreach_add_(steps, self.momentum_buffers, alpha=g["momentum"])
            torch._foreach_mul_(steps, self.lr)  # xi: the weight lr of this step
            torch._foreach_sub_(weights, steps)
        with torch.enable_grad():
            av = a.detach().requires_grad_(True)
            logits = model(b["vx"], F.softmax(av, dim=-1))
            v_loss = F.cross_entropy(logits, b["vy"])
            darch, *v = torch.autograd.grad(v_loss, [av, *weights])
        with torch.no_grad():
            acc = (logits.argmax(-1) == b["vy"]).to(torch.float64).mean()
            R = self.unrolled_eps / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v))).clamp_min(1e-12)
            torch._foreach_copy_(weights, saved)
            torch._foreach_mul_(v, R)  # v now holds R v
            torch._foreach_add_(weights, v)
        g_plus = self._arch_grad(a, b["tx"], b["ty"])[0]
        with torch.no_grad():
            torch._foreach_add_(weights, v, alpha=-2.0)
        g_minus = self._arch_grad(a, b["tx"], b["ty"])[0]
        with torch.no_grad():
            torch._foreach_copy_(weights, saved)
            grad = darch - self.lr * (g_plus - g_minus) / (2 * R)
        return grad, v_loss.detach().to(torch.float64), acc


def engine_supported(order: int, fused_cell: bool, batched_mc: bool, graph: bool = False) -> bool:
    """Whether a search with these settings runs on :class:`StepEngine` (the fast path).

    First order: with fused cells and batched samples. Second order: also only where the
    engine is replayed as a CUDA graph (``graph``); on a CPU the unrolled step stays on the
    plain loop, so second-order CPU runs reproduce as shipped (the default study's DARTS
    second-order seeds; the eager engine rounds differently in float32). The eager engine
    gains little on a CPU (``assets/bench/bench-cpu-default-o12-*.json``); on the H200 the
    graph made first-order steps x4.4-5.3 faster than the plain path
    (``assets/bench/bench-cuda-nb201-paper-20261128-025650.json``).
    """
    return fused_cell and batched_mc and (order == 1 or (order == 2 and graph))


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
    graph = s.cuda_graph and torch.device(cfg.device).type == "cuda"
    if not engine_supported(s.order, s.fused_cell, s.batched_mc, graph):
        return None
    return StepEngine(model, w_opt, dist.optimizer, grad_clip=s.grad_clip, cuda_graph=graph,
                      order=s.order, unrolled_eps=s.unrolled_eps)


register_accelerator("nb201", "darts")(_nb201_engine)
register_accelerator("nb201", "balenas")(_nb201_engine)
