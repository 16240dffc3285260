"""Model size as NAS papers report it: parameters and multiply-adds.

DARTS (Liu et al., ICLR 2019, arXiv:1806.09055) and the papers after it report the
parameters of an evaluation network without its auxiliary head (the head is used in
training only), and multiply-adds of one image's inference counted over convolutions and
linear layers. Both functions here count the same way.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["count_parameters", "count_multiply_adds", "AUXILIARY_NAME"]

#: the attribute name of an auxiliary head (DARTS's ``auxiliary_head``)
AUXILIARY_NAME = "auxiliary_head"


def _is_auxiliary(qualified_name: str) -> bool:
    return AUXILIARY_NAME in qualified_name.split(".")


def count_parameters(model: nn.Module, *, exclude_auxiliary: bool = True) -> int:
    """The number of parameters of ``model``; with ``exclude_auxiliary`` (the default, as
    DARTS reports) those under a submodule named ``auxiliary_head`` are left out."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (exclude_auxiliary and _is_auxiliary(name)))


def count_multiply_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one input through ``model`` in eval mode (no auxiliary head).

    ``input_shape`` is ``(C, H, W)`` or ``(B, C, H, W)`` (the count is per input, so ``B``
    does not change it). One forward runs under :func:`torch.no_grad`, on the device and in
    the dtype of the model's first parameter, with hooks that count each ``Conv2d`` as
    ``k_h * k_w * C_in / groups * C_out * H_out * W_out`` and each ``Linear`` as
    ``in * out`` per row; modules under ``auxiliary_head`` are not counted. The model's
    training mode is restored afterwards.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (C, H, W) or (B, C, H, W), got {tuple(input_shape)}")
    batch = shape[0]
    total = [0]

    def conv_hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        assert isinstance(module, nn.Conv2d)
        k_h, k_w = module.kernel_size
        per_out = k_h * k_w * (module.in_channels // module.groups)
        total[0] += per_out * output.numel() // batch

    def linear_hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        assert isinstance(module, nn.Linear)
        total[0] += module.in_features * output.numel() // batch

    handles = []
    for name, module in model.named_modules():
        if _is_auxiliary(name):
            continue
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    param = next(model.parameters(), None)
    kw = {} if param is None else {"device": param.device, "dtype": param.dtype}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, **kw))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total[0]
