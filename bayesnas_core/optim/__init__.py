"""Optimizers: :class:`Vadam` (Variational Adam) for Gaussian architecture weights."""

from __future__ import annotations

from .vadam import Vadam

__all__ = ["Vadam"]
