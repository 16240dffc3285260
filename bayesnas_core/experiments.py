"""Protocols built from the library.

- :func:`run_search`: what ``python -m bayesnas_core.run`` does: load the data and the
  ground truth, search, select, look the result up, and write the run directory.
- :func:`ablation_mc`, :func:`ablation_tf`: the seed's Tables 5 and 4.
- :func:`proxy_study`: rank correlation of zero-cost proxies with NB201 accuracy.
- :func:`export_runs`: copy finished runs' records into a results folder.
- small demonstrations for the lessons (:func:`bayesian_regression_demo`,
  :func:`mc_gradient_spread`).
"""

from __future__ import annotations

import copy
import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import torch
from torch import Tensor

from .benchmarks import GroundTruth, missing_hint, open_benchmark
from .config import SPEED_ONLY_FIELDS, RunConfig, config_from_dict, to_dict
from .data import BatchIterator, SearchData, load_search_data
from .errors import Interrupted, UserError
from .runs import RunDir, atomic_write_bytes, atomic_write_json, environment_info
from .search import SearchResult, _listed, check_resumable, search, search_batches
from .select import select_tf, select_tf_space
from .spaces import EDGES, Arch, get_space

__all__ = [
    "load_data",
    "run_search",
    "ground_truth_record",
    "select_from_result",
    "mean_std",
    "table_markdown",
    "random_baseline",
    "StudyUnit",
    "run_serially",
    "ablation_mc_units",
    "ablation_tf_units",
    "ablation_mc",
    "ablation_tf",
    "rank_correlations",
    "proxy_study",
    "export_runs",
    "load_result",
    "best_epoch",
    "bayesian_regression_demo",
    "mc_gradient_spread",
]

#: True: progress bars; a callable: one plain line per epoch; False: nothing
Progress = Union[bool, Callable[[str], Any]]

#: Offset of the seed of the generator that draws BaLeNAS-TF samples.
TF_SEED_OFFSET = 104729


def load_data(cfg: RunConfig) -> SearchData:
    """The search data ``cfg.data`` names, on ``cfg.device``."""
    d = cfg.data
    return load_search_data(d.dataset, d.root, image_size=d.image_size, limit=d.limit,
                            download=d.download, seed=cfg.seed, device=cfg.device)


def proxy_batch(data: SearchData, batch_size: int) -> tuple[Tensor, Tensor]:
    """The labelled batch SNIP and GraSP use: the first training batch, unshuffled."""
    return next(iter(BatchIterator(data.train, batch_size, shuffle=False).epoch(0)))


def ground_truth_record(gt: GroundTruth) -> dict[str, Any]:
    """A JSON-ready record of a ground-truth lookup (missing metrics stay null)."""
    if gt.index is None:  # not an NB201 cell (NAS-Bench-101 via the nb1shot1-3 space)
        return {"arch": gt.arch_str, "index": None, "source": gt.source,
                "metrics": dict(gt.metrics), "missing": [], "hint": None}
    return {"arch": gt.arch_str, "index": gt.index, "source": gt.source,
            "metrics": dict(gt.metrics), "missing": gt.missing(), "hint": missing_hint(gt)}


class _NB101Truth:
    """NAS-Bench-101's 108-epoch results for genotypes of a space whose cells are NB101
    graphs (``genotype.spec``): CIFAR-10 train / valid / test accuracy (%), the mean of
    the benchmark's repeats."""

    EPOCHS = 108

    def __init__(self, table: Any, path: str, space: Any) -> None:
        self.table, self.path, self.space = table, path, space

    def query(self, arch: Any) -> GroundTruth:
        g = self.space.parse(arch) if isinstance(arch, str) else arch
        rec = self.table.query(*g.spec)
        r = rec.at(self.EPOCHS)
        return GroundTruth(arch_str=self.space.format(g), index=None,
                           metrics={"nb101_train": 100 * r.train, "nb101_valid": 100 * r.valid,
                                    "nb101_test": 100 * r.test},
                           source=f"{Path(self.path).name}, {self.EPOCHS} epochs, mean of "
                                  f"{r.repeats} repeats, hash {rec.hash}")


def select_from_result(cfg: RunConfig, result: SearchResult, data: SearchData,
                       bench: Any, *, progress: Progress = True) -> dict[str, Any]:
    """Apply ``cfg.select`` to a finished search; returns a JSON-ready record."""
    from tqdm.auto import tqdm

    sel = cfg.select
    if cfg.space.name != "nb201":  # the genotype; ground truth where a benchmark was given
        space = get_space(cfg.space.name)
        gt = None if bench is None else ground_truth_record(bench.query(result.arch))
        out = {"method": sel.method, "argmax": gt, "argmax_arch": space.format(result.arch),
               "arch": space.format(result.arch), "ground_truth": gt}
        if sel.method == "argmax":
            return out
        from .search import named_arch

        tf = select_tf_space(space, named_arch(space, result.mu),
                             None if result.sigma is None else named_arch(space, result.sigma),
                             proxy=sel.method, samples=sel.samples, num_classes=data.num_classes,
                             in_channels=data.in_channels, image_size=data.image_size,
                             batch=proxy_batch(data, cfg.data.batch_size), C=sel.C, N=sel.N,
                             generator=torch.Generator().manual_seed(cfg.seed + TF_SEED_OFFSET),
                             device=cfg.device, init_seed=cfg.seed,
                             progress=lambda xs: tqdm(xs, desc=f"{sel.method} scoring", leave=False,
                                                      disable=progress is not True))
        out.update(arch=space.format(tf.best), samples=sel.samples,
                   ground_truth=None if bench is None else ground_truth_record(bench.query(tf.best)),
                   draws=[space.format(g) for g in tf.draws],
                   candidates=[{"arch": space.format(c.arch), "score": c.score, "log10": c.log10}
                               for c in tf.candidates])
        return out
    argmax_gt = ground_truth_record(bench.query(str(result.arch)))
    out: dict[str, Any] = {"method": sel.method, "argmax": argmax_gt}
    if sel.method == "argmax":
        out["arch"] = str(result.arch)
        out["ground_truth"] = argmax_gt
        return out
    gen = torch.Generator().manual_seed(cfg.seed + TF_SEED_OFFSET)
    batch = proxy_batch(data, cfg.data.batch_size)
    tf = select_tf(result.mu, result.sigma, proxy=sel.method, samples=sel.samples,
                   num_classes=data.num_classes, in_channels=data.in_channels,
                   image_size=data.image_size, batch=batch, C=sel.C, N=sel.N, generator=gen,
                   device=cfg.device, init_seed=cfg.seed,
                   progress=lambda xs: tqdm(xs, desc=f"{sel.method} scoring", leave=False,
                                            disable=progress is not True))
    out["arch"] = str(tf.best)
    out["ground_truth"] = ground_truth_record(bench.query(str(tf.best)))
    out["samples"] = sel.samples
    out["draws"] = [str(a) for a in tf.draws]  # the K sampled cells, duplicates included
    out["candidates"] = [  # one per distinct network, with its proxy score
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


def result_context(bench: Any, arch: str, metric: str = "cifar10_test") -> dict[str, Any]:
    """What a selected cell's ground truth means: its parameter-free ops out of six, and
    where its ``metric`` stands among all NB201 cells (their mean, population std, and the
    share of cells it beats), from ``bench`` at run time."""
    values = [v for v in bench.column(metric) if v is not None]
    mine = bench.query(arch).metrics.get(metric)
    mean, std = mean_std(values)
    free = Arch.parse(arch).num_parameter_free
    return {"metric": metric, "all_cells_mean": mean, "all_cells_std": std, "cells": len(values),
            "beats_share": None if mine is None else sum(v < mine for v in values) / len(values),
            "parameter_free_ops": free, "edges": len(EDGES), "collapsed": free == len(EDGES)}


def explain_lines(context: dict[str, Any], value: float | None) -> list[str]:
    """The lines the CLI prints under a result to say what it means."""
    c = context
    free = (f"{c['parameter_free_ops']}/{c['edges']} edges are parameter-free (none, skip or pooling)"
            + (": the search collapsed, the failure BaLeNAS is meant to resist"
               if c["collapsed"] else ""))
    lines = [f"what this means: {free}."]
    if value is not None and c["beats_share"] is not None:
        lines.append(f"  {c['metric']} {value:.2f} %: better than {100 * c['beats_share']:.0f} % of "
                     f"the {c['cells']:,} NB201 cells (a random cell: {c['all_cells_mean']:.2f} "
                     f"± {c['all_cells_std']:.2f} %).")
    lines.append("  more: README.md ('What the main job does'), lessons 1 and 2 (DARTS collapse, "
                 "the Gaussian posterior).")
    return lines


def interrupted_message(run: RunDir, command: str = "python -m bayesnas_core.run") -> str:
    """One line for Ctrl-C: what the run directory holds and the command that continues
    (``command --resume RUN_DIR``)."""
    if run.checkpoint_path.is_file():
        try:
            done = f"epoch {run.load_checkpoint()['epoch']}"
        except UserError:
            done = "an epoch (the checkpoint did not load)"
        return (f"interrupted; {run.path} has a checkpoint after {done}: continue with "
                f"{command} --resume {shlex.quote(str(run.path))}")
    return (f"interrupted before the first epoch ended; {run.path} holds only config.json and "
            "env.json (no checkpoint): delete it and run the command again")


def run_search(cfg: RunConfig | None = None, *, resume: str | Path | None = None,
               progress: Progress = True, log: Callable[[str], None] = print,
               bench: Any = None, data: SearchData | None = None,
               device: str | None = None, speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Search, select and look up; write and return the result record.

    ``resume`` is a run directory: its stored config is used (``device`` may move it to
    another device, ``speed`` may set :data:`~bayesnas_core.config.SPEED_ONLY_FIELDS`)
    and the search continues from its last checkpoint. It runs with ``cfg.threads`` CPU
    threads (None: :func:`~bayesnas_core.threads.default_threads`, recorded in the run's
    config) and restores the caller's count afterwards.
    """
    from .threads import resolve_threads, stored_threads, torch_threads

    if cfg is not None and cfg.threads is None:
        cfg = copy.deepcopy(cfg)
        cfg.threads = resolve_threads(None)
    threads = cfg.threads if cfg is not None else stored_threads(RunDir.open(resume).read_json("config.json"))
    with torch_threads(resolve_threads(threads)):
        return _run_search(cfg, resume=resume, progress=progress, log=log, bench=bench,
                           data=data, device=device, speed=speed)


def _speed_watch(cfg: RunConfig, log: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """After this session's first epoch on a CPU, compare its step time with the idle
    benchmark of the same setting and print one hint if it is far slower."""
    from .bench import load_reports
    from .engine import engine_supported
    from .threads import idle_reference, slow_step_hint

    seen = {"done": torch.device(cfg.device).type != "cpu"}

    def watch(record: dict[str, Any]) -> None:
        if seen["done"]:
            return
        seen["done"] = True
        s = cfg.search
        path = "fast" if engine_supported(s.order, s.fused_cell, s.batched_mc) else "plain"
        ref = idle_reference(load_reports(), preset=cfg.preset, method=s.method,
                             mc_samples=s.mc_samples if s.method == "balenas" else None,
                             path=path, threads=torch.get_num_threads(), order=s.order)
        hint = slow_step_hint(record["step_ms"], ref, torch.get_num_threads())
        if hint:
            log(hint)

    return watch


def _run_search(cfg: RunConfig | None, *, resume: str | Path | None, progress: Progress,
                log: Callable[[str], None], bench: Any, data: SearchData | None,
                device: str | None, speed: dict[str, Any] | None) -> dict[str, Any]:
    if resume is not None:
        run = RunDir.open(resume)
        cfg = config_from_dict(run.read_json("config.json"), where=str(run.path / "config.json"))
        if device is not None:
            cfg.device = device
        for key, value in (speed or {}).items():
            if key not in SPEED_ONLY_FIELDS:
                raise ValueError(f"{key} is not a speed-only setting")
            setattr(cfg.search, key, value)
        cfg.validate()
        # fail early, with one line, on a missing, corrupt, unsafe or mismatched checkpoint
        check_resumable(cfg, run.load_checkpoint(), run.path)
        log(f"resuming {run.path}")
    else:
        if cfg is None:
            raise ValueError("run_search needs a config or a run directory to resume")
        cfg.validate()
        run = None
    t_start = time.perf_counter()
    space = get_space(cfg.space.name)
    if getattr(space, "benchmark", None) == "nb201":
        bench = bench if bench is not None else open_benchmark(cfg.nb201_file)
    elif getattr(space, "benchmark", None) == "nb101" and cfg.nb101_file:
        from .benchmarks.nb101 import NB101Table

        bench = _NB101Truth(NB101Table.load(cfg.nb101_file), cfg.nb101_file, space)
    else:
        bench = None  # no ground truth to look up in this space (or no file given)
    data = data if data is not None else load_data(cfg)
    data_load_s = time.perf_counter() - t_start
    search_batches(cfg, data)  # a split smaller than a batch: one line, before any folder
    if run is None:
        run = RunDir.create(cfg.out, _run_name(cfg), to_dict(cfg), environment_info(cfg.device))
        log(f"run directory: {run.path}")
    log(f"data: {data.name}, {len(data.train)} train / {len(data.valid)} valid images "
        f"({data.split_note})")

    def on_epoch(model: Any, arch: Any) -> dict[str, Any]:
        if bench is None:
            return {}
        gt = bench.query(str(arch) if cfg.space.name == "nb201" else arch)
        return {f"gt_{k}": v for k, v in gt.metrics.items() if v is not None}

    try:
        result = search(cfg, data, run=run, resume=resume is not None, progress=progress,
                        on_epoch=on_epoch, on_record=_speed_watch(cfg, log))
        t_select = time.perf_counter()
        selection = select_from_result(cfg, result, data, bench, progress=progress)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(run)) from None
    selection_s = time.perf_counter() - t_select
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
        "space": cfg.space.name,
        "mu": _listed(result.mu),
        "sigma": None if result.sigma is None else _listed(result.sigma),
        "final_epoch": result.metrics[-1] if result.metrics else None,
        "wall_time_s": result.wall_time_s,  # the search epochs (all sessions of a resumed run)
        "data_load_s": data_load_s,  # this session: benchmark table + data onto the device
        "selection_s": selection_s,
        "session_wall_time_s": time.perf_counter() - t_start,  # load + search + selection
        "run_dir": str(run.path),
        "context": result_context(bench, selection["arch"]) if cfg.space.name == "nb201" else None,
    }
    if cfg.space.name == "darts":  # the cells, drawn (matplotlib only), beside the result
        _save_genotype_picture(run, get_space("darts").parse(selection["arch"]))
    run.write_json("result.json", record)
    return record


def _save_genotype_picture(run: RunDir, genotype: Any) -> None:
    import io

    from .viz import draw_genotype

    buf = io.BytesIO()
    draw_genotype(genotype).savefig(buf, format="png", dpi=100)
    atomic_write_bytes(run.path / "genotype.png", buf.getvalue())


# ---------------------------------------------------------------------------------
# ablations in the seed's format (Tables 4 and 5)
# ---------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof = 0), as ``x ± s`` tables use."""
    n = len(values)
    mean = sum(values) / n
    return mean, (sum((v - mean) ** 2 for v in values) / n) ** 0.5


class _Ledger:
    """A JSON file of finished units of work, rewritten atomically after each one,
    so an interrupted protocol resumes where it stopped."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"meta": meta, "done": {}}
        writable_folder(path.parent, "--results")
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (ValueError, OSError):
                raise UserError(f"{path} is corrupt; delete it to start the study again") from None
            if not (isinstance(stored, dict) and isinstance(stored.get("done"), dict)):
                raise UserError(f"{path} is not a study ledger; delete it to start the study again")
            if stored.get("meta") != json.loads(json.dumps(meta)):
                raise UserError(f"{path} was made with other settings; use another --results "
                                "folder or delete it")
            self.data = stored

    def get(self, key: str) -> Any:
        return self.data["done"].get(key)

    def put(self, key: str, value: Any) -> None:
        self.data["done"][key] = value
        atomic_write_json(self.path, self.data)


def writable_folder(path: str | Path, flag: str) -> Path:
    """Make sure ``path`` is a folder this process can write (creating it); otherwise a
    one-line :class:`UserError` naming ``flag``. Creates nothing else."""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pass {flag} a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"cannot write into {flag} {path} ({err.strerror or type(err).__name__}); "
                        f"pass {flag} a writable folder") from None
    return path


#: the ground-truth metric by which a study marks a search's best epoch
BEST_EPOCH_METRIC = "cifar10_test"


def _summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """A finished search in a study's ledger: its final cell, and its best epoch's cell
    (the epoch whose argmax cell had the highest ground truth: an oracle that shows how far
    the search drifted from the best cell it passed through, not a selection rule)."""
    last = record["final_epoch"] or {}
    return {"arch": record["arch"], "metrics": record["ground_truth"]["metrics"],
            "hessian_eig": last.get("hessian_eig"),
            "parameter_free_ops": last.get("parameter_free_ops"),
            "wall_time_s": record["wall_time_s"],
            "best_epoch": best_epoch(RunDir(record["run_dir"]).read_metrics())}


def best_epoch(metrics: list[dict[str, Any]], metric: str = BEST_EPOCH_METRIC) -> dict[str, Any] | None:
    """The epoch whose argmax cell scored the highest ground-truth ``metric`` (the first on
    ties): ``{"epoch", "arch", metric}``; None when no epoch has the metric."""
    key = f"gt_{metric}"
    scored = [m for m in metrics if m.get(key) is not None]
    if not scored:
        return None
    top = max(scored, key=lambda m: m[key])  # max keeps the first of equal values
    return {"epoch": top["epoch"], "arch": top["arch"], metric: top[key]}


def _row(label: str, runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"label": label, "n": len(runs), "archs": [r["arch"] for r in runs]}
    for m in metrics:
        vals = [r["metrics"][m] for r in runs if r["metrics"].get(m) is not None]
        row[m] = mean_std(vals) if vals else None
    for extra in ("hessian_eig", "parameter_free_ops"):
        vals = [r[extra] for r in runs if r.get(extra) is not None]
        row[extra] = mean_std(vals) if vals else None
    best = [r["best_epoch"][BEST_EPOCH_METRIC] for r in runs if r.get("best_epoch")]
    row["best_epoch"] = mean_std(best) if best else None
    return row


def table_markdown(rows: list[dict[str, Any]], metrics: tuple[str, ...],
                   first: str = "method") -> str:
    """A Markdown table of ``mean ± std`` per metric; a missing metric reads 'missing'."""
    cols = [first, "n", *metrics, "hessian_eig", "parameter_free_ops", "best_epoch"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["label"], str(r["n"])]
        for c in (*metrics, "hessian_eig", "parameter_free_ops", "best_epoch"):
            v = r.get(c)
            if v is None:
                cells.append("missing" if c in metrics else "-")
            elif c == "hessian_eig":
                cells.append(f"{v[0]:.3g} ± {v[1]:.2g}")
            else:
                cells.append(f"{v[0]:.2f} ± {v[1]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _metrics_of(bench: Any) -> tuple[str, ...]:
    from .benchmarks import METRICS

    probe = bench.query(0)
    return tuple(m for m in METRICS if probe.metrics.get(m) is not None)


def _optimal_row(bench: Any, metrics: tuple[str, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"label": "optimal", "n": 1, "archs": []}
    for m in metrics:
        row[m] = (bench.best(m).metrics[m], 0.0)
    row["hessian_eig"] = row["parameter_free_ops"] = None
    return row


def random_baseline(bench: Any, seeds: list[int]) -> list[dict[str, Any]]:
    """One uniformly random NB201 cell per seed (``random.Random(seed)``)."""
    import random

    runs = []
    for seed in seeds:
        gt = bench.query(random.Random(seed).randrange(len(bench)))
        runs.append({"arch": gt.arch_str, "metrics": dict(gt.metrics), "hessian_eig": None,
                     "parameter_free_ops": Arch.parse(gt.arch_str).num_parameter_free})
    return runs


def _write_table(results_dir: Path, stem: str, title: str, command: str,
                 rows: list[dict[str, Any]], metrics: tuple[str, ...], first: str,
                 extra: dict[str, Any]) -> dict[str, Any]:
    md = (f"# {title}\n\nCommand: `{command}`\n\nNAS-Bench-201 accuracy (%) of the selected "
          f"cell, mean ± std (population) over seeds; `hessian_eig` is the dominant eigenvalue "
          f"of the validation-loss Hessian w.r.t. alpha after the last epoch, "
          f"`parameter_free_ops` the number of parameter-free ops in the selected cell, "
          f"`best_epoch` the {BEST_EPOCH_METRIC} of the best cell a search's argmax passed "
          f"through at the end of any epoch (an oracle: how far the search drifted).\n\n"
          + table_markdown(rows, metrics, first))
    out = {"title": title, "command": command, "metrics": list(metrics), "rows": rows,
           "env": environment_info(extra.get("config", {}).get("device")), **extra}
    atomic_write_bytes(results_dir / f"{stem}.md", md.encode())
    atomic_write_json(results_dir / f"{stem}.json", out)
    return out


def _with_threads(study: Callable[..., Any]) -> Callable[..., Any]:
    """Run a study with ``cfg.threads`` CPU threads (None: the policy's number, written
    into the config the study records), restoring the caller's count afterwards."""
    import functools

    from .threads import resolve_threads, torch_threads

    @functools.wraps(study)
    def wrapper(cfg: RunConfig, *args: Any, **kwargs: Any) -> Any:
        cfg = copy.deepcopy(cfg)
        cfg.threads = resolve_threads(cfg.threads)
        with torch_threads(cfg.threads):
            return study(cfg, *args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class StudyUnit:
    """One independent search of a study (and what the study does with it): the key of its
    entry in the study's ledger, the line logged when it starts, the folder name of its run
    in a sweep (:mod:`~bayesnas_core.sweep`), its config, and ``work(cfg, *args, progress,
    log, bench, resume)``, a module-level function (a Ray worker imports it) that runs the
    unit and returns its JSON-ready ledger entry. ``resume`` is a run directory of this unit
    to continue from its checkpoint (None: a new run under ``cfg.out``)."""

    key: str
    label: str
    folder: str
    cfg: RunConfig
    work: Callable[..., Any]
    args: tuple[Any, ...] = ()


#: ``runner(units, put, *, progress, log, bench)`` runs each unit and calls ``put(key,
#: entry)`` as each finishes (in the calling process: the ledger has one writer)
Runner = Callable[..., None]


def run_serially(units: list[StudyUnit], put: Callable[[str, Any], None], *,
                 progress: Progress = True, log: Callable[[str], None] = print,
                 bench: Any = None) -> None:
    """The serial :data:`Runner`: each unit in this process, one after the other."""
    for unit in units:
        log(unit.label)
        put(unit.key, unit.work(unit.cfg, *unit.args, progress=progress, log=log, bench=bench))


def _run_missing(units: list[StudyUnit], ledger: _Ledger, runner: Runner | None, *,
                 progress: Progress, log: Callable[[str], None], bench: Any) -> None:
    """Run the units the ledger lacks with ``runner`` (None: :func:`run_serially`), then
    keep the ledger's entries in the units' order (as a serial study writes them)."""
    todo = [u for u in units if ledger.get(u.key) is None]
    if todo:
        (runner or run_serially)(todo, ledger.put, progress=progress, log=log, bench=bench)
    done = ledger.data["done"]
    ordered = {u.key: done[u.key] for u in units if u.key in done}
    ordered.update((k, v) for k, v in done.items() if k not in ordered)
    if list(ordered) != list(done):  # units that finished out of order (a sweep)
        ledger.data["done"] = ordered
        atomic_write_json(ledger.path, ledger.data)


def _mc_search(cfg: RunConfig, *, progress: Progress = True, log: Callable[[str], None] = print,
               bench: Any = None, resume: str | Path | None = None) -> dict[str, Any]:
    """An ablation-mc unit: one search, its ledger summary."""
    return _summary_of(run_search(None if resume is not None else cfg, resume=resume,
                                  progress=progress, log=log, bench=bench))


def ablation_mc_units(cfg: RunConfig, mcs: list[int], seeds: list[int]) -> list[StudyUnit]:
    """The searches of :func:`ablation_mc`: BaLeNAS for each M and seed, then DARTS per seed."""
    jobs = [(f"balenas-m{m}-s{s}", "balenas", m, s) for m in mcs for s in seeds]
    jobs += [(f"darts-s{s}", "darts", 1, s) for s in seeds]
    units = []
    for key, method, m, seed in jobs:
        run_cfg = copy.deepcopy(cfg)
        run_cfg.seed, run_cfg.search.method, run_cfg.search.mc_samples = seed, method, m
        run_cfg.select.method = "argmax"
        units.append(StudyUnit(key, f"[ablation-mc] {key}", f"ablation-mc-{key}", run_cfg, _mc_search))
    return units


@_with_threads
def ablation_mc(cfg: RunConfig, mcs: list[int], seeds: list[int], *, results_dir: str | Path,
                command: str = "", progress: Progress = True, log: Callable[[str], None] = print,
                bench: Any = None, runner: Runner | None = None) -> dict[str, Any]:
    """The seed's Table 5: BaLeNAS for each M and seed, plus Random and DARTS rows.

    ``runner`` runs the searches the ledger lacks (None: :func:`run_serially`; a sweep
    passes :class:`~bayesnas_core.sweep.RayRunner`); the table is built from the ledger."""
    results_dir = Path(results_dir)
    bench = bench if bench is not None else open_benchmark(cfg.nb201_file)
    metrics = _metrics_of(bench)
    ledger = _Ledger(results_dir / "ablation-mc.ledger.json",
                     {"config": to_dict(cfg), "mcs": mcs, "seeds": seeds})
    _run_missing(ablation_mc_units(cfg, mcs, seeds), ledger, runner, progress=progress, log=log,
                 bench=bench)
    order = cfg.search.order
    rows = [_row(f"M = {m}", [ledger.get(f"balenas-m{m}-s{s}") for s in seeds], metrics)
            for m in mcs]
    rows.append(_row("Random baseline", random_baseline(bench, seeds), metrics))
    rows.append(_row(f"DARTS ({'1st' if order == 1 else '2nd'})",
                     [ledger.get(f"darts-s{s}") for s in seeds], metrics))
    rows.append(_optimal_row(bench, metrics))
    return _write_table(results_dir, "ablation-mc",
                        f"Ablation over the MC sample size M (BaLeNAS, order {order}, preset "
                        f"{cfg.preset})", command, rows, metrics, "MCMC number",
                        {"config": to_dict(cfg), "seeds": seeds, "runs": ledger.data["done"]})


def _tf_search(cfg: RunConfig, proxies: list[str], samples: list[int], *,
               progress: Progress = True, log: Callable[[str], None] = print, bench: Any = None,
               resume: str | Path | None = None) -> dict[str, Any]:
    """An ablation-tf unit: one BaLeNAS search, then ``max(samples)`` cells drawn once from
    its N(mu, sigma^2), scored by each proxy; each K takes the best of the first K draws."""
    from tqdm.auto import tqdm

    from .select import sample_archs, score_archs, unique_networks

    bench = bench if bench is not None else open_benchmark(cfg.nb201_file)
    seed, sel = cfg.seed, cfg.select
    data = load_data(cfg)
    record = run_search(None if resume is not None else cfg, resume=resume, progress=progress,
                        log=log, bench=bench, data=data)
    mu, sigma = torch.tensor(record["mu"]), torch.tensor(record["sigma"])
    draws = sample_archs(mu, sigma, max(samples),
                         torch.Generator().manual_seed(seed + TF_SEED_OFFSET))
    batch = proxy_batch(data, cfg.data.batch_size)
    entry: dict[str, Any] = {"argmax": _summary_of(record), "tf": {}}
    pool = unique_networks(draws)
    for proxy in proxies:
        scored = score_archs(pool, proxy=proxy, num_classes=data.num_classes,
                             in_channels=data.in_channels, image_size=data.image_size,
                             batch=batch, C=sel.C, N=sel.N, device=cfg.device,
                             init_seed=seed,
                             progress=lambda xs: tqdm(xs, desc=f"{proxy} s{seed}", leave=False,
                                                      disable=progress is not True))
        score_of = {c.arch.canonical: c.score for c in scored}
        for k in samples:
            cands = unique_networks(draws[:k])
            best = max(cands, key=lambda a: score_of[a.canonical])
            gt = bench.query(str(best))
            entry["tf"][f"{proxy}-{k}"] = {
                "arch": str(best), "metrics": dict(gt.metrics), "distinct": len(cands),
                "score": score_of[best.canonical], "hessian_eig": None,
                "parameter_free_ops": best.num_parameter_free}
    return entry


def ablation_tf_units(cfg: RunConfig, proxies: list[str], samples: list[int],
                      seeds: list[int]) -> list[StudyUnit]:
    """The units of :func:`ablation_tf`: one BaLeNAS search (and its TF scoring) per seed."""
    units = []
    for seed in seeds:
        run_cfg = copy.deepcopy(cfg)
        run_cfg.seed, run_cfg.search.method, run_cfg.select.method = seed, "balenas", "argmax"
        units.append(StudyUnit(f"s{seed}", f"[ablation-tf] BaLeNAS search, seed {seed}",
                               f"ablation-tf-s{seed}", run_cfg, _tf_search,
                               (list(proxies), list(samples))))
    return units


@_with_threads
def ablation_tf(cfg: RunConfig, proxies: list[str], samples: list[int], seeds: list[int], *,
                results_dir: str | Path, command: str = "", progress: Progress = True,
                log: Callable[[str], None] = print, bench: Any = None,
                runner: Runner | None = None) -> dict[str, Any]:
    """The seed's Table 4: BaLeNAS argmax vs BaLeNAS-TF with each proxy and K.

    One BaLeNAS search per seed; then ``max(samples)`` cells are drawn once from its
    N(mu, sigma^2) and each K uses the first K draws, so the candidate sets are nested.
    ``runner`` runs the seeds the ledger lacks (None: :func:`run_serially`); the table is
    built from the ledger.
    """
    results_dir = Path(results_dir)
    bench = bench if bench is not None else open_benchmark(cfg.nb201_file)
    metrics = _metrics_of(bench)
    ledger = _Ledger(results_dir / "ablation-tf.ledger.json",
                     {"config": to_dict(cfg), "proxies": proxies, "samples": samples,
                      "seeds": seeds})
    _run_missing(ablation_tf_units(cfg, proxies, samples, seeds), ledger, runner,
                 progress=progress, log=log, bench=bench)
    rows = [_row("BaLeNAS", [ledger.get(f"s{s}")["argmax"] for s in seeds], metrics)]
    for proxy in proxies:
        for k in samples:
            rows.append(_row(f"BaLeNAS with {proxy}, K = {k}",
                             [ledger.get(f"s{s}")["tf"][f"{proxy}-{k}"] for s in seeds], metrics))
    rows.append(_optimal_row(bench, metrics))
    return _write_table(results_dir, "ablation-tf",
                        f"BaLeNAS-TF with zero-cost proxies and sample size K (preset {cfg.preset})",
                        command, rows, metrics, "method",
                        {"config": to_dict(cfg), "seeds": seeds, "runs": ledger.data["done"]})


# ---------------------------------------------------------------------------------
# proxy-quality study
# ---------------------------------------------------------------------------------
TARGETS = ("cifar10_test", "cifar100_test", "imagenet16_test")


def rank_correlations(scores: list[float], accs: list[float]) -> dict[str, float]:
    """Spearman's rho and Kendall's tau (tau-b) between scores and accuracies."""
    from scipy import stats

    rho = stats.spearmanr(scores, accs).statistic
    tau = stats.kendalltau(scores, accs).statistic
    return {"spearman": float(rho), "kendall": float(tau), "n": len(scores)}


@_with_threads
def proxy_study(cfg: RunConfig, counts: dict[str, int], *, results_dir: str | Path,
                seed: int = 0, C: int = 16, N: int = 5, command: str = "",
                progress: Progress = True, log: Callable[[str], None] = print,
                bench: Any = None, save_every: int = 10) -> dict[str, Any]:
    """Score uniformly random NB201 cells with each proxy; rank-correlate with accuracy.

    ``counts`` maps proxy -> number of cells (a prefix of one seeded random permutation
    of the 15,625 cells, so smaller counts are subsets of larger ones). Networks are the
    full stand-alone NB201 networks ``(C, N)`` on ``cfg.data``'s image shape; SNIP and
    GraSP use its first training batch. Scores are saved every ``save_every`` cells and
    an interrupted study resumes.
    """
    from tqdm.auto import tqdm

    from .select import score_archs

    results_dir = Path(results_dir)
    bench = bench if bench is not None else open_benchmark(cfg.nb201_file)
    data = load_data(cfg)
    batch = proxy_batch(data, cfg.data.batch_size)
    order = torch.randperm(len(bench), generator=torch.Generator().manual_seed(seed)).tolist()
    ledger = _Ledger(results_dir / "proxy-study.ledger.json",
                     {"seed": seed, "C": C, "N": N, "data": to_dict(cfg)["data"]})
    for proxy, count in counts.items():
        done: list[list[Any]] = list(ledger.get(proxy) or [])[:count]  # a larger earlier
        # request's ledger holds this one's cells as a prefix; only those are reported
        if [row[0] for row in done] != order[:len(done)]:
            raise UserError(f"{ledger.path} does not hold this study's cells; delete it or use "
                            "another --results folder")
        todo = order[len(done):count]
        bar = tqdm(total=count, initial=len(done), desc=f"{proxy}", disable=progress is not True)
        for start in range(0, len(todo), save_every):
            chunk = [Arch.parse(bench.arch_str(i)) for i in todo[start:start + save_every]]
            scored = score_archs(chunk, proxy=proxy, num_classes=data.num_classes,
                                 in_channels=data.in_channels, image_size=data.image_size,
                                 batch=batch, C=C, N=N, device=cfg.device, init_seed=seed)
            done += [[i, c.score, c.log10] for i, c in zip(todo[start:start + save_every], scored)]
            ledger.put(proxy, done)
            bar.update(len(chunk))
            if callable(progress):
                progress(f"{proxy}: {len(done)}/{count} cells scored")
        bar.close()
    summary: dict[str, Any] = {"command": command, "seed": seed, "C": C, "N": N,
                               "dataset": data.name, "image_shape": [data.in_channels,
                                                                     data.image_size,
                                                                     data.image_size],
                               "batch_size": cfg.data.batch_size, "correlations": {},
                               "scores": {}, "threads": cfg.threads,
                               "env": environment_info(cfg.device)}
    for proxy, count in counts.items():
        rows = ledger.get(proxy)[:count]
        summary["scores"][proxy] = [
            {"index": i, "arch": bench.arch_str(i), "score": sc, "log10": lg,
             **{t: bench.query(i).metrics[t] for t in TARGETS}} for i, sc, lg in rows]
        summary["correlations"][proxy] = {
            t: rank_correlations([r[1] for r in rows], [bench.query(r[0]).metrics[t] for r in rows])
            for t in TARGETS}
    atomic_write_json(results_dir / "proxy-study.json", summary)
    lines = ["| proxy | n | " + " | ".join(f"{t} ρ / τ" for t in TARGETS) + " |",
             "|---|---|" + "---|" * len(TARGETS)]
    for proxy, corr in summary["correlations"].items():
        lines.append(f"| {proxy} | {corr[TARGETS[0]]['n']} | " + " | ".join(
            f"{corr[t]['spearman']:.3f} / {corr[t]['kendall']:.3f}" for t in TARGETS) + " |")
    md = (f"# Zero-cost proxy quality on NAS-Bench-201\n\nCommand: `{command}`\n\n"
          f"Spearman ρ and Kendall τ between each proxy's score at initialisation "
          f"(stand-alone network C={C}, N={N}, input {summary['image_shape']}, "
          f"{data.name}) and NB201 test accuracy.\n\n" + "\n".join(lines) + "\n")
    atomic_write_bytes(results_dir / "proxy-study.md", md.encode())
    from . import viz

    fig = viz.proxy_study_figure(summary)
    fig.savefig(results_dir / "proxy-study.png", dpi=110, bbox_inches="tight")
    viz.close(fig)
    return summary


# ---------------------------------------------------------------------------------
# small demonstrations for the lessons
# ---------------------------------------------------------------------------------
def bayesian_regression_demo(*, n: int = 200, noise_precision: float = 4.0,
                             prior_precision: float = 1.0, mc_samples: int = 1,
                             batch_size: int = 1, epochs: int = 20, lr: float = 2e-2,
                             lr_final: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Vadam on Bayesian linear regression, where the exact posterior is known.

    Data: ``y = x^T w + e`` with ``w = (1, -0.5)``, ``x_j = c_j * (+-1)``, ``c = (1, 2)``,
    ``e ~ N(0, 1/noise_precision)``; prior ``w ~ N(0, I / prior_precision)``. Vadam learns
    ``N(mu, sigma^2)`` from minibatches of ``batch_size`` examples (lr decays
    geometrically from ``lr`` to ``lr_final``). Returns the exact posterior mean, the
    exact mean-field std ``1/sqrt(diag(precision))``, and Vadam's mean and std after every
    epoch. With ``batch_size = 1`` Vadam's std matches the mean-field std; larger batches
    inflate it by about ``sqrt(batch_size)`` (squared minibatch gradients under-estimate
    per-example curvature), a property of Vadam worth seeing.
    """
    from .optim import Vadam

    dt = torch.float64
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 2.0], dtype=dt)
    X = (torch.randint(0, 2, (n, 2), generator=g).to(dt) * 2 - 1) * scale
    y = X @ torch.tensor([1.0, -0.5], dtype=dt) + torch.randn(n, generator=g, dtype=dt) / noise_precision ** 0.5
    A = noise_precision * X.T @ X + prior_precision * torch.eye(2, dtype=dt)
    mu_exact = torch.linalg.solve(A, noise_precision * X.T @ y)
    w = torch.zeros(2, dtype=dt, requires_grad=True)
    opt = Vadam([w], lr=lr, betas=(0.5, 0.999), prior_precision=prior_precision,
                prec_init=prior_precision, num_data=n, mc_samples=mc_samples,
                generator=torch.Generator().manual_seed(seed + 1))
    steps_per_epoch = max(1, n // batch_size)
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (lr_final / lr) ** (t / total))
    trace = []
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        for k in range(steps_per_epoch):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            xb, yb = X[idx], y[idx]

            def closure() -> Tensor:
                loss = 0.5 * noise_precision * ((yb - xb @ w) ** 2).mean()
                loss.backward()
                return loss

            opt.step(closure)
            sched.step()
        trace.append({"epoch": epoch + 1, "mu": w.detach().tolist(),
                      "sigma": opt.posterior_std(w).tolist()})
    return {"mu_exact": mu_exact.tolist(), "sigma_mean_field": A.diag().rsqrt().tolist(),
            "sigma_exact_marginal": torch.linalg.inv(A).diag().sqrt().tolist(),
            "mu": trace[-1]["mu"], "sigma": trace[-1]["sigma"], "trace": trace,
            "settings": {"n": n, "noise_precision": noise_precision,
                         "prior_precision": prior_precision, "mc_samples": mc_samples,
                         "batch_size": batch_size, "epochs": epochs, "seed": seed}}


def mc_gradient_spread(*, mcs: tuple[int, ...] = (1, 2, 3, 4), repeats: int = 8,
                       sigma: float = 0.5, seed: int = 0, C: int = 8, N: int = 1,
                       image_size: int = 16, batch_size: int = 64) -> dict[str, Any]:
    """How the Monte-Carlo gradient of the validation loss tightens with M.

    On a freshly initialised lesson-size supernet and one batch of the shipped subset,
    estimate ``mean_k grad L(mu + sigma eps_k)`` ``repeats`` times for each M and report
    the spread (standard deviation across repeats, averaged over the 30 alphas). Theory:
    the spread falls like ``1 / sqrt(M)``.
    """
    from .runs import seed_everything
    from .search import arch_gradient_batched
    from .spaces import NB201Supernet

    data = load_search_data("fashion-mnist-subset", image_size=image_size, limit=batch_size)
    seed_everything(seed)
    model = NB201Supernet(C, N, data.num_classes, data.in_channels)
    batch = (data.valid.x, data.valid.y)
    g = torch.Generator().manual_seed(seed)
    mu = model.alpha.detach()
    spread = []
    for m in mcs:
        ests = []
        for _ in range(repeats):
            eps = torch.randn((m, *mu.shape), generator=g)
            _, grads, _ = arch_gradient_batched(model, mu + sigma * eps, batch)
            ests.append(grads.mean(0))
        spread.append(torch.stack(ests).std(0).mean().item())
    return {"M": list(mcs), "spread": spread,
            "one_over_sqrt_M": [spread[0] / m ** 0.5 for m in mcs],
            "settings": {"repeats": repeats, "sigma": sigma, "seed": seed}}


def load_result(name: str) -> Any:
    """A shipped result JSON, by path relative to ``assets/results`` (e.g.
    ``"ablation-mc-cpu/ablation-mc.json"``); a missing file raises a one-line error."""
    from .paths import assets_dir

    path = assets_dir() / "results" / name
    if not path.is_file():
        raise UserError(f"{path} is missing; it is made by the command in the README's results section")
    return json.loads(path.read_text())


def load_run_metrics(name: str) -> list[dict[str, Any]]:
    """A shipped run's per-epoch records (``metrics.jsonl``), by its folder relative to
    ``assets/results`` (e.g. ``"full-scale/partial/<run>"``)."""
    from .paths import assets_dir

    path = assets_dir() / "results" / name / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} is missing; it is made by the command in the README's results section")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: the files of a run directory that ``export`` copies (everything but the checkpoint)
EXPORTED_FILES = ("config.json", "env.json", "metrics.jsonl", "history.json", "result.json")


def export_runs(run_dirs: list[str | Path], dest: str | Path) -> dict[str, Any]:
    """Copy finished runs' records (no checkpoints) to ``dest`` and merge ``summary.json``.

    Each run keeps config, env (versions, device, command line), metrics, history and
    result; the summary has one row per run with the method, seed, selected cell, its
    ground truth, mu, sigma, parameter-free ops, wall time, device and command. Rows of
    runs already in ``dest`` are kept; re-exporting a run replaces its own row.

    Everything is checked before anything is written: each run is complete and readable,
    no two runs share a folder name, ``dest`` does not already hold another run under
    that name, and every target stays inside ``dest``. A mistake is a one-line
    :class:`UserError` and ``dest`` is left as it was.
    """
    dest_path = Path(dest)
    if dest_path.exists() and not dest_path.is_dir():
        raise UserError(f"--to {dest_path} is a file, not a folder; pass --to a folder")
    dest_root = dest_path.resolve()
    plans: list[tuple[RunDir, Path, dict[str, Any]]] = []
    seen: dict[str, Path] = {}
    for d in run_dirs:
        src = Path(d).resolve()
        if not src.is_dir():
            raise UserError(f"no run directory at {d}; pass export the folders that runs printed")
        run = RunDir(src)
        for name in EXPORTED_FILES:
            if not (src / name).is_file():
                raise UserError(f"{src / name} is missing; {d} is not a finished run (finish it "
                                "with --resume, or leave it out of the export)")
        record = _export_row(run)
        if src.name in seen:
            raise UserError(f"{seen[src.name]} and {src} share the folder name {src.name}; rename "
                            "one, or export them to different --to folders")
        seen[src.name] = src
        target = dest_root / src.name
        if target.parent != dest_root or src == dest_root or src in target.parents:
            raise UserError(f"{d} would be exported outside {dest_path} or into itself; pass "
                            "the run folder itself")
        existing = target / "result.json"
        if target.exists() and not (existing.is_file() and _same_run(existing, src / "result.json")):
            raise UserError(f"{target} already holds another run named {src.name}; export to "
                            "another --to folder or remove that one first")
        plans.append((run, target, record))
    summary_path = dest_root / "summary.json"
    rows: dict[str, dict[str, Any]] = {}
    if summary_path.exists():
        try:
            old = json.loads(summary_path.read_text())
            rows = {r["run"]: r for r in old["runs"]}
        except (ValueError, KeyError, TypeError, OSError):
            raise UserError(f"{summary_path} is not an export summary; move it away or export "
                            "to another --to folder") from None
    writable_folder(dest_root, "--to")
    for run, target, record in plans:
        target.mkdir(exist_ok=True)
        for name in EXPORTED_FILES:
            atomic_write_bytes(target / name, (run.path / name).read_bytes())
        rows[record["run"]] = record
    ordered = sorted(rows.values(), key=lambda r: (r["method"], r["mc_samples"] or 0, r["seed"],
                                                   r["run"]))
    summary = {"runs": ordered}
    atomic_write_json(summary_path, summary)
    return summary


def _space_of(result: dict[str, Any]) -> Any:
    """The search space a result.json was made in (runs older than the field: nb201)."""
    return get_space(result.get("space", "nb201"))


def _same_run(a: Path, b: Path) -> bool:
    """Whether two result.json files are the same run (a re-export of it)."""
    try:
        ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    except (ValueError, OSError):
        return False
    keys = ("method", "seed", "mu", "arch", "wall_time_s")
    return all(ra.get(k) == rb.get(k) for k in keys)


def _export_row(run: RunDir) -> dict[str, Any]:
    """The summary row of one finished run; a malformed record is a one-line UserError."""
    result, env = run.read_json("result.json"), run.read_json("env.json")
    run.read_json("config.json"), run.read_json("history.json"), run.read_metrics()
    try:
        last = result["final_epoch"] or {}
        argv = env.get("argv") or []
        return {
            "run": run.path.name, "method": result["method"], "order": result["order"],
            "mc_samples": result["mc_samples"], "seed": result["seed"], "preset": result["preset"],
            "space": result.get("space", "nb201"), "arch": result["arch"],
            "parameter_free_ops": _space_of(result).num_parameter_free(_space_of(result).parse(result["arch"])),
            **{k: v for k, v in (result["ground_truth"] or {"metrics": {}})["metrics"].items()},
            "hessian_eig": last.get("hessian_eig"), "mu": result["mu"], "sigma": result["sigma"],
            "wall_time_s": result["wall_time_s"], "data_load_s": result.get("data_load_s"),
            "session_wall_time_s": result.get("session_wall_time_s"), "device": env.get("device"),
            "command": "python -m bayesnas_core.run " + " ".join(map(shlex.quote, argv[1:])),
        }
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{run.path / 'result.json'} is not a finished run's result; leave "
                        f"{run.path} out of the export") from None
