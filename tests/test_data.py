"""Tests for bayesnas_core.data: real loaders on real (or exactly-formatted) files."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from bayesnas_core.data import (
    DATASETS,
    NORMALIZATION,
    BatchIterator,
    ImageNet16,
    TensorSplit,
    augment_batch,
    load_search_data,
)
from bayesnas_core.errors import UserError
from bayesnas_core.paths import assets_dir

FASHION_ORIGINALS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
SUBSET_DIR = assets_dir() / "data"
SUBSET_SHA256 = {
    "train-images-idx3-ubyte": "51a8174268bc6baea33404211080002e288a33cc8a9ef7d278ab9465c2e598b4",
    "train-labels-idx1-ubyte": "97e89ed44cb856626015dcd6e75c158b26b09bf9d41f8c02f1ad58f4147bb3de",
    "t10k-images-idx3-ubyte": "2d509f57600764ca037fc5c91984c8e6db400226916622958a4edf5217390da1",
    "t10k-labels-idx1-ubyte": "3f6723227ae46c17d7618e55af42408dc25dca79236b74fa7f6fc2e80c2b86f2",
}


def _originals_missing() -> None:
    """Skip when the shared originals are absent on a developer's machine; fail in CI,
    where ``../shared`` is always laid beside the clone."""
    msg = f"original Fashion-MNIST .gz files not at {FASHION_ORIGINALS}"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _pixels(split: TensorSplit, dataset: str) -> np.ndarray:
    """Undo the normalization: uint8 [N, C, H, W]."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in NORMALIZATION[dataset])
    raw = (split.x.cpu() * std + mean) * 255
    assert torch.allclose(raw, raw.round(), atol=1e-3)
    return raw.round().to(torch.uint8).numpy()


def _read_idx_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


# --------------------------------------------------------------------------- shipped subset


@pytest.fixture(scope="module")
def subset():
    return load_search_data("fashion-mnist-subset")


def test_subset_shapes_balance_and_normalization(subset):
    assert (len(subset.train), len(subset.valid), len(subset.test)) == (2000, 2000, 1000)
    assert (subset.num_classes, subset.in_channels, subset.image_size) == (10, 1, 28)
    assert subset.train.x.shape == (2000, 1, 28, 28) and subset.train.x.dtype == torch.float32
    assert subset.train.y.dtype == torch.int64
    assert torch.equal(subset.test.y.bincount(minlength=10), torch.full((10,), 100))
    # make_subset.py writes two class-balanced halves, so the first/second-half rule keeps balance
    assert torch.equal(subset.train.y.bincount(minlength=10), torch.full((10,), 200))
    assert torch.equal(subset.valid.y.bincount(minlength=10), torch.full((10,), 200))
    x = torch.cat([subset.train.x, subset.valid.x])
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert "[0, 2000)" in subset.split_note and "\n" not in subset.split_note


def test_subset_files_are_the_documented_ones():
    raw = SUBSET_DIR / "FashionMNIST" / "raw"
    for name, digest in SUBSET_SHA256.items():
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == digest, name
    readme = (SUBSET_DIR / "README.md").read_text()
    assert all(d in readme for d in SUBSET_SHA256.values())


def test_subset_pixels_equal_the_original_fashion_mnist(subset):
    if not (FASHION_ORIGINALS / "train-images-idx3-ubyte.gz").is_file():
        _originals_missing()
    record = json.loads((SUBSET_DIR / "subset_indices.json").read_text())
    train_x = _read_idx_gz(FASHION_ORIGINALS / "train-images-idx3-ubyte.gz")
    train_y = _read_idx_gz(FASHION_ORIGINALS / "train-labels-idx1-ubyte.gz")
    test_x = _read_idx_gz(FASHION_ORIGINALS / "t10k-images-idx3-ubyte.gz")
    test_y = _read_idx_gz(FASHION_ORIGINALS / "t10k-labels-idx1-ubyte.gz")
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    tr, te = np.array(record["train"]), np.array(record["test"])
    assert len(set(tr)) == 4000 and len(set(te)) == 1000
    got = np.concatenate([_pixels(subset.train, "fashion-mnist"), _pixels(subset.valid, "fashion-mnist")])
    np.testing.assert_array_equal(got[:, 0], train_x[tr])
    np.testing.assert_array_equal(torch.cat([subset.train.y, subset.valid.y]).numpy(), train_y[tr])
    np.testing.assert_array_equal(_pixels(subset.test, "fashion-mnist")[:, 0], test_x[te])
    np.testing.assert_array_equal(subset.test.y.numpy(), test_y[te])


def test_make_subset_regenerates_identical_files(tmp_path):
    if not (FASHION_ORIGINALS / "train-images-idx3-ubyte.gz").is_file():
        _originals_missing()
    spec = importlib.util.spec_from_file_location("make_subset", SUBSET_DIR / "make_subset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.make_subset(FASHION_ORIGINALS, tmp_path, seed=0) == SUBSET_SHA256
    assert (tmp_path / "subset_indices.json").read_bytes() == (SUBSET_DIR / "subset_indices.json").read_bytes()


def test_limit_and_resize(subset):
    small = load_search_data("fashion-mnist-subset", limit=8)
    assert (len(small.train), len(small.valid), len(small.test)) == (8, 8, 8)
    assert torch.equal(small.train.x, subset.train.x[:8]) and torch.equal(small.valid.y, subset.valid.y[:8])
    resized = load_search_data("fashion-mnist-subset", limit=8, image_size=16)
    assert resized.image_size == 16 and resized.train.x.shape == (8, 1, 16, 16)
    # normalization is per-channel affine and bilinear weights sum to 1, so the order does not matter
    expected = F.interpolate(small.train.x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(resized.train.x, expected, atol=1e-5)
    assert "28->16" in resized.split_note


# --------------------------------------------------------------------------- CIFAR, exact on-disk format


def _pattern(n: int, offset: int = 0) -> np.ndarray:
    """n channel-planar 3x32x32 images, every position distinct-ish, image-dependent."""
    k = np.arange(n)[:, None] + offset
    return ((np.arange(3072)[None, :] * 7 + k * 13) % 256).astype(np.uint8)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        start = b * per_batch
        _dump(folder / f"data_batch_{b + 1}", {
            "batch_label": f"training batch {b + 1} of 5",
            "labels": [(start + i) % 10 for i in range(per_batch)],
            "data": _pattern(per_batch, start),
            "filenames": [f"img{start + i}.png" for i in range(per_batch)],
        })
    _dump(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1",
        "labels": [(9 - i) % 10 for i in range(n_test)],
        "data": _pattern(n_test, 1000),
        "filenames": [f"test{i}.png" for i in range(n_test)],
    })
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072}
    _dump(folder / "batches.meta", meta)
    return folder


def _write_cifar100(root: Path, n_train: int = 12, n_test: int = 10) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n, off in (("train", n_train, 0), ("test", n_test, 500)):
        _dump(folder / name, {
            "filenames": [f"{name}{i}.png" for i in range(n)],
            "batch_label": name,
            "fine_labels": [(off + 7 * i) % 100 for i in range(n)],
            "coarse_labels": [i % 20 for i in range(n)],
            "data": _pattern(n, off),
        })
    meta = {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    _dump(folder / "meta", meta)


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    # torchvision checks the md5 of every CIFAR file against the official release, which
    # our tiny hand-written files cannot match. Both CIFAR10._check_integrity and
    # CIFAR10._load_meta (batches.meta / meta) call the module-level check_integrity, so we
    # replace that one function with its md5-less branch (file must exist): everything
    # else, unpickling and layout included, is torchvision's real code.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_cifar10_real_loader_and_darts_split(tmp_path, skip_cifar_md5):
    _write_cifar10(tmp_path)
    data = load_search_data("cifar10", tmp_path)
    assert (len(data.train), len(data.valid), len(data.test)) == (10, 10, 6)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 3, 32)
    all_train = _pattern(20).reshape(20, 3, 32, 32)
    # first half of the file order is search-train, second half search-valid, no shuffle
    np.testing.assert_array_equal(_pixels(data.train, "cifar10"), all_train[:10])
    np.testing.assert_array_equal(_pixels(data.valid, "cifar10"), all_train[10:])
    assert data.train.y.tolist() == [i % 10 for i in range(10)]
    assert data.valid.y.tolist() == [i % 10 for i in range(10, 20)]
    np.testing.assert_array_equal(_pixels(data.test, "cifar10"), _pattern(6, 1000).reshape(6, 3, 32, 32))
    assert data.test.y.tolist() == [(9 - i) % 10 for i in range(6)]
    assert "[0, 10)" in data.split_note and "[10, 20)" in data.split_note
    # the dataset folder itself is accepted as root too
    again = load_search_data("cifar10", tmp_path / "cifar-10-batches-py", limit=3)
    assert torch.equal(again.valid.x, data.valid.x[:3])


def test_cifar100_real_loader_and_seeded_test_halves(tmp_path, skip_cifar_md5):
    _write_cifar100(tmp_path)
    data = load_search_data("cifar100", tmp_path, seed=3)
    assert (len(data.train), len(data.valid), len(data.test)) == (12, 5, 5)
    assert data.num_classes == 100
    np.testing.assert_array_equal(_pixels(data.train, "cifar100"), _pattern(12).reshape(12, 3, 32, 32))
    assert data.train.y.tolist() == [(7 * i) % 100 for i in range(12)]
    test_imgs = _pattern(10, 500).reshape(10, 3, 32, 32)
    test_labels = [(500 + 7 * i) % 100 for i in range(10)]
    valid_pos = [test_labels.index(v) for v in data.valid.y.tolist()]
    test_pos = [test_labels.index(v) for v in data.test.y.tolist()]
    assert sorted(valid_pos + test_pos) == list(range(10)) and valid_pos == sorted(valid_pos)
    np.testing.assert_array_equal(_pixels(data.valid, "cifar100"), test_imgs[valid_pos])
    np.testing.assert_array_equal(_pixels(data.test, "cifar100"), test_imgs[test_pos])
    other = load_search_data("cifar100", tmp_path, seed=4)
    same = load_search_data("cifar100", tmp_path, seed=3)
    assert torch.equal(same.valid.y, data.valid.y) and not torch.equal(other.valid.y, data.valid.y)
    assert "seed 3" in data.split_note and "NB201" in data.split_note


# --------------------------------------------------------------------------- ImageNet16-120


def _in16_images(n: int, offset: int) -> np.ndarray:
    """Channel-planar 3x16x16 images whose pixel (c, h, w) = (c*80 + h*5 + w + image) % 256."""
    c, h, w = np.meshgrid(np.arange(3), np.arange(16), np.arange(16), indexing="ij")
    base = c * 80 + h * 5 + w
    return np.stack([(base + offset + i) % 256 for i in range(n)]).reshape(n, 768).astype(np.uint8)


def _write_imagenet16(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for b in range(1, 11):
        labels = [1, 120, 121, 1000, (b * 37) % 1000 + 1] if b != 4 else [1, 0, 120, 121, 77]  # 0: out of range
        files[f"train_data_batch_{b}"] = (_in16_images(5, 10 * b), labels)
    files["val_data"] = (_in16_images(8, 200), [1, 2, 500, 119, 120, 121, 999, 60])
    for name, (data, labels) in files.items():
        _dump(root / name, {"data": data, "labels": labels, "mean": np.zeros(768)})
    return files


def test_imagenet16_reader_filters_maps_and_keeps_layout(tmp_path):
    files = _write_imagenet16(tmp_path / "ImageNet16")
    train = ImageNet16(tmp_path / "ImageNet16", train=True)
    expected_x, expected_y = [], []
    for b in range(1, 11):
        data, labels = files[f"train_data_batch_{b}"]
        for img, lbl in zip(data, labels):
            if 1 <= lbl <= 120:
                expected_x.append(img.reshape(3, 16, 16))
                expected_y.append(lbl - 1)
    assert len(train) == len(expected_y) and train.targets == expected_y
    assert min(train.targets) == 0 and max(train.targets) <= 119
    img, label = train[0]
    assert img.shape == (16, 16, 3) and label == 0
    np.testing.assert_array_equal(img.transpose(2, 0, 1), expected_x[0])
    assert img[2, 3, 1] == (1 * 80 + 2 * 5 + 3 + 10) % 256  # HWC: row 2, column 3, channel 1
    assert len(ImageNet16(tmp_path / "ImageNet16", train=True, num_classes=None)) == 50

    data = load_search_data("imagenet16-120", tmp_path)  # finds the ImageNet16/ subfolder
    assert (data.num_classes, data.in_channels, data.image_size) == (120, 3, 16)
    assert data.train.y.tolist() == expected_y
    np.testing.assert_array_equal(_pixels(data.train, "imagenet16-120"), np.stack(expected_x))
    # val_data keeps labels 1, 2, 119, 120, 60 -> 0, 1, 118, 119, 59; halves of 2 and 3
    assert (len(data.valid), len(data.test)) == (2, 3)
    assert sorted(data.valid.y.tolist() + data.test.y.tolist()) == [0, 1, 59, 118, 119]


# --------------------------------------------------------------------------- BatchIterator / augmentation


def _toy_split(n: int = 50, size: int = 8) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.randn(n, 3, size, size, generator=g), torch.arange(n))


def test_batch_iterator_is_a_pure_function_of_seed_and_epoch():
    split = _toy_split()
    it = BatchIterator(split, 8, augment=True, seed=5)
    assert len(it) == 6 and len(BatchIterator(split, 8, drop_last=False)) == 7
    a, b = list(it.epoch(2)), list(BatchIterator(split, 8, augment=True, seed=5).epoch(2))
    assert len(a) == 6
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = lambda batches: torch.cat([y for _, y in batches])  # noqa: E731
    assert not torch.equal(order(a), order(list(it.epoch(3))))
    assert not torch.equal(order(a), order(list(BatchIterator(split, 8, augment=True, seed=6).epoch(2))))
    full = order(list(BatchIterator(split, 8, drop_last=False).epoch(0)))
    assert sorted(full.tolist()) == list(range(50))
    plain = list(BatchIterator(split, 8, shuffle=False).epoch(0))
    assert torch.equal(plain[1][1], torch.arange(8, 16)) and torch.equal(plain[1][0], split.x[8:16])


def test_augment_batch_crops_and_flips_correctly():
    split = _toy_split(64, 8)
    pad = 2
    out = augment_batch(split.x, torch.Generator().manual_seed(1), pad=pad)
    assert out.shape == split.x.shape
    again = augment_batch(split.x, torch.Generator().manual_seed(1), pad=pad)
    assert torch.equal(out, again)
    padded = F.pad(split.x, (pad,) * 4)
    flips, offsets = 0, set()
    for i in range(64):
        matches = [
            (dy, dx, fl)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for fl in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if fl else c)(padded[i, :, dy : dy + 8, dx : dx + 8]))
        ]
        assert len(matches) == 1, f"image {i} is not one crop/flip of its padded original"
        flips += matches[0][2]
        offsets.add(matches[0][:2])
    assert 10 < flips < 54 and len(offsets) > 5  # both happen, offsets vary
    assert torch.equal(augment_batch(split.x, torch.Generator().manual_seed(1), pad=0).abs().sum(), split.x.abs().sum())
    filled = augment_batch(torch.zeros(16, 3, 4, 4), torch.Generator().manual_seed(2), pad=4, fill=[1.0, 2.0, 3.0])
    assert set(filled[:, 1].unique().tolist()) <= {0.0, 2.0} and (filled[:, 1] == 2.0).any()


def test_batch_iterator_rejects_an_empty_epoch():
    with pytest.raises(UserError, match="--limit"):
        BatchIterator(_toy_split(5), 8)


# --------------------------------------------------------------------------- errors


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError) as err:
        load_search_data("mnist")
    assert all(name in str(err.value) for name in DATASETS)


@pytest.mark.parametrize("dataset", ["fashion-mnist-subset", "fashion-mnist", "cifar10", "cifar100", "imagenet16-120"])
def test_missing_root_names_the_data_root_flag(tmp_path, dataset):
    with pytest.raises(UserError, match="--data-root"):
        load_search_data(dataset, tmp_path / "nowhere")


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10", "imagenet16-120"])
def test_root_is_required_beyond_the_subset(dataset):
    with pytest.raises(UserError, match="--data-root"):
        load_search_data(dataset)


def test_missing_or_corrupt_cifar_names_the_download_flag(tmp_path):
    with pytest.raises(UserError, match="--download"):
        load_search_data("cifar10", tmp_path)  # folder exists, files do not
    folder = _write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="--download"):  # torchvision's real md5 check fails
        load_search_data("cifar10", tmp_path)
    with pytest.raises(UserError, match="--download"):
        load_search_data("fashion-mnist", tmp_path)


def test_unreadable_cifar_after_md5_is_a_user_error(tmp_path, skip_cifar_md5):
    folder = _write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="--download"):
        load_search_data("cifar10", tmp_path)


def test_missing_imagenet16_file_names_it(tmp_path):
    _write_imagenet16(tmp_path)
    (tmp_path / "train_data_batch_7").unlink()
    with pytest.raises(UserError, match="train_data_batch_7.*--data-root"):
        load_search_data("imagenet16-120", tmp_path)
    with pytest.raises(UserError, match="cannot be downloaded"):
        load_search_data("imagenet16-120", tmp_path, download=True)


def _write_idx_gz(path: Path, arr: np.ndarray) -> None:
    """An idx file (magic 0x0803 images / 0x0801 labels, big-endian dims), gzipped."""
    import gzip
    import struct

    header = struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_fashion_mnist_from_original_gz_files(tmp_path, monkeypatch):
    """The release's .gz files are unpacked into the cache; the data folder is untouched."""
    src = tmp_path / "fmnist-gz"
    src.mkdir()
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (20, 28, 28))
    test_x = rng.integers(0, 256, (6, 28, 28))
    _write_idx_gz(src / "train-images-idx3-ubyte.gz", train_x)
    _write_idx_gz(src / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    _write_idx_gz(src / "t10k-images-idx3-ubyte.gz", test_x)
    _write_idx_gz(src / "t10k-labels-idx1-ubyte.gz", np.arange(6) % 10)
    before = sorted(p.name for p in src.iterdir())
    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path / "cache"))
    data = load_search_data("fashion-mnist", src)
    assert (len(data.train), len(data.valid), len(data.test)) == (10, 10, 6)
    assert data.train.y.tolist() == list(range(10)) and data.valid.y.tolist() == list(range(10))
    assert np.array_equal(_pixels(data.train, "fashion-mnist")[:, 0], train_x[:10])
    assert sorted(p.name for p in src.iterdir()) == before  # nothing written beside the .gz
    assert any((tmp_path / "cache").rglob("train-images-idx3-ubyte"))


@pytest.mark.parametrize("bad", [10, -1])
def test_cifar10_label_out_of_range_is_a_one_line_user_error(tmp_path, skip_cifar_md5, bad):
    folder = _write_cifar10(tmp_path)
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f)
    batch["labels"][1] = bad
    _dump(folder / "data_batch_2", batch)
    with pytest.raises(UserError, match=f"label {bad} at index 5, outside the classes 0..9: delete cifar-10-batches-py "
                                        "and pass --download") as err:
        load_search_data("cifar10", tmp_path)
    assert "\n" not in str(err.value)


def test_cifar100_label_out_of_range_and_count_mismatch_are_user_errors(tmp_path, skip_cifar_md5):
    _write_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "test"
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry["fine_labels"][3] = 100
    _dump(path, entry)
    with pytest.raises(UserError, match="label 100 at index 3, outside the classes 0..99: delete cifar-100-python"):
        load_search_data("cifar100", tmp_path)
    entry["fine_labels"] = entry["fine_labels"][:-1]  # 10 images, 9 labels
    entry["fine_labels"][3] = 99
    _dump(path, entry)
    with pytest.raises(UserError, match="10 images but 9 labels: delete cifar-100-python"):
        load_search_data("cifar100", tmp_path)
