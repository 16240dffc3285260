"""Shared fixtures: tiny configs and data so every test runs in seconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from bayesnas_core.config import DataConfig, RunConfig, SearchConfig, SelectConfig, SpaceConfig
from bayesnas_core.data import SearchData, TensorSplit


def make_tiny_data(n: int = 64, classes: int = 4, size: int = 8, channels: int = 1,
                   seed: int = 0) -> SearchData:
    """Random but learnable data: the class shifts the image mean."""
    g = torch.Generator().manual_seed(seed)

    def split(m: int) -> TensorSplit:
        y = torch.randint(0, classes, (m,), generator=g)
        x = torch.randn(m, channels, size, size, generator=g) + y.view(-1, 1, 1, 1).float() * 0.5
        return TensorSplit(x, y)

    return SearchData(name="tiny", train=split(n), valid=split(n), test=split(n // 2),
                      num_classes=classes, in_channels=channels, image_size=size,
                      split_note="random tensors for tests")


def make_tiny_config(tmp_path, **search) -> RunConfig:
    cfg = RunConfig(
        seed=0,
        preset="test",
        out=str(tmp_path / "runs"),
        space=SpaceConfig(C=4, N=1),
        data=DataConfig(dataset="fashion-mnist-subset", batch_size=16, augment=False),
        search=SearchConfig(epochs=2, a_lr=3e-3, curvature_iters=2, **search),
        select=SelectConfig(samples=4, C=4, N=1),
    )
    return cfg


@pytest.fixture
def tiny_data() -> SearchData:
    return make_tiny_data()
