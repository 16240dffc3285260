"""How many CPU threads torch uses: a policy that survives a shared machine.

torch's default (one intra-op thread per logical CPU) collapses when another process
wants a core: the threads wait for each other at every operator. Measured on the 2-core
project machine (``assets/bench/``, ``python -m bayesnas_core.bench --threads 1 2 --load 0 1``):
an idle machine runs a step faster with both threads, a machine with one other busy
process runs it many times slower with both threads and unharmed with one.

The policy, :func:`default_threads`: half the logical CPUs (on most machines, one
thread per physical core), at least one. It leaves room for one other busy process per
thread without the collapse. ``--threads N`` overrides it.

On a CPU the thread count changes the order of floating-point sums, so it changes a
run's last bits: a run records the count it used (``RunConfig.threads``) and resumes
with it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

__all__ = ["default_threads", "resolve_threads", "torch_threads", "idle_reference", "slow_step_hint"]


def default_threads(cpu_count: int | None = None) -> int:
    """Half the logical CPUs, at least one (``cpu_count`` defaults to this machine's)."""
    n = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, n // 2)


def resolve_threads(threads: int | None) -> int:
    """``threads``, or the policy's number when it is None."""
    return default_threads() if threads is None else int(threads)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run the body with ``torch.set_num_threads(threads)``; restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


#: a step this many times slower than the idle benchmark gets a hint
SLOW_FACTOR = 3.0


def idle_reference(reports: list[dict], *, preset: str, method: str, mc_samples: int | None,
                   path: str, threads: int) -> tuple[float, str] | None:
    """The newest idle CPU benchmark figure (ms per step, file name) for this setting,
    from :func:`bayesnas_core.bench.load_reports`; None if none was measured."""
    found = None
    for rep in reports:
        if rep["config"].get("preset") != preset or not str(rep["config"].get("device", "")).startswith("cpu"):
            continue
        for row in rep["rows"]:
            if ("error" not in row and row["method"] == method and row["path"] == path
                    and row.get("mc_samples") == mc_samples and row.get("load", 0) == 0
                    and row.get("threads", rep["env"].get("cpu_threads")) == threads):
                found = (row["ms_per_step"], rep["file"])
    return found


def slow_step_hint(step_ms: float, reference: tuple[float, str] | None, threads: int) -> str | None:
    """One line when a step runs :data:`SLOW_FACTOR` times slower than the idle benchmark."""
    if reference is None or step_ms < SLOW_FACTOR * reference[0]:
        return None
    fewer = "--threads 1" if threads > 1 else "closing other programs"
    return (f"note: a step takes {step_ms:.0f} ms, {step_ms / reference[0]:.0f}x the idle benchmark "
            f"of this setting ({reference[0]:.0f} ms with {threads} thread{'s' * (threads > 1)}, "
            f"assets/bench/{reference[1]}); another process is probably using the CPU: try {fewer}")
