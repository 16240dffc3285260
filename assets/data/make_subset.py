"""Regenerate the shipped Fashion-MNIST subset from the original idx ``.gz`` files.

Usage::

    python assets/data/make_subset.py /path/to/fashion-mnist [--out DIR] [--seed 0]

``/path/to/fashion-mnist`` holds ``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and
``t10k-labels-idx1-ubyte.gz`` (Zalando's release, or Debian's ``dataset-fashion-mnist``
under ``/usr/share/datasets/fashion-mnist``). The output goes to
``DIR/FashionMNIST/raw/`` (default ``DIR`` = this file's folder) as uncompressed idx
files with the names torchvision's ``FashionMNIST`` reads, plus ``DIR/subset_indices.json``
(the original index of every image kept).

Procedure (seed 0 by default), one ``numpy.random.default_rng(seed)`` used in this order:

1. train: for class c = 0..9, draw 400 of the class's training indices without
   replacement (``rng.choice``); the first 200 drawn go to half A, the other 200 to half B.
   The subset's training file is A sorted by original index, then B sorted by original
   index (2,000 + 2,000 images), so the library's "first half = search-train, second half
   = search-valid" rule gives two class-balanced halves of 200 images per class.
2. test: for class c = 0..9, draw 100 of the class's test indices; the subset's test file
   is all 1,000 sorted by original index.

Images and labels are copied byte for byte; nothing is resized or re-encoded.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np

TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
NUM_CLASSES = 10


def read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzip-compressed idx file (ubyte data) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an uncompressed idx file (magic 0x0000080N, big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.tobytes())


def select_indices(train_labels: np.ndarray, test_labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (train indices, test indices) into the original files, as documented above."""
    rng = np.random.default_rng(seed)
    half_a, half_b = [], []
    for c in range(NUM_CLASSES):
        pick = rng.choice(np.flatnonzero(train_labels == c), size=TRAIN_PER_CLASS, replace=False)
        half_a.append(pick[: TRAIN_PER_CLASS // 2])
        half_b.append(pick[TRAIN_PER_CLASS // 2 :])
    train = np.concatenate([np.sort(np.concatenate(half_a)), np.sort(np.concatenate(half_b))])
    test_picks = [
        rng.choice(np.flatnonzero(test_labels == c), size=TEST_PER_CLASS, replace=False) for c in range(NUM_CLASSES)
    ]
    test = np.sort(np.concatenate(test_picks))
    return train, test


def make_subset(source: Path, out: Path, seed: int = 0) -> dict[str, str]:
    """Write the subset under ``out/FashionMNIST/raw``; return {filename: sha256}."""
    train_x = read_idx_gz(source / "train-images-idx3-ubyte.gz")
    train_y = read_idx_gz(source / "train-labels-idx1-ubyte.gz")
    test_x = read_idx_gz(source / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx_gz(source / "t10k-labels-idx1-ubyte.gz")
    train_idx, test_idx = select_indices(train_y, test_y, seed)

    raw = out / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    outputs = {
        "train-images-idx3-ubyte": train_x[train_idx],
        "train-labels-idx1-ubyte": train_y[train_idx],
        "t10k-images-idx3-ubyte": test_x[test_idx],
        "t10k-labels-idx1-ubyte": test_y[test_idx],
    }
    digests = {}
    for name, array in outputs.items():
        write_idx(raw / name, array)
        digests[name] = hashlib.sha256((raw / name).read_bytes()).hexdigest()
    index_record = {"seed": seed, "train": train_idx.tolist(), "test": test_idx.tolist()}
    (out / "subset_indices.json").write_text(json.dumps(index_record, separators=(",", ":")) + "\n")
    return digests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder holding the four Fashion-MNIST *-ubyte.gz files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, digest in make_subset(args.source, args.out, args.seed).items():
        print(f"{digest}  FashionMNIST/raw/{name}")


if __name__ == "__main__":
    main()
