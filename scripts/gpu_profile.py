"""Where a fast-path search step spends its GPU time: ``python scripts/gpu_profile.py OUT_DIR``.

Profiles eager engine steps (kernel durations are what a graph replays) at paper settings
(NB201 C=16, N=5, batch 64, 3x32x32) for DARTS and BaLeNAS M=3, and writes per-kernel tables
(self device time) and a JSON summary to OUT_DIR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bayesnas_core.bench import make_step
from bayesnas_core.config import get_preset


def main(out: Path, steps: int = 3) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": steps}
    for method, m in (("darts", 1), ("balenas", 3)):
        cfg = get_preset("nb201-paper")
        cfg.search.method, cfg.search.mc_samples = method, m
        step = make_step(cfg, "fast", num_classes=10, in_channels=3, image_size=32, train_size=25_000)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
        avg = prof.key_averages()
        key = "self_device_time_total" if hasattr(avg[0], "self_device_time_total") else "self_cuda_time_total"
        table = avg.table(sort_by=key, row_limit=45, max_name_column_width=70)
        (out / f"profile-{method}-m{m}.txt").write_text(table)
        # kernel rows only: an aten op's self device time repeats its kernels' time
        total_us = sum(getattr(e, key) for e in avg if not e.key.startswith("aten::"))
        launches = sum(e.count for e in avg if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel",
                                                                  "cudaGraphLaunch")))
        summary[f"{method}-m{m}"] = {"kernel_launches_per_step": launches / steps,
                                      "kernel_ms_per_step": total_us / 1000 / steps}
        print(method, m, summary[f"{method}-m{m}"], flush=True)
        print(table[:6000], flush=True)
    (out / "profile.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
