"""Zero-cost proxies (SynFlow, SNIP, GraSP) on any ``nn.Module`` classifier.

Definitions follow METHOD.md section 3 and the zero-cost proxy reference code
(Abdelfattah et al., ICLR 2021). Every score is a sum over the weights of the
network's Conv and Linear layers (``nn.modules.conv._ConvNd`` and ``nn.Linear``);
biases and BatchNorm affine parameters never enter the sum.

Conventions shared by all proxies:

* **Higher is better** for every proxy, as the reference code uses them. GraSP can be
  negative; it is still "higher is better".
* Scores are returned as Python floats. SynFlow is computed in float64; SNIP and GraSP
  in the network's own dtype, summed in float64.
* **The given network is not changed.** The proxies evaluate it through
  :func:`torch.func.functional_call` with substitute tensors, so its parameters
  (values, signs, dtype, ``requires_grad``), its ``.grad`` fields and its buffers
  (BatchNorm running statistics) come back bit-identical. The only temporary changes
  (BatchNorm bypass and eval mode, SynFlow only) are undone in a ``finally`` block.
* Tensors are created on the device of the network's first parameter; ``inputs`` and
  ``targets`` are moved there.

BatchNorm handling per proxy:

* ``synflow``: every ``_BatchNorm`` module is bypassed (its ``forward`` temporarily
  becomes the identity, as the reference does with ``bn=False``), and the whole network
  runs in eval mode so dropout or drop-path cannot make the score random.
* ``snip`` and ``grasp``: BatchNorm is kept, in the mode the network is in (a freshly
  built network is in train mode and uses batch statistics, as the reference does).
  Running-statistic updates go to copies and are discarded. The scores are
  deterministic given the batch unless the network has stochastic layers active in its
  current mode (e.g. dropout in train mode).

A proxy is a function ``fn(net, *, inputs=None, targets=None, input_shape=None) ->
float`` registered with :func:`register_proxy`; :func:`compute_proxy` runs one by name
and wraps the result in a :class:`ProxyScore`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from bayesnas_core.errors import UserError

__all__ = [
    "PROXIES",
    "ProxyFn",
    "ProxyScore",
    "register_proxy",
    "get_proxy",
    "compute_proxy",
    "signed_log10",
    "synflow",
    "snip",
    "grasp",
]

ProxyFn = Callable[..., float]
#: Registered proxies, name -> function ``fn(net, *, inputs, targets, input_shape)``.
PROXIES: dict[str, ProxyFn] = {}


def register_proxy(name: str) -> Callable[[ProxyFn], ProxyFn]:
    """Register a proxy function under ``name``; a duplicate name raises ``KeyError``."""

    def deco(fn: ProxyFn) -> ProxyFn:
        if name in PROXIES:
            raise KeyError(f"proxy {name!r} is already registered")
        PROXIES[name] = fn
        return fn

    return deco


def get_proxy(name: str) -> ProxyFn:
    """Return the proxy registered as ``name``; an unknown name raises ``UserError``."""
    try:
        return PROXIES[name]
    except KeyError:
        valid = ", ".join(sorted(PROXIES))
        raise UserError(f"unknown proxy {name!r}; choose one of: {valid}") from None


def signed_log10(value: float) -> float:
    """``sign(v) * log10(1 + |v|)``: strictly increasing in ``v``, 0 at 0, odd.

    For ``|v| >> 1`` it is ``log10(|v|)`` with the sign of ``v``, so large scores read
    as orders of magnitude; unlike ``log10`` it is defined for zero and negative values
    (GraSP) and keeps their order. ``inf`` maps to ``inf`` and ``nan`` to ``nan``.
    """
    v = float(value)
    if math.isnan(v):
        return math.nan
    return math.copysign(math.log10(1.0 + abs(v)), v) if v != 0.0 else 0.0


@dataclass(frozen=True)
class ProxyScore:
    """One proxy score. Higher is better for every proxy.

    ``log10`` is :func:`signed_log10` of ``value``, i.e. ``sign(v) * log10(1 + |v|)``,
    which orders scores exactly as ``value`` does.
    """

    name: str
    value: float
    log10: float

    @classmethod
    def from_value(cls, name: str, value: float) -> ProxyScore:
        """Build a score with its ``log10`` filled in."""
        v = float(value)
        return cls(name=name, value=v, log10=signed_log10(v))


def compute_proxy(
    name: str,
    net: nn.Module,
    *,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> ProxyScore:
    """Score ``net`` with the proxy registered as ``name``.

    ``synflow`` needs ``input_shape`` (one example's shape, no batch dimension) or
    ``inputs`` (only its shape is used). ``snip`` and ``grasp`` need a labelled batch:
    ``inputs`` and integer class ``targets``.
    """
    fn = get_proxy(name)
    value = fn(net, inputs=inputs, targets=targets, input_shape=input_shape)
    return ProxyScore.from_value(name, value)


# --------------------------------------------------------------------------- helpers


def _device_of(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


def _scored_weight_names(net: nn.Module) -> list[str]:
    """Names of Conv/Linear weights, each shared Parameter listed once."""
    names: list[str] = []
    seen: set[int] = set()
    for mod_name, mod in net.named_modules():
        if isinstance(mod, (_ConvNd, nn.Linear)):
            w = getattr(mod, "weight", None)
            if isinstance(w, Tensor) and id(w) not in seen:
                seen.add(id(w))
                names.append(f"{mod_name}.weight" if mod_name else "weight")
    if not names:
        raise ValueError(f"{type(net).__name__} has no Conv/Linear weights to score")
    return names


def _copied_buffers(net: nn.Module) -> dict[str, Tensor]:
    """Copies of all buffers, so in-place updates (BN running stats) leave the net alone."""
    return {n: b.clone() for n, b in net.named_buffers()}


def _identity_forward(x: Tensor, *args: object, **kwargs: object) -> Tensor:
    return x


_MISSING = object()


@contextmanager
def _synflow_mode(net: nn.Module) -> Iterator[None]:
    """Bypass every BatchNorm and put ``net`` in eval mode; restore both on exit."""
    flags = [(m, m.training) for m in net.modules()]
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    saved = [(m, m.__dict__.get("forward", _MISSING)) for m in bns]
    try:
        net.eval()
        for m in bns:
            m.forward = _identity_forward  # instance attribute shadows the method
        yield
    finally:
        for m, fwd in saved:
            if fwd is _MISSING:
                m.__dict__.pop("forward", None)
            else:
                m.forward = fwd
        for m, flag in flags:
            m.training = flag


def _labelled_batch(net: nn.Module, inputs: Tensor | None, targets: Tensor | None, proxy: str) -> tuple[Tensor, Tensor]:
    if inputs is None or targets is None:
        raise UserError(f"proxy {proxy!r} needs a labelled batch: pass inputs= and targets=")
    device = _device_of(net)
    return inputs.to(device), targets.to(device)


def _loss_and_weights(net: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Mean cross-entropy on the batch and the Conv/Linear weight leaves it depends on.

    The weights are detached aliases of the net's own (no copy), so gradients are taken
    with ``torch.autograd.grad`` and never touch the net's ``.grad`` fields.
    """
    names = _scored_weight_names(net)
    params = dict(net.named_parameters())
    weights = {n: params[n].detach().requires_grad_(True) for n in names}
    tensors: dict[str, Tensor] = {**_copied_buffers(net), **weights}
    logits = functional_call(net, tensors, (inputs,))
    loss = F.cross_entropy(logits, targets)
    return loss, list(weights.values())


def _grads(out: Tensor, weights: list[Tensor], *, create_graph: bool = False) -> list[Tensor]:
    gs = torch.autograd.grad(out, weights, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(weights, gs)]


def _sum64(terms: list[Tensor]) -> float:
    return float(sum(t.to(torch.float64).sum() for t in terms).item())


# --------------------------------------------------------------------------- proxies


@register_proxy("synflow")
def synflow(
    net: nn.Module,
    *,
    input_shape: tuple[int, ...] | None = None,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
) -> float:
    """SynFlow: ``sum |theta * dR/dtheta|`` over Conv/Linear weights. Higher is better.

    The network runs in float64 with every parameter replaced by its absolute value
    (floating buffers are cast to float64, not abs'ed), BatchNorm bypassed, eval mode,
    on an all-ones input of shape ``(1, *input_shape)``; ``R`` is the sum of the
    outputs. No data and no labels: ``inputs`` only supplies the shape when
    ``input_shape`` is not given, and ``targets`` is ignored.
    """
    del targets  # SynFlow uses no labels
    if input_shape is None:
        if inputs is None:
            raise UserError("proxy 'synflow' needs input_shape= (one example's shape, e.g. (3, 32, 32))")
        input_shape = tuple(inputs.shape[1:])
    device = _device_of(net)
    names = _scored_weight_names(net)
    with torch.enable_grad():
        scored = set(names)
        params = {
            n: p.detach().to(torch.float64).abs().requires_grad_(n in scored) for n, p in net.named_parameters()
        }
        buffers = {
            n: (b.to(torch.float64, copy=True) if b.is_floating_point() else b.clone())
            for n, b in net.named_buffers()
        }
        x = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
        with _synflow_mode(net):
            out = functional_call(net, {**buffers, **params}, (x,))
        weights = [params[n] for n in names]
        grads = _grads(out.sum(), weights)
        return _sum64([(w.detach() * g).abs() for w, g in zip(weights, grads)])


@register_proxy("snip")
def snip(
    net: nn.Module,
    *,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> float:
    """SNIP: ``sum |theta * dL/dtheta|`` over Conv/Linear weights. Higher is better.

    ``L`` is the mean cross-entropy on the batch; BatchNorm is kept, in the net's mode.
    """
    del input_shape
    x, y = _labelled_batch(net, inputs, targets, "snip")
    with torch.enable_grad():
        loss, weights = _loss_and_weights(net, x, y)
        grads = _grads(loss, weights)
        return _sum64([(w.detach() * g).abs() for w, g in zip(weights, grads)])


@register_proxy("grasp")
def grasp(
    net: nn.Module,
    *,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> float:
    """GraSP: ``sum(-theta * H g)`` over Conv/Linear weights. Higher is better.

    ``g = dL/dtheta`` (treated as a constant), ``H g = d(g_graph . g)/dtheta`` by a
    second backward pass, where ``g_graph`` is the same gradient kept in the graph and
    ``H`` the Hessian of the mean cross-entropy with respect to the Conv/Linear weights.
    BatchNorm is kept, in the net's mode. The value can be negative.
    """
    del input_shape
    x, y = _labelled_batch(net, inputs, targets, "grasp")
    with torch.enable_grad():
        loss, weights = _loss_and_weights(net, x, y)
        g_graph = _grads(loss, weights, create_graph=True)
        z = sum((gg * gg.detach()).sum() for gg in g_graph if gg.requires_grad)
        if not isinstance(z, Tensor):  # loss is linear in every weight: H g = 0
            return 0.0
        hg = _grads(z, weights)
        return _sum64([-w.detach() * h for w, h in zip(weights, hg)])
