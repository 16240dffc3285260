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


_FASHION_CLASSES = 10
_FASHION_SIDE = 28
_STAGING_PREFIX = ".staging-"
_STALE_STAGING_S = 3600.0  # a staging folder this old was left by a killed unpack


def _idx_problem(name: str, data: bytes, size: int) -> tuple[str | None, tuple[int, ...]]:
    """Check one Fashion-MNIST idx file: ``data`` holds at least its header (all of it for
    a label file), ``size`` is its full length. Returns (what is wrong or None, its dims)."""
    ndim = 3 if "-images-" in name else 1
    header = 4 + 4 * ndim
    if size < header:
        return f"is truncated ({size} bytes, shorter than its {header}-byte header)", ()
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + ndim:
        return f"is not an idx{ndim}-ubyte file (magic number 0x{magic:08x}, expected 0x{0x0800 + ndim:08x})", ()
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and dims[1:] != (_FASHION_SIDE, _FASHION_SIDE):
        return f"holds {dims[1]}x{dims[2]} images, expected {_FASHION_SIDE}x{_FASHION_SIDE}", dims
    need = header + int(np.prod(dims))
    if size < need:
        return f"is truncated ({size} bytes, its header announces {need})", dims
    if size > need:
        return f"has {size - need} unexpected bytes after the {need} its header announces", dims
    if ndim == 1:
        labels = np.frombuffer(data, dtype=np.uint8, offset=header)
        bad = np.flatnonzero(labels >= _FASHION_CLASSES)
        if bad.size:
            i = int(bad[0])
            return f"holds label {int(labels[i])} at index {i}, outside the classes 0..{_FASHION_CLASSES - 1}", dims
    return None, dims


def _check_fashion(
    contents: dict[str, tuple[bytes, int]], shown: Callable[[str], str], fix: str, what: str
) -> None:
    """Raise a one-line UserError unless the four files form an intact Fashion-MNIST."""
    dims = {}
    for f in _FASHION_FILES:
        problem, dims[f] = _idx_problem(f, *contents[f])
        if problem:
            raise UserError(f"{what} file {shown(f)} {problem}: {fix}")
    for part in ("train", "t10k"):
        images, labels = f"{part}-images-idx3-ubyte", f"{part}-labels-idx1-ubyte"
        if dims[images][0] != dims[labels][0]:
            raise UserError(
                f"{what} file {shown(labels)} holds {dims[labels][0]} labels but {shown(images)} holds "
                f"{dims[images][0]} images: {fix}"
            )


def _read_for_check(path: Path, what: str) -> tuple[bytes, int]:
    """The header of an image file (all of a label file) and the file's size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            return (fh.read(16) if "-images-" in path.name else fh.read()), size
    except OSError as err:
        raise UserError(f"{what} file {path} cannot be read ({type(err).__name__}): make it readable") from err


def _clean_stale_staging(base: Path) -> None:
    import shutil
    import time

    for p in base.glob(f"{_STAGING_PREFIX}*"):
        try:
            if time.time() - p.stat().st_mtime > _STALE_STAGING_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _unpack_fashion_gz(root: Path, what: str = "Fashion-MNIST") -> Path:
    """Accept the original ``*-ubyte.gz`` files (Zalando's release, Debian's
    ``dataset-fashion-mnist``) in ``root`` or ``root/FashionMNIST/raw``: unpack them into
    the cache and return the root torchvision should read there.

    The cache folder is named by the content of the four files (their names, sizes and
    sha256), so a changed file never reuses an old unpacked copy. The files are checked
    (gzip intact, idx header, size, labels) before anything is written, unpacked into a
    staging folder and published by one rename: a failed or killed unpack leaves nothing
    that is later trusted."""
    import gzip
    import os
    import shutil
    import tempfile
    import zlib

    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in _FASHION_FILES):
        return root
    sources = {}
    for f in _FASHION_FILES:
        found = [d / f"{f}.gz" for d in (raw, root) if (d / f"{f}.gz").is_file()]
        if not found:
            return root  # nothing to unpack: torchvision reports what is missing
        sources[f] = found[0]
    intact = "replace it with an intact copy of the original file"

    blobs, key = {}, hashlib.sha256()
    for f, src in sources.items():
        try:
            blobs[f] = src.read_bytes()
        except OSError as err:
            raise UserError(f"{what} file {src} cannot be read ({type(err).__name__}): make it readable") from err
        key.update(f"{f} {len(blobs[f])} {hashlib.sha256(blobs[f]).hexdigest()}\n".encode())
    base = _cache_dir() / "fashion-mnist"
    target_root = base / f"sha256-{key.hexdigest()[:32]}"
    target = target_root / "FashionMNIST" / "raw"
    if target_root.is_dir():
        if all((target / f).is_file() for f in _FASHION_FILES):
            return target_root
        shutil.rmtree(target_root, ignore_errors=True)  # files deleted by hand: unpack again

    unpacked = {}
    for f in _FASHION_FILES:
        try:
            unpacked[f] = gzip.decompress(blobs.pop(f))
        except EOFError as err:
            raise UserError(f"{what} file {sources[f]} is truncated (its gzip stream ends early): {intact}") from err
        except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            problem = f"is not an intact gzip file ({_one_line(err)})"
            raise UserError(f"{what} file {sources[f]} {problem}: {intact}") from err
    _check_fashion({f: (d, len(d)) for f, d in unpacked.items()}, lambda f: f"{sources[f]} (unpacked)", intact, what)

    from .runs import atomic_write_bytes

    staging = None
    try:
        base.mkdir(parents=True, exist_ok=True)
        _clean_stale_staging(base)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=base))
        for f, data in unpacked.items():
            atomic_write_bytes(staging / "FashionMNIST" / "raw" / f, data)
        try:
            os.rename(staging, target_root)
        except OSError:
            if not all((target / f).is_file() for f in _FASHION_FILES):
                raise
            # another process published the same content first: use its copy
    except OSError as err:
        raise UserError(
            f"cannot unpack {what} into {base} ({type(err).__name__}: {_one_line(err)}): "
            "free space there or set BAYESNAS_CACHE to a writable folder"
        ) from err
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
    return target_root


def _load_fashion(root: Path, download: bool, what: str) -> tuple[_Raw, _Raw]:
    import torchvision

    given = _parent_if_named(root, "FashionMNIST")
    root = _unpack_fashion_gz(given, what)
    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in _FASHION_FILES):
        if root != given:
            fix = f"delete the cache folder {root} and run again"
        elif "subset" in what:
            fix = "replace it with the shipped copy (assets/data/make_subset.py regenerates the subset)"
        else:
            fix = "replace it with an intact copy of the original file, or delete it and pass --download to fetch it"
        _check_fashion({f: _read_for_check(raw / f, what) for f in _FASHION_FILES}, lambda f: str(raw / f), fix, what)
    put = "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or the four .gz files)"
    out = []
    for train in (True, False):
        ds = _torchvision(torchvision.datasets.FashionMNIST, root, train, download, what, put)
        out.append((ds.data.unsqueeze(-1), ds.targets.numpy().astype(np.int64)))
    return out[0], out[1]


def _check_labels(images: Any, labels: np.ndarray, num_classes: int, what: str, root: Path, fix: str) -> None:
    """Raise a one-line UserError unless there is one label per image, each in 0..num_classes-1."""
    if len(images) != len(labels):
        raise UserError(f"{what} under {root} holds {len(images)} images but {len(labels)} labels: {fix}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise UserError(
            f"{what} under {root} holds label {int(labels[i])} at index {i}, "
            f"outside the classes 0..{num_classes - 1}: {fix}"
        )


def _load_cifar(cls_name: str, root: Path, download: bool, what: str) -> tuple[_Raw, _Raw]:
    import torchvision

    factory = getattr(torchvision.datasets, cls_name)
    root = _parent_if_named(root, factory.base_folder)
    out = []
    for train in (True, False):
        ds = _torchvision(factory, root, train, download, what, factory.base_folder)
        targets = np.asarray(ds.targets, dtype=np.int64).reshape(-1)
        fix = f"delete {factory.base_folder} and pass --download to fetch it again"
        _check_labels(ds.data, targets, _NUM_CLASSES.get(cls_name.lower(), 10), what, root, fix)
        out.append((ds.data, targets))
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
