"""Training one cell's stand-alone network from scratch: ``python -m bayesnas_core.run train``.

A search ends in a cell (and, for NB201, the benchmark's number for it); this module trains
the cell itself, for any space of :data:`~bayesnas_core.config.TRAIN_SPACES`: an NB201 cell
(``--arch``) or a DARTS genotype (``--genotype`` with a darts recipe). :func:`run_train`
builds the space's stand-alone network (``get_space(cfg.space).build_network``: NB201's
:class:`~bayesnas_core.spaces.NB201Network`, or DARTS's NetworkCIFAR / NetworkImageNet),
trains it on the whole training split of the dataset (the union of the two search halves;
for CIFAR-100 and ImageNet16-120 the training set, as NB201) with SGD and a learning rate
set once per epoch (cosine, or DARTS ImageNet's exponential decay), evaluates it on the test
split after every epoch, and writes a run directory as a search does
(:mod:`bayesnas_core.runs`)::

    config.json     asdict(TrainConfig), with the cell as the space's text and the thread count
    env.json        versions, git commit, device, command line
    metrics.jsonl   one record per epoch: lr, train/test loss and accuracy (%), times
    checkpoint.pt   model, optimizer, scheduler, RNG state and metrics, atomic, every epoch
    result.json     final and best test accuracy, parameter count, NB201 ground truth
                    (None for DARTS, which has no tabular benchmark)

DARTS's training tricks (Liu et al., ICLR 2019, arXiv:1806.09055, its ``train.py`` and
``train_imagenet.py``) are fields of the config, off by default, so NB201 recipes train as
they always did: an auxiliary head (``loss = CE(logits) + w * CE(logits_aux)``), drop path
raised linearly over the epochs (``model.drop_path_prob = p * epoch / epochs``), Cutout
(:func:`cutout_batch`) after crop and flip, gradient-norm clipping and label smoothing.

The recipes are :data:`~bayesnas_core.config.TRAIN_PRESETS`: ``cpu`` (a small NB201
network on the shipped Fashion-MNIST subset, under two minutes on a 2-core CPU), ``nb201``
(NAS-Bench-201's 200-epoch CIFAR-10 recipe, for a GPU), ``darts-cpu`` (DARTS's evaluation
network scaled to a 2-core CPU), ``darts-cifar10-eval`` and ``darts-imagenet-eval``
(DARTS's own evaluations, for a GPU). Batches come from
:class:`~bayesnas_core.data.BatchIterator`, a pure function of ``(seed, epoch)``, and so is
the Cutout noise; the last partial batch of an epoch is dropped (a batch of one image would
break batch norm), so each epoch leaves out fewer than ``batch_size`` images, different ones
every epoch. ``--resume`` continues from the last checkpoint and ends bit-identical to an
uninterrupted run on the CPU (drop path draws from torch's generator, whose state the
checkpoint keeps). Accuracies are in %, as NAS-Bench-201 reports them.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, refuse_differences, train_config_differences, train_config_from_dict
from .data import NORMALIZATION, BatchIterator, SearchData, TensorSplit, load_search_data
from .errors import Interrupted, NonFiniteLossError, UserError
from .experiments import Progress
from .runs import RunDir, environment_info, seed_everything
from .spaces import Arch, get_space
from .spaces import counting
from .spaces.darts import GENOTYPES as DARTS_GENOTYPES

__all__ = [
    "TrainResult",
    "resolve_arch",
    "resolve_cell",
    "training_splits",
    "build_network",
    "check_network",
    "count_parameters",
    "cutout_batch",
    "evaluate",
    "check_train_resumable",
    "train_network",
    "run_train",
    "GROUND_TRUTH_METRIC",
]

#: The NB201 metric a stand-alone run on each dataset compares with (the test split the
#: benchmark reports); Fashion-MNIST has none.
GROUND_TRUTH_METRIC = {"cifar10": "cifar10_test", "cifar100": "cifar100_test",
                       "imagenet16-120": "imagenet16_test"}

#: Datasets whose search-valid half is cut from the test set: only search-train is training data
_VALID_FROM_TEST = ("cifar100", "imagenet16-120")

#: How the spaces are called in lines the user reads
_SPACE_NAMES = {"nb201": "NB201", "darts": "DARTS"}

#: Added to the batch seed of an epoch to seed its Cutout noise, a stream of its own
_CUTOUT_STREAM = 0x5EED_C0DE


@dataclass
class TrainResult:
    """What :func:`train_network` produced."""

    model: nn.Module
    metrics: list[dict[str, Any]]
    wall_time_s: float  # the training epochs, all sessions of a resumed run


def resolve_arch(arch: str, bench: Any) -> tuple[Arch, int]:
    """The cell that ``arch`` (an arch string or an NB201 index) names, and its NB201 index."""
    arch = arch.strip()
    gt = bench.query(int(arch) if arch.isascii() and arch.isdecimal() else arch)
    return Arch.parse(gt.arch_str), gt.index


def resolve_cell(cfg: TrainConfig, bench: Any = None) -> tuple[Any, int | None, str]:
    """The genotype ``cfg.arch`` names in ``cfg.space``, its NB201 index (None outside
    NB201) and a short label for the run folder's name (``cell1462``, ``darts-v2``, or
    ``genotype-`` and 8 hex digits of the genotype's text). NB201 needs ``bench``, which
    turns an index into the cell; other spaces parse the text with their own parser."""
    if cfg.space == "nb201":
        arch, index = resolve_arch(cfg.arch, bench)
        return arch, index, f"cell{index}"
    space = get_space(cfg.space)
    genotype = space.parse(cfg.arch)
    text = space.format(genotype)
    shipped = [name for name, g in DARTS_GENOTYPES.items()
               if cfg.space == "darts" and space.format(g) == text]
    label = shipped[0] if shipped else "genotype-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return genotype, None, label


def training_splits(data: SearchData) -> tuple[TensorSplit, TensorSplit, str]:
    """The training split (both search halves; for CIFAR-100 and ImageNet16-120, whose
    search-valid half comes from the test set, search-train alone), the test split, and a
    line that says which images they are."""
    if data.test is None:
        raise UserError(f"{data.name} has no test split to evaluate on")
    if data.name in _VALID_FROM_TEST:
        return data.train, data.test, f"train = search-train ({len(data.train)} images), test = " \
            f"{len(data.test)} images ({data.split_note})"
    train = TensorSplit(torch.cat([data.train.x, data.valid.x]), torch.cat([data.train.y, data.valid.y]))
    return train, data.test, (f"train = both search halves ({len(train)} images), test = "
                              f"{len(data.test)} images ({data.split_note})")


def build_network(cfg: TrainConfig, arch: Any, num_classes: int, in_channels: int, *,
                  device: str | torch.device | None = None) -> nn.Module:
    """The stand-alone network of ``arch`` (a genotype of ``cfg.space`` or its text) at
    ``cfg.C`` / ``cfg.N`` on ``cfg.device`` (or ``device``) / ``cfg.dtype``. A DARTS network
    has an auxiliary head if ``cfg.auxiliary_weight > 0`` and is DARTS's ImageNet network
    with ``cfg.imagenet_network``."""
    space = get_space(cfg.space)
    genotype = space.parse(arch) if isinstance(arch, str) else arch
    options: dict[str, Any] = {}
    if cfg.space == "darts":
        options = {"auxiliary": cfg.auxiliary_weight > 0, "imagenet": cfg.imagenet_network}
    return space.build_network(genotype, C=cfg.C, N=cfg.N, num_classes=num_classes,
                               in_channels=in_channels, device=torch.device(device or cfg.device),
                               dtype=getattr(torch, cfg.dtype), **options)


def check_network(cfg: TrainConfig, arch: Any, num_classes: int, in_channels: int,
                  image_size: int) -> None:
    """Raise a one-line :class:`UserError` if ``arch``'s network cannot be built or cannot
    train on ``image_size`` x ``image_size`` images (DARTS's auxiliary head fits only 8x8
    features: 32x32 images for the CIFAR network, 224x224 for the ImageNet one). The check
    runs on the ``meta`` device: no memory, no arithmetic, no random numbers drawn."""
    what = f"the {_SPACE_NAMES.get(cfg.space, cfg.space)} network"
    try:
        model = build_network(cfg, arch, num_classes, in_channels, device="meta")
    except (ValueError, KeyError) as err:
        raise UserError(f"cannot build {what}: {_first_line(err)}; change --channels / --cells") from None
    x = torch.empty(2, in_channels, image_size, image_size, device="meta", dtype=getattr(torch, cfg.dtype))
    try:
        model.train()(x)
    except RuntimeError as err:
        if cfg.auxiliary_weight > 0:
            plain = copy.copy(cfg)
            plain.auxiliary_weight = 0.0
            try:
                build_network(plain, arch, num_classes, in_channels, device="meta").train()(x)
            except RuntimeError:
                pass
            else:
                size = 224 if cfg.imagenet_network else 32
                raise UserError(f"the auxiliary head of {what} cannot run on {image_size}x{image_size} "
                                f"images (it is built for 8x8 features); pass --image-size {size} or "
                                "--auxiliary-weight 0") from None
        raise UserError(f"{what} cannot run on {image_size}x{image_size} images "
                        f"({_first_line(err)}); pass another --image-size") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def count_parameters(model: nn.Module) -> int:
    """The parameters of ``model`` without an auxiliary head (as DARTS reports them; an
    NB201 network has none, so this is NAS-Bench-201's "#Params", in millions there)."""
    return counting.count_parameters(model, exclude_auxiliary=True)


def cutout_batch(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries and Taylor, arXiv:1708.04552) as DARTS applies it (its
    ``utils.Cutout``, after crop, flip and normalisation): in every image of the batch ``x``
    (``[B, C, H, W]``), a centre pixel drawn uniformly from ``generator`` and the square
    ``[y - length // 2, y + length // 2) x [x - length // 2, x + length // 2)`` around it,
    clipped to the image, set to 0 in every channel (0 is the dataset's mean colour after
    normalisation). ``length`` 0 returns ``x`` itself."""
    if length <= 0:
        return x
    b, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (b, 1), generator=generator, device=dev)
    cx = torch.randint(0, w, (b, 1), generator=generator, device=dev)
    half = length // 2
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_rows = (rows >= cy - half) & (rows < cy + half)  # [B, H]
    in_cols = (cols >= cx - half) & (cols < cx + half)  # [B, W]
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)


def _cutout_generator(cfg: TrainConfig, epoch: int, device: torch.device) -> torch.Generator:
    """The Cutout noise of ``epoch``: a generator seeded from the run seed and the epoch
    (apart from the batch order's), so a resumed run cuts the same squares."""
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 100003 + epoch + _CUTOUT_STREAM)
    return gen


def _train_batches(cfg: TrainConfig, train: TensorSplit, dataset: str) -> BatchIterator:
    """The seeded training batches; padding is black, as NB201's RandomCrop pads pixels
    with 0 before normalizing. A split smaller than a batch: one-line :class:`UserError`."""
    fill: float | list[float] = 0.0
    if dataset in NORMALIZATION:
        fill = [-m / s for m, s in zip(*NORMALIZATION[dataset])]
    if len(train) < cfg.batch_size:
        raise UserError(f"the training split ({len(train)} images) is smaller than one batch of "
                        f"{cfg.batch_size}; lower --batch-size or raise --limit")
    return BatchIterator(train, cfg.batch_size, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                         fill=fill)


@torch.no_grad()
def evaluate(model: nn.Module, split: TensorSplit, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of ``model`` (in eval mode) on every image of ``split``."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=split.x.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.x.device)
    for x, y in BatchIterator(split, min(batch_size, len(split)), shuffle=False, drop_last=False).epoch(0):
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(-1) == y).sum()
    return loss.item() / len(split), 100.0 * correct.item() / len(split)


def check_train_resumable(cfg: TrainConfig, state: dict[str, Any], where: Path) -> None:
    """Refuse, in one line naming the fields, to resume ``state`` with a configuration that
    trains something else (only the device, the output folder and --download may differ)."""
    stored = train_config_from_dict(state.get("config", {}), where=f"checkpoint in {where}")
    refuse_differences(stored, cfg, train_config_differences(stored, cfg), where)


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One plain progress line for a finished epoch."""
    return (f"epoch {record['epoch']}/{epochs}, lr {record['lr']:.4g}, "
            f"train_loss {record['train_loss']:.4f}, train_acc {record['train_acc']:.2f} %, "
            f"test_loss {record['test_loss']:.4f}, test_acc {record['test_acc']:.2f} %, "
            f"{record['wall_time_s']:.1f} s")


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> Any:
    """The per-epoch learning-rate schedule: cosine from ``lr`` to ``lr_min`` over the epochs,
    or DARTS ImageNet's ``lr * lr_gamma ** epoch`` (its ``StepLR(step_size=1, gamma=0.97)``)."""
    if cfg.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr_min)


def _loss(cfg: TrainConfig, out: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                  torch.Tensor, torch.Tensor | None]:
    """The loss to minimise, the main head's loss, its logits and the auxiliary head's loss
    (None without a head): ``CE(logits) + auxiliary_weight * CE(logits_aux)``, both
    label-smoothed as in DARTS's ``train_imagenet.py``."""
    logits, logits_aux = out if isinstance(out, tuple) else (out, None)
    main = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if logits_aux is None:
        return main, main, logits, None
    aux = F.cross_entropy(logits_aux, y, label_smoothing=cfg.label_smoothing)
    return main + cfg.auxiliary_weight * aux, main, logits, aux


def train_network(cfg: TrainConfig, arch: Any, train: TensorSplit, test: TensorSplit, *,
                  num_classes: int, in_channels: int, dataset: str, run: RunDir | None = None,
                  resume: bool = False, progress: Progress = True,
                  on_record: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``arch``'s network (a genotype of ``cfg.space``) as ``cfg`` says on ``train``
    (already on ``cfg.device``), testing on ``test`` after every epoch.

    With ``run``, every epoch rewrites ``metrics.jsonl`` and ``checkpoint.pt``
    (atomically); ``resume=True`` continues from that checkpoint. ``on_record(record)``
    sees each finished epoch's record after its checkpoint is written. ``progress``: True
    shows bars, a callable gets one plain line per epoch, False shows nothing.
    """
    from tqdm.auto import tqdm

    cfg.validate()
    dtype = getattr(torch, cfg.dtype)
    if train.x.dtype != dtype:
        train, test = TensorSplit(train.x.to(dtype), train.y), TensorSplit(test.x.to(dtype), test.y)
    seed_everything(cfg.seed)
    model = build_network(cfg, arch, num_classes, in_channels)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    sched = _scheduler(cfg, opt)
    batches = _train_batches(cfg, train, dataset)
    drop_path = cfg.space == "darts"  # DARTS networks have model.drop_path_prob
    cuda = train.x.device.type == "cuda"

    metrics: list[dict[str, Any]] = []
    start, elapsed = 0, 0.0
    if resume:
        if run is None:
            raise UserError("--resume needs a run directory")
        state = run.load_checkpoint()
        check_train_resumable(cfg, state, run.path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], train.x.device)
        metrics = state["metrics"]
        start, elapsed = int(state["epoch"]), float(state["wall_time_s"])

    def stop(epoch: int) -> NonFiniteLossError:
        kept = (f"the last good checkpoint (epoch {metrics[-1]['epoch']}) is kept in {run.path}"
                if run is not None and metrics else "no checkpoint was written")
        return NonFiniteLossError(f"non-finite loss in epoch {epoch}; training stopped and {kept}; "
                                  f"lower --lr (now {cfg.lr})")

    bars = progress is True
    epochs = tqdm(range(start, cfg.epochs), desc="train cell", unit="epoch", disable=not bars,
                  initial=start, total=cfg.epochs)
    for epoch in epochs:
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]  # the rate this epoch trains with
        if drop_path:  # DARTS's train.py: raised linearly from 0, set once per epoch
            model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        cutout = _cutout_generator(cfg, epoch, train.x.device) if cfg.cutout > 0 else None
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=train.x.device)
        aux_sum = torch.zeros((), dtype=torch.float64, device=train.x.device)
        correct = torch.zeros((), dtype=torch.int64, device=train.x.device)
        seen = 0
        for x, y in tqdm(batches.epoch(epoch), total=len(batches), desc=f"epoch {epoch + 1}",
                         leave=False, disable=not bars):
            if cutout is not None:
                x = cutout_batch(x, cfg.cutout, cutout)
            opt.zero_grad(set_to_none=True)
            loss, main, logits, aux = _loss(cfg, model(x), y)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            loss_sum += main.detach().double() * len(y)  # comparable with test_loss
            if aux is not None:
                aux_sum += aux.detach().double() * len(y)
            correct += (logits.detach().argmax(-1) == y).sum()
            seen += len(y)
        train_loss = loss_sum.item() / seen
        aux_loss = aux_sum.item() / seen
        if not (math.isfinite(train_loss) and math.isfinite(aux_loss)):
            raise stop(epoch + 1)
        sched.step()
        train_s = time.perf_counter() - t0
        test_loss, test_acc = evaluate(model, test, cfg.batch_size)
        elapsed += time.perf_counter() - t0
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                  "train_acc": 100.0 * correct.item() / seen, "test_loss": test_loss,
                  "test_acc": test_acc, "step_ms": 1000 * train_s / len(batches),
                  "epoch_s": time.perf_counter() - t0, "wall_time_s": elapsed}
        if drop_path:
            record["drop_path_prob"] = model.drop_path_prob
        if cfg.auxiliary_weight > 0:
            record["train_aux_loss"] = aux_loss
        metrics.append(record)
        epochs.set_postfix(test_acc=f"{test_acc:.2f}")
        if callable(progress):
            progress(epoch_line(record, cfg.epochs))
        if run is not None:
            run.write_metrics(metrics)
            state = {
                "epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                "metrics": metrics, "config": asdict(cfg), "wall_time_s": elapsed,
            }
            if cuda:  # drop path draws on the device's generator
                state["cuda_rng"] = torch.cuda.get_rng_state(train.x.device)
            run.save_checkpoint(state)
        if on_record is not None:
            on_record(record)
    return TrainResult(model=model, metrics=metrics, wall_time_s=elapsed)


def _run_name(cfg: TrainConfig, label: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-train-{cfg.recipe}-{label}-s{cfg.seed}"


def run_train(cfg: TrainConfig | None = None, *, resume: str | Path | None = None,
              progress: Progress = True, log: Callable[[str], None] = print, bench: Any = None,
              data: SearchData | None = None, device: str | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the cell ``cfg.arch`` names in ``cfg.space`` and write its run directory;
    returns result.json's record (``ground_truth`` None for a space without a tabular
    benchmark, such as DARTS; ``bench`` is used for NB201 only).

    ``resume`` is a run directory: its stored config is used (``device`` may move it) and
    training continues from its last checkpoint. Every mistake is a one-line
    :class:`UserError` raised before a run folder is made. It runs with ``cfg.threads``
    CPU threads (None: :func:`~bayesnas_core.threads.default_threads`, recorded in the
    run's config), as :func:`~bayesnas_core.experiments.run_search` does.
    """
    from .threads import resolve_threads, stored_threads, torch_threads

    if cfg is not None and cfg.threads is None:
        cfg = copy.deepcopy(cfg)
        cfg.threads = resolve_threads(None)
    threads = cfg.threads if cfg is not None else stored_threads(RunDir.open(resume).read_json("config.json"))
    with torch_threads(resolve_threads(threads)):
        return _run_train(cfg, resume=resume, progress=progress, log=log, bench=bench, data=data,
                          device=device, on_record=on_record)


def _run_train(cfg: TrainConfig | None, *, resume: str | Path | None, progress: Progress,
               log: Callable[[str], None], bench: Any, data: SearchData | None, device: str | None,
               on_record: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    from .benchmarks import open_benchmark
    from .experiments import ground_truth_record, interrupted_message

    t_start = time.perf_counter()
    run = None
    if resume is not None:
        run = RunDir.open(resume)
        cfg = train_config_from_dict(run.read_json("config.json"), where=str(run.path / "config.json"))
        if device is not None:
            cfg.device = device
        cfg.validate()
        check_train_resumable(cfg, run.load_checkpoint(), run.path)
        log(f"resuming {run.path}")
    elif cfg is None:
        raise ValueError("run_train needs a config or a run directory to resume")
    else:
        cfg = copy.deepcopy(cfg).validate()
    nb201 = cfg.space == "nb201"  # the one space with a tabular benchmark to compare with
    if nb201:
        bench = bench if bench is not None else open_benchmark(cfg.nb201_file)
    arch, index, label = resolve_cell(cfg, bench)
    cfg.arch = get_space(cfg.space).format(arch)  # config.json names the cell in the space's text
    if data is None:
        data = load_search_data(cfg.dataset, cfg.root, image_size=cfg.image_size, limit=cfg.limit,
                                download=cfg.download, seed=cfg.seed, device=cfg.device)
    train, test, note = training_splits(data)
    _train_batches(cfg, train, data.name)  # too small for a batch: one line, before any folder
    check_network(cfg, arch, data.num_classes, data.in_channels, int(train.x.shape[-1]))
    if run is None:
        run = RunDir.create(cfg.out, _run_name(cfg, label), asdict(cfg), environment_info(cfg.device))
        log(f"run directory: {run.path}")
    log(f"cell {index}: {arch}; {note}" if nb201 else
        f"{_SPACE_NAMES.get(cfg.space, cfg.space)} genotype {label}: {cfg.arch}; {note}")
    try:
        result = train_network(cfg, arch, train, test, num_classes=data.num_classes,
                               in_channels=data.in_channels, dataset=data.name, run=run,
                               resume=resume is not None, progress=progress, on_record=on_record)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(run, "python -m bayesnas_core.run train")) from None
    metrics = result.metrics
    best = max(metrics, key=lambda r: r["test_acc"])
    gt = ground_truth_record(bench.query(str(arch))) if nb201 else None
    metric = GROUND_TRUTH_METRIC.get(data.name) if nb201 else None
    params = count_parameters(result.model)
    record = {
        "arch": cfg.arch,
        "index": index,
        "space": cfg.space,
        "recipe": cfg.recipe,
        "seed": cfg.seed,
        "dataset": data.name,
        "split": note,
        "epochs": cfg.epochs,
        "C": cfg.C,
        "N": cfg.N,
        "final_test_acc": metrics[-1]["test_acc"],
        "final_test_loss": metrics[-1]["test_loss"],
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "params": params,  # without an auxiliary head, as DARTS counts
        "params_m": params / 1e6,  # NB201's "#Params (MB)", DARTS's "Params (M)"
        "ground_truth": gt,  # None: the space has no tabular benchmark (DARTS)
        "ground_truth_metric": metric,  # the NB201 number this run is comparable with (None: none)
        "ground_truth_value": None if metric is None else gt["metrics"].get(metric),
        "wall_time_s": result.wall_time_s,  # the training epochs (all sessions)
        "session_wall_time_s": time.perf_counter() - t_start,
        "threads": torch.get_num_threads(),
        "device": cfg.device,
        "run_dir": str(run.path),
    }
    run.write_json("result.json", record)
    return record
