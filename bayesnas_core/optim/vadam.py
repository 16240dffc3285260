"""Variational Adam (Vadam, Khan et al., ICML 2018) for Gaussian architecture weights.

Each parameter ``p`` holds the posterior mean ``mu``; the optimizer state holds the
Adam moments ``m`` (``exp_avg``) and ``s`` (``exp_avg_sq``), and the posterior standard
deviation is ``sigma = 1 / sqrt(N * s + lambda)`` (METHOD.md section 2).

One step draws ``M`` samples ``mu + sigma * eps``, evaluates the loss gradient at each,
and updates with ``g = mean_k g_k`` and ``gsq = mean_k g_k**2``:

    m  = b1 m + (1 - b1) (g + (lambda / N) mu)
    s  = b2 s + (1 - b2) gsq
    mu = mu - lr * (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + lambda / N)

Noise comes from ``generator`` (``None`` means torch's default generator). The
generator is not part of ``state_dict()``: to resume bit-exactly, save
``generator.get_state()`` next to the optimizer state and restore it with
``generator.set_state(...)``.

``s`` estimates the curvature from squared gradients, so ``sigma`` matches the
mean-field posterior only when each gradient is a per-example gradient; with a
minibatch of ``B`` examples ``s`` shrinks by about ``1 / B`` and ``sigma`` grows by about
``sqrt(B)`` while ``B * B << N`` (see ``tests/test_vadam.py``, the linear-regression test).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["Vadam"]

BatchedClosure = Callable[[list[Tensor]], tuple[Any, list[Tensor | None]]]


def _check_hparams(group: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first invalid hyperparameter of ``group``."""
    lr = group["lr"]
    betas = group["betas"]
    lam = group["prior_precision"]
    prec_init = group["prec_init"]
    num_data = group["num_data"]
    mc = group["mc_samples"]
    if not lr > 0.0:
        raise ValueError(f"Vadam: lr must be > 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"Vadam: betas must be two numbers in [0, 1), got {betas}")
    if not lam > 0.0:
        raise ValueError(f"Vadam: prior_precision must be > 0, got {lam}")
    if not prec_init >= lam:
        raise ValueError(
            f"Vadam: prec_init ({prec_init}) must be >= prior_precision ({lam}) "
            "so that the initial second moment (prec_init - prior_precision) / num_data >= 0"
        )
    for name, value in (("num_data", num_data), ("mc_samples", mc)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"Vadam: {name} must be an integer >= 1, got {value!r}")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Equal devices, treating a missing CUDA index as the current device."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


class Vadam(torch.optim.Optimizer):
    """Variational Adam: natural-gradient VI for a diagonal Gaussian posterior.

    Args:
        params: parameters (the posterior means) or parameter groups.
        lr: step size.
        betas: decay rates of the first and second moments.
        prior_precision: ``lambda``, precision of the N(0, 1/lambda) prior.
        prec_init: initial posterior precision (``>= prior_precision``).
        num_data: ``N``, number of examples the per-example mean loss averages over.
        mc_samples: ``M``, Monte-Carlo samples per step.
        generator: source of the sampling noise; ``None`` uses torch's default
            generator. Not saved in ``state_dict()``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        prior_precision: float = 1.0,
        prec_init: float = 1.0,
        num_data: int = 25000,
        mc_samples: int = 1,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            prior_precision=prior_precision,
            prec_init=prec_init,
            num_data=num_data,
            mc_samples=mc_samples,
        )
        _check_hparams(defaults)
        defaults["num_data"], defaults["mc_samples"] = int(num_data), int(mc_samples)
        self.generator = generator
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validating its hyperparameters (defaults fill the gaps)."""
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        param_group["betas"] = tuple(param_group["betas"])
        _check_hparams(param_group)
        param_group["num_data"] = int(param_group["num_data"])
        param_group["mc_samples"] = int(param_group["mc_samples"])
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ posterior
    def _group_of(self, p: Tensor) -> dict[str, Any]:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise ValueError("Vadam: tensor is not one of this optimizer's parameters")

    def _pairs(self) -> list[tuple[dict[str, Any], Tensor]]:
        return [(group, p) for group in self.param_groups for p in group["params"]]

    def _std(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        state = self.state.get(p)
        if state:
            return torch.rsqrt(group["num_data"] * state["exp_avg_sq"] + group["prior_precision"])
        return torch.full_like(p.detach(), group["prec_init"] ** -0.5)  # s = s0 at init

    def posterior_mean(self, p: Tensor) -> Tensor:
        """Posterior mean of ``p``: a detached copy of ``p``."""
        self._group_of(p)
        return p.detach().clone()

    def posterior_std(self, p: Tensor) -> Tensor:
        """Posterior std ``1 / sqrt(N s + lambda)`` of ``p`` (initial ``s`` before any step)."""
        return self._std(p, self._group_of(p)).clone()

    def posterior(self) -> list[tuple[Tensor, Tensor]]:
        """``(mean, std)`` for every parameter, in parameter-group order."""
        return [(p.detach().clone(), self._std(p, group).clone()) for group, p in self._pairs()]

    # ------------------------------------------------------------------ sampling
    def _randn(self, shape: tuple[int, ...], p: Tensor) -> Tensor:
        gen = self.generator
        if gen is not None and not _same_device(gen.device, p.device):
            eps = torch.randn(shape, generator=gen, device=gen.device, dtype=p.dtype)
            return eps.to(p.device)
        return torch.randn(shape, generator=gen, device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def sample(self, num_samples: int | None = None) -> list[Tensor]:
        """Draw ``[M, *p.shape]`` samples ``mu + sigma * eps`` per parameter, in group order.

        ``M`` is ``num_samples`` or, if ``None``, each group's ``mc_samples``.
        """
        if num_samples is not None and (isinstance(num_samples, bool) or num_samples < 1):
            raise ValueError(f"Vadam.sample: num_samples must be >= 1, got {num_samples!r}")
        return [p.detach() + self._std(p, group) * eps
                for (group, p), eps in zip(self._pairs(), self.noise(num_samples))]

    @torch.no_grad()
    def noise(self, num_samples: int | None = None) -> list[Tensor]:
        """The standard-normal draws ``eps`` ``[M, *p.shape]`` that :meth:`sample` scales,
        in group order, consuming the generator exactly as :meth:`sample` does."""
        if num_samples is not None and (isinstance(num_samples, bool) or num_samples < 1):
            raise ValueError(f"Vadam.noise: num_samples must be >= 1, got {num_samples!r}")
        out = []
        for group, p in self._pairs():
            m = group["mc_samples"] if num_samples is None else int(num_samples)
            out.append(self._randn((m, *p.shape), p))
        return out

    def _num_mc(self) -> int:
        ms = {group["mc_samples"] for group in self.param_groups}
        if len(ms) != 1:
            raise ValueError(
                f"Vadam.step: all parameter groups must share mc_samples, got {sorted(ms)}"
            )
        return ms.pop()

    # ------------------------------------------------------------------ stepping
    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None
    ) -> Tensor | None:
        """One Vadam step; ``closure`` (required) computes the loss and calls ``backward``.

        The closure runs once per Monte-Carlo sample with the parameters set to that
        sample and their gradients cleared. Parameters are restored to the mean before
        the update. Afterwards ``p.grad`` holds the Monte-Carlo mean gradient. A parameter
        whose gradient is ``None`` in a sample averages over the other samples; one with
        no gradient in any sample is left alone (its ``step`` count does not advance).
        Returns the mean loss over samples (``None`` if the closure returns ``None``).
        """
        if closure is None:
            raise ValueError(
                "Vadam.step requires a closure that computes the loss and calls backward()"
            )
        num_mc = self._num_mc()
        pairs = self._pairs()
        samples = self.sample(num_mc)
        means = [p.detach().clone() for _, p in pairs]
        per_sample: list[list[Tensor]] = [[] for _ in pairs]
        losses = []
        try:
            for k in range(num_mc):
                for (_, p), x in zip(pairs, samples):
                    p.copy_(x[k])
                    p.grad = None
                with torch.enable_grad():
                    loss = closure()
                if loss is not None:
                    losses.append(torch.as_tensor(loss).detach())
                for (_, p), acc in zip(pairs, per_sample):
                    if p.grad is not None:
                        acc.append(p.grad.detach().clone())
        finally:
            for (_, p), mu in zip(pairs, means):
                p.copy_(mu)
        grads = [torch.stack(acc) if acc else None for acc in per_sample]
        self._update(pairs, grads)
        return torch.stack(losses).mean() if losses else None

    @torch.no_grad()
    def step_batched(self, closure_batched: BatchedClosure) -> Tensor:
        """One Vadam step with all ``M`` samples evaluated in one call.

        ``closure_batched(samples)`` receives detached ``[M, *p.shape]`` samples (one per
        parameter, group order) and returns ``(loss, grads)``: ``grads[i]`` is the
        ``[M, *p.shape]`` per-sample gradient of parameter ``i`` or ``None``. With the same
        noise this matches :meth:`step`. Returns ``loss`` as a tensor.
        """
        if closure_batched is None:
            raise ValueError("Vadam.step_batched requires a closure returning (loss, grads)")
        num_mc = self._num_mc()
        pairs = self._pairs()
        samples = self.sample(num_mc)
        with torch.enable_grad():
            loss, grads = closure_batched(samples)
        grads = list(grads)
        if len(grads) != len(pairs):
            raise ValueError(
                f"Vadam.step_batched: expected {len(pairs)} gradients, got {len(grads)}"
            )
        checked: list[Tensor | None] = []
        for (_, p), g in zip(pairs, grads):
            if g is not None:
                if tuple(g.shape) != (num_mc, *p.shape):
                    raise ValueError(
                        "Vadam.step_batched: gradient shape "
                        f"{tuple(g.shape)} != {(num_mc, *p.shape)}"
                    )
                g = g.detach()
            checked.append(g)
        self._update(pairs, checked)
        return torch.as_tensor(loss).detach().mean()

    def _update(
        self, pairs: list[tuple[dict[str, Any], Tensor]], grads: list[Tensor | None]
    ) -> None:
        """Shared Vadam update; ``grads[i]``: ``[K, *p.shape]`` per-sample gradients or ``None``."""
        for (group, p), gk in zip(pairs, grads):
            if gk is None:
                continue
            if gk.is_sparse:
                raise ValueError("Vadam does not support sparse gradients")
            b1, b2 = group["betas"]
            lam, n, lr = group["prior_precision"], group["num_data"], group["lr"]
            gk = gk.to(p.dtype)
            g = gk.mean(0)
            gsq = (gk * gk).mean(0)
            p.grad = g.clone()
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.full_like(
                    p, (group["prec_init"] - lam) / n, memory_format=torch.preserve_format
                )
            state["step"] += 1
            t = state["step"]
            m, s = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(b1).add_(g + (lam / n) * p, alpha=1.0 - b1)
            s.mul_(b2).add_(gsq, alpha=1.0 - b2)
            m_hat = m / (1.0 - b1**t)
            denom = (s / (1.0 - b2**t)).sqrt_().add_(lam / n)
            p.addcdiv_(m_hat, denom, value=-lr)
