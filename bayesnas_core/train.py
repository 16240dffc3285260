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
uninterrupted run on the CPU (drop path draws its masks from a generator of the seed and the
epoch, as Cutout does). Accuracies are in %, as NAS-Bench-201 reports them.

**Data-parallel training under torchrun.** ``torchrun --nproc_per_node K -m
bayesnas_core.run train ...`` (and ``--nnodes``/``--rdzv-endpoint`` across machines:
nothing here assumes one node) runs the same command as K ranks with
:class:`~torch.nn.parallel.DistributedDataParallel`; :class:`Distributed` reads torchrun's
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. The process group is NCCL for CUDA tensors and
gloo for CPU tensors (``cpu:gloo,cuda:nccl`` where CUDA is available, else ``gloo``); a CUDA
rank trains on ``cuda:LOCAL_RANK`` (an index in ``--device`` is ignored there).

- ``--batch-size`` is the *global* batch, the effective one: every rank draws each global
  batch exactly as one process does (:class:`~bayesnas_core.data.BatchIterator`, a pure
  function of seed and epoch, crop and flip included), applies Cutout to the whole global
  batch, and trains on its own contiguous ``batch_size / K`` rows; a batch that does not
  split evenly is a one-line :class:`UserError`. Drop path's masks are drawn for the whole
  global batch too (:class:`_DropPath`). DDP averages the ranks' gradients, so the step is
  the single-process step on the same global batch, up to the round-off of the all-reduce
  and one difference: batch norm.
- Batch norm uses per-rank batch statistics (DDP's default; no ``SyncBatchNorm``: it would
  add a collective to every batch-norm layer of every forward). A rank normalises its
  ``batch_size / K`` images by their own mean and variance, so a K-rank run differs
  slightly from one process on the same global batch; it equals one process that runs the
  K shards one after another, each with its own statistics, and averages their gradients
  (``tests/test_distributed.py``). The running statistics are rank 0's (DDP broadcasts
  them at every forward; they are broadcast again before each evaluation).
- The learning rate applies to the global batch unchanged (:data:`LR_RULE`): the global
  batch is the single-process batch, so nothing is scaled with K.
- Every rank tests a shard of the test split and the sums are all-reduced. Only rank 0
  reads and writes files: it opens the benchmark, reads a resumed run's config and
  checkpoint and broadcasts them, creates the run directory and broadcasts its path, and
  writes metrics, checkpoints and result.json; the other ranks write nothing. result.json
  and env.json record ``distributed`` (world size, global and per-rank batch, the rules),
  every metrics record its ``world_size``, and result.json ``replicas_identical``: the
  largest absolute difference between any rank's parameters and momentum buffers and rank
  0's, all-reduced at the end. ``config.json`` has no world size: a run resumes with any K
  that divides its batch (the global batch stays the same, so the schedule and the
  samples do; batch norm's shards change); with the same K on the CPU the resumed run is
  bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

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
    "Distributed",
    "ReportedElsewhere",
    "LR_RULE",
    "BATCH_NORM_RULE",
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

#: Added to the batch seed of an epoch to seed its drop-path masks, another stream
_DROP_PATH_STREAM = 0xD2_0BA7

#: How the learning rate relates to the batch under torchrun (recorded in result.json)
LR_RULE = ("--lr applies to the global batch (--batch-size) unchanged: the global batch is the "
           "single-process batch, so the rate is not scaled with the world size")

#: What batch norm does under torchrun (recorded in result.json)
BATCH_NORM_RULE = ("per-rank batch statistics (DDP's default, no SyncBatchNorm): each rank "
                   "normalises its batch_size / world_size images by their own mean and variance; "
                   "the running statistics are rank 0's")


@dataclass
class TrainResult:
    """What :func:`train_network` produced."""

    model: nn.Module
    metrics: list[dict[str, Any]]
    wall_time_s: float  # the training epochs, all sessions of a resumed run
    #: under torchrun: the largest |difference| between any rank's parameters and momentum
    #: buffers and rank 0's at the end (0.0: the replicas are identical); None: one process
    replica_max_abs_diff: float | None = None


class ReportedElsewhere(UserError):
    """A mistake another rank (rank 0) reports: this rank stops without printing it again."""


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a torchrun job: rank ``rank`` of ``world_size``
    (``local_rank`` of ``local_world_size`` on its machine). ``launched`` False: a plain
    single process (``Distributed()``)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    launched: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Distributed":
        """torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
        ``MASTER_PORT``); without ``WORLD_SIZE`` a single process. An incomplete or
        malformed set is a one-line :class:`UserError`."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise UserError(f"WORLD_SIZE is set but {', '.join(missing)} {verb} not: start data-parallel "
                            "training with torchrun --nproc_per_node K -m bayesnas_core.run train ..., "
                            "or unset WORLD_SIZE")
        try:
            world, rank, local = int(env["WORLD_SIZE"]), int(env["RANK"]), int(env["LOCAL_RANK"])
            local_world = int(env.get("LOCAL_WORLD_SIZE") or 1)
        except ValueError:
            raise UserError("WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers, as torchrun "
                            "sets them") from None
        if not (world >= 1 and 0 <= rank < world and local >= 0):
            raise UserError(f"RANK {rank} of WORLD_SIZE {world} (LOCAL_RANK {local}) is not a rank of the "
                            "job; start it with torchrun")
        return cls(world, rank, local, local_world, True)

    @property
    def main(self) -> bool:
        """Whether this process reads and writes the files (rank 0, or a single process)."""
        return self.rank == 0

    def per_rank_batch(self, batch_size: int) -> int:
        """This rank's share of the global batch ``batch_size``; one-line :class:`UserError`
        if it does not split evenly or leaves a rank fewer than 2 images (batch norm)."""
        k = self.world_size
        if batch_size % k:
            near = max(k, k * round(batch_size / k))
            raise UserError(f"--batch-size {batch_size} is the global batch and does not split evenly across "
                            f"{k} ranks; pass a multiple of {k} (e.g. {near})")
        if k > 1 and batch_size // k < 2:
            raise UserError(f"--batch-size {batch_size} leaves each of the {k} ranks {batch_size // k} image "
                            f"(batch norm needs 2); pass at least {2 * k}")
        return batch_size // k

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def run_device(self, device: str) -> str:
        """The device this rank trains on: ``device``, but ``cuda:LOCAL_RANK`` for a CUDA
        device under torchrun (one-line :class:`UserError` if this machine has too few)."""
        if not self.launched or torch.device(device).type != "cuda":
            return device
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise UserError(f"LOCAL_RANK {self.local_rank} needs cuda:{self.local_rank}, but this machine "
                            f"has {count} CUDA device{'s' * (count != 1)}; pass torchrun --nproc_per_node "
                            f"{count} or fewer")
        return f"cuda:{self.local_rank}"

    def record(self, batch_size: int, backend: str | None) -> dict[str, Any]:
        """What env.json and result.json say about the job."""
        return {"world_size": self.world_size, "launched_by_torchrun": self.launched,
                "local_world_size": self.local_world_size, "backend": backend,
                "global_batch": batch_size, "per_rank_batch": batch_size // self.world_size,
                "lr_rule": LR_RULE, "batch_norm": BATCH_NORM_RULE}


def _backend() -> str:
    """NCCL for CUDA tensors, gloo for CPU tensors (object broadcasts and a CPU run)."""
    import torch.distributed as dist

    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


@contextlib.contextmanager
def _process_group(ddp: Distributed) -> Iterator[str | None]:
    """Join the job's process group for the body (torchrun's ``env://`` rendezvous: one
    machine or many), and leave it after; a group the caller made is used and kept.
    Yields the backend (None: a single process)."""
    if not ddp.launched:
        yield None
        return
    import torch.distributed as dist

    if dist.is_initialized():
        yield str(dist.get_backend())
        return
    backend = _backend()
    dist.init_process_group(backend=backend)
    try:
        yield backend
    finally:
        dist.destroy_process_group()


def _quiet_off_rank0(ddp: Distributed, check: Callable[[], Any]) -> Any:
    """``check()``, whose mistakes every rank makes alike: rank 0 reports them, the others
    stop quietly (:class:`ReportedElsewhere`)."""
    try:
        return check()
    except ReportedElsewhere:
        raise
    except UserError as err:
        if ddp.main:
            raise
        raise ReportedElsewhere(str(err)) from None


def _from_rank0(ddp: Distributed, make: Callable[[], Any]) -> Any:
    """``make()`` run on rank 0 (the files), its value broadcast to every rank; a mistake
    there stops the others quietly."""
    if not ddp.launched:
        return make()
    import torch.distributed as dist

    box: list[Any] = [None]
    if ddp.main:
        try:
            box[0] = ("ok", make())
        except Exception as err:
            box[0] = ("error", f"rank 0 stopped: {_first_line(err)}")
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise ReportedElsewhere(value)
    return value


def _on_every_rank(ddp: Distributed, work: Callable[[], Any]) -> Any:
    """``work()`` on every rank (loading its data, say); if it fails on any rank, every
    rank stops before rank 0 makes a folder: the failing ranks report, the rest quietly."""
    failure: UserError | None = None
    value = None
    try:
        value = work()
    except UserError as err:
        failure = err
    if ddp.launched:
        import torch.distributed as dist

        failed = torch.tensor([0.0 if failure is None else 1.0])
        dist.all_reduce(failed)
        if failure is None and failed.item() > 0:
            raise ReportedElsewhere(f"{int(failed.item())} other rank(s) stopped with an error")
    if failure is not None:
        raise failure
    return value


def _all_reduce(ddp: Distributed, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` summed (or maximised) over the ranks, in place; itself in a single process."""
    if ddp.launched:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def _barrier(ddp: Distributed) -> None:
    """Wait for every rank (a CPU all-reduce: gloo in either backend)."""
    _all_reduce(ddp, torch.zeros(1))


def _sync_buffers(ddp: Distributed, model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch norm's running statistics), as DDP does
    before every training forward, so that all replicas evaluate the same network."""
    if ddp.launched:
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b, src=0)


def _replica_difference(ddp: Distributed, model: nn.Module, opt: torch.optim.Optimizer) -> float | None:
    """The largest absolute difference between any rank's parameters and momentum buffers
    and rank 0's (all-reduced; 0.0 when the replicas are bit-identical); None in a single
    process."""
    if not ddp.launched:
        return None
    import torch.distributed as dist

    params = list(model.parameters())
    tensors = [p.detach() for p in params]
    tensors += [opt.state[p]["momentum_buffer"] for p in params
                if opt.state.get(p, {}).get("momentum_buffer") is not None]
    mine = torch.cat([t.reshape(-1) for t in tensors])
    ref = mine.clone()
    dist.broadcast(ref, src=0)
    diff = torch.cat([(mine - ref).abs(), mine.new_zeros(1)]).max().reshape(1).double()
    return float(_all_reduce(ddp, diff, "max").item())


class _DropPath:
    """DARTS's drop path (its ``drop_path``: each op output but the identity's is zeroed
    for a whole sample with probability ``prob`` and the rest rescaled by
    ``1 / (1 - prob)``) with masks that do not depend on how the batch is split: a step
    draws the masks of the whole global batch (``global_batch`` uniforms per op, in the
    cells' op order) from the epoch's generator and keeps this rank's ``rows``. Installed as
    forward hooks on the ops of the network's cells, whose own drop path (per-rank draws
    from torch's global generator) stays at 0."""

    def __init__(self, model: nn.Module, rows: slice, global_batch: int) -> None:
        self.prob = 0.0
        self.rows, self.global_batch = rows, global_batch
        self.generator: torch.Generator | None = None
        model.drop_path_prob = 0.0
        self.handles = [op.register_forward_hook(self._hook) for cell in model.cells for op in cell.ops
                        if not isinstance(op, nn.Identity)]

    def start_epoch(self, prob: float, generator: torch.Generator) -> None:
        self.prob, self.generator = prob, generator

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or self.prob <= 0.0:
            return None
        keep = 1.0 - self.prob
        u = torch.rand(self.global_batch, generator=self.generator, device=output.device, dtype=output.dtype)
        mask = (u[self.rows] < keep).to(output.dtype).view((-1,) + (1,) * (output.dim() - 1))
        return output / keep * mask


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


def _drop_path_generator(cfg: TrainConfig, epoch: int, device: torch.device) -> torch.Generator:
    """The drop-path masks of ``epoch`` (:class:`_DropPath`): a stream of the run seed and
    the epoch of their own, so a resumed run, or one split across other ranks, drops the
    same paths."""
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 100003 + epoch + _DROP_PATH_STREAM)
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
    sums = _evaluate_sums(model, split, batch_size)
    return sums[0].item() / len(split), 100.0 * sums[1].item() / len(split)


@torch.no_grad()
def _evaluate_sums(model: nn.Module, split: TensorSplit, batch_size: int) -> torch.Tensor:
    """The summed cross-entropy and the number of correct images of ``model`` (in eval
    mode) on ``split`` (float64 ``[2]``, on its device; zeros for an empty split)."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=split.x.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.x.device)
    if len(split):
        batches = BatchIterator(split, min(batch_size, len(split)), shuffle=False, drop_last=False)
        for x, y in batches.epoch(0):
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(-1) == y).sum()
    return torch.stack([loss, correct.double()])


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
                  on_record: Callable[[dict[str, Any]], None] | None = None,
                  state: dict[str, Any] | None = None, ddp: Distributed | None = None) -> TrainResult:
    """Train ``arch``'s network (a genotype of ``cfg.space``) as ``cfg`` says on ``train``
    (already on the device to train on), testing on ``test`` after every epoch.

    With ``run``, every epoch rewrites ``metrics.jsonl`` and ``checkpoint.pt``
    (atomically); ``resume=True`` continues from ``state`` (default: that checkpoint).
    ``on_record(record)`` sees each finished epoch's record after its checkpoint is
    written. ``progress``: True shows bars, a callable gets one plain line per epoch, False
    shows nothing.

    ``ddp``: this process's place in a torchrun job (default: a single process; the
    process group must exist). Each rank then trains a DDP replica on its share of every
    global batch of ``cfg.batch_size`` and tests a shard of ``test``; only rank 0 writes
    ``run`` (see the module's notes).
    """
    from tqdm.auto import tqdm

    cfg.validate()
    ddp = ddp if ddp is not None else Distributed()
    per_rank = ddp.per_rank_batch(cfg.batch_size)
    rows = slice(ddp.rank * per_rank, (ddp.rank + 1) * per_rank)  # this rank's rows of a global batch
    dtype = getattr(torch, cfg.dtype)
    if train.x.dtype != dtype:
        train, test = TensorSplit(train.x.to(dtype), train.y), TensorSplit(test.x.to(dtype), test.y)
    device = train.x.device
    seed_everything(cfg.seed)  # the same on every rank: the replicas start equal
    model = build_network(cfg, arch, num_classes, in_channels, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    sched = _scheduler(cfg, opt)
    batches = _train_batches(cfg, train, dataset)
    # DARTS networks have drop path; its masks are drawn per global batch (_DropPath)
    drop_path = _DropPath(model, rows, cfg.batch_size) if cfg.space == "darts" else None
    cuda = device.type == "cuda"
    writes = run is not None and ddp.main  # only rank 0 writes
    test_shard = TensorSplit(test.x[ddp.shard(len(test))], test.y[ddp.shard(len(test))])

    metrics: list[dict[str, Any]] = []
    start, elapsed = 0, 0.0
    if resume:
        if state is None:
            if run is None:
                raise UserError("--resume needs a run directory")
            state = run.load_checkpoint()
            check_train_resumable(cfg, state, run.path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        metrics = state["metrics"]
        start, elapsed = int(state["epoch"]), float(state["wall_time_s"])
    net: nn.Module = model
    if ddp.launched:  # averages the ranks' gradients; broadcasts rank 0's weights and buffers
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    def stop(epoch: int) -> NonFiniteLossError:
        kept = (f"the last good checkpoint (epoch {metrics[-1]['epoch']}) is kept in {run.path}"
                if run is not None and metrics else "no checkpoint was written")
        return NonFiniteLossError(f"non-finite loss in epoch {epoch}; training stopped and {kept}; "
                                  f"lower --lr (now {cfg.lr})")

    bars = progress is True and ddp.main
    epochs = tqdm(range(start, cfg.epochs), desc="train cell", unit="epoch", disable=not bars,
                  initial=start, total=cfg.epochs)
    for epoch in epochs:
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]  # the rate this epoch trains with
        p_drop = cfg.drop_path_prob * epoch / cfg.epochs  # DARTS's train.py: raised linearly from 0
        if drop_path is not None:
            drop_path.start_epoch(p_drop, _drop_path_generator(cfg, epoch, device))
        cutout = _cutout_generator(cfg, epoch, device) if cfg.cutout > 0 else None
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        aux_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for x, y in tqdm(batches.epoch(epoch), total=len(batches), desc=f"epoch {epoch + 1}",
                         leave=False, disable=not bars):
            if cutout is not None:  # drawn for the whole global batch, then sharded
                x = cutout_batch(x, cfg.cutout, cutout)
            x, y = x[rows], y[rows]
            opt.zero_grad(set_to_none=True)
            loss, main, logits, aux = _loss(cfg, net(x), y)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            loss_sum += main.detach().double() * len(y)  # comparable with test_loss
            if aux is not None:
                aux_sum += aux.detach().double() * len(y)
            correct += (logits.detach().argmax(-1) == y).sum()
            seen += len(y)
        sums = _all_reduce(ddp, torch.stack([loss_sum, aux_sum, correct.double(),
                                             torch.tensor(float(seen), dtype=torch.float64, device=device)]))
        train_loss = sums[0].item() / sums[3].item()
        aux_loss = sums[1].item() / sums[3].item()
        train_acc = 100.0 * sums[2].item() / sums[3].item()
        if not (math.isfinite(train_loss) and math.isfinite(aux_loss)):
            raise stop(epoch + 1)
        sched.step()
        train_s = time.perf_counter() - t0
        _sync_buffers(ddp, model)
        if ddp.launched:
            test_sums = _all_reduce(ddp, _evaluate_sums(model, test_shard, cfg.batch_size))
            test_loss, test_acc = test_sums[0].item() / len(test), 100.0 * test_sums[1].item() / len(test)
        else:
            test_loss, test_acc = evaluate(model, test, cfg.batch_size)
        elapsed += time.perf_counter() - t0
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                  "train_acc": train_acc, "test_loss": test_loss,
                  "test_acc": test_acc, "step_ms": 1000 * train_s / len(batches),
                  "epoch_s": time.perf_counter() - t0, "wall_time_s": elapsed,
                  "world_size": ddp.world_size}
        if drop_path is not None:
            record["drop_path_prob"] = p_drop
        if cfg.auxiliary_weight > 0:
            record["train_aux_loss"] = aux_loss
        metrics.append(record)
        epochs.set_postfix(test_acc=f"{test_acc:.2f}")
        if callable(progress) and ddp.main:
            progress(epoch_line(record, cfg.epochs))
        if writes:
            run.write_metrics(metrics)
            state = {
                "epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                "metrics": metrics, "config": asdict(cfg), "wall_time_s": elapsed,
            }
            if cuda:
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            run.save_checkpoint(state)
        _barrier(ddp)  # every rank sees the epoch's checkpoint written
        if on_record is not None:
            on_record(record)
    replica_diff = _replica_difference(ddp, model, opt)
    if drop_path is not None:  # hand back a plain network, set as the last epoch left it
        for handle in drop_path.handles:
            handle.remove()
        model.drop_path_prob = metrics[-1].get("drop_path_prob", 0.0) if metrics else 0.0
    return TrainResult(model=model, metrics=metrics, wall_time_s=elapsed, replica_max_abs_diff=replica_diff)


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

    Under torchrun (:meth:`Distributed.from_env`) every rank calls this: it joins the
    process group, trains data-parallel and returns the same record on every rank; only
    rank 0 logs, shows progress and writes (see the module's notes).
    """
    from .threads import resolve_threads

    ddp = Distributed.from_env()
    if not ddp.main:
        progress, log = False, (lambda line: None)
    if cfg is not None:
        cfg = copy.deepcopy(cfg)
        if cfg.threads is None:
            cfg.threads = resolve_threads(None)
        cfg.validate()
        _quiet_off_rank0(ddp, lambda: ddp.per_rank_batch(cfg.batch_size))  # before any rendezvous
    elif resume is None:
        raise ValueError("run_train needs a config or a run directory to resume")
    with _process_group(ddp) as backend:
        return _run_train(cfg, ddp=ddp, backend=backend, resume=resume, progress=progress, log=log,
                          bench=bench, data=data, device=device, on_record=on_record)


def _run_train(cfg: TrainConfig | None, *, ddp: Distributed, backend: str | None,
               resume: str | Path | None, progress: Progress, log: Callable[[str], None], bench: Any,
               data: SearchData | None, device: str | None,
               on_record: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    from .benchmarks import open_benchmark
    from .experiments import ground_truth_record, interrupted_message
    from .threads import resolve_threads, torch_threads

    t_start = time.perf_counter()

    def settle() -> tuple[dict[str, Any], dict[str, Any] | None, int | None, str, str | None]:
        """Rank 0: the config (a resumed run's stored one), the checkpoint, the cell."""
        nonlocal bench
        c, state, path = cfg, None, None
        if resume is not None:
            run = RunDir.open(resume)
            c = train_config_from_dict(run.read_json("config.json"), where=str(run.path / "config.json"))
            if device is not None:
                c.device = device
            c.validate()
            state = run.load_checkpoint()
            check_train_resumable(c, state, run.path)
            path = str(run.path)
            log(f"resuming {run.path}")
        if c.space == "nb201":  # the one space with a tabular benchmark to compare with
            bench = bench if bench is not None else open_benchmark(c.nb201_file)
        arch, index, label = resolve_cell(c, bench)
        c.arch = get_space(c.space).format(arch)  # config.json names the cell in the space's text
        return asdict(c), state, index, label, path

    cfg_dict, state, index, label, run_path = _from_rank0(ddp, settle)
    cfg = train_config_from_dict(cfg_dict)
    _quiet_off_rank0(ddp, lambda: ddp.per_rank_batch(cfg.batch_size))  # a resumed run's batch
    arch = get_space(cfg.space).parse(cfg.arch)
    nb201 = cfg.space == "nb201"
    with torch_threads(resolve_threads(cfg.threads)):
        def prepare() -> tuple[SearchData, TensorSplit, TensorSplit, str, str]:
            """Every rank: its device and its copy of the data, checked."""
            where = ddp.run_device(cfg.device)
            if torch.device(where).type == "cuda" and ddp.launched:
                torch.cuda.set_device(torch.device(where))  # NCCL's device for this rank
            d = data if data is not None else load_search_data(
                cfg.dataset, cfg.root, image_size=cfg.image_size, limit=cfg.limit,
                download=cfg.download, seed=cfg.seed, device=where)
            tr, te, note = training_splits(d)
            _train_batches(cfg, tr, d.name)  # too small for a batch: one line, before any folder
            check_network(cfg, arch, d.num_classes, d.in_channels, int(tr.x.shape[-1]))
            return d, tr, te, note, where

        data, train, test, note, where = _on_every_rank(ddp, prepare)
        job = ddp.record(cfg.batch_size, backend)

        def make_folder() -> str:
            if run_path is not None:
                return run_path
            env = environment_info(where)
            env["distributed"] = job
            made = RunDir.create(cfg.out, _run_name(cfg, label), asdict(cfg), env)
            log(f"run directory: {made.path}")
            return str(made.path)

        run = RunDir(_from_rank0(ddp, make_folder))
        log(f"cell {index}: {arch}; {note}" if nb201 else
            f"{_SPACE_NAMES.get(cfg.space, cfg.space)} genotype {label}: {cfg.arch}; {note}")
        if ddp.launched:
            log(f"data-parallel: {ddp.world_size} ranks ({backend}), global batch {cfg.batch_size} = "
                f"{ddp.world_size} x {job['per_rank_batch']}; lr {cfg.lr} applies to the global batch")
        try:
            result = train_network(cfg, arch, train, test, num_classes=data.num_classes,
                                   in_channels=data.in_channels, dataset=data.name, run=run,
                                   resume=resume is not None, progress=progress, on_record=on_record,
                                   state=state, ddp=ddp)
        except KeyboardInterrupt:
            if not ddp.main:
                raise Interrupted(f"interrupted (rank {ddp.rank}); rank 0 names the run directory") from None
            command = ("torchrun --nproc_per_node K -m bayesnas_core.run train" if ddp.launched
                       else "python -m bayesnas_core.run train")
            raise Interrupted(interrupted_message(run, command)) from None

        def finish() -> dict[str, Any]:
            """Rank 0: result.json."""
            metrics = result.metrics
            best = max(metrics, key=lambda r: r["test_acc"])
            gt = ground_truth_record(bench.query(str(arch))) if nb201 else None
            metric = GROUND_TRUTH_METRIC.get(data.name) if nb201 else None
            params = count_parameters(result.model)
            diff = result.replica_max_abs_diff
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
                # this session's job; config.json has no world size, so a run resumes with any
                "distributed": job | {"replica_max_abs_diff": diff,
                                      "replicas_identical": None if diff is None else diff == 0.0},
            }
            run.write_json("result.json", record)
            return record

        return _from_rank0(ddp, finish)
