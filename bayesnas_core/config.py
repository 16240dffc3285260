"""Typed run configuration and the named presets.

A run is described by one :class:`RunConfig`. Presets are a name -> config table;
command-line flags override single fields. ``asdict(cfg)`` is stored in every run
directory and checkpoint, and :func:`config_from_dict` reads it back.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from types import UnionType
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

from .errors import UserError

__all__ = [
    "SpaceConfig",
    "DataConfig",
    "SearchConfig",
    "SelectConfig",
    "RunConfig",
    "PRESETS",
    "get_preset",
    "config_from_dict",
    "SELECTORS",
    "check_device",
    "FLAGS",
    "config_fields",
    "get_field",
    "refuse_differences",
    "set_field",
    "SPEED_ONLY_FIELDS",
    "RESUMABLE_CHANGES",
    "config_differences",
]

SELECTORS = ("argmax", "synflow", "snip", "grasp")


@dataclass
class SpaceConfig:
    """The search space and the size of its supernet."""

    name: str = "nb201"
    C: int = 16  # channels of the first stage
    N: int = 5  # cells per stage


@dataclass
class DataConfig:
    """Which data the search uses (see :mod:`bayesnas_core.data`)."""

    dataset: str = "cifar10"
    root: str | None = None  # None: the shipped subset's folder, or ./data
    image_size: int | None = None  # None: native size
    limit: int | None = None  # keep only the first `limit` images of each search split
    batch_size: int = 64
    augment: bool = True  # random crop (pad 4) + horizontal flip on the train batches
    download: bool = False


@dataclass
class SearchConfig:
    """The bilevel search (METHOD.md sections 1, 2 and 4)."""

    method: str = "balenas"  # darts | balenas
    order: int = 1  # 1: first order; 2: unrolled with the finite-difference Hessian term
    epochs: int = 50
    # network weights: SGD, nesterov, cosine schedule
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 5e-4
    grad_clip: float = 5.0
    # architecture: Adam (DARTS) or Vadam (BaLeNAS)
    a_lr: float = 3e-4
    a_betas: tuple[float, float] = (0.5, 0.999)
    a_weight_decay: float = 1e-3  # DARTS only; BaLeNAS's regulariser is the prior
    mc_samples: int = 3  # M
    prior_precision: float = 1.0  # lambda
    prec_init: float = 1.0
    num_data: int | None = None  # N for Vadam; None: size of the valid split
    # the fast path (same function, fewer kernels); both False is the plain eager baseline
    batched_mc: bool = True  # evaluate the M samples in one batched pass (first order)
    fused_cell: bool = True  # edges leaving a node share one ReLU, convolution and pooling
    cuda_graph: bool = True  # on CUDA, replay the whole fast step as one CUDA graph
    compile_cells: bool = False  # fast path: torch.compile the fused cells (opt-in)
    cell_impl: str = "matmul"  # fast path: how fused cells compute (matmul | conv | elementwise)
    unrolled_eps: float = 0.01  # finite-difference radius: eps / ||v||
    curvature_iters: int = 8  # power iterations for the Hessian eigenvalue (0: off)
    curvature_every: int = 1  # measure it every this many epochs (and at the last epoch)


@dataclass
class SelectConfig:
    """How the final cell is chosen from the learned distribution."""

    method: str = "argmax"  # argmax | synflow | snip | grasp
    samples: int = 100  # K, architectures drawn for BaLeNAS-TF
    C: int = 16  # stand-alone network scored by the proxy
    N: int = 5


@dataclass
class RunConfig:
    """Everything that defines one run; one seed controls it."""

    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    preset: str = "default"
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    nb201_file: str | None = None
    nb101_file: str | None = None  # nasbench_only108.tfrecord: ground truth of the nb1shot1-3 space
    out: str = "runs"
    threads: int | None = None  # CPU threads; None: the policy of bayesnas_core.threads

    def validate(self) -> "RunConfig":
        """Raise :class:`UserError` naming the fix for an invalid combination."""
        s = self.search
        from .distributions import method_names

        if s.method not in method_names():
            raise UserError(f"unknown method {s.method!r}; use --method {' or '.join(method_names())}")
        if s.order not in (1, 2):
            raise UserError(f"--order must be 1 or 2, got {s.order}")
        if s.mc_samples < 1:
            raise UserError(f"--mc-samples must be at least 1, got {s.mc_samples}")
        if s.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {s.epochs}")
        if s.curvature_every < 1 or s.curvature_iters < 0:
            raise UserError("curvature_every must be >= 1 and curvature_iters >= 0 "
                            f"(got {s.curvature_every}, {s.curvature_iters})")
        if self.data.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.data.batch_size}")
        if self.select.method not in SELECTORS:
            raise UserError(
                f"unknown selection {self.select.method!r}; use --select one of {', '.join(SELECTORS)}"
            )
        if self.select.samples < 1:
            raise UserError(f"--select-samples must be at least 1, got {self.select.samples}")
        from .spaces.nb201 import CELL_IMPLS

        if s.cell_impl not in CELL_IMPLS:
            raise UserError(f"unknown cell implementation {s.cell_impl!r}; use --cell-impl "
                            f"{' or '.join(CELL_IMPLS)}")
        from .spaces import space_names

        if self.space.name not in space_names():
            raise UserError(f"unknown search space {self.space.name!r}; use --space one of "
                            f"{', '.join(space_names())}")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be an integer from 0 to {MAX_SEED}, got {self.seed}")
        for name, value in _numbers(self):
            if not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value}")
        for name, value in (("--a-lr", s.a_lr), ("--w-lr", s.w_lr), ("grad_clip", s.grad_clip),
                            ("unrolled_eps", s.unrolled_eps)):
            if not value > 0:
                raise UserError(f"{name} must be positive, got {value}")
        for name, value in (("w_momentum", s.w_momentum), ("a_betas[0]", s.a_betas[0]),
                            ("a_betas[1]", s.a_betas[1])):
            if not 0 <= value < 1:
                raise UserError(f"{name} must be in [0, 1), got {value}")
        if s.w_weight_decay < 0 or s.a_weight_decay < 0:
            raise UserError("weight decays must be >= 0, got "
                            f"w_weight_decay {s.w_weight_decay}, a_weight_decay {s.a_weight_decay}")
        if s.num_data is not None and s.num_data < 1:
            raise UserError(f"num_data must be at least 1 (or null: the valid split's size), got {s.num_data}")
        if self.data.limit is not None and self.data.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.data.limit}")
        if s.w_lr_min < 0 or s.prior_precision <= 0 or s.prec_init < s.prior_precision:
            raise UserError("need w_lr_min >= 0, prior_precision > 0 and prec_init >= prior_precision "
                            f"(got {s.w_lr_min}, {s.prior_precision}, {s.prec_init})")
        for name, value in (("--channels", self.space.C), ("--cells", self.space.N),
                            ("select C", self.select.C), ("select N", self.select.N)):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        size = self.data.image_size
        if size is not None and (size < 4 or size % 4):
            raise UserError(f"--image-size must be a multiple of 4 (two stride-2 stages), got {size}")
        check_device(self.device)
        return self


#: the largest seed (derived seeds add small offsets and must stay within 64 bits)
MAX_SEED = 2**31 - 1


def _numbers(cfg: RunConfig) -> list[tuple[str, float]]:
    """Every float of ``cfg`` as ``(name, value)``; a field with a flag is named by it."""
    flags = {"search.a_lr": "--a-lr", "search.w_lr": "--w-lr"}
    floats = [(flags.get(k, k), v) for k, v in _flatten(asdict(cfg)).items() if isinstance(v, float)]
    return floats + [(f"search.a_betas[{i}]", float(b)) for i, b in enumerate(cfg.search.a_betas)]


def check_device(device: str) -> None:
    """Raise a one-line :class:`UserError` for a device string this machine cannot use."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but CUDA is not available here; pass --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")


#: The command-line flag and help of every configuration field, by dotted name: the CLI
#: generates its options from the dataclasses and this table (``tests/test_cli.py`` checks
#: that every scalar field has one, so no setting is unreachable).
FLAGS: dict[str, tuple[str, str]] = {
    "seed": ("--seed", "the one seed of the run"),
    "device": ("--device", "cpu, cuda, cuda:1, ..."),
    "dtype": ("--dtype", "float32 or float64"),
    "nb201_file": ("--nb201-file", "the official NAS-Bench-201 file (fills every valid/test metric)"),
    "nb101_file": ("--nb101-file", "NAS-Bench-101's nasbench_only108.tfrecord (ground truth of the "
                   "nb1shot1-3 space)"),
    "out": ("--out", "where run directories go"),
    "threads": ("--threads", "CPU threads (default: the cores other processes leave free; "
                "recorded in config.json)"),
    "space.name": ("--space", "the search space (nb201, darts, nb1shot1-3)"),
    "space.C": ("--channels", "supernet channels C"),
    "space.N": ("--cells", "cells: per stage (nb201), in all (darts, nb1shot1-3)"),
    "data.dataset": ("--dataset", "fashion-mnist-subset (shipped), fashion-mnist, cifar10, "
                     "cifar100, imagenet16-120"),
    "data.root": ("--data-root", "folder holding the dataset (default: the shipped subset's)"),
    "data.image_size": ("--image-size", "resize images to this size"),
    "data.limit": ("--limit", "use only the first LIMIT images of each search split"),
    "data.batch_size": ("--batch-size", "batch size of the weight and architecture steps"),
    "data.augment": ("--augment", "random crop and flip on the train batches"),
    "data.download": ("--download", "let torchvision download a missing dataset"),
    "search.method": ("--method", "darts or balenas"),
    "search.order": ("--order", "1 (first order) or 2 (unrolled)"),
    "search.epochs": ("--epochs", "search epochs"),
    "search.w_lr": ("--w-lr", "weight learning rate (cosine to --w-lr-min)"),
    "search.w_lr_min": ("--w-lr-min", "final weight learning rate"),
    "search.w_momentum": ("--w-momentum", "SGD (nesterov) momentum of the weights"),
    "search.w_weight_decay": ("--w-weight-decay", "weight decay of the weights"),
    "search.grad_clip": ("--grad-clip", "gradient-norm clip of the weight step"),
    "search.a_lr": ("--a-lr", "architecture learning rate (Adam or Vadam)"),
    "search.a_betas": ("--a-betas", "Adam/Vadam betas (two numbers)"),
    "search.a_weight_decay": ("--a-weight-decay", "Adam weight decay of alpha (DARTS only)"),
    "search.mc_samples": ("--mc-samples", "M, Monte-Carlo samples per BaLeNAS step"),
    "search.prior_precision": ("--prior-precision", "lambda, precision of BaLeNAS's Gaussian prior"),
    "search.prec_init": ("--prec-init", "initial posterior precision (>= lambda)"),
    "search.num_data": ("--num-data", "N in Vadam's likelihood (default: the valid split's size)"),
    "search.batched_mc": ("--batched-mc", "fast path: the M samples in one batched pass"),
    "search.fused_cell": ("--fused-cell", "fast path: edges leaving a node share their kernels"),
    "search.cuda_graph": ("--cuda-graph", "fast path on CUDA: replay each step as a CUDA graph"),
    "search.compile_cells": ("--compile-cells", "fast path: torch.compile the fused cells "
                             "(pair with --cell-impl elementwise)"),
    "search.cell_impl": ("--cell-impl", "fast path: matmul, conv or elementwise (the same "
                         "function computed with other kernels)"),
    "search.unrolled_eps": ("--unrolled-eps", "second order: finite-difference radius eps/||v||"),
    "search.curvature_iters": ("--curvature-iters", "power iterations of the Hessian eigenvalue "
                               "diagnostic (0: off)"),
    "search.curvature_every": ("--curvature-every", "measure the Hessian eigenvalue every K epochs"),
    "select.method": ("--select", "argmax, synflow, snip or grasp"),
    "select.samples": ("--select-samples", "K, cells drawn for BaLeNAS-TF"),
    "select.C": ("--select-channels", "C of the stand-alone networks the proxy scores"),
    "select.N": ("--select-cells", "N of the stand-alone networks the proxy scores"),
}


def config_fields() -> dict[str, Any]:
    """Every scalar field of :class:`RunConfig` by dotted name -> its annotated type."""
    out: dict[str, Any] = {}
    for f in fields(RunConfig):
        hint = get_type_hints(RunConfig)[f.name]
        if is_dataclass(hint):
            out.update({f"{f.name}.{k}": v for k, v in get_type_hints(hint).items()})
        elif f.name != "preset":
            out[f.name] = hint
    return out


def get_field(cfg: Any, dotted: str) -> Any:
    """One field by dotted name (``"search.a_lr"``)."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def refuse_differences(stored: Any, now: Any, diffs: list[str], where: Any) -> None:
    """Raise the one-line :class:`UserError` of a resume whose configuration ``now``
    differs from the checkpoint's ``stored`` in the dotted fields ``diffs`` (if any)."""
    if not diffs:
        return
    shown = ", ".join(f"{k} ({get_field(stored, k)!r} in the checkpoint, {get_field(now, k)!r} now)"
                      for k in diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    raise UserError(f"{where} cannot resume with another configuration: {shown}; restore "
                    "config.json or start a new run without --resume")


def set_field(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Set one field by dotted name (``"search.a_lr"``)."""
    obj: Any = cfg
    *parents, name = dotted.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, name, tuple(value) if isinstance(value, list) else value)


def _matched(cfg: RunConfig) -> RunConfig:
    """Set arch lr, beta2 and Vadam's N by the matching rule of
    :func:`bayesnas_core.regime.matched_arch_settings` for ``cfg``'s number of arch steps."""
    from .regime import matched_arch_settings, search_split_size

    steps = cfg.search.epochs * (search_split_size(cfg) // cfg.data.batch_size)
    rule = matched_arch_settings(steps)
    cfg.search.a_lr = rule["a_lr"]
    cfg.search.a_betas = (cfg.search.a_betas[0], rule["beta2"])
    cfg.search.num_data = rule["num_data"]
    return cfg


def _default() -> RunConfig:
    """The embedded offline default: BaLeNAS (1st order, M=3) on the shipped
    Fashion-MNIST subset (2,000 images per split, 16x16, augmented), a scaled-down NB201
    supernet, about 2.5 min on a 2-core CPU. 20 epochs make 620 architecture steps; arch
    lr, beta2 and N follow the matching rule (:func:`_matched`), so alpha can travel as far,
    s averages over as many windows and the likelihood weighs as much as in the paper."""
    return _matched(RunConfig(
        preset="default",
        space=SpaceConfig(C=8, N=1),
        data=DataConfig(dataset="fashion-mnist-subset", image_size=16, batch_size=64, augment=True),
        search=SearchConfig(epochs=20, curvature_iters=4),
        select=SelectConfig(samples=20, C=8, N=1),
    ))


def _lesson() -> RunConfig:
    """Half the default's epochs (10: 310 architecture steps), the same data and rule, for
    the notebooks and the CPU ablations: in lesson 1's execution the DARTS search took 56 s
    on a 2-core CPU with another single-threaded job running (lesson 2's BaLeNAS one
    prints its own time)."""
    cfg = _default()
    cfg.preset = "lesson"
    cfg.search.epochs = 10
    cfg.search.curvature_iters = 3
    cfg.select.samples = 10
    return _matched(cfg)


def _nb201_paper() -> RunConfig:
    """The paper's NB201 search (METHOD.md section 4): CIFAR-10 25k/25k, C=16, N=5,
    50 epochs, batch 64, SGD 0.025 cosine to 0.001, a GPU."""
    return RunConfig(
        preset="nb201-paper",
        device="cuda",
        space=SpaceConfig(C=16, N=5),
        data=DataConfig(dataset="cifar10", batch_size=64, augment=True),
        search=SearchConfig(epochs=50, num_data=25_000, curvature_every=5),
        select=SelectConfig(samples=100, C=16, N=5),
    )


def _fmnist_paper() -> RunConfig:
    """Paper settings on the full Fashion-MNIST training set (60k, split in half)."""
    cfg = _nb201_paper()
    cfg.preset = "fmnist-paper"
    cfg.data.dataset = "fashion-mnist"
    cfg.search.num_data = 30_000
    return cfg


def _darts_cpu() -> RunConfig:
    """The DARTS CNN space at CPU scale: a 5-cell supernet (C=4, reductions at cells 1 and
    3) on the first 256 images of each split of the shipped Fashion-MNIST subset, 16x16,
    batch 32, 10 epochs (80 architecture steps); arch lr, beta2 and N by the matching rule.
    DARTS's own search uses 8 cells, C=16, CIFAR-10 25k/25k, 50 epochs (METHOD.md)."""
    return _matched(RunConfig(
        preset="darts-cpu",
        space=SpaceConfig(name="darts", C=4, N=5),
        data=DataConfig(dataset="fashion-mnist-subset", image_size=16, batch_size=32, augment=True,
                        limit=256),
        search=SearchConfig(epochs=10, curvature_iters=2),
        select=SelectConfig(samples=10, C=4, N=5),
    ))


def _darts_paper() -> RunConfig:
    """DARTS's CIFAR-10 search (Liu et al. 2019; METHOD.md section 5): 8 cells, C=16,
    25k/25k, batch 64, 50 epochs, arch lr 3e-4, a GPU."""
    cfg = _nb201_paper()
    cfg.preset = "darts-paper"
    cfg.space = SpaceConfig(name="darts", C=16, N=8)
    cfg.search.fused_cell = False
    return cfg


def _nb1shot1_cpu() -> RunConfig:
    """NAS-Bench-1shot1 search space 3 at CPU scale: a 3-cell supernet (C=4, one cell per
    stack) on the first 256 images of each split of the shipped Fashion-MNIST subset,
    16x16, batch 32, 10 epochs (80 architecture steps); arch lr, beta2 and N by the
    matching rule. The paper's setting is ``nb1shot1-paper``."""
    return _matched(RunConfig(
        preset="nb1shot1-cpu",
        space=SpaceConfig(name="nb1shot1-3", C=4, N=3),
        data=DataConfig(dataset="fashion-mnist-subset", image_size=16, batch_size=32, augment=True,
                        limit=256),
        search=SearchConfig(epochs=10, curvature_iters=2, fused_cell=False),
        select=SelectConfig(samples=10, C=4, N=3),
    ))


def _nb1shot1_paper() -> RunConfig:
    """NAS-Bench-1shot1's search on CIFAR-10 (Zela et al. 2020): 9 cells (3 stacks of 3),
    C=16, 25k/25k, batch 64, 50 epochs, a GPU; pass --nb101-file for the ground truth."""
    cfg = _nb201_paper()
    cfg.preset = "nb1shot1-paper"
    cfg.space = SpaceConfig(name="nb1shot1-3", C=16, N=9)
    cfg.search.fused_cell = False
    return cfg


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "default": _default,
    "lesson": _lesson,
    "nb201-paper": _nb201_paper,
    "fmnist-paper": _fmnist_paper,
    "darts-cpu": _darts_cpu,
    "darts-paper": _darts_paper,
    "nb1shot1-cpu": _nb1shot1_cpu,
    "nb1shot1-paper": _nb1shot1_paper,
}


def get_preset(name: str) -> RunConfig:
    """A fresh copy of the named preset; an unknown name raises :class:`UserError`."""
    return _from_table(PRESETS, name, "preset")


def _from_table(table: dict[str, Callable[[], Any]], name: str, what: str) -> Any:
    """A fresh config from a name -> factory table; an unknown name is a one-line
    :class:`UserError` naming ``--{what}`` and the choices."""
    try:
        return table[name]()
    except KeyError:
        raise UserError(f"unknown {what} {name!r}; use --{what} one of {', '.join(table)}") from None


def config_from_dict(d: Any, *, where: str = "the configuration") -> RunConfig:
    """Rebuild a :class:`RunConfig` from ``asdict(cfg)`` (e.g. a run's config.json).

    Unknown keys are ignored and missing ones take their defaults (configs written by
    older versions still load); a value of the wrong type raises a one-line
    :class:`UserError` that names ``where`` and the field.
    """
    return _from_dict(RunConfig, copy.deepcopy(d), where, "")


def _from_dict(cls: type, d: Any, where: str, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'the top level'} must be a JSON object, "
                        f"got {_json_type(d)}; restore the file or start a new run")
    hints = get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name in d:
            kwargs[f.name] = _typed(d[f.name], hints[f.name], where, prefix + f.name)
    return cls(**kwargs)


def _typed(value: Any, hint: Any, where: str, name: str) -> Any:
    """``value`` as the annotated type ``hint``, or a one-line UserError."""
    if is_dataclass(hint):
        return _from_dict(hint, value, where, name + ".")
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for t in options:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
        if get_origin(t) is tuple and isinstance(value, (list, tuple)) and len(value) == len(get_args(t)):
            return tuple(_typed(v, a, where, name) for v, a in zip(value, get_args(t)))
    wanted = " or ".join(_type_name(t) for t in options)
    raise UserError(f"{where}: {name} must be {wanted}, got {value!r}; restore the file or "
                    "start a new run")


def _type_name(t: Any) -> str:
    if t is type(None):
        return "null"
    if get_origin(t) is tuple:
        return f"a list of {len(get_args(t))} numbers"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, str(t))


def _json_type(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "null", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


#: Fields that may differ between a run's stored configuration and the one it resumes
#: with: where it runs and where runs go, not what it computes
RESUMABLE_CHANGES = ("device", "out", "data.download")


def config_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """The dotted names of the fields in which ``a`` and ``b`` differ, leaving out
    :data:`RESUMABLE_CHANGES` and the speed-only search fields."""
    return _differences(a, b, {*RESUMABLE_CHANGES, *(f"search.{k}" for k in SPEED_ONLY_FIELDS)})


def _differences(a: Any, b: Any, skip: set[str] | tuple[str, ...]) -> list[str]:
    """The dotted names of the fields in which two config dataclasses differ, but ``skip``."""
    fa, fb = _flatten(asdict(a)), _flatten(asdict(b))
    return sorted(k for k in fa.keys() | fb.keys() if k not in skip and fa.get(k) != fb.get(k))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


#: SearchConfig fields that choose how a step is computed, not what it computes: a run may
#: be resumed with other values
SPEED_ONLY_FIELDS = ("batched_mc", "fused_cell", "cuda_graph", "compile_cells", "cell_impl")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """``asdict`` of a config (JSON-ready)."""
    assert is_dataclass(cfg)
    return asdict(cfg)



# ---------------------------------------------------------------------------------
# training one cell from scratch (bayesnas_core.train, ``python -m bayesnas_core.run train``)
# ---------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything that defines training one cell's stand-alone network from scratch.

    ``recipe`` names the :data:`TRAIN_PRESETS` entry it started from and ``space`` the
    search space of the cell (``nb201`` or ``darts``; the recipe sets it); flags override
    single fields. The learning rate is set once per epoch: a cosine from ``lr`` to
    ``lr_min`` over the epochs (``lr_min = lr``: a constant rate) or, with
    ``lr_schedule="exponential"``, ``lr * lr_gamma ** epoch``. The DARTS-only fields
    (``auxiliary_weight``, ``drop_path_prob``, ``imagenet_network``) and ``cutout`` /
    ``grad_clip`` default to off, so an NB201 recipe trains exactly as before they existed.
    Under torchrun ``batch_size`` is the global batch, split evenly across the ranks, and
    ``lr`` applies to it unchanged; the world size is not a field (a run resumes with any
    world size that divides its batch).
    """

    arch: str = ""  # the cell: NB201 arch string or index; DARTS genotype or shipped name
    recipe: str = "cpu"
    space: str = "nb201"  # the cell's search space: nb201 or darts (set by the recipe)
    dataset: str = "fashion-mnist-subset"
    root: str | None = None  # None: the shipped subset's folder
    image_size: int | None = None  # None: native size
    limit: int | None = None  # keep the first `limit` images of each search half and of test
    download: bool = False
    C: int = 16
    N: int = 5
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.1
    lr_min: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True  # random crop (pad 4, black) + horizontal flip
    cutout: int = 0  # side of the zeroed square of Cutout, in pixels (0: none)
    grad_clip: float = 0.0  # clip the gradient's global norm to this (0: no clipping)
    lr_schedule: str = "cosine"  # cosine (to lr_min) or exponential (lr * lr_gamma ** epoch)
    lr_gamma: float = 0.97  # the per-epoch factor of the exponential schedule
    auxiliary_weight: float = 0.0  # darts: loss = CE(logits) + w * CE(auxiliary logits); 0: no head
    drop_path_prob: float = 0.0  # darts: drop-path probability reached at the last epoch
    imagenet_network: bool = False  # darts: NetworkImageNet (stride-8 stem) instead of NetworkCIFAR
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    nb201_file: str | None = None
    out: str = "runs"
    threads: int | None = None  # CPU threads; None: the policy of bayesnas_core.threads

    def validate(self) -> "TrainConfig":
        """Raise a one-line :class:`UserError` naming the fix for an invalid setting."""
        from .data import DATASETS

        if self.recipe not in TRAIN_PRESETS:
            raise UserError(f"unknown recipe {self.recipe!r}; use --recipe one of "
                            f"{', '.join(TRAIN_PRESETS)}")
        if self.space not in TRAIN_SPACES:
            raise UserError(f"the trainer trains cells of the {' and '.join(TRAIN_SPACES)} spaces, not "
                            f"{self.space!r}; pick a --recipe of one of them")
        _check_train_arch(self.arch, self.space, self.recipe)
        if self.dataset == "imagenet":
            raise UserError("ImageNet (ILSVRC-2012) is not loadable here: bayesnas_core.data has no "
                            "loader for it; pass --dataset one of " + ", ".join(DATASETS)
                            + " (the ImageNet network's auxiliary head needs --image-size 224, "
                            "or drop it with --auxiliary-weight 0)")
        if self.dataset not in DATASETS:
            raise UserError(f"unknown dataset {self.dataset!r}; use --dataset one of {', '.join(DATASETS)}")
        for name, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size),
                            ("--channels", self.C), ("--cells", self.N)):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")
        size = self.image_size
        if size is not None and (size < 4 or size % 4):
            raise UserError(f"--image-size must be a multiple of 4 (two stride-2 stages), got {size}")
        for name, value in (("--lr", self.lr), ("--lr-min", self.lr_min), ("--momentum", self.momentum),
                            ("--weight-decay", self.weight_decay),
                            ("--label-smoothing", self.label_smoothing), ("--grad-clip", self.grad_clip),
                            ("--lr-gamma", self.lr_gamma), ("--auxiliary-weight", self.auxiliary_weight),
                            ("--drop-path-prob", self.drop_path_prob)):
            if not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value}")
        self._validate_darts_fields()
        if not self.lr > 0 or not 0 <= self.lr_min <= self.lr:
            raise UserError(f"need --lr > 0 and 0 <= --lr-min <= --lr, got {self.lr} and {self.lr_min}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise UserError("nesterov needs a momentum: pass --momentum above 0 or --no-nesterov")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be an integer from 0 to {MAX_SEED}, got {self.seed}")
        check_device(self.device)
        return self

    def _validate_darts_fields(self) -> None:
        """The schedule, regularisation and DARTS-network fields (their values are finite)."""
        if self.lr_schedule not in ("cosine", "exponential"):
            raise UserError(f"--lr-schedule must be cosine or exponential, got {self.lr_schedule!r}")
        if not 0 < self.lr_gamma <= 1:
            raise UserError(f"--lr-gamma must be in (0, 1], got {self.lr_gamma}")
        if self.cutout < 0:
            raise UserError(f"--cutout must be >= 0 pixels (0: no cutout), got {self.cutout}")
        if self.grad_clip < 0:
            raise UserError(f"--grad-clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        if self.auxiliary_weight < 0:
            raise UserError(f"--auxiliary-weight must be >= 0 (0: no auxiliary head), got "
                            f"{self.auxiliary_weight}")
        if not 0 <= self.drop_path_prob < 1:
            raise UserError(f"--drop-path-prob must be in [0, 1), got {self.drop_path_prob}")
        if self.space != "darts":
            for flag, on in (("--auxiliary-weight", self.auxiliary_weight > 0),
                             ("--drop-path-prob", self.drop_path_prob > 0),
                             ("--imagenet-network", self.imagenet_network)):
                if on:
                    raise UserError(f"{flag} is a DARTS network setting, but recipe {self.recipe} "
                                    f"trains {self.space} cells; drop {flag} or use a darts recipe "
                                    f"({', '.join(_train_recipes('darts'))})")
        elif self.C % 2:
            raise UserError(f"--channels must be even for a DARTS network (its FactorizedReduce "
                            f"halves them), got {self.C}")


#: The spaces whose cells :mod:`bayesnas_core.train` trains (each has a recipe)
TRAIN_SPACES = ("nb201", "darts")


def _train_recipes(space: str) -> list[str]:
    """The names of the recipes that train cells of ``space``."""
    return [name for name, make in TRAIN_PRESETS.items() if make().space == space]


def _check_train_arch(arch: str, space: str, recipe: str) -> None:
    """Raise a one-line :class:`UserError` unless ``arch`` names a cell of ``space``: an
    NB201 arch string or index, or a DARTS genotype (``Genotype(...)`` text or a shipped
    name), checked by the space's own parser (text is parsed, never evaluated). A cell of
    the other space names the recipes that train it."""
    from .benchmarks.nb201 import NUM_CELLS
    from .spaces import get_space
    from .spaces.darts import GENOTYPES

    text = arch.strip()
    nb201_index = text.isascii() and text.isdecimal()
    if space == "nb201":
        if not text:
            raise UserError("pass --arch ARCH: an NB201 arch string |op~0|+|op~0|op~1|+|...| "
                            f"or an NB201 index 0..{NUM_CELLS - 1} (a DARTS genotype needs "
                            f"--recipe {' / '.join(_train_recipes('darts'))})")
        if nb201_index:
            if not int(text) < NUM_CELLS:
                raise UserError(f"NB201 index {text} is out of range; use 0..{NUM_CELLS - 1}")
            return
        try:
            get_space("nb201").parse(text)
        except UserError:
            if _parses(text, "darts"):
                raise UserError(f"{_shown(text)} is a DARTS genotype, but recipe {recipe} trains "
                                f"NB201 cells; add --recipe one of {', '.join(_train_recipes('darts'))}"
                                ) from None
            raise
        return
    if not text:
        raise UserError(f"pass --genotype GENOTYPE: a shipped name ({', '.join(GENOTYPES)}) or "
                        "a DARTS Genotype(normal=[...], normal_concat=[...], reduce=[...], "
                        "reduce_concat=[...]) string")
    try:
        get_space(space).parse(text)
    except UserError:
        if nb201_index or _parses(text, "nb201"):
            what = "an NB201 index" if nb201_index else "an NB201 arch string"
            raise UserError(f"{_shown(text)} is {what}, but recipe {recipe} trains {space} "
                            f"genotypes; pass --genotype one of {', '.join(GENOTYPES)} or a "
                            f"Genotype(...) string, or use --recipe one of "
                            f"{', '.join(_train_recipes('nb201'))} for an NB201 cell") from None
        raise


def _parses(text: str, space: str) -> bool:
    """Whether ``text`` is a valid cell of ``space``."""
    from .spaces import get_space

    try:
        get_space(space).parse(text)
    except UserError:
        return False
    return True


def _shown(text: str) -> str:
    """``text`` quoted for an error line, cut to 60 characters."""
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")


#: The command-line flag and help of every :class:`TrainConfig` field (``train`` generates
#: its options from the dataclass and this table) but ``recipe`` and ``space``, which
#: ``--recipe`` sets; ``--genotype`` is another name of ``--arch``.
TRAIN_FLAGS: dict[str, tuple[str, str]] = {
    "arch": ("--arch", "the cell: an NB201 arch string |op~0|+|op~0|op~1|+|...| or an NB201 index; "
             "with a darts recipe (as --genotype), a DARTS Genotype(...) string or a shipped name "
             "(darts-v1, darts-v2, pc-darts)"),
    "dataset": ("--dataset", "fashion-mnist-subset (shipped), fashion-mnist, cifar10, cifar100, "
                "imagenet16-120"),
    "root": ("--data-root", "folder holding the dataset (default: the shipped subset's)"),
    "image_size": ("--image-size", "resize images to this size"),
    "limit": ("--limit", "use only the first LIMIT images of each search half and of the test split"),
    "download": ("--download", "let torchvision download a missing dataset"),
    "C": ("--channels", "channels C of the first stage (DARTS: even)"),
    "N": ("--cells", "NB201: cells per stage N; DARTS: all N cells (reductions at N/3 and 2N/3)"),
    "epochs": ("--epochs", "training epochs"),
    "batch_size": ("--batch-size", "batch size; under torchrun the global batch, split evenly across "
                   "the ranks (--lr applies to it unchanged)"),
    "lr": ("--lr", "initial learning rate (set per epoch by --lr-schedule)"),
    "lr_min": ("--lr-min", "final learning rate of the cosine schedule"),
    "momentum": ("--momentum", "SGD momentum"),
    "nesterov": ("--nesterov", "nesterov momentum"),
    "weight_decay": ("--weight-decay", "weight decay"),
    "label_smoothing": ("--label-smoothing", "label smoothing of the training loss"),
    "augment": ("--augment", "random crop (pad 4) and horizontal flip"),
    "cutout": ("--cutout", "Cutout: zero a square of this side (pixels) in every training image, "
               "after crop and flip (0: none)"),
    "grad_clip": ("--grad-clip", "clip the gradient's global norm to this (0: no clipping)"),
    "lr_schedule": ("--lr-schedule", "cosine (to --lr-min) or exponential (lr * --lr-gamma^epoch)"),
    "lr_gamma": ("--lr-gamma", "per-epoch factor of the exponential schedule"),
    "auxiliary_weight": ("--auxiliary-weight", "darts: weight of the auxiliary head's loss (0: no "
                         "auxiliary head)"),
    "drop_path_prob": ("--drop-path-prob", "darts: drop-path probability, raised linearly from 0 "
                       "to this over the epochs"),
    "imagenet_network": ("--imagenet-network", "darts: DARTS's ImageNet network (stride-8 stem, for "
                         "224x224 images) instead of its CIFAR network"),
    "seed": ("--seed", "the one seed of the run (weights and batch order)"),
    "device": ("--device", "cpu, cuda, cuda:1, ..."),
    "dtype": ("--dtype", "float32 or float64"),
    "nb201_file": ("--nb201-file", "the official NAS-Bench-201 file (for the ground truth)"),
    "out": ("--out", "where run directories go"),
    "threads": ("--threads", "CPU threads (default: the cores other processes leave free; "
                "recorded in config.json)"),
}


def _train_cpu() -> TrainConfig:
    """A 2-core CPU in under two minutes per cell: the shipped Fashion-MNIST subset (4,000
    train / 1,000 test images, resized to 16x16), a one-cell-per-stage network (C=16, N=1),
    15 epochs of batch 64, NB201's optimizer otherwise; no augmentation (it costs accuracy
    in so short a schedule). The all-nor_conv_3x3 cell, the slowest, took 86 s with one
    thread on a busy 2-core machine (README, 'Training a cell from scratch')."""
    return TrainConfig(recipe="cpu", dataset="fashion-mnist-subset", image_size=16, C=16, N=1,
                       epochs=15, batch_size=64, lr=0.1, lr_min=0.0, momentum=0.9, nesterov=True,
                       weight_decay=5e-4, augment=False)


def _train_nb201() -> TrainConfig:
    """NAS-Bench-201's own recipe (Dong & Yang, ICLR 2020, arXiv:2001.00326; its
    ``configs/nas-benchmark/hyper-opts/200E.config``): CIFAR-10, C=16, N=5, 200 epochs,
    batch 256, SGD nesterov momentum 0.9, lr 0.1 cosine to 0, weight decay 5e-4, random
    crop (pad 4) + flip, on a GPU."""
    return TrainConfig(recipe="nb201", dataset="cifar10", C=16, N=5, epochs=200, batch_size=256,
                       lr=0.1, lr_min=0.0, momentum=0.9, nesterov=True, weight_decay=5e-4,
                       augment=True, device="cuda")


def _train_darts_cifar10_eval() -> TrainConfig:
    """DARTS's CIFAR-10 evaluation (Liu et al., ICLR 2019, arXiv:1806.09055, section 3.3 and
    the defaults of its ``train.py``; METHOD.md section 5): the genotype's NetworkCIFAR with
    20 cells and C=36, 600 epochs of batch 96, SGD momentum 0.9 (not nesterov), lr 0.025
    cosine to 0, weight decay 3e-4, random crop (pad 4) + flip and Cutout 16, drop path
    raised to 0.2, an auxiliary head weighted 0.4 and the gradient norm clipped at 5, on a
    GPU. DARTS-V2 gets 3.3M parameters (the auxiliary head not counted)."""
    return TrainConfig(recipe="darts-cifar10-eval", space="darts", dataset="cifar10", C=36, N=20,
                       epochs=600, batch_size=96, lr=0.025, lr_min=0.0, momentum=0.9,
                       nesterov=False, weight_decay=3e-4, augment=True, cutout=16,
                       drop_path_prob=0.2, auxiliary_weight=0.4, grad_clip=5.0, device="cuda")


def _train_darts_imagenet_eval() -> TrainConfig:
    """DARTS's ImageNet evaluation in the mobile setting (Liu et al., ICLR 2019,
    arXiv:1806.09055, section 3.4 and the defaults of its ``train_imagenet.py``): the
    genotype's NetworkImageNet with 14 cells and C=48, 250 epochs of batch 128, SGD momentum
    0.9, lr 0.1 decayed by 0.97 every epoch, weight decay 3e-5, label smoothing 0.1, an
    auxiliary head weighted 0.4 and the gradient norm clipped at 5, on a GPU; DARTS-V2 gets
    4.7M parameters. ``bayesnas_core.data`` has no ImageNet loader, so the recipe as it
    stands refuses in one line; with ``--dataset`` of a loadable dataset it trains the same
    network and schedule there (with crop + flip, not DARTS's random-resized crop and
    colour jitter)."""
    return TrainConfig(recipe="darts-imagenet-eval", space="darts", dataset="imagenet", C=48, N=14,
                       epochs=250, batch_size=128, lr=0.1, lr_schedule="exponential", lr_gamma=0.97,
                       momentum=0.9, nesterov=False, weight_decay=3e-5, label_smoothing=0.1,
                       augment=True, auxiliary_weight=0.4, grad_clip=5.0, imagenet_network=True,
                       device="cuda")


def _train_darts_cpu() -> TrainConfig:
    """DARTS's CIFAR-10 evaluation (:func:`_train_darts_cifar10_eval`) scaled to a 2-core CPU:
    the shipped Fashion-MNIST subset (4,000 train / 1,000 test images) resized to 32x32, the
    size at which DARTS's auxiliary head sees the 8x8 features it is built for (at 16x16 it
    cannot run), a NetworkCIFAR of 8 cells with C=8 (DARTS-V2: 0.07M parameters), 3 epochs of
    batch 64, and DARTS's optimizer and regularisation otherwise: lr 0.025 cosine to 0,
    momentum 0.9, weight decay 3e-4, crop + flip, Cutout 8 (a quarter of the side; DARTS cuts
    16 of 32), drop path 0.2, auxiliary weight 0.4, gradient clipping at 5. Measured: DARTS-V2
    took 148 s (about 50 s an epoch, 2 min 34 s with start-up) with one thread on a 2-core
    machine that other jobs kept busy (before drop-path masks were drawn per global batch,
    which changes which samples are dropped, not the cost)."""
    return TrainConfig(recipe="darts-cpu", space="darts", dataset="fashion-mnist-subset",
                       image_size=32, C=8, N=8, epochs=3, batch_size=64, lr=0.025, lr_min=0.0,
                       momentum=0.9, nesterov=False, weight_decay=3e-4, augment=True, cutout=8,
                       drop_path_prob=0.2, auxiliary_weight=0.4, grad_clip=5.0)


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "cpu": _train_cpu,
    "nb201": _train_nb201,
    "darts-cpu": _train_darts_cpu,
    "darts-cifar10-eval": _train_darts_cifar10_eval,
    "darts-imagenet-eval": _train_darts_imagenet_eval,
}


def get_train_preset(name: str) -> TrainConfig:
    """A fresh copy of the named training recipe; an unknown name raises :class:`UserError`."""
    return _from_table(TRAIN_PRESETS, name, "recipe")


def train_config_from_dict(d: Any, *, where: str = "the configuration") -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from ``asdict(cfg)``, as :func:`config_from_dict`
    does for a :class:`RunConfig` (unknown keys ignored, missing ones defaulted, a wrong
    type is a one-line :class:`UserError`)."""
    return _from_dict(TrainConfig, copy.deepcopy(d), where, "")


#: TrainConfig fields a training run may resume with other values: where it runs and
#: where runs go, not what it computes
TRAIN_RESUMABLE_CHANGES = ("device", "out", "download")


def train_config_differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """The fields in which ``a`` and ``b`` differ, leaving out :data:`TRAIN_RESUMABLE_CHANGES`."""
    return _differences(a, b, TRAIN_RESUMABLE_CHANGES)


__all__ += ["TrainConfig", "TRAIN_FLAGS", "TRAIN_PRESETS", "TRAIN_SPACES", "get_train_preset",
            "train_config_from_dict", "TRAIN_RESUMABLE_CHANGES", "train_config_differences"]
