"""Command line: ``python -m bayesnas_core.run [COMMAND] [options]``.

Commands:

- ``search`` (the default): one search, selection and ground-truth lookup.
- ``lookup ARCH...``: the NAS-Bench-201 ground truth of cells.
- ``ablation-mc``: the seed's Table 5 (M), with Random and DARTS rows.
- ``ablation-tf``: the seed's Table 4 (proxy x K).
- ``export RUN_DIR... --to DIR``: copy finished runs' records into a results folder.
- ``proxies``: rank correlation of each zero-cost proxy with NB201 accuracy.
- ``train --arch ARCH``: train one cell's stand-alone network from scratch (:mod:`.train`).
- ``sweep ablation-mc|ablation-tf ... --backend ray``: a study's searches as Ray tasks (:mod:`.sweep`).

``--help`` before any command lists them all (:func:`overview`).

Every user mistake ends with one line on stderr that names the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Callable, Sequence, Union, get_args, get_origin

from .config import (FLAGS, PRESETS, SPEED_ONLY_FIELDS, RunConfig, config_fields, get_field,
                     get_preset, set_field)
from .errors import Interrupted, UserError

__all__ = ["main", "build_config"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see: python -m bayesnas_core.run {self.prog.split()[-1]} --help)"
                        if " " in self.prog else f"{message} (see --help)")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One option per configuration field, generated from the dataclasses and
    :data:`~bayesnas_core.config.FLAGS` (the one source of truth); each defaults to the
    preset's value."""
    p.add_argument("--preset", default="default", help=f"one of: {', '.join(PRESETS)} (default: default)")
    shown = get_preset("default")
    groups: dict[str, Any] = {}
    for dotted, hint in config_fields().items():
        flag, text = FLAGS[dotted]
        section = dotted.split(".")[0] if "." in dotted else "run"
        if section not in groups:
            groups[section] = p.add_argument_group(f"{section} settings" if section != "run" else
                                                   "run settings")
        g = groups[section]
        current = get_field(shown, dotted)
        text = f"{text} [default preset: {'/'.join(map(str, current)) if isinstance(current, tuple) else current}]"
        _add_typed_option(g, flag, dotted, hint, text)
    p.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")


def _add_typed_option(p: Any, flag: str, dest: str, hint: Any, text: str) -> None:
    """An option for a dataclass field of type ``hint`` (default None: not given): a bool
    gets ``--x/--no-x``, a tuple one value per element, anything else one typed value."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    base = next(t for t in options if t is not type(None))
    if base is bool:
        p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
    elif get_origin(base) is tuple:
        n = len(get_args(base))
        p.add_argument(flag, dest=dest, type=float, nargs=n, default=None, help=text,
                       metavar=tuple(f"V{i + 1}" for i in range(n)))
    else:
        p.add_argument(flag, dest=dest, type=base, default=None, help=text,
                       metavar=flag.lstrip("-").upper().replace("-", "_"))


def _add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain-path", action="store_true",
                   help="the plain eager baseline: one pass per Monte-Carlo sample, unfused cells "
                   "(the same as --no-batched-mc --no-fused-cell)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")


def build_config(args: argparse.Namespace) -> RunConfig:
    """Preset, then the flags that were given."""
    cfg = get_preset(args.preset)
    for dotted in config_fields():
        value = getattr(args, dotted, None)
        if value is not None:
            set_field(cfg, dotted, value)
    for key, value in _speed_options(args).items():
        setattr(cfg.search, key, value)
    return cfg.validate()


def _speed_options(args: argparse.Namespace) -> dict[str, Any]:
    """The speed-only search settings (``SPEED_ONLY_FIELDS``) that the flags set."""
    speed = {key: getattr(args, f"search.{key}") for key in SPEED_ONLY_FIELDS
             if getattr(args, f"search.{key}", None) is not None}
    if getattr(args, "plain_path", False):
        speed.update(batched_mc=False, fused_cell=False)
    return speed


def _progress(args: argparse.Namespace) -> Any:
    """Progress bars on a terminal; one plain line per epoch when stderr (where the bars
    go) is a file or a pipe; nothing with --no-progress."""
    if args.no_progress:
        return False
    if sys.stderr.isatty():
        return True
    return lambda line: print(line, flush=True)


def _format_record(rec: dict[str, Any]) -> str:
    """The lines of a ground-truth record (``experiments.ground_truth_record``)."""
    from .benchmarks import GroundTruth, format_ground_truth

    return format_ground_truth(GroundTruth(arch_str=rec["arch"], index=rec["index"],
                                           metrics=rec["metrics"], source=rec["source"]))


def _print_result(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    sel = result["selection"]
    out("")
    out(f"selected cell ({sel['method']}): {result['arch']}")
    if sel["method"] != "argmax":
        out(f"argmax(mu) cell:        {sel.get('argmax_arch') or sel['argmax']['arch']}")
    rec = result["ground_truth"]
    space = result.get("space", "nb201")
    if space != "nb201":
        if rec is not None:
            out(f"ground truth ({rec['source']}):")
            for k, v in rec["metrics"].items():
                out(f"  {k:<12} {v:.2f} %")
        elif space == "nb1shot1-3":
            out("  (no ground truth: pass --nb101-file nasbench_only108.tfrecord, NAS-Bench-101's data "
                "file from github.com/google-research/nasbench, to look the cell up)")
        else:
            out(f"  (the {space} space has no tabular benchmark; train the genotype from scratch "
                "with `python -m bayesnas_core.run train --genotype ...`)")
        out(f"run directory: {result['run_dir']}  (wall time {result['wall_time_s']:.1f} s)")
        return
    out(_format_record(rec))
    if rec["hint"]:
        out(f"  ({rec['hint']})")
    if result.get("context"):
        from .experiments import explain_lines

        for line in explain_lines(result["context"], rec["metrics"].get(result["context"]["metric"])):
            out(line)
    out(f"run directory: {result['run_dir']}  (wall time {result['wall_time_s']:.1f} s)")


def _cmd_search(argv: Sequence[str]) -> int:
    from .experiments import run_search

    p = _Parser(prog="python -m bayesnas_core.run search",
                description="Run one DARTS or BaLeNAS search on NAS-Bench-201.")
    _add_config_flags(p)
    _add_search(p)
    args = p.parse_args(argv)
    if args.resume:
        keep = {"resume", "no_progress", "device", "preset", "plain_path",
                *(f"search.{k}" for k in SPEED_ONLY_FIELDS)}
        given = [k for k, v in vars(args).items()
                 if k not in keep and v not in (None, False)] + (["preset"] if args.preset != "default" else [])
        if given:
            raise UserError("--resume continues with the run's stored settings; drop the other "
                            "options (only --device, --no-progress and the speed options "
                            "--plain-path, --[no-]cuda-graph, --cell-impl, --[no-]compile-cells, "
                            "--[no-]batched-mc, --[no-]fused-cell may change)")
        result = run_search(resume=args.resume, progress=_progress(args), device=getattr(args, "device"),
                            speed=_speed_options(args))
    else:
        result = run_search(build_config(args), progress=_progress(args))
    _print_result(result)
    return 0


def _cmd_lookup(argv: Sequence[str]) -> int:
    from .benchmarks import format_ground_truth, missing_hint, open_benchmark

    p = _Parser(prog="python -m bayesnas_core.run lookup",
                description="Print the NAS-Bench-201 ground truth of cells (arch strings or indices).")
    p.add_argument("arch", nargs="+", help="an NB201 arch string |op~0|+|op~0|op~1|+|...| or an index")
    p.add_argument("--nb201-file", help="the official NAS-Bench-201 file")
    args = p.parse_args(argv)
    bench = open_benchmark(args.nb201_file)
    for item in args.arch:
        gt = bench.query(int(item) if item.isascii() and item.isdecimal() else item)
        print(format_ground_truth(gt))
        hint = missing_hint(gt)
        if hint:
            print(f"  ({hint})")
    return 0


def _command_line(prog: str, argv: Sequence[str]) -> str:
    import shlex

    return " ".join(["python -m bayesnas_core.run", prog, *map(shlex.quote, argv)])


def _study_parser(name: str, description: str, results: str) -> _Parser:
    """The parser of a study subcommand: the common options and ``--results``."""
    p = _Parser(prog=f"python -m bayesnas_core.run {name}", description=description)
    _add_config_flags(p)
    p.add_argument("--results", default=results, help="folder for the study's outputs (md + json)")
    return p


def _run_study(name: str, table: str, args: argparse.Namespace, argv: Sequence[str],
               study: Callable[..., Any], *study_args: Any, **study_kw: Any) -> int:
    """Run ``study`` with the subcommand's results folder, command line and progress
    setting, then print the table it wrote."""
    from .experiments import writable_folder

    writable_folder(args.results, "--results")
    command = _command_line(name, argv)
    try:
        study(*study_args, results_dir=args.results, command=command,
              progress=_progress(args), **study_kw)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; finished units are kept in the ledger in {args.results}: "
                          f"run the same command again to continue ({command})") from None
    print(Path(args.results, table).read_text())
    return 0


def _check_at_least(low: int, flag: str, values: Sequence[int]) -> None:
    if any(v < low for v in values):
        raise UserError(f"{flag} values must be at least {low}, got {values}")


def _add_proxies(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proxies", nargs="+", default=["synflow", "snip", "grasp"])


def _check_proxies(names: Sequence[str]) -> None:
    from .proxies import PROXIES

    for name in names:
        if name not in PROXIES:
            raise UserError(f"unknown proxy {name!r}; use --proxies from {', '.join(sorted(PROXIES))}")


def _cmd_ablation_mc(argv: Sequence[str]) -> int:
    from .experiments import ablation_mc

    p = _study_parser("ablation-mc", "The seed's Table 5: BaLeNAS for each M and seed, plus "
                      "Random and DARTS.", "runs/ablation-mc")
    p.add_argument("--mc", type=int, nargs="+", default=[1, 2, 3, 4], help="values of M")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    cfg = build_config(args)
    _check_at_least(1, "--mc", args.mc)
    return _run_study("ablation-mc", "ablation-mc.md", args, argv, ablation_mc, cfg, args.mc, args.seeds)


def _cmd_ablation_tf(argv: Sequence[str]) -> int:
    from .experiments import ablation_tf

    p = _study_parser("ablation-tf", "The seed's Table 4: BaLeNAS-TF with each proxy and "
                      "sample size K.", "runs/ablation-tf")
    _add_proxies(p)
    p.add_argument("--samples", type=int, nargs="+", default=[10, 50, 100], help="values of K")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    cfg = build_config(args)
    _check_proxies(args.proxies)
    _check_at_least(1, "--samples", args.samples)
    return _run_study("ablation-tf", "ablation-tf.md", args, argv, ablation_tf, cfg, args.proxies,
                      args.samples, args.seeds)


def _cmd_sweep(argv: Sequence[str]) -> int:
    from .sweep import BACKENDS, STUDIES, import_ray, sweep

    studies = ", ".join(STUDIES)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bayesnas_core.run sweep {" + ",".join(STUDIES) + "} [the study's "
              "options] [--backend {serial,ray}] [--address ADDR] [--num-cpus N] "
              "[--gpus-per-task N] [--max-retries N]\n\nRun a study's independent searches as "
              "Ray tasks (one per search: a GPU each on --device cuda, else --threads CPUs, 1 by "
              "default), into the same ledger and tables as the serial command. "
              f"Studies: {studies}. `sweep STUDY --help` lists a study's options.")
        return 0
    study, rest = argv[0], argv[1:]
    if study not in STUDIES:
        raise UserError(f"unknown study {study!r}; sweep one of: {studies} "
                        "(see: python -m bayesnas_core.run sweep --help)")

    class SweepParser(_Parser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise UserError(f"{message} (see: python -m bayesnas_core.run sweep {study} --help)")

    table = f"{study}.md"
    p = SweepParser(prog=f"python -m bayesnas_core.run sweep {study}",
                    description=f"The {study} study (the same options as `{study}`), its searches "
                    "run as Ray tasks with --backend ray, into the same ledger and tables.")
    _add_config_flags(p)
    p.add_argument("--results", default=f"runs/{study}", help="folder for the study's outputs (md + json)")
    if study == "ablation-mc":
        p.add_argument("--mc", type=int, nargs="+", default=[1, 2, 3, 4], help="values of M")
    else:
        _add_proxies(p)
        p.add_argument("--samples", type=int, nargs="+", default=[10, 50, 100], help="values of K")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    g = p.add_argument_group("sweep settings")
    g.add_argument("--backend", choices=BACKENDS, default="serial",
                   help="serial: the serial command's code path (default); ray: one Ray task per search")
    g.add_argument("--address", help="a Ray cluster: auto (the one `ray start` began here) or "
                   "ray://HOST:10001 (default: a local Ray instance)")
    g.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: the machine's)")
    g.add_argument("--gpus-per-task", type=float, help="GPUs per task with --device cuda (default 1; "
                   "a fraction shares a GPU)")
    g.add_argument("--max-retries", type=int, help="re-runs of a task whose worker died, each "
                   "continuing from the search's checkpoint (default 3)")
    args = p.parse_args(rest)
    device = getattr(args, "device") or get_preset(args.preset).device
    remote_cuda = args.backend == "ray" and str(device).startswith("cuda")
    if remote_cuda:  # the GPUs are the Ray workers' (checked there), not necessarily this machine's
        setattr(args, "device", "cpu")
    cfg = build_config(args)
    if remote_cuda:
        cfg.device = device
    ray_only = [flag for flag, value in (("--address", args.address), ("--num-cpus", args.num_cpus),
                                         ("--gpus-per-task", args.gpus_per_task),
                                         ("--max-retries", args.max_retries)) if value is not None]
    if args.backend == "serial" and ray_only:
        raise UserError(f"{', '.join(ray_only)} only apply to --backend ray")
    if args.backend == "ray":
        import_ray()  # a missing extra: one line, before any folder
    if study == "ablation-mc":
        _check_at_least(1, "--mc", args.mc)
        study_args: tuple[Any, ...] = (args.mc, args.seeds)
    else:
        _check_proxies(args.proxies)
        _check_at_least(1, "--samples", args.samples)
        study_args = (args.proxies, args.samples, args.seeds)
    ray_kw = {} if args.backend == "serial" else {
        "address": args.address, "num_cpus": args.num_cpus, "gpus_per_task": args.gpus_per_task,
        **({} if args.max_retries is None else {"max_retries": args.max_retries})}
    return _run_study("sweep", table, args, argv, sweep, study, cfg, *study_args,
                      backend=args.backend, **ray_kw)


def _cmd_proxies(argv: Sequence[str]) -> int:
    from .experiments import proxy_study

    p = _study_parser("proxies", "Rank correlation of SynFlow, SNIP and GraSP with NB201 "
                      "accuracy.", "runs/proxies")
    p.add_argument("--synflow-cells", type=int, default=1000)
    p.add_argument("--snip-grasp-cells", type=int, default=200, help="cells scored by SNIP and GraSP")
    _add_proxies(p)
    p.add_argument("--net-channels", type=int, default=16, help="C of the scored networks")
    p.add_argument("--net-cells", type=int, default=5, help="N of the scored networks")
    args = p.parse_args(argv)
    cfg = build_config(args)
    _check_proxies(args.proxies)
    from .benchmarks.nb201 import NUM_CELLS

    counts = {name: (args.synflow_cells if name == "synflow" else args.snip_grasp_cells) for name in args.proxies}
    if any(not 3 <= n <= NUM_CELLS for n in counts.values()):
        raise UserError(f"score from 3 to {NUM_CELLS} cells per proxy (--synflow-cells, "
                        "--snip-grasp-cells)")
    _check_at_least(1, "--net-channels", [args.net_channels])
    _check_at_least(1, "--net-cells", [args.net_cells])
    return _run_study("proxies", "proxy-study.md", args, argv, proxy_study, cfg, counts,
                      seed=cfg.seed, C=args.net_channels, N=args.net_cells)


def _cmd_export(argv: Sequence[str]) -> int:
    from .experiments import export_runs

    p = _Parser(prog="python -m bayesnas_core.run export",
                description="Copy finished runs (without checkpoints) to a results folder with a summary.")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--to", required=True, help="destination folder, e.g. assets/results/full-scale")
    args = p.parse_args(argv)
    summary = export_runs(args.runs, args.to)
    for r in summary["runs"]:
        print(f"{r['run']}: {r['method']} seed {r['seed']} -> {r['arch']} ({r['cifar10_test']} %)")
    return 0


def _add_train_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """``--recipe`` and one option per :class:`~bayesnas_core.config.TrainConfig` field
    (but ``skip``), generated from the dataclass and :data:`~bayesnas_core.config.TRAIN_FLAGS`."""
    from dataclasses import fields
    from typing import get_type_hints

    from .config import TRAIN_FLAGS, TRAIN_PRESETS, TrainConfig, get_train_preset

    p.add_argument("--recipe", default="cpu", help=f"one of: {', '.join(TRAIN_PRESETS)}; it also "
                   "picks the search space (nb201 or darts) (default: cpu)")
    shown = get_train_preset("cpu")
    hints = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name in ("recipe", "space") or f.name in skip:  # the recipe sets both
            continue
        flag, text = TRAIN_FLAGS[f.name]
        value = getattr(shown, f.name)
        if f.name == "arch":  # --genotype: the same field, named as DARTS names it
            p.add_argument(flag, "--genotype", dest="arch", default=None, metavar="ARCH", help=text)
            continue
        _add_typed_option(p, flag, f.name, hints[f.name],
                          f"{text} [cpu recipe: {'-' if value is None else value}]")


def _given_train_fields(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import fields

    from .config import TrainConfig

    return {f.name: getattr(args, f.name) for f in fields(TrainConfig)
            if f.name != "recipe" and getattr(args, f.name, None) is not None}


def _train_config(args: argparse.Namespace) -> Any:
    """The recipe, then the training flags that were given."""
    from .config import get_train_preset

    cfg = get_train_preset(args.recipe)
    for name, value in _given_train_fields(args).items():
        setattr(cfg, name, value)
    return cfg


def _cmd_train(argv: Sequence[str]) -> int:
    from .train import Distributed, ReportedElsewhere, run_train

    p = _Parser(prog="python -m bayesnas_core.run train",
                description="Train one cell's stand-alone network from scratch and test it after "
                "every epoch: an NB201 cell (--arch; recipes: cpu, a 2-core CPU in under 2 "
                "minutes; nb201, NAS-Bench-201's 200-epoch CIFAR-10 recipe for a GPU) or a DARTS "
                "genotype (--genotype; recipes: darts-cpu, DARTS's evaluation network scaled to "
                "a 2-core CPU; darts-cifar10-eval and darts-imagenet-eval, DARTS's own "
                "evaluations for a GPU). Under torchrun (torchrun --nproc_per_node K -m "
                "bayesnas_core.run train ...) it trains data-parallel: --batch-size is the global "
                "batch, split evenly across the ranks, and --lr applies to it unchanged.")
    _add_train_flags(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted training run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    args = p.parse_args(argv)
    given = _given_train_fields(args)
    try:
        if args.resume:
            if set(given) - {"device"} or args.recipe != "cpu":
                raise UserError("--resume continues with the run's stored settings; drop the other "
                                "options (only --device and --no-progress may change)")
            result = run_train(resume=args.resume, progress=_progress(args), device=given.get("device"))
        else:
            result = run_train(_train_config(args).validate(), progress=_progress(args))
    except ReportedElsewhere:  # under torchrun: rank 0 printed the mistake
        return 2
    if not Distributed.from_env().main:  # under torchrun, rank 0 prints the summary
        return 0
    rec = result["ground_truth"]
    accuracy = (f"  test accuracy {result['final_test_acc']:.2f} % after the last epoch, best "
                f"{result['best_test_acc']:.2f} % (epoch {result['best_epoch']})")
    print("")
    if rec is None:  # a space without a tabular benchmark (DARTS)
        space = {"darts": "DARTS"}.get(result.get("space", ""), result.get("space"))
        print(f"trained {space} genotype {result['arch']}")
        print(f"  ({result['recipe']} recipe, {result['epochs']} epochs on {result['dataset']}, "
              f"{result['params'] / 1e6:.2f}M parameters without the auxiliary head)")
        print(accuracy)
        print(f"  (the {space} space has no tabular benchmark: there is no ground truth to compare with)")
    else:
        print(f"trained cell {result['index']} {result['arch']} ({result['recipe']} recipe, "
              f"{result['epochs']} epochs on {result['dataset']}, {result['params']:,} parameters)")
        print(accuracy)
        if result["ground_truth_metric"] is None:
            print(f"  (NAS-Bench-201 has no {result['dataset']} numbers; its ground truth below is "
                  "for reference only)")
        print(_format_record(rec))
    print(f"run directory: {result['run_dir']}  (wall time {result['wall_time_s']:.1f} s)")
    return 0


def _cmd_reference(argv: Sequence[str]) -> int:
    from .evaluation import fmnist_reference

    p = _Parser(prog="python -m bayesnas_core.run reference",
                description="The Fashion-MNIST reference: train a seeded, stratified sample of NB201 "
                "cells (plus all-skip, the best CIFAR-10 cell and the cells exported searches "
                "picked) with a training recipe; Spearman with NB201's CIFAR-10 test accuracy.")
    _add_train_flags(p, skip=("arch", "seed"))
    p.add_argument("--sample-cells", type=int, default=30, help="cells in the stratified sample (default 30)")
    p.add_argument("--sample-seed", type=int, default=0, help="the seed of the sample (default 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of every cell")
    p.add_argument("--include", nargs="*", default=[], metavar="STUDY",
                   help="exported study folders whose final cells are trained too")
    p.add_argument("--include-seeds", type=int, nargs="+", default=None,
                   help="training seeds of the included cells (default: --seeds)")
    p.add_argument("--results", default="runs/fmnist-reference", help="folder for the outputs (md + json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    args = p.parse_args(argv)
    cfg = _train_config(args)
    cfg.arch = "0"  # the cells are checked one by one; this checks the recipe's other fields
    cfg.validate()
    _check_at_least(0, "--seeds", args.seeds + (args.include_seeds or []))
    return _run_study("reference", "reference.md", args, argv, fmnist_reference, cfg,
                      cells=args.sample_cells, sample_seed=args.sample_seed, seeds=args.seeds,
                      include=args.include, include_seeds=args.include_seeds,
                      log=lambda line: print(line, flush=True))


def _cmd_compare(argv: Sequence[str]) -> int:
    from .evaluation import compare_methods

    p = _Parser(prog="python -m bayesnas_core.run compare",
                description="Compare the methods of an exported study on the same seeds (mean ± std, "
                "paired differences against a baseline, sign test); writes comparison.md/json "
                "into the study folder.")
    p.add_argument("study", help="an exported study folder (with summary.json)")
    p.add_argument("--reference", help="a `reference` results folder: trained Fashion-MNIST accuracy")
    p.add_argument("--baseline", default="darts (order 1)", help="the method the others are paired with")
    args = p.parse_args(argv)
    compare_methods(args.study, reference=args.reference, baseline=args.baseline,
                    command=_command_line("compare", argv))
    print(Path(args.study, "comparison.md").read_text())
    return 0


REGIME_COLUMNS = ("alpha_travel_bound", "mu_range", "s_warmup", "ns_over_lambda",
                  "mu_spread_over_sigma", "draw_matches_argmax", "train_valid_gap")


def _cmd_regime(argv: Sequence[str]) -> int:
    from .regime import run_regime

    p = _Parser(prog="python -m bayesnas_core.run regime",
                description="The regime quantities (bayesnas_core/regime.py) of runs at their last "
                "epoch, recomputed from their run directories, side by side.")
    p.add_argument("runs", nargs="+", help="run directories")
    args = p.parse_args(argv)
    print("| run | epoch | " + " | ".join(REGIME_COLUMNS) + " |")
    print("|---|---|" + "---|" * len(REGIME_COLUMNS))
    for d in args.runs:
        last = run_regime(d)[-1]
        cells = ["-" if last[c] is None else f"{last[c]:.3g}" for c in REGIME_COLUMNS]
        print(f"| {Path(d).name} | {last['epoch']} | " + " | ".join(cells) + " |")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "search": _cmd_search,
    "lookup": _cmd_lookup,
    "export": _cmd_export,
    "ablation-mc": _cmd_ablation_mc,
    "ablation-tf": _cmd_ablation_tf,
    "proxies": _cmd_proxies,
    "regime": _cmd_regime,
    "train": _cmd_train,
    "reference": _cmd_reference,
    "compare": _cmd_compare,
    "sweep": _cmd_sweep,
}

#: one line per command for the top-level help
SUMMARIES = {
    "search": "(the default) one DARTS or BaLeNAS search, its selection and ground truth",
    "lookup": "the NAS-Bench-201 ground truth of cells (arch strings or indices)",
    "export": "copy finished runs (no checkpoints) into a results folder, merging its summary",
    "ablation-mc": "the seed's Table 5: BaLeNAS for each M and seed, with Random and DARTS",
    "ablation-tf": "the seed's Table 4: BaLeNAS-TF with each proxy and sample size K",
    "proxies": "rank correlation of SynFlow, SNIP and GraSP with NAS-Bench-201 accuracy",
    "regime": "the regime quantities of runs (how far alpha moved, N s / lambda, ...) side by side",
    "train": "train one NB201 cell's stand-alone network from scratch (recipes: cpu, nb201)",
    "reference": "the Fashion-MNIST reference: a stratified sample of cells trained, vs CIFAR-10",
    "compare": "the methods of an exported study on the same seeds, with paired differences",
    "sweep": "ablation-mc or ablation-tf with each search a Ray task (--backend ray), same tables",
}


def overview() -> str:
    """The top-level help: usage, the commands, and where to read more."""
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m bayesnas_core.run [COMMAND] [options]", "",
             "BaLeNAS and DARTS on NAS-Bench-201. With no COMMAND, runs `search` (the main job: "
             "BaLeNAS on the shipped Fashion-MNIST subset, on the CPU).", "", "commands:"]
    lines += [f"  {name:<{width}}  {SUMMARIES[name]}" for name in COMMANDS]
    lines += ["", "python -m bayesnas_core.run COMMAND --help lists a command's options; "
              "`search --help` the search options.", "More: README.md, and the lessons in lessons/."]
    return "\n".join(lines)


def _unknown_command(word: str) -> UserError:
    import difflib

    close = difflib.get_close_matches(word, list(COMMANDS), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return UserError(f"unknown command {word!r}; {hint}commands: {', '.join(COMMANDS)} "
                     "(see: python -m bayesnas_core.run --help)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in ("-h", "--help"):
            print(overview())
            return 0
        if argv and argv[0] in COMMANDS:
            command, rest = argv[0], argv[1:]
        elif argv and not argv[0].startswith("-"):
            raise _unknown_command(argv[0])  # search takes no positional argument
        else:
            command, rest = "search", argv
        return COMMANDS[command](rest)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before any run directory was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `... lookup 0 | head -1`: the reader left, nothing to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
