"""Search-speed benchmark: ``python -m bayesnas_core.bench``.

Times search steps (an SGD weight step plus one architecture step, with the batches
drawn and augmented as in a search) on three paths, side by side, in one process:

- ``plain``: unfused cells, one forward/backward per Monte-Carlo sample,
  ``torch.optim`` and Python floats (:func:`~bayesnas_core.search.search_step`);
- ``fast``: :class:`~bayesnas_core.engine.StepEngine` run eagerly (folded cells, the M
  samples in one batched pass in first order, statistics kept on the device);
- ``graph``: the same engine replayed as one CUDA graph per step (CUDA only);
- ``graph-conv`` (opt-in): ``graph`` with ``cell_impl="conv"`` (1x1 and 3x3 convolutions
  apart, cuDNN BatchNorm, the mixing as a grouped 1x1 convolution; CUDA only);
- ``compiled`` (opt-in): ``graph`` with the fused cells through ``torch.compile``, in
  their ``elementwise`` form (inductor fuses the mixing with the BatchNorm and the sums;
  eager engine on a CPU); its first step includes the compilation.

for DARTS and for BaLeNAS with each M, in first order and (``--order 2``, or ``1 2`` side by
side) in DARTS's second order. Reports ms per step, seconds per epoch and the
projected minutes for 50 epochs, with the device and versions, and writes JSON to
``assets/bench/``. On the CPU it runs at lesson scale (``--preset default``); on CUDA use
``--preset nb201-paper`` (C=16, N=5, batch 64, 25,000 / 25,000 split).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .config import RunConfig, get_preset
from .data import BatchIterator, TensorSplit
from .engine import StepEngine
from .errors import UserError
from .paths import assets_dir
from .runs import atomic_write_json, environment_info, seed_everything
from .search import build_arch_update, build_supernet, search_step
from .threads import default_threads

__all__ = ["PATHS", "DEFAULT_PATHS", "COUNTED_PATHS", "load_reports", "report_lines", "make_step",
           "count_kernel_ops", "time_path", "run_benchmark", "busy_processes", "main"]

PATHS = ("plain", "fast", "graph", "graph-conv", "compiled")
DEFAULT_PATHS = ("plain", "fast", "graph")


def load_reports(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """Every benchmark JSON in ``folder`` (default ``assets/bench``), oldest first, each with
    its file name under ``"file"``."""
    folder = Path(folder) if folder is not None else assets_dir() / "bench"
    reports = []
    for path in sorted(folder.glob("bench-*.json")):
        rep = json.loads(path.read_text())
        rep["file"] = path.name
        reports.append(rep)
    return reports


def report_lines(report: dict[str, Any]) -> list[str]:
    """One readable line per row: method, M, path, ms per step, projected minutes, speedup."""
    epochs = report["config"]["epochs"]
    lines = [f"{report.get('file', 'report')}: {report['env'].get('device')}, torch "
             f"{report['env'].get('torch')}, preset {report['config']['preset']}"]
    for r in report["rows"]:
        m = "" if r.get("mc_samples") is None else f"M={r['mc_samples']}"
        if "error" in r:
            lines.append(f"  {r['method']:8s} {m:4s} {r['path']:10s} failed: {r['error']}")
            continue
        speed = next((v for k, v in r.items() if k.startswith("speedup_vs_")), 1.0)
        ops = f"  {r['kernel_ops_per_step']} ops" if "kernel_ops_per_step" in r else ""
        where = f"threads {r['threads']} load {r['load']} " if "threads" in r else ""
        where = (f"order {r['order']} " if "order" in r else "") + where
        lines.append(f"  {r['method']:8s} {m:4s} {r['path']:10s} {where}{r['ms_per_step']:8.1f} ms/step "
                     f"{r[f'projected_min_{epochs}_epochs']:7.1f} min/{epochs} epochs  x{speed:.1f}{ops}")
    return lines


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(cfg: RunConfig, path: str, *, num_classes: int, in_channels: int, image_size: int,
              train_size: int) -> Callable[[], Any]:
    """A closure running one search step of ``path`` on synthetic device-resident splits of
    ``train_size`` images, batches drawn (and augmented) as in a search."""
    if path not in PATHS:
        raise UserError(f"unknown path {path!r}; use one of {', '.join(PATHS)}")
    device = torch.device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    cfg = copy.deepcopy(cfg)
    fast = path != "plain"
    cfg.search.batched_mc = cfg.search.fused_cell = fast
    cfg.search.compile_cells = path == "compiled"
    cfg.search.cell_impl = {"graph-conv": "conv", "compiled": "elementwise"}.get(path, cfg.search.cell_impl)
    seed_everything(cfg.seed)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    shape = (train_size, in_channels, image_size, image_size)
    splits = [TensorSplit(torch.randn(shape, generator=g, device=device, dtype=dtype),
                          torch.randint(0, num_classes, (train_size,), generator=g, device=device))
              for _ in range(2)]
    B = cfg.data.batch_size
    train = BatchIterator(splits[0], B, shuffle=True, augment=cfg.data.augment, seed=cfg.seed).cycle(0)
    valid = BatchIterator(splits[1], B, shuffle=True, seed=cfg.seed + 1).cycle(0)
    model = build_supernet(cfg, num_classes, in_channels)
    s = cfg.search
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=s.w_lr, momentum=s.w_momentum,
                            nesterov=True, weight_decay=s.w_weight_decay)
    arch = build_arch_update(cfg, model, train_size, torch.Generator(device=device).manual_seed(cfg.seed))
    if fast:
        engine = StepEngine(model, w_opt, arch.optimizer, grad_clip=s.grad_clip,
                            cuda_graph=path != "fast" and device.type == "cuda", order=s.order,
                            unrolled_eps=s.unrolled_eps)
        return lambda: engine.step(next(train), next(valid))
    return lambda: search_step(model, w_opt, arch, next(train), next(valid), grad_clip=s.grad_clip)


class _OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched inside the block, views and bare allocations
    left out (they launch no kernel)."""

    FREE = frozenset({"empty", "empty_strided", "empty_like", "detach", "_unsafe_view", "alias",
                      "lift_fresh"})

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in self.FREE:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count_kernel_ops(step: Callable[[], Any]) -> collections.Counter[str]:
    """The aten operators one call of ``step`` runs that launch work, by name (views and
    bare allocations left out): on a GPU each launches one kernel or more, so their total
    is a device-independent measure of the launches per step."""
    with _OpCounter() as counter:
        step()
    return counter.counts


#: paths whose step is counted by :func:`count_kernel_ops` (a graph replay dispatches
#: nothing: it runs the ``fast`` path's kernels; compiled code runs generated kernels)
COUNTED_PATHS = ("plain", "fast")


def time_path(cfg: RunConfig, path: str, *, steps: int, warmup: int, num_classes: int,
              in_channels: int, image_size: int, train_size: int) -> dict[str, float]:
    """Run ``warmup`` then ``steps`` search steps of ``path`` (see :func:`make_step`);
    returns the wall seconds of the first step (the capture, for ``graph``) and of the
    timed steps (one sync at their end), and for :data:`COUNTED_PATHS` the kernel-launching
    operators of one more (untimed) step."""
    device = torch.device(cfg.device)
    step = make_step(cfg, path, num_classes=num_classes, in_channels=in_channels,
                     image_size=image_size, train_size=train_size)
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        step()
    ops = sum(count_kernel_ops(step).values()) if path in COUNTED_PATHS else None
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    timed = time.perf_counter() - t0
    return {"first_step_s": first, "timed_s": timed, **({} if ops is None else {"kernel_ops": ops})}


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` other processes that each keep one CPU core busy (a pure-Python loop, as
    a shared machine's neighbour would), stopped when the body ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0.0)  # let them reach the loop
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def run_benchmark(cfg: RunConfig, *, mcs: Sequence[int], steps: int, warmup: int,
                  num_classes: int, in_channels: int, image_size: int, train_size: int,
                  paths: Sequence[str] = DEFAULT_PATHS, plain_steps: int | None = None,
                  epochs: int = 50, log: Callable[[str], None] = print,
                  on_row: Callable[[dict[str, Any]], None] | None = None,
                  threads: Sequence[int] | None = None,
                  loads: Sequence[int] = (0,), orders: Sequence[int] = (1,)) -> dict[str, Any]:
    """Every path for DARTS and BaLeNAS(M); returns a JSON-ready report.

    ``plain_steps`` (default ``steps``) times the slow baseline with fewer steps;
    ``on_row(report)`` receives the report so far after every row (to save it as it grows).
    ``threads`` (default: the current count) and ``loads`` (numbers of other busy
    processes, :func:`busy_processes`) repeat the whole table for each combination, in
    one process, so a thread policy is measured idle and loaded side by side; so do
    ``orders`` (1: first-order steps, 2: DARTS's unrolled steps), so that second order is
    timed beside first order. Every row records its threads, load and order."""
    from .threads import torch_threads

    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    picks: dict[str, int] = {}
    for load in loads:
        with busy_processes(load):
            picks[str(load)] = default_threads()  # what the policy picks under this load
            log(f"load {load}: the thread policy picks {picks[str(load)]}")
            for t in (threads or [torch.get_num_threads()]):
                for order in orders:
                    c = copy.deepcopy(cfg)
                    c.search.order = order
                    with torch_threads(t):
                        report = _run_table(c, mcs=mcs, steps=steps, warmup=warmup,
                                            num_classes=num_classes, in_channels=in_channels,
                                            image_size=image_size, train_size=train_size, paths=paths,
                                            plain_steps=plain_steps, epochs=epochs, log=log, on_row=on_row,
                                            rows=rows, tag={"threads": t, "load": load, "order": order})
    report["config"]["threads"], report["config"]["loads"] = list(threads or []), list(loads)
    report["config"]["orders"] = list(orders)
    report["config"]["policy_threads"] = picks  # load -> the count default_threads() chose
    return report


def _run_table(cfg: RunConfig, *, mcs: Sequence[int], steps: int, warmup: int,
               num_classes: int, in_channels: int, image_size: int, train_size: int,
               paths: Sequence[str], plain_steps: int | None, epochs: int,
               log: Callable[[str], None], on_row: Callable[[dict[str, Any]], None] | None,
               rows: list[dict[str, Any]], tag: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(cfg.device)
    paths = [p for p in paths if p not in ("graph", "graph-conv") or device.type == "cuda"]
    steps_per_epoch = train_size // cfg.data.batch_size
    cases = [("balenas", m) for m in mcs] + [("darts", 1)]
    report = {"config": {"preset": cfg.preset, "device": cfg.device, "C": cfg.space.C,
                         "N": cfg.space.N, "batch_size": cfg.data.batch_size,
                         "image": [in_channels, image_size, image_size], "augment": cfg.data.augment,
                         "train_size": train_size, "steps_per_epoch": steps_per_epoch,
                         "epochs": epochs, "dtype": cfg.dtype, "steps": steps,
                         "plain_steps": plain_steps or steps, "warmup": warmup},
              "env": environment_info(cfg.device), "rows": rows,
              "note": "plain = unfused cells, one forward/backward per Monte-Carlo sample, torch.optim; "
                      "fast = StepEngine eagerly (folded cells, the M samples in one batched pass, "
                      "on-device statistics); graph = the same engine replayed as one CUDA graph per "
                      "step; compiled = graph with torch.compile'd cells (cell_impl elementwise). Synthetic device-resident splits of the configured shape; batch "
                      "drawing and augmentation are timed with the step. kernel_ops_per_step: the aten operators "
                      "of one step that launch work (views and bare allocations left out). The projection excludes "
                      "the per-epoch diagnostics (see the run directories for real wall times)."}
    for method, m in cases:
        for path in paths:
            c = copy.deepcopy(cfg)
            c.search.method, c.search.mc_samples = method, m
            row = {"method": method, "path": path, "mc_samples": m if method == "balenas" else None,
                   **tag}
            n = plain_steps if (path == "plain" and plain_steps) else steps
            try:
                t = time_path(c, path, steps=n, warmup=warmup, num_classes=num_classes,
                              in_channels=in_channels, image_size=image_size, train_size=train_size)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as err:  # keep the other rows
                msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                rows.append({**row, "error": msg})
                log(f"{method:8s} M={m}  {path:5s} failed: {msg}")
                continue
            ms = 1000 * t["timed_s"] / n
            row.update({"ms_per_step": ms, "s_per_epoch": ms * steps_per_epoch / 1000,
                        f"projected_min_{epochs}_epochs": ms * steps_per_epoch * epochs / 60_000,
                        "first_step_s": t["first_step_s"], "steps_timed": n})
            if "kernel_ops" in t:
                row["kernel_ops_per_step"] = t["kernel_ops"]
            base = row if path == paths[0] else next(
                (r for r in rows if r["method"] == method and r["path"] == paths[0]
                 and r["mc_samples"] == row["mc_samples"] and "error" not in r
                 and all(r.get(k) == v for k, v in tag.items())), None)
            if base is not None:  # no speedup against a baseline that failed
                row[f"speedup_vs_{paths[0]}"] = base["ms_per_step"] / ms
            rows.append(row)
            if on_row is not None:
                on_row(report)
            log(f"{method:8s} M={m}  {path:5s} order {tag['order']} threads {tag['threads']} load {tag['load']}  "
                f"{ms:8.2f} ms/step  {row['s_per_epoch']:7.1f} s/epoch  "
                f"{row[f'projected_min_{epochs}_epochs']:7.2f} min/{epochs} epochs  "
                f"(first step {t['first_step_s']:.2f} s)")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bayesnas_core.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=None, help="default (CPU) or nb201-paper (CUDA)")
    p.add_argument("--device", default=None)
    p.add_argument("--mc", type=int, nargs="+", default=[1, 3])
    p.add_argument("--order", type=int, nargs="+", default=[1], choices=(1, 2),
                   help="1: first-order steps; 2: DARTS's unrolled steps (architecture step first); "
                        "1 2: both, side by side")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--plain-steps", type=int, default=None, help="fewer timed steps for the plain path")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS),
                   help=f"some of {' '.join(PATHS)} (graph: CUDA only; compiled: opt-in)")
    p.add_argument("--out", default=str(assets_dir() / "bench"))
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="CPU thread counts to time (default: the policy's, bayesnas_core.threads)")
    p.add_argument("--load", type=int, nargs="+", default=[0],
                   help="numbers of other busy processes to time under (e.g. 0 1: idle and loaded)")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dev = "cuda" if device.startswith("cuda") else "cpu"
    try:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but CUDA is not available; pass --device cpu")
        preset = args.preset or ("nb201-paper" if device.startswith("cuda") else "default")
        cfg = get_preset(preset)
        cfg.device = device
        order = "" if args.order == [1] else "-o" + "".join(map(str, args.order))
        path = Path(args.out) / f"bench-{dev}-{preset}{order}-{stamp}.json"
        shape = {"cifar10": (10, 3, 32, 50_000), "fashion-mnist": (10, 1, 28, 60_000),
                 "fashion-mnist-subset": (10, 1, 28, 4_000)}
        if cfg.data.dataset not in shape:
            raise UserError(f"bench supports presets on cifar10 or fashion-mnist, not {cfg.data.dataset!r}")
        classes, chans, size, n = shape[cfg.data.dataset]
        size = cfg.data.image_size or size
        unknown = [p for p in args.paths if p not in PATHS]
        if unknown:
            raise UserError(f"unknown path {unknown[0]!r}; use --paths from {', '.join(PATHS)}")
        if any(t < 1 for t in args.threads or []) or any(k < 0 for k in args.load):
            raise UserError("--threads values must be at least 1 and --load values at least 0")
        report = run_benchmark(cfg, mcs=args.mc, steps=args.steps, warmup=args.warmup,
                               num_classes=classes, in_channels=chans, image_size=size,
                               train_size=n // 2, paths=args.paths, plain_steps=args.plain_steps,
                               on_row=lambda r: atomic_write_json(path, r),
                               threads=args.threads or [default_threads()], loads=args.load,
                               orders=args.order)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    atomic_write_json(path, report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
