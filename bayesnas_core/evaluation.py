"""Cells trained from scratch: the Fashion-MNIST reference, and a paired comparison of methods.

A Fashion-MNIST search is graded twice: by NAS-Bench-201's CIFAR-10 ground truth, and by
training the selected cell on Fashion-MNIST itself with a training recipe
(:data:`~bayesnas_core.config.TRAIN_PRESETS`). :func:`fmnist_reference` trains a seeded,
stratified sample of NB201 cells (plus all-skip, the best CIFAR-10 cell and any cells the
caller's searches picked) and reports how well the CIFAR-10 ground truth ranks them on
Fashion-MNIST. :func:`compare_methods` reads an exported study and compares its methods
on the same seeds. Both drive their work through a resumable ledger.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any, Callable

from .config import TrainConfig, to_dict
from .errors import UserError
from .experiments import Progress, _Ledger, environment_info, mean_std, rank_correlations
from .runs import atomic_write_bytes, atomic_write_json

__all__ = ["stratified_cells", "fmnist_reference", "compare_methods", "sign_test_p"]

#: the CIFAR-10 ground truth the reference and the comparison grade with
METRIC = "cifar10_test"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"


def stratified_cells(bench: Any, count: int, seed: int, metric: str = METRIC) -> list[str]:
    """``count`` NB201 cells spanning the ``metric`` range: all cells sorted by ``metric``
    and cut into ``count`` equal strata, one cell drawn from each (``random.Random(seed)``)."""
    if not 1 <= count <= len(bench):
        raise UserError(f"--sample-cells must be between 1 and {len(bench)}, got {count}")
    col = bench.column(metric)
    order = sorted(range(len(bench)), key=lambda i: (col[i], i))
    rng = random.Random(seed)
    picks = []
    for k in range(count):
        lo, hi = k * len(order) // count, (k + 1) * len(order) // count
        picks.append(bench.arch_str(order[rng.randrange(lo, hi)]))
    return picks


def _included_archs(folders: list[str | Path]) -> list[str]:
    """The final cells of every run in the exported studies ``folders`` (their summary.json)."""
    archs: list[str] = []
    for folder in folders:
        path = Path(folder) / "summary.json"
        try:
            runs = json.loads(path.read_text())["runs"]
            archs += [r["arch"] for r in runs]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{path} is not an export summary; pass --include folders made by "
                            "`python -m bayesnas_core.run export`") from None
    return archs


def fmnist_reference(recipe: TrainConfig, *, cells: int, sample_seed: int, seeds: list[int],
                     include: list[str | Path] = (), include_seeds: list[int] | None = None,
                     results_dir: str | Path, command: str = "", progress: Progress = True,
                     log: Callable[[str], None] = print, bench: Any = None) -> dict[str, Any]:
    """Train a stratified sample of ``cells`` NB201 cells (plus all-skip and the best
    CIFAR-10 cell) with ``recipe`` for each training seed in ``seeds``, and the cells the
    exported studies in ``include`` picked for each seed in ``include_seeds`` (default:
    ``seeds``); write ``reference.md`` / ``reference.json`` with the Spearman correlation
    between NB201's CIFAR-10 test accuracy and the trained Fashion-MNIST accuracy.

    Every (cell, training seed) is one unit of the ledger ``reference.ledger.json``: an
    interrupted reference resumes with the next unfinished cell. Training runs go to
    ``recipe.out`` (``--out``).
    """
    from .benchmarks import open_benchmark
    from .data import load_search_data
    from .train import run_train

    results_dir = Path(results_dir)
    bench = bench if bench is not None else open_benchmark(recipe.nb201_file)
    if not seeds:
        raise UserError("pass --seeds with at least one training seed")
    include_seeds = list(seeds if include_seeds is None else include_seeds)
    picked = _included_archs(list(include))
    sample = stratified_cells(bench, cells, sample_seed)
    best = bench.best(METRIC).arch_str
    extra = [a for a in (ALL_SKIP, best) if a not in sample]
    base = copy.deepcopy(recipe)
    base.arch, base.seed = "", 0
    meta = {"recipe": to_dict(base) | {"out": None}, "cells": cells, "sample_seed": sample_seed,
            "metric": METRIC}
    ledger = _Ledger(results_dir / "reference.ledger.json", meta)
    units = [(a, s) for a in sample + extra for s in seeds]
    units += [(a, s) for a in dict.fromkeys(picked) for s in include_seeds if (a, s) not in units]
    data: dict[int, Any] = {}  # the data of each training seed, loaded as `train` would
    for n, (arch, seed) in enumerate(units, 1):
        key = f"{arch}#{seed}"
        if ledger.get(key) is not None:
            continue
        cfg = copy.deepcopy(base)
        cfg.arch, cfg.seed = arch, seed
        if seed not in data:
            data[seed] = load_search_data(cfg.dataset, cfg.root, image_size=cfg.image_size,
                                          limit=cfg.limit, download=cfg.download, seed=seed,
                                          device=cfg.device)
        log(f"[{n}/{len(units)}] training {arch} (seed {seed})")
        r = run_train(cfg.validate(), progress=progress, log=log, bench=bench, data=data[seed])
        ledger.put(key, {"arch": arch, "seed": seed, "index": r["index"],
                         "final_test_acc": r["final_test_acc"], "best_test_acc": r["best_test_acc"],
                         "params": r["params"], "wall_time_s": r["wall_time_s"],
                         "run": Path(r["run_dir"]).name})
    rows = _reference_rows(ledger.data["done"], bench, sample, extra, picked)
    strat = [r for r in rows if r["in_sample"]]
    corr = rank_correlations([r[METRIC] for r in strat], [r["trained"][0] for r in strat])
    corr_all = rank_correlations([r[METRIC] for r in rows], [r["trained"][0] for r in rows])
    out = {"title": "Fashion-MNIST reference: NB201 cells trained from scratch", "command": command,
           "recipe": meta["recipe"], "sample": {"cells": cells, "seed": sample_seed, "metric": METRIC},
           "seeds": seeds, "include_seeds": include_seeds, "rows": rows,
           "spearman_sample": corr, "spearman_all": corr_all,
           "wall_time_s": sum(u["wall_time_s"] for u in ledger.data["done"].values()),
           "env": environment_info(recipe.device)}
    atomic_write_json(results_dir / "reference.json", out)
    atomic_write_bytes(results_dir / "reference.md", _reference_markdown(out).encode())
    return out


def _reference_rows(done: dict[str, Any], bench: Any, sample: list[str], extra: list[str],
                    picked: list[str]) -> list[dict[str, Any]]:
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for unit in done.values():
        by_arch.setdefault(unit["arch"], []).append(unit)
    rows = []
    for arch in dict.fromkeys(sample + extra + picked):
        units = sorted(by_arch.get(arch, []), key=lambda u: u["seed"])
        if not units:
            continue
        gt = bench.query(arch)
        rows.append({"arch": arch, "index": gt.index, METRIC: gt.metrics[METRIC],
                     "trained": mean_std([u["final_test_acc"] for u in units]),
                     "seeds": [u["seed"] for u in units], "params": units[0]["params"],
                     "in_sample": arch in sample, "anchor": arch in extra,
                     "picked": picked.count(arch)})
    rows.sort(key=lambda r: (r[METRIC], r["index"]))
    return rows


def _reference_markdown(out: dict[str, Any]) -> str:
    s, a = out["spearman_sample"], out["spearman_all"]
    lines = [f"# {out['title']}", "", f"Command: `{out['command']}`", "",
             f"Recipe `{out['recipe']['recipe']}`: {out['recipe']['dataset']}, "
             f"{out['recipe']['epochs']} epochs, C={out['recipe']['C']}, N={out['recipe']['N']}. "
             f"Trained accuracy: final test accuracy (%), mean ± std (population) over the "
             f"training seeds listed. `picked`: how many of the included searches ended with "
             f"the cell.", "",
             f"Spearman between NB201 CIFAR-10 test and trained Fashion-MNIST accuracy: "
             f"{s['spearman']:.3f} over the {s['n']} cells of the stratified sample "
             f"(Kendall {s['kendall']:.3f}); {a['spearman']:.3f} over all {a['n']} cells "
             f"(with the anchors, all-skip and the best CIFAR-10 cell where the sample lacks "
             f"them, and the picked cells).", "",
             "| index | cell | CIFAR-10 test | Fashion-MNIST trained | seeds | params | sample | picked |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['index']} | `{r['arch']}` | {r[METRIC]:.2f} | {r['trained'][0]:.2f} ± "
                     f"{r['trained'][1]:.2f} | {','.join(map(str, r['seeds']))} | {r['params']:,} | "
                     f"{'yes' if r['in_sample'] else 'anchor' if r.get('anchor') else 'no'} | {r['picked']} |")
    return "\n".join(lines) + "\n"


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the probability of a split at least this uneven between
    ``wins`` and ``losses`` (ties left out) if either outcome had probability 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _label(row: dict[str, Any]) -> str:
    m = f", M={row['mc_samples']}" if row["method"] == "balenas" else ""
    return f"{row['method']} (order {row['order']}{m})"


def compare_methods(study: str | Path, *, reference: str | Path | None = None,
                    baseline: str = "darts (order 1)", command: str = "") -> dict[str, Any]:
    """Compare the methods of an exported study (``study/summary.json``) on the same seeds:
    per method, mean ± std over seeds of the final cell's CIFAR-10 ground truth, the best
    epoch's, parameter-free ops and, with ``reference`` (a :func:`fmnist_reference`
    folder), the trained Fashion-MNIST accuracy of the final cell; per method against
    ``baseline``, the paired differences on shared seeds with wins, ties, losses and a
    two-sided sign test. Writes ``comparison.md`` / ``comparison.json`` into ``study``."""
    study = Path(study)
    try:
        runs = json.loads((study / "summary.json").read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{study / 'summary.json'} is not an export summary; pass a folder "
                        "made by `python -m bayesnas_core.run export`") from None
    trained: dict[str, list[float]] = {}
    if reference is not None:
        try:
            ref = json.loads((Path(reference) / "reference.json").read_text())
            trained = {r["arch"]: r["trained"] for r in ref["rows"]}
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{Path(reference) / 'reference.json'} is not a reference table; "
                            "pass --reference a folder made by the `reference` command") from None
    groups: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        seeds = groups.setdefault(_label(r), {})
        if r["seed"] in seeds:
            raise UserError(f"{study} holds two {_label(r)} runs with seed {r['seed']}; export "
                            "one run per method and seed")
        best = _best_epoch_of(study / r["run"])
        seeds[r["seed"]] = {"final": r[METRIC], "best_epoch": best, "free": r["parameter_free_ops"],
                            "trained": (trained.get(r["arch"]) or [None])[0],
                            "trained_sd": (trained.get(r["arch"]) or [None, None])[1], "arch": r["arch"],
                            "wall_time_s": r["wall_time_s"]}
    if baseline not in groups:
        raise UserError(f"{study} has no {baseline} runs to compare with; export them too")
    rows = []
    for label, seeds in sorted(groups.items()):
        vals = list(seeds.values())
        row: dict[str, Any] = {"label": label, "seeds": sorted(seeds), "n": len(vals)}
        for k in ("final", "best_epoch", "free", "trained", "trained_sd", "wall_time_s"):
            xs = [v[k] for v in vals if v[k] is not None]
            row[k] = mean_std(xs) if len(xs) == len(vals) else None
        row["archs"] = [seeds[s]["arch"] for s in sorted(seeds)]
        if label != baseline:
            row["paired"] = {k: _paired(seeds, groups[baseline], k) for k in ("final", "trained")}
        rows.append(row)
    out = {"title": f"Methods on the same seeds ({study.name})", "command": command,
           "baseline": baseline, "metric": METRIC, "rows": rows,
           "reference": None if reference is None else str(reference)}
    atomic_write_json(study / "comparison.json", out)
    atomic_write_bytes(study / "comparison.md", _comparison_markdown(out).encode())
    return out


def _best_epoch_of(run: Path) -> float | None:
    from .experiments import best_epoch
    from .runs import RunDir

    b = best_epoch(RunDir(run).read_metrics())
    return None if b is None else b[METRIC]


def _paired(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], key: str) -> dict[str, Any] | None:
    shared = [s for s in sorted(a) if s in b and a[s][key] is not None and b[s][key] is not None]
    if not shared:
        return None
    diffs = [a[s][key] - b[s][key] for s in shared]
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return {"seeds": shared, "diffs": diffs, "mean_std": mean_std(diffs), "wins": wins,
            "ties": len(diffs) - wins - losses, "losses": losses, "sign_test_p": sign_test_p(wins, losses)}


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}"


def _comparison_markdown(out: dict[str, Any]) -> str:
    lines = [f"# {out['title']}", "", f"Command: `{out['command']}`", "",
             "Mean ± std (population) over seeds. `final`: NB201 CIFAR-10 test accuracy (%) of the "
             "search's final cell; `best epoch`: of the best cell its argmax passed through (an "
             "oracle); `trained`: the final cell trained from scratch on Fashion-MNIST (test accuracy, "
             "mean over its training seeds, then mean ± std over search seeds; from "
             f"{out['reference'] or 'no reference'}); `training sd`: the std over training seeds "
             "of a cell, averaged over the search seeds; `free`: parameter-free "
             "ops of the final cell (of 6); `wall s`: search wall time.", "",
             "| method | n | final | best epoch | trained | training sd | free | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        sd = "-" if r["trained_sd"] is None else f"{r['trained_sd'][0]:.2f}"
        lines.append(f"| {r['label']} | {r['n']} | {_fmt(r['final'])} | {_fmt(r['best_epoch'])} | "
                     f"{_fmt(r['trained'])} | {sd} | "
                     f"{_fmt(r['free'])} | {_fmt(r['wall_time_s'])} |")
    lines += ["", f"Paired against {out['baseline']} on the same seeds (difference = method − "
              "baseline, percentage points; p: two-sided exact sign test, ties left out):", "",
              "| method | measure | mean ± std of differences | wins / ties / losses | p |",
              "|---|---|---|---|---|"]
    for r in out["rows"]:
        for k, p in (r.get("paired") or {}).items():
            if p is None:
                continue
            lines.append(f"| {r['label']} | {k} | {_fmt(p['mean_std'])} | {p['wins']} / {p['ties']} / "
                         f"{p['losses']} | {p['sign_test_p']:.3f} |")
    return "\n".join(lines) + "\n"
