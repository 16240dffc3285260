"""Datasets, search splits, the shipped subset and device-resident batching.

Every dataset is read by its real loader (torchvision's ``FashionMNIST``, ``CIFAR10`` and
``CIFAR100``; :class:`ImageNet16` for NAS-Bench-201's ImageNet16-120 pickles), converted
once into normalized float32 tensors ``[N, C, H, W]`` on the requested device, and batched
by :class:`BatchIterator`, whose order and augmentation are a pure function of
``(seed, epoch)``. No DataLoader workers, no global state: the same code runs the CPU
lessons and the GPU full-scale searches.

Search splits (``load_search_data``):

- ``cifar10``: train images ``[0, 25000)`` are search-train, ``[25000, 50000)`` are
  search-valid, in file order (DARTS / NB201 ``cifar10`` search split); test = the
  official 10,000 test images.
- ``fashion-mnist`` and ``fashion-mnist-subset``: the same rule, first half / second half
  of the training file in file order; test = the official test file. The shipped subset
  was written so that both halves hold 200 images per class (``assets/data/README.md``).
- ``cifar100`` and ``imagenet16-120`` (NB201's convention): search-train = the whole
  training set; the official test set is cut in two halves by a seeded permutation
  (``torch.randperm`` on a CPU generator seeded with ``seed``): the first half of the
  permutation is search-valid (NB201's "x-valid"), the rest is test ("x-test"); each half
  keeps file order. NB201's own split files are not shipped, so the halves differ from
  NB201's; ``SearchData.split_note`` says so.

``limit`` then keeps the first ``limit`` items of each of the three splits.
"""

from __future__ import annotations

import math
import dataclasses
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserError
from .paths import assets_dir

__all__ = [
    "DATASETS",
    "NORMALIZATION",
    "TensorSplit",
    "SearchData",
    "ImageNet16",
    "load_search_data",
    "BatchIterator",
    "augment_batch",
]

DATASETS: tuple[str, ...] = ("fashion-mnist-subset", "fashion-mnist", "cifar10", "cifar100", "imagenet16-120")

_IMAGENET16_MEAN = tuple(v / 255 for v in (122.68, 116.66, 104.01))
_IMAGENET16_STD = tuple(v / 255 for v in (63.22, 61.26, 65.09))

#: Per-channel (mean, std) of pixel values in [0, 1], applied at load time.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist-subset": ((0.2860,), (0.3530,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet16-120": (_IMAGENET16_MEAN, _IMAGENET16_STD),
}

_PRETTY = {
    "fashion-mnist-subset": "Fashion-MNIST subset",
    "fashion-mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "imagenet16-120": "ImageNet16-120",
}
_NUM_CLASSES = {"cifar100": 100, "imagenet16-120": 120}  # the rest have 10
_RESIZE_CHUNK = 4096  # images per interpolate call, to bound peak memory


@dataclass(frozen=True)
class TensorSplit:
    """Images ``x`` (float32, normalized, ``[N, C, H, W]``) and labels ``y`` (int64, ``[N]``)."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"TensorSplit needs x [N,C,H,W] and y [N]; got {tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )
        if self.x.device != self.y.device:
            raise ValueError(f"TensorSplit x is on {self.x.device} but y is on {self.y.device}")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class SearchData:
    """The three splits of a search run, with the facts a model needs to be built."""

    name: str
    train: TensorSplit
    valid: TensorSplit
    test: TensorSplit | None
    num_classes: int
    in_channels: int
    image_size: int
    split_note: str  # one line describing the split used

    def to(self, dtype: torch.dtype) -> "SearchData":
        """The same data with images cast to ``dtype`` (labels unchanged)."""
        cast = lambda t: None if t is None else TensorSplit(t.x.to(dtype), t.y)  # noqa: E731
        return dataclasses.replace(self, train=cast(self.train), valid=cast(self.valid),
                                   test=cast(self.test))


# --------------------------------------------------------------------------- readers


class ImageNet16:
    """Reader for NAS-Bench-201's ImageNet16 pickles (downsampled ImageNet, 16x16).

    ``root`` holds ``train_data_batch_1`` .. ``train_data_batch_10`` and ``val_data``; each
    is a pickle of a dict with ``'data'`` (uint8 ``[n, 768]``, channel-planar 3x16x16) and
    ``'labels'`` (1-based classes 1..1000). As NB201's ``ImageNet16(use_num_of_class_only=
    num_classes)``, only labels ``1..num_classes`` are kept, mapped to ``0..num_classes-1``
    (``num_classes=None`` keeps all). ``data`` is uint8 ``[N, 16, 16, 3]`` (HWC, like
    torchvision's CIFAR) and ``targets`` a list of ints; no md5 check.
    """

    train_files: tuple[str, ...] = tuple(f"train_data_batch_{i}" for i in range(1, 11))
    valid_files: tuple[str, ...] = ("val_data",)

    def __init__(self, root: str | Path, train: bool = True, num_classes: int | None = 120) -> None:
        self.root = Path(root)
        self.train = train
        files = self.train_files if train else self.valid_files
        missing = [name for name in files if not (self.root / name).is_file()]
        if missing:
            raise UserError(
                f"ImageNet16 file {missing[0]} not found under {self.root}: put NB201's ImageNet16 files "
                "(train_data_batch_1..10, val_data) there or point --data-root DIR at the folder holding them"
            )
        chunks, labels = [], []
        for name in files:
            entry = _read_pickle(self.root / name, "ImageNet16")
            try:
                data = np.asarray(entry["data"], dtype=np.uint8)
                batch_labels = np.asarray(entry["labels"], dtype=np.int64).reshape(-1)
            except (KeyError, TypeError, ValueError) as err:
                raise UserError(
                    f"ImageNet16 file {self.root / name} is not in NB201's format ({_one_line(err)}): replace it"
                ) from err
            if data.ndim != 2 or data.shape[1] != 3 * 16 * 16 or data.shape[0] != batch_labels.shape[0]:
                raise UserError(
                    f"ImageNet16 file {self.root / name} has data {data.shape} and {batch_labels.shape[0]} labels, "
                    "expected [n, 768] and n labels: replace it"
                )
            if num_classes is not None:  # filter per file: the full train set is ~1 GB
                keep = (batch_labels >= 1) & (batch_labels <= num_classes)
                data, batch_labels = data[keep], batch_labels[keep]
            chunks.append(data)
            labels.append(batch_labels)
        data = np.concatenate(chunks)
        targets = np.concatenate(labels)
        self.num_classes = num_classes
        self.data: np.ndarray = data.reshape(-1, 3, 16, 16).transpose(0, 2, 3, 1)  # HWC
        self.targets: list[int] = (targets - 1).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.data[index], self.targets[index]


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _read_pickle(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, IndexError) as err:
        raise UserError(
            f"{what} file {path} is unreadable ({type(err).__name__}): replace it with an intact copy"
        ) from err
    if not isinstance(entry, dict):
        raise UserError(f"{what} file {path} does not hold a dict: replace it with an intact copy")
    return entry


_CORRUPT_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, AssertionError, TypeError, IndexError)


def _torchvision(
    factory: Callable[..., Any], root: Path, train: bool, download: bool, what: str, put: str
) -> Any:
    """Build a torchvision dataset, turning its missing/corrupt/download errors into UserError."""
    fetch = "pass --download to fetch it"
    if not download and not root.is_dir():
        raise UserError(f"{what} not found: {root} does not exist; put {put} under --data-root DIR, or {fetch}")
    try:
        return factory(str(root), train=train, download=download)
    except RuntimeError as err:
        if "not found" in str(err):  # "Dataset not found or corrupted", "Dataset not found."
            raise UserError(
                f"{what} not found under {root}: put {put} there (or point --data-root DIR at its parent), or {fetch}"
            ) from err
        if download:
            raise UserError(_download_failed(what, root, put, err)) from err
        raise
    except OSError as err:  # urllib's URLError is an OSError
        if download:
            raise UserError(_download_failed(what, root, put, err)) from err
        raise
    except _CORRUPT_ERRORS as err:
        raise UserError(
            f"{what} under {root} is unreadable ({type(err).__name__}): "
            f"delete {put} and pass --download to fetch it again"
        ) from err


def _download_failed(what: str, root: Path, put: str, err: BaseException) -> str:
    return f"could not download {what} into {root} ({_one_line(err)}): fetch it by hand and put {put} there"


def _parent_if_named(root: Path, folder: str) -> Path:
    """Accept ``root`` pointing at the dataset folder itself (e.g. ``.../cifar-10-batches-py``)."""
    return root.parent if root.name == folder and not (root / folder).exists() else root


# Raw data: images uint8 [N, H, W, C] (numpy or torch), labels int64 numpy [N].
_Raw = tuple[Any, np.ndarray]


_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _cache_dir() -> Path:
    """Where unpacked copies of compressed data go (``$BAYESNAS_CACHE``, default
    ``~/.cache/bayesnas``); the user's data folder is never written to."""
    import os

    return Path(os.environ.get("BAYESNAS_CACHE", Path.home() / ".cache" / "bayesnas"))


def _unpack_fashion_gz(root: Path) -> Path:
    """Accept the original ``*-ubyte.gz`` files (Zalando's release, Debian's
    ``dataset-fashion-mnist``) in ``root`` or ``root/FashionMNIST/raw``: unpack them once
    into the cache and return the root torchvision should read there."""
    import gzip

    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in _FASHION_FILES):
        return root
    sources = {}
    for f in _FASHION_FILES:
        found = [d / f"{f}.gz" for d in (raw, root) if (d / f"{f}.gz").is_file()]
        if not found:
            return root  # nothing to unpack: torchvision reports what is missing
        sources[f] = found[0]
    target_root = _cache_dir() / "fashion-mnist" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    target = target_root / "FashionMNIST" / "raw"
    from .runs import atomic_write_bytes

    for f, src in sources.items():
        if not (target / f).is_file():
            with gzip.open(src, "rb") as fh:
                atomic_write_bytes(target / f, fh.read())
    return target_root


def _load_fashion(root: Path, download: bool, what: str) -> tuple[_Raw, _Raw]:
    import torchvision

    root = _unpack_fashion_gz(_parent_if_named(root, "FashionMNIST"))
    put = "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or the four .gz files)"
    out = []
    for train in (True, False):
        ds = _torchvision(torchvision.datasets.FashionMNIST, root, train, download, what, put)
        out.append((ds.data.unsqueeze(-1), ds.targets.numpy().astype(np.int64)))
    return out[0], out[1]


def _load_cifar(cls_name: str, root: Path, download: bool, what: str) -> tuple[_Raw, _Raw]:
    import torchvision

    factory = getattr(torchvision.datasets, cls_name)
    root = _parent_if_named(root, factory.base_folder)
    out = []
    for train in (True, False):
        ds = _torchvision(factory, root, train, download, what, factory.base_folder)
        out.append((ds.data, np.asarray(ds.targets, dtype=np.int64)))
    return out[0], out[1]


def _load_imagenet16(root: Path) -> tuple[_Raw, _Raw]:
    if not root.is_dir():
        raise UserError(
            f"ImageNet16-120 not found: {root} does not exist; put NB201's ImageNet16 files "
            "(train_data_batch_1..10, val_data) in a folder and pass it as --data-root DIR"
        )
    if not (root / "val_data").exists() and (root / "ImageNet16").is_dir():
        root = root / "ImageNet16"
    out = []
    for train in (True, False):
        ds = ImageNet16(root, train=train, num_classes=120)
        out.append((ds.data, np.asarray(ds.targets, dtype=np.int64)))
    return out[0], out[1]


# --------------------------------------------------------------------------- conversion


def _to_split(
    raw: _Raw, index: Tensor, mean: Sequence[float], std: Sequence[float], image_size: int, device: torch.device
) -> TensorSplit:
    """Select ``index`` from raw uint8 NHWC images, move to ``device``, resize, normalize."""
    images, labels = raw
    idx = index.numpy()
    sel = images[index] if isinstance(images, Tensor) else torch.from_numpy(np.ascontiguousarray(images[idx]))
    x = sel.to(device).permute(0, 3, 1, 2).to(dtype=torch.float32, memory_format=torch.contiguous_format)
    x.div_(255.0)
    if len(x) == 0:
        x = x.new_empty(0, x.shape[1], image_size, image_size)
    elif x.shape[-1] != image_size or x.shape[-2] != image_size:
        size = (image_size, image_size)
        x = torch.cat(
            [
                F.interpolate(chunk, size=size, mode="bilinear", align_corners=False, antialias=True)
                for chunk in x.split(_RESIZE_CHUNK)
            ]
        )
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    x.sub_(mean_t).div_(std_t)
    y = torch.as_tensor(labels[idx], dtype=torch.int64, device=device)
    return TensorSplit(x, y)


def _halves(n: int) -> tuple[Tensor, Tensor]:
    """First half / second half, in file order (DARTS's CIFAR-10 search split)."""
    return torch.arange(n // 2), torch.arange(n // 2, n)


def _seeded_halves(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Two halves by a seeded permutation; each half sorted back into file order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2].sort().values, perm[n // 2 :].sort().values


def load_search_data(
    dataset: str,
    root: str | Path | None = None,
    *,
    image_size: int | None = None,
    limit: int | None = None,
    download: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> SearchData:
    """Load ``dataset`` and return its search-train / search-valid / test splits on ``device``.

    ``root`` defaults to the shipped ``assets/data`` for ``fashion-mnist-subset`` and is
    required otherwise. ``image_size`` resizes (bilinear, antialiased) once at load time;
    ``limit`` keeps the first ``limit`` items of each split; ``seed`` only picks the
    test-set halves of ``cifar100`` / ``imagenet16-120``. See the module docstring.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if image_size is not None and image_size < 1:
        raise UserError(f"image size must be a positive integer, got {image_size}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive integer, got {limit}")
    device = torch.device(device)

    if dataset == "fashion-mnist-subset":
        if download:
            raise UserError(
                "fashion-mnist-subset ships with the package and is never downloaded: "
                "drop --download, or use --dataset fashion-mnist --download"
            )
        where = Path(root).expanduser() if root is not None else assets_dir() / "data"
        if not where.is_dir():
            raise UserError(
                f"Fashion-MNIST subset not found: {where} does not exist; regenerate it with "
                "assets/data/make_subset.py or point --data-root DIR at a folder holding FashionMNIST/raw/*-ubyte"
            )
    else:
        if root is None:
            extra = "" if dataset == "imagenet16-120" else " (add --download to fetch it there)"
            raise UserError(f"{dataset} needs a data folder: pass --data-root DIR{extra}")
        where = Path(root).expanduser()
        if download and dataset == "imagenet16-120":
            raise UserError(
                "ImageNet16-120 cannot be downloaded automatically: "
                "drop --download and put NB201's ImageNet16 files under --data-root DIR"
            )

    if dataset in ("fashion-mnist-subset", "fashion-mnist"):
        train_raw, test_raw = _load_fashion(where, download, _PRETTY[dataset])
    elif dataset == "cifar10":
        train_raw, test_raw = _load_cifar("CIFAR10", where, download, "CIFAR-10")
    elif dataset == "cifar100":
        train_raw, test_raw = _load_cifar("CIFAR100", where, download, "CIFAR-100")
    else:
        train_raw, test_raw = _load_imagenet16(where)

    n_train, n_test = len(train_raw[1]), len(test_raw[1])
    pretty = _PRETTY[dataset]
    if dataset in ("cifar100", "imagenet16-120"):
        train_idx = torch.arange(n_train)
        valid_idx, test_idx = _seeded_halves(n_test, seed)
        note = (
            f"{pretty}: search-train = all {n_train} train images; search-valid = {len(valid_idx)} of the {n_test} "
            f"test images picked by a seeded permutation (seed {seed}), test = the other {len(test_idx)} "
            "(stands in for NB201's x-valid/x-test halves, whose split file is not shipped)"
        )
        train_src, valid_src = train_raw, test_raw
    else:
        train_idx, valid_idx = _halves(n_train)
        test_idx = torch.arange(n_test)
        note = (
            f"{pretty}: search-train = train images [0, {n_train // 2}), search-valid = [{n_train // 2}, {n_train}) "
            f"in file order (DARTS's first-half/second-half rule); test = all {n_test} images of the test file"
        )
        train_src, valid_src = train_raw, train_raw
    if limit is not None:
        train_idx, valid_idx, test_idx = train_idx[:limit], valid_idx[:limit], test_idx[:limit]
        note += f"; limited to the first {limit} of each split"

    native = int(train_raw[0].shape[1])
    size = native if image_size is None else int(image_size)
    if size != native:
        note += f"; resized {native}->{size} (bilinear, antialiased)"
    mean, std = NORMALIZATION[dataset]
    num_classes = _NUM_CLASSES.get(dataset, 10)
    return SearchData(
        name=dataset,
        train=_to_split(train_src, train_idx, mean, std, size, device),
        valid=_to_split(valid_src, valid_idx, mean, std, size, device),
        test=_to_split(test_raw, test_idx, mean, std, size, device),
        num_classes=num_classes,
        in_channels=len(mean),
        image_size=size,
        split_note=note,
    )


# --------------------------------------------------------------------------- batching


def augment_batch(
    x: Tensor, generator: torch.Generator, pad: int = 4, fill: float | Sequence[float] = 0.0
) -> Tensor:
    """Random crop after padding by ``pad`` and random horizontal flip, per image, in one gather.

    ``x`` is ``[B, C, H, W]``; the noise comes from ``generator`` (on ``x``'s device). The
    padding value is ``fill`` in the normalized space: 0 (the default) pads with the
    dataset's mean colour; DARTS's black padding is ``fill = [-m / s for m, s in NORMALIZATION[name]]``.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects [B, C, H, W], got {tuple(x.shape)}")
    b, c, h, w = x.shape
    dev = x.device
    flip = torch.randint(0, 2, (b,), generator=generator, device=dev).bool()
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    if pad > 0:
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
        rows = rows + oy[:, None]
        cols = cols + ox[:, None]
        src = x.new_empty(b, c, h + 2 * pad, w + 2 * pad)
        if isinstance(fill, (int, float)):
            src.fill_(fill)  # no host-to-device copy, so no sync on CUDA
        else:
            src.copy_(torch.as_tensor(fill, dtype=x.dtype, device=dev).reshape(1, -1, 1, 1).expand_as(src))
        src[:, :, pad : pad + h, pad : pad + w] = x
    else:
        src = x
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return src[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class BatchIterator:
    """Deterministic mini-batches of a device-resident :class:`TensorSplit`.

    ``epoch(e)`` seeds a ``torch.Generator`` on the split's device with
    ``seed * 100003 + e`` and draws the order and the augmentation noise from it, so the
    batches of an epoch are a pure function of ``(seed, e)``: a run resumed at an epoch
    boundary sees bit-identical batches (on the same device and torch version).
    """

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = True,
        pad: int = 4,
        fill: float | Sequence[float] = 0.0,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be a positive integer, got {batch_size}")
        n = len(split)
        if n == 0 or (drop_last and batch_size > n):
            raise UserError(
                f"batch size {batch_size} is larger than the {n} examples of this split: "
                "lower the batch size or raise --limit"
            )
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.pad = pad
        self.fill = fill

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the ``(x, y)`` batches of ``epoch``."""
        return self._pass(self.seed * 100003 + epoch)

    def cycle(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches without end: first exactly ``epoch(epoch)``, then further passes in
        new orders (pass ``k`` seeded with ``seed * 100003 + epoch + k * 1_000_000_007``),
        for a split that is shorter than the one it is paired with."""
        k = 0
        while True:
            yield from self._pass(self.seed * 100003 + epoch + k * 1_000_000_007)
            k += 1

    def _pass(self, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        device = self.split.x.device
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        n = len(self.split)
        order = torch.randperm(n, generator=gen, device=device) if self.shuffle else torch.arange(n, device=device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            xb = self.split.x.index_select(0, idx)
            if self.augment:
                xb = augment_batch(xb, gen, self.pad, self.fill)
            yield xb, self.split.y.index_select(0, idx)
