"""Bad Fashion-MNIST files end as one-line UserErrors, and the unpack cache follows content.

Every corrupt variant is built in ``tmp_path`` from the original release files in
``../shared/data/fashion-mnist``; ``BAYESNAS_CACHE`` points into ``tmp_path``.
"""

from __future__ import annotations

import gzip
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import bayesnas_core.runs
from bayesnas_core.data import load_search_data
from bayesnas_core.errors import UserError

FASHION_ORIGINALS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
LIMIT = 4


@pytest.fixture(scope="module")
def gz() -> dict[str, bytes]:
    """The four original .gz files, as bytes."""
    if not all((FASHION_ORIGINALS / f"{f}.gz").is_file() for f in FILES):
        msg = f"original Fashion-MNIST .gz files not at {FASHION_ORIGINALS}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return {f: (FASHION_ORIGINALS / f"{f}.gz").read_bytes() for f in FILES}


@pytest.fixture(scope="module")
def raw(gz) -> dict[str, bytes]:
    """The four files unpacked."""
    return {f: gzip.decompress(b) for f, b in gz.items()}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("BAYESNAS_CACHE", str(path))
    return path


def _write(folder: Path, files: dict[str, bytes], suffix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f, data in files.items():
        (folder / f"{f}{suffix}").write_bytes(data)
    return folder


def _cached_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


def _one_line_error(root: Path, names: Path, fix: str) -> str:
    """Loading ``root`` raises a UserError: one line that names the bad file and the fix."""
    with pytest.raises(UserError) as err:
        load_search_data("fashion-mnist", root, limit=LIMIT)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(names) in msg, msg
    assert fix in msg, msg
    return msg


def _labels(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.uint8, offset=8)


def _with_label(raw_labels: bytes, index: int, value: int) -> bytes:
    data = bytearray(raw_labels)
    data[8 + index] = value
    return bytes(data)


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


# Corrupt variants of one file: name -> (file, function of (gz bytes, raw bytes) -> new .gz bytes, words in the message)
GZ_CASES = {
    "garbage": ("t10k-labels-idx1-ubyte",
                lambda g, r: np.random.default_rng(0).integers(0, 256, len(g), dtype=np.uint8).tobytes(),
                "not an intact gzip file"),
    "truncated-gz": ("t10k-images-idx3-ubyte", lambda g, r: _cut(g), "truncated"),
    "gz-of-truncated-idx": ("t10k-images-idx3-ubyte", lambda g, r: gzip.compress(_cut(r), 1), "truncated"),
    "wrong-magic": ("train-labels-idx1-ubyte",
                    lambda g, r: gzip.compress(struct.pack(">I", 0x0803) + r[4:]), "magic number"),
    "label-out-of-range": ("train-labels-idx1-ubyte",
                           lambda g, r: gzip.compress(_with_label(r, 123, 10)), "label 10 at index 123"),
    "count-mismatch": ("t10k-labels-idx1-ubyte",
                       lambda g, r: gzip.compress(struct.pack(">II", 0x0801, 9999) + r[8:-1]), "9999 labels"),
}


# --------------------------------------------------------------------------- the cache follows content


@pytest.mark.parametrize("case", ["truncated-gz", "label-out-of-range"])
def test_bad_gz_first_then_good_copy_loads(tmp_path, cache, gz, raw, case):
    name, corrupt, words = GZ_CASES[case]
    src = _write(tmp_path / "fmnist", gz, ".gz")
    (src / f"{name}.gz").write_bytes(corrupt(gz[name], raw[name]))
    _one_line_error(src, src / f"{name}.gz", "replace")
    assert _cached_files(cache) == []  # the bad file left nothing behind
    (src / f"{name}.gz").write_bytes(gz[name])  # the user puts an intact copy in the same folder
    data = load_search_data("fashion-mnist", src, limit=LIMIT)
    train_labels = _labels(raw["train-labels-idx1-ubyte"])
    assert data.train.y.tolist() == train_labels[:LIMIT].tolist()
    assert data.valid.y.tolist() == train_labels[30000 : 30000 + LIMIT].tolist()
    assert data.test.y.tolist() == _labels(raw["t10k-labels-idx1-ubyte"])[:LIMIT].tolist()


def test_good_gz_first_then_changed_files_are_not_served_from_the_cache(tmp_path, cache, gz, raw):
    src = _write(tmp_path / "fmnist", gz, ".gz")
    test_labels = _labels(raw["t10k-labels-idx1-ubyte"])
    assert load_search_data("fashion-mnist", src, limit=LIMIT).test.y.tolist() == test_labels[:LIMIT].tolist()
    # a truncated copy over a good one: an error, not the old data
    (src / "train-images-idx3-ubyte.gz").write_bytes(_cut(gz["train-images-idx3-ubyte"]))
    _one_line_error(src, src / "train-images-idx3-ubyte.gz", "replace")
    (src / "train-images-idx3-ubyte.gz").write_bytes(gz["train-images-idx3-ubyte"])
    # same size, different content (one label changed, still in range): the new label is read
    new_label = (int(test_labels[1]) + 1) % 10
    changed = gzip.compress(_with_label(raw["t10k-labels-idx1-ubyte"], 1, new_label), 9)
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(changed)
    data = load_search_data("fashion-mnist", src, limit=LIMIT)
    assert data.test.y.tolist() == [int(test_labels[0]), new_label, *test_labels[2:LIMIT].tolist()]


def test_tampered_cache_names_the_cache_folder_and_a_fresh_unpack_heals_it(tmp_path, cache, gz):
    src = _write(tmp_path / "fmnist", gz, ".gz")
    good = load_search_data("fashion-mnist", src, limit=LIMIT)
    (unpacked,) = [p for p in _cached_files(cache) if p.name == "train-images-idx3-ubyte"]
    folder = unpacked.parents[2]
    unpacked.write_bytes(_cut(unpacked.read_bytes()))
    _one_line_error(src, unpacked, f"delete the cache folder {folder}")
    unpacked.unlink()  # a folder missing a file is unpacked again
    again = load_search_data("fashion-mnist", src, limit=LIMIT)
    assert (again.train.x == good.train.x).all() and (again.test.y == good.test.y).all()


def test_an_interrupted_unpack_leaves_nothing_that_is_trusted(tmp_path, cache, gz, monkeypatch):
    src = _write(tmp_path / "fmnist", gz, ".gz")
    real_write = bayesnas_core.runs.atomic_write_bytes
    calls = []

    def killed(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C half-way through
        real_write(path, data)

    monkeypatch.setattr(bayesnas_core.runs, "atomic_write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        load_search_data("fashion-mnist", src, limit=LIMIT)
    assert _cached_files(cache) == []
    monkeypatch.setattr(bayesnas_core.runs, "atomic_write_bytes", real_write)
    # a staging folder left by a killed process (no cleanup ran) is ignored, and removed once stale
    stale = cache / "fashion-mnist" / ".staging-killed" / "FashionMNIST" / "raw"
    _write(stale, {"train-images-idx3-ubyte": b"half a file"})
    old = time.time() - 2 * 3600
    os.utime(stale.parents[1], (old, old))
    data = load_search_data("fashion-mnist", src, limit=LIMIT)
    assert len(data.train) == LIMIT
    assert not stale.parents[1].exists()
    assert sorted(p.name for p in _cached_files(cache)) == sorted(FILES)


# --------------------------------------------------------------------------- each bad file: one line, a fix


@pytest.mark.parametrize("case", sorted(GZ_CASES))
def test_bad_gz_file_is_a_one_line_user_error(tmp_path, cache, gz, raw, case):
    name, corrupt, words = GZ_CASES[case]
    src = _write(tmp_path / "fmnist", gz, ".gz")
    (src / f"{name}.gz").write_bytes(corrupt(gz[name], raw[name]))
    msg = _one_line_error(src, src / f"{name}.gz", "replace")
    assert words in msg and "intact copy of the original file" in msg
    assert _cached_files(cache) == []


RAW_CASES = {
    "truncated": ("train-images-idx3-ubyte", _cut, "truncated"),
    "wrong-magic": ("t10k-images-idx3-ubyte", lambda r: struct.pack(">I", 0x0C03) + r[4:], "magic number"),
    "wrong-shape": ("t10k-images-idx3-ubyte", lambda r: struct.pack(">IIII", 0x0803, 10000, 14, 56) + r[16:],
                    "14x56 images"),
    "label-out-of-range": ("t10k-labels-idx1-ubyte", lambda r: _with_label(r, 7, 255), "label 255 at index 7"),
    "extra-bytes": ("train-labels-idx1-ubyte", lambda r: r + b"\0", "1 unexpected bytes"),
    "count-mismatch": ("train-labels-idx1-ubyte", lambda r: struct.pack(">II", 0x0801, 59999) + r[8:-1],
                       "59999 labels"),
}


@pytest.mark.parametrize("case", sorted(RAW_CASES))
def test_bad_raw_idx_file_is_a_one_line_user_error(tmp_path, cache, raw, case):
    name, corrupt, words = RAW_CASES[case]
    folder = _write(tmp_path / "fmnist" / "FashionMNIST" / "raw", raw)
    (folder / name).write_bytes(corrupt(raw[name]))
    msg = _one_line_error(tmp_path / "fmnist", folder / name, "replace it with an intact copy")
    assert words in msg and "--download" in msg
    assert _cached_files(cache) == []


def test_intact_raw_files_load(tmp_path, cache, raw):
    folder = _write(tmp_path / "fmnist" / "FashionMNIST" / "raw", raw)
    data = load_search_data("fashion-mnist", folder.parent, limit=LIMIT)  # the FashionMNIST folder itself
    assert data.test.y.tolist() == _labels(raw["t10k-labels-idx1-ubyte"])[:LIMIT].tolist()
    assert _cached_files(cache) == []  # raw files are read in place
