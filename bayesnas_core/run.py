"""Command line: ``python -m bayesnas_core.run [COMMAND] [options]``.

Commands:

- ``search`` (the default): one search, selection and ground-truth lookup.

Every user mistake ends with one line on stderr that names the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

import torch

from .config import METHODS, PRESETS, SELECTORS, RunConfig, get_preset
from .errors import UserError

__all__ = ["main", "build_config"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see: python -m bayesnas_core.run {self.prog.split()[-1]} --help)"
                        if " " in self.prog else f"{message} (see --help)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", help=f"one of: {', '.join(PRESETS)} (default: default)")
    p.add_argument("--seed", type=int, help="the one seed of the run")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the preset's)")
    p.add_argument("--dataset", help="fashion-mnist-subset (shipped), fashion-mnist, cifar10, cifar100, imagenet16-120")
    p.add_argument("--data-root", help="folder holding the dataset (default: the shipped subset)")
    p.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    p.add_argument("--nb201-file", help="the official NAS-Bench-201 file (fills every valid/test metric)")
    p.add_argument("--out", help="where run directories go (default: runs/)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int, help="resize images to this size")
    p.add_argument("--limit", type=int, help="use only the first LIMIT images of each search split")
    p.add_argument("--channels", type=int, dest="C", help="supernet channels C")
    p.add_argument("--cells", type=int, dest="N", help="cells per stage N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help=f"{' | '.join(METHODS)} (default: balenas)")
    p.add_argument("--order", type=int, help="1 (first order) or 2 (unrolled)")
    p.add_argument("--mc-samples", type=int, help="M, Monte-Carlo samples per BaLeNAS step")
    p.add_argument("--a-lr", type=float, help="architecture learning rate")
    p.add_argument("--w-lr", type=float, help="weight learning rate (cosine to w_lr_min)")
    p.add_argument("--sequential-mc", action="store_true",
                   help="one pass per Monte-Carlo sample instead of one batched pass")
    p.add_argument("--select", help=f"{' | '.join(SELECTORS)} (default: argmax)")
    p.add_argument("--select-samples", type=int, help="K, cells drawn for BaLeNAS-TF")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--dtype", help="float32 (default) or float64")


def build_config(args: argparse.Namespace) -> RunConfig:
    """Preset, then the flags that were given."""
    cfg = get_preset(args.preset)
    top = {"seed": "seed", "device": "device", "nb201_file": "nb201_file", "out": "out",
           "dtype": "dtype"}
    for arg, attr in top.items():
        if getattr(args, arg, None) is not None:
            setattr(cfg, attr, getattr(args, arg))
    sections: dict[str, tuple[Any, dict[str, str]]] = {
        "data": (cfg.data, {"dataset": "dataset", "data_root": "root", "batch_size": "batch_size",
                            "image_size": "image_size", "limit": "limit"}),
        "space": (cfg.space, {"C": "C", "N": "N"}),
        "search": (cfg.search, {"method": "method", "order": "order", "mc_samples": "mc_samples",
                                "epochs": "epochs", "a_lr": "a_lr", "w_lr": "w_lr"}),
        "select": (cfg.select, {"select": "method", "select_samples": "samples"}),
    }
    for obj, mapping in sections.values():
        for arg, attr in mapping.items():
            if getattr(args, arg, None) is not None:
                setattr(obj, attr, getattr(args, arg))
    if getattr(args, "download", False):
        cfg.data.download = True
    if getattr(args, "sequential_mc", False):
        cfg.search.batched_mc = False
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {cfg.device!r} asked for, but CUDA is not available here; "
                        "pass --device cpu")
    return cfg.validate()


def _print_result(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    sel = result["selection"]
    out("")
    out(f"selected cell ({sel['method']}): {result['arch']}")
    if sel["method"] != "argmax":
        out(f"argmax(mu) cell:        {sel['argmax']['arch']}")
    gt = result["ground_truth"]
    out(f"NAS-Bench-201 ground truth, {gt['source']}:")
    for name, value in gt["metrics"].items():
        out(f"  {name:<17} {'missing' if value is None else f'{value:.2f} %'}")
    if gt["hint"]:
        out(f"  ({gt['hint']})")
    out(f"run directory: {result['run_dir']}  (wall time {result['wall_time_s']:.1f} s)")


def _cmd_search(argv: Sequence[str]) -> int:
    from .experiments import run_search

    p = _Parser(prog="python -m bayesnas_core.run search",
                description="Run one DARTS or BaLeNAS search on NAS-Bench-201.")
    _add_common(p)
    _add_search(p)
    args = p.parse_args(argv)
    if args.resume:
        result = run_search(resume=args.resume, progress=not args.no_progress)
    else:
        result = run_search(build_config(args), progress=not args.no_progress)
    _print_result(result)
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"search": _cmd_search}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        command, rest = argv[0], argv[1:]
    else:
        command, rest = "search", argv
    try:
        return COMMANDS[command](rest)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch is checkpointed: continue with --resume RUN_DIR",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
