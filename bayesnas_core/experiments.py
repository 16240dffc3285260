"""Protocols built from the library: one search, and (in later modules) ablations.

:func:`run_search` is what ``python -m bayesnas_core.run`` does: load the data and the
ground truth, search, select, look the result up, and write the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from .benchmarks import GroundTruth, missing_hint, open_benchmark
from .config import RunConfig, config_from_dict, to_dict
from .data import BatchIterator, SearchData, load_search_data
from .runs import RunDir, environment_info
from .search import SearchResult, search
from .select import select_tf
from .spaces import Arch

__all__ = ["load_data", "run_search", "ground_truth_record", "select_from_result"]


def load_data(cfg: RunConfig) -> SearchData:
    """The search data ``cfg.data`` names, on ``cfg.device``."""
    d = cfg.data
    return load_search_data(d.dataset, d.root, image_size=d.image_size, limit=d.limit,
                            download=d.download, seed=cfg.seed, device=cfg.device)


def ground_truth_record(gt: GroundTruth) -> dict[str, Any]:
    """A JSON-ready record of a ground-truth lookup (missing metrics stay null)."""
    return {"arch": gt.arch_str, "index": gt.index, "source": gt.source,
            "metrics": dict(gt.metrics), "missing": gt.missing(), "hint": missing_hint(gt)}


def select_from_result(cfg: RunConfig, result: SearchResult, data: SearchData,
                       bench: Any, *, progress: bool = True) -> dict[str, Any]:
    """Apply ``cfg.select`` to a finished search; returns a JSON-ready record."""
    sel = cfg.select
    argmax_gt = ground_truth_record(bench.query(str(result.arch)))
    out: dict[str, Any] = {"method": sel.method, "argmax": argmax_gt}
    if sel.method == "argmax":
        out["arch"] = str(result.arch)
        out["ground_truth"] = argmax_gt
        return out
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(cfg.seed + 104729)
    batch = next(iter(BatchIterator(data.train, cfg.data.batch_size, shuffle=False).epoch(0)))
    tf = select_tf(result.mu, result.sigma, proxy=sel.method, samples=sel.samples,
                   num_classes=data.num_classes, in_channels=data.in_channels,
                   image_size=data.image_size, batch=batch, C=sel.C, N=sel.N, generator=gen,
                   device=cfg.device, init_seed=cfg.seed,
                   progress=lambda xs: tqdm(xs, desc=f"{sel.method} scoring", leave=False,
                                            disable=not progress))
    out["arch"] = str(tf.best)
    out["ground_truth"] = ground_truth_record(bench.query(str(tf.best)))
    out["samples"] = sel.samples
    out["candidates"] = [
        {"arch": str(c.arch), "score": c.score, "log10": c.log10,
         "ground_truth": dict(bench.query(str(c.arch)).metrics)}
        for c in tf.candidates
    ]
    return out


def _run_name(cfg: RunConfig) -> str:
    s = cfg.search
    stamp = time.strftime("%Y%m%d-%H%M%S")
    mc = f"-m{s.mc_samples}" if s.method == "balenas" else ""
    return f"{stamp}-{s.method}-o{s.order}{mc}-s{cfg.seed}"


def run_search(cfg: RunConfig | None = None, *, resume: str | Path | None = None,
               progress: bool = True, log: Callable[[str], None] = print,
               bench: Any = None, data: SearchData | None = None) -> dict[str, Any]:
    """Search, select and look up; write and return the result record.

    ``resume`` is a run directory: its stored config is used and the search continues
    from its last checkpoint.
    """
    if resume is not None:
        run = RunDir.open(resume)
        cfg = config_from_dict(run.read_json("config.json")).validate()
        run.load_checkpoint()  # fail early, with one line, on a missing or corrupt file
        log(f"resuming {run.path}")
    else:
        if cfg is None:
            raise ValueError("run_search needs a config or a run directory to resume")
        cfg.validate()
        run = None
    bench = bench if bench is not None else open_benchmark(cfg.nb201_file)
    data = data if data is not None else load_data(cfg)
    if run is None:
        run = RunDir.create(cfg.out, _run_name(cfg), to_dict(cfg), environment_info(cfg.device))
        log(f"run directory: {run.path}")
    log(f"data: {data.name}, {len(data.train)} train / {len(data.valid)} valid images "
        f"({data.split_note})")

    def on_epoch(model: Any, arch: Arch) -> dict[str, Any]:
        gt = bench.query(str(arch))
        return {f"gt_{k}": v for k, v in gt.metrics.items() if v is not None}

    result = search(cfg, data, run=run, resume=resume is not None, progress=progress,
                    on_epoch=on_epoch)
    selection = select_from_result(cfg, result, data, bench, progress=progress)
    record = {
        "method": cfg.search.method,
        "order": cfg.search.order,
        "mc_samples": cfg.search.mc_samples if cfg.search.method == "balenas" else None,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "dataset": data.name,
        "split": data.split_note,
        "arch": selection["arch"],
        "ground_truth": selection["ground_truth"],
        "selection": selection,
        "mu": result.mu.tolist(),
        "sigma": None if result.sigma is None else result.sigma.tolist(),
        "final_epoch": result.metrics[-1] if result.metrics else None,
        "wall_time_s": result.wall_time_s,
        "run_dir": str(run.path),
    }
    run.write_json("result.json", record)
    return record
