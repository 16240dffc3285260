"""Candidate operations of the NAS-Bench-201 space, and the blocks around the cells.

Each op is built by a factory registered under its NB201 name. A factory takes
``(C_in, C_out, stride, affine, track_running_stats, device, dtype)``. Shapes, padding
and pooling follow NAS-Bench-201's own definitions (``cell_operations.py``), so a
stand-alone network has exactly the benchmark's parameter count.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "mixed_sum",
    "OPS",
    "OP_NAMES",
    "PARAMETER_FREE_OPS",
    "ReLUConvBN",
    "Zero",
    "Pooling",
    "ResNetBasicblock",
    "register_op",
    "build_op",
]

OpFactory = Callable[..., nn.Module]
OPS: dict[str, OpFactory] = {}

#: The NB201 vocabulary, in the benchmark's order (the column order of alpha).
OP_NAMES: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: Ops without weights: the ones DARTS collapses to.
PARAMETER_FREE_OPS: frozenset[str] = frozenset({"none", "skip_connect", "avg_pool_3x3"})


def register_op(name: str) -> Callable[[OpFactory], OpFactory]:
    """Register an op factory under ``name``; a duplicate name raises."""

    def deco(fn: OpFactory) -> OpFactory:
        if name in OPS:
            raise KeyError(f"op {name!r} is already registered")
        OPS[name] = fn
        return fn

    return deco


def build_op(name: str, C_in: int, C_out: int, stride: int, **kw: Any) -> nn.Module:
    """Build the op registered as ``name``."""
    try:
        factory = OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(OPS)}") from None
    return factory(C_in, C_out, stride, **kw)


class ReLUConvBN(nn.Module):
    """ReLU -> Conv2d (no bias) -> BatchNorm2d."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False, **dd),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats, **dd),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Zero(nn.Module):
    """The ``none`` op: outputs zeros of the right shape."""

    def __init__(self, C_in: int, C_out: int, stride: int) -> None:
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        if x.shape[1] != self.C_out:
            shape = list(x.shape)
            shape[1] = self.C_out
            return x.new_zeros(shape)
        return x.mul(0.0)


class Pooling(nn.Module):
    """3x3 average pooling (count_include_pad=False), with a 1x1 projection if C changes."""

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool = True,
                 track_running_stats: bool = True, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.preprocess = (
            None if C_in == C_out
            else ReLUConvBN(C_in, C_out, 1, 1, 0, affine, track_running_stats, device, dtype)
        )
        self.op = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x if self.preprocess is None else self.preprocess(x))


class ResNetBasicblock(nn.Module):
    """The residual block between NB201 stages (stride 2, channels doubled)."""

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool = True,
                 track_running_stats: bool = True, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        bn = {"affine": affine, "track_running_stats": track_running_stats}
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1, **bn, **dd)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, **bn, **dd)
        if stride == 2:
            self.downsample: nn.Module | None = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                nn.Conv2d(C_in, C_out, kernel_size=1, stride=1, padding=0, bias=False, **dd),
            )
        elif C_in != C_out:
            self.downsample = ReLUConvBN(C_in, C_out, 1, 1, 0, **bn, **dd)
        else:
            self.downsample = None
        self.out_dim = C_out

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return residual + self.conv_b(self.conv_a(x))


@register_op("none")
def _none(C_in: int, C_out: int, stride: int, affine: bool = True, track_running_stats: bool = True,
          device: torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    return Zero(C_in, C_out, stride)


@register_op("skip_connect")
def _skip(C_in: int, C_out: int, stride: int, affine: bool = True, track_running_stats: bool = True,
          device: torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    if stride != 1 or C_in != C_out:
        raise ValueError("NB201 cells keep stride 1 and C_in == C_out")
    return nn.Identity()


@register_op("nor_conv_1x1")
def _conv1(C_in: int, C_out: int, stride: int, affine: bool = True, track_running_stats: bool = True,
           device: torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    return ReLUConvBN(C_in, C_out, 1, stride, 0, affine, track_running_stats, device, dtype)


@register_op("nor_conv_3x3")
def _conv3(C_in: int, C_out: int, stride: int, affine: bool = True, track_running_stats: bool = True,
           device: torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    return ReLUConvBN(C_in, C_out, 3, stride, 1, affine, track_running_stats, device, dtype)


@register_op("avg_pool_3x3")
def _pool(C_in: int, C_out: int, stride: int, affine: bool = True, track_running_stats: bool = True,
          device: torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    return Pooling(C_in, C_out, stride, affine, track_running_stats, device, dtype)


def mixed_sum(x: Tensor, weights: Tensor, ops: Sequence[nn.Module]) -> Tensor:
    """One mixed edge: ``sum_o weights[..., o] * op_o(x)`` over the edge's ops, in order
    (a :class:`Zero` op is skipped: it contributes exactly 0, and 0 gradient)."""
    out = None
    for w, op in zip(weights.unbind(-1), ops):
        if isinstance(op, Zero):
            continue
        term = w * op(x)
        out = term if out is None else out + term
    return out
