"""Search-speed benchmark: ``python -m bayesnas_core.bench``.

Times one search step (an SGD weight step plus one architecture step) of the plain
path (unfused cells, one forward/backward per Monte-Carlo sample) and the fast path
(fused cells, all M samples in one batched pass) side by side, in one process, on the same batches, for DARTS and
for BaLeNAS with each M. Reports ms per step, seconds per epoch and the projected
minutes for 50 epochs, with the device and versions, and writes JSON to
``assets/bench/``.

On the CPU it runs at lesson scale (``--preset default``); on CUDA use
``--preset nb201-paper`` (C=16, N=5, batch 64, 25,000 / 25,000 split).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import RunConfig, get_preset
from .errors import UserError
from .paths import assets_dir
from .runs import atomic_write_json, environment_info, seed_everything
from .search import build_arch_update, build_supernet, search_step

__all__ = ["time_search_step", "run_benchmark", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_search_step(cfg: RunConfig, *, steps: int, warmup: int, num_classes: int,
                     in_channels: int, image_size: int, num_valid: int) -> list[float]:
    """Wall seconds of each of ``steps`` timed search steps (after ``warmup``)."""
    device = torch.device(cfg.device)
    seed_everything(cfg.seed)
    model = build_supernet(cfg, num_classes, in_channels)
    s = cfg.search
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=s.w_lr, momentum=s.w_momentum,
                            nesterov=True, weight_decay=s.w_weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    arch = build_arch_update(cfg, model, num_valid, gen)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    B = cfg.data.batch_size
    shape = (B, in_channels, image_size, image_size)
    dtype = getattr(torch, cfg.dtype)
    tb = (torch.randn(shape, generator=g, device=device, dtype=dtype),
          torch.randint(0, num_classes, (B,), generator=g, device=device))
    vb = (torch.randn(shape, generator=g, device=device, dtype=dtype),
          torch.randint(0, num_classes, (B,), generator=g, device=device))
    times: list[float] = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        search_step(model, w_opt, arch, tb, vb, grad_clip=s.grad_clip)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def run_benchmark(cfg: RunConfig, *, mcs: Sequence[int], steps: int, warmup: int,
                  num_classes: int, in_channels: int, image_size: int, train_size: int,
                  epochs: int = 50, log=print) -> dict[str, Any]:
    """Plain vs fast path for DARTS and BaLeNAS(M); returns a JSON-ready report."""
    steps_per_epoch = train_size // cfg.data.batch_size
    cases: list[tuple[str, str, int, bool]] = [("darts", "plain", 1, False), ("darts", "fast", 1, True)]
    for m in mcs:
        cases += [("balenas", "plain", m, False), ("balenas", "fast", m, True)]
    rows = []
    for method, path, m, fast in cases:
        c = copy.deepcopy(cfg)
        c.search.method, c.search.mc_samples = method, m
        c.search.batched_mc = c.search.fused_cell = fast
        times = time_search_step(c, steps=steps, warmup=warmup, num_classes=num_classes,
                                 in_channels=in_channels, image_size=image_size,
                                 num_valid=train_size)
        ms = 1000 * statistics.median(times)
        row = {"method": method, "path": path, "mc_samples": m if method == "balenas" else None,
               "ms_per_step_median": ms, "ms_per_step_min": 1000 * min(times),
               "s_per_epoch": ms * steps_per_epoch / 1000,
               f"projected_min_{epochs}_epochs": ms * steps_per_epoch * epochs / 60_000,
               "steps_timed": steps}
        rows.append(row)
        log(f"{method:8s} {path:5s} M={m}  {ms:8.1f} ms/step  {row['s_per_epoch']:7.1f} s/epoch  "
            f"{row[f'projected_min_{epochs}_epochs']:7.1f} min/{epochs} epochs")
    return {"config": {"preset": cfg.preset, "device": cfg.device, "C": cfg.space.C,
                       "N": cfg.space.N, "batch_size": cfg.data.batch_size,
                       "image": [in_channels, image_size, image_size],
                       "train_size": train_size, "steps_per_epoch": steps_per_epoch,
                       "epochs": epochs, "dtype": cfg.dtype},
            "env": environment_info(cfg.device), "rows": rows,
            "note": "plain = unfused cells, one forward/backward per Monte-Carlo sample; fast = "
                    "fused cells (edges leaving a node share one ReLU/conv/BN/pool) and the M "
                    "samples in one batched (vmap) pass. Synthetic batches of the configured "
                    "shape; data loading is not timed (data is device-resident in the search)."}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bayesnas_core.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=None, help="default (CPU) or nb201-paper (CUDA)")
    p.add_argument("--device", default=None)
    p.add_argument("--mc", type=int, nargs="+", default=[1, 3])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=str(assets_dir() / "bench"))
    args = p.parse_args(argv)
    try:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but CUDA is not available; pass --device cpu")
        preset = args.preset or ("nb201-paper" if device.startswith("cuda") else "default")
        cfg = get_preset(preset)
        cfg.device = device
        shape = {"cifar10": (10, 3, 32, 50_000), "fashion-mnist": (10, 1, 28, 60_000),
                 "fashion-mnist-subset": (10, 1, 28, 4_000)}
        if cfg.data.dataset not in shape:
            raise UserError(f"bench supports presets on cifar10 or fashion-mnist, not {cfg.data.dataset!r}")
        classes, chans, size, n = shape[cfg.data.dataset]
        size = cfg.data.image_size or size
        report = run_benchmark(cfg, mcs=args.mc, steps=args.steps, warmup=args.warmup,
                               num_classes=classes, in_channels=chans, image_size=size,
                               train_size=n // 2)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dev = "cuda" if device.startswith("cuda") else "cpu"
    path = Path(args.out) / f"bench-{dev}-{preset}-{stamp}.json"
    atomic_write_json(path, report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
