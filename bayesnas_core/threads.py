"""How many CPU threads torch uses: a policy that survives a shared machine.

torch's default (one intra-op thread per core) collapses when another process
wants a core: the threads wait for each other at every operator. Measured on the 2-core
project machine (``assets/bench/``, ``python -m bayesnas_core.bench --threads 1 2 --load 0 1``):
an idle machine runs a step faster with both threads, a machine with one other busy
process runs it many times slower with both threads and unharmed with one.

The policy, :func:`default_threads`: the CPUs that other processes leave free, rounded,
at least one and at most torch's own default (its count of cores). How busy the other
processes are is measured over a quarter of a second from ``/proc/stat`` when a run
starts (the 1-minute load average where that file is missing). An idle machine gets
every core; a machine where another process is busy gets one thread fewer per busy core.
``OMP_NUM_THREADS`` or ``--threads N`` override it. A process that starts competing after
a run began is not seen; the run then prints a hint (:func:`slow_step_hint`).

On a CPU the thread count changes the order of floating-point sums, so it changes a
run's last bits: a run records the count it used (``RunConfig.threads``) and resumes
with it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Iterator

import torch

__all__ = ["default_threads", "busy_cpus", "resolve_threads", "stored_threads", "torch_threads", "idle_reference", "slow_step_hint"]


#: torch's thread count when this module was imported (before any policy touched it)
TORCH_DEFAULT = torch.get_num_threads()


#: torch's thread count when this module was imported (before any policy touched it)
TORCH_DEFAULT = torch.get_num_threads()


def default_threads(cpu_count: int | None = None, busy: float | None = None) -> int:
    """The policy's thread count: ``round(cpu_count - busy)``, at least 1, at most
    torch's default; ``cpu_count`` and ``busy`` (CPUs used by other processes) default to
    this machine's, measured now (:func:`busy_cpus`). ``OMP_NUM_THREADS``, when set, wins."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env)
    n = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    used = busy if busy is not None else busy_cpus()
    cap = TORCH_DEFAULT if cpu_count is None else n
    return max(1, min(n, cap, math.floor(n - used + 0.5)))


def busy_cpus(window_s: float = 0.25) -> float:
    """How many CPUs other processes keep busy: the non-idle share of all CPU time over
    ``window_s`` seconds (this process sleeps meanwhile), from ``/proc/stat``; elsewhere
    the 1-minute load average."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        t0, i0 = sample()
        time.sleep(window_s)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    if t1 <= t0:
        return 0.0
    return (os.cpu_count() or 1) * (1 - (i1 - i0) / (t1 - t0))


def resolve_threads(threads: int | None) -> int:
    """``threads``, or the policy's number when it is None."""
    return default_threads() if threads is None else int(threads)


def stored_threads(config: Any) -> int | None:
    """The thread count a run's stored ``config.json`` records (None if it has none: a
    run from before the policy, which then gets the policy's count)."""
    value = config.get("threads") if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


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
                   path: str, threads: int, order: int = 1) -> tuple[float, str] | None:
    """The newest idle CPU benchmark figure (ms per step, file name) for this setting,
    from :func:`bayesnas_core.bench.load_reports`; None if none was measured. A row
    without an ``order`` is a first-order row (the reports made before ``--order``)."""
    found = None
    for rep in reports:
        if rep["config"].get("preset") != preset or not str(rep["config"].get("device", "")).startswith("cpu"):
            continue
        for row in rep["rows"]:
            if ("error" not in row and row["method"] == method and row["path"] == path
                    and row.get("mc_samples") == mc_samples and row.get("load", 0) == 0
                    and row.get("order", 1) == order
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
