"""NAS-Bench-101 ground truth read from its data file, without TensorFlow.

NAS-Bench-101 (Ying et al., "NAS-Bench-101: Towards Reproducible Neural Architecture
Search", ICML 2019, arXiv:1902.09635) ships its results as a TFRecord file:
``nasbench_only108.tfrecord`` (about 499 MB, 108-epoch results) or
``nasbench_full.tfrecord`` (about 1.95 GB, epoch budgets 4, 12, 36 and 108). Both hold
423,624 unique models, each trained 3 times, one record per (model, budget, repeat).
This module reads them in pure Python (facts in ``docs/NB1SHOT1.md``):

- the TFRecord framing: ``uint64`` LE length, ``uint32`` LE masked CRC32C of those 8
  bytes, the data, ``uint32`` LE masked CRC32C of the data. CRC32C is Castagnoli's
  (reflected polynomial ``0x82F63B78``, init and final xor ``0xFFFFFFFF``) and the mask is
  ``((crc >> 15 | crc << 17) + 0xA282EAD8) mod 2**32``. Every checksum is verified (in
  numpy, a few hundred thousand records at a time); a damaged or truncated file is a
  one-line :class:`UserError` naming the byte offset of the record;
- each record's data: the UTF-8 JSON array ``[module_hash, epochs, adjacency,
  operations, metrics]``, the adjacency a string of ``V*V`` '0'/'1', the operations
  comma-separated, the metrics base64 of a protobuf ``ModelMetrics`` decoded here by hand
  (field 1: repeated ``EvaluationData``; 2: ``trainable_parameters``, varint; 3:
  ``total_time``, double; ``EvaluationData`` fields 1-5 are doubles ``current_epoch``,
  ``training_time``, ``train_accuracy``, ``validation_accuracy``, ``test_accuracy``, 6 the
  checkpoint path; entry 0 is at initialisation, 1 half way, 2 at the end).

:class:`NB101Table` turns the file into a compact table once: per model hash its cell
(matrix and ops), its trainable parameters and, per epoch budget, the **mean over the
repeats** (3 in the benchmark) of the final train / validation / test accuracy and
training time. (The official API returns one repeat drawn at random instead.) The table
is cached as a plain ``.npz`` (no pickle) beside the data file or in ``cache_dir``, named
by the sha256 of the file's content, and written atomically, so a changed file never
reuses an old table and a killed build leaves nothing that is later trusted.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import json
import logging
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..runs import atomic_write_bytes
from ..spaces.nb101_graph import Matrix, graph_hash, nb101_problem, prune

__all__ = [
    "NB101_FILES",
    "STATISTIC",
    "crc32c",
    "masked_crc32c",
    "iter_tfrecords",
    "EvaluationData",
    "ModelMetrics",
    "decode_model_metrics",
    "NB101Row",
    "parse_record",
    "iter_rows",
    "NB101Result",
    "NB101Record",
    "NB101Table",
]

logger = logging.getLogger(__name__)

#: The official data files -> what they hold.
NB101_FILES: dict[str, str] = {
    "nasbench_only108.tfrecord": "NAS-Bench-101, 108-epoch results (about 499 MB)",
    "nasbench_full.tfrecord": "NAS-Bench-101, epoch budgets 4/12/36/108 (about 1.95 GB)",
}
#: What every number of a query is.
STATISTIC = "mean over the repeats of the final evaluation (the official API samples one repeat)"

_HEADER = 12  # uint64 length + uint32 masked CRC of it
_FOOTER = 4  # uint32 masked CRC of the data
_MASK_DELTA = 0xA282EAD8
_MAX_RECORD = 1 << 24  # an NB101 record is under 1 KiB; a longer announced length is checked at once
_CHUNK = 1 << 25  # bytes read (and checksummed in one numpy pass) at a time
_REDOWNLOAD = "download the file again (" + " or ".join(NB101_FILES) + ")"
_TABLE_FORMAT = "bayesnas-nb101-table"
_TABLE_VERSION = 1
_TABLE_SUFFIX = ".nb101-table-"
_HEX32 = re.compile(r"[0-9a-f]{32}")


# ---------------------------------------------------------------------------------
# CRC32C
# ---------------------------------------------------------------------------------
@functools.cache
def _crc_table() -> tuple[int, ...]:
    """The byte table of the reflected Castagnoli polynomial."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


@functools.cache
def _crc_table_np() -> np.ndarray:
    return np.array(_crc_table(), dtype=np.uint32)


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc``; ``crc32c(b"123456789")``
    is ``0xE3069283``. Pure Python, one table lookup per byte (the file reader checks
    records in bulk with numpy instead)."""
    table = _crc_table()
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _mask(crc: int | np.ndarray) -> Any:
    if isinstance(crc, np.ndarray):
        c = crc.astype(np.uint64)
        return ((((c >> np.uint64(15)) | (c << np.uint64(17))) + np.uint64(_MASK_DELTA))
                & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C TFRecord stores after the length and after the data."""
    return _mask(crc32c(data))


def _crc32c_many(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC32C of many byte ranges ``buf[s:s + n]`` at once (``uint32``, in input order).

    One numpy step per byte position advances every range still that long: the ranges
    are sorted by length, longest first, so the ones still running are a prefix."""
    order = np.argsort(-lengths, kind="stable")
    s, n = starts[order].astype(np.int64), lengths[order].astype(np.int64)
    crc = np.full(len(s), 0xFFFFFFFF, dtype=np.uint32)
    table = _crc_table_np()
    # active[i] = how many ranges are longer than i (lengths are descending)
    longest = int(n[0]) if len(n) else 0
    active = np.searchsorted(-n, -np.arange(longest), side="left")  # count of n > i
    eight = np.uint32(8)
    for i in range(longest):
        k = int(active[i])
        c = crc[:k]
        byte = buf[s[:k] + i]
        crc[:k] = table[(c ^ byte) & np.uint32(0xFF)] ^ (c >> eight)
    out = np.empty_like(crc)
    out[order] = crc ^ np.uint32(0xFFFFFFFF)
    return out


# ---------------------------------------------------------------------------------
# TFRecord framing
# ---------------------------------------------------------------------------------
def _corrupt(path: Path, offset: int, what: str) -> UserError:
    return UserError(f"{path} is corrupt: the record at byte offset {offset} {what}; {_REDOWNLOAD}")


def _truncated(path: Path, offset: int, what: str) -> UserError:
    return UserError(f"{path} is truncated: the record at byte offset {offset} {what}; {_REDOWNLOAD}")


def _check_frames(path: Path, base: int, data: bytes, frames: list[tuple[int, int]]) -> None:
    """Verify the two checksums of every frame ``(pos, length)`` of ``data``; the first
    failure (in file order) is a :class:`UserError` naming its offset."""
    if not frames:
        return
    buf = np.frombuffer(data, dtype=np.uint8)
    pos = np.fromiter((p for p, _ in frames), dtype=np.int64, count=len(frames))
    length = np.fromiter((n for _, n in frames), dtype=np.int64, count=len(frames))
    stored_len_crc = np.array([struct.unpack_from("<I", data, p + 8)[0] for p, _ in frames], dtype=np.uint32)
    stored_data_crc = np.array([struct.unpack_from("<I", data, p + _HEADER + n)[0] for p, n in frames],
                               dtype=np.uint32)
    len_ok = _mask(_crc32c_many(buf, pos, np.full(len(pos), 8, dtype=np.int64))) == stored_len_crc
    data_ok = _mask(_crc32c_many(buf, pos + _HEADER, length)) == stored_data_crc
    bad = np.flatnonzero(~(len_ok & data_ok))
    if bad.size:
        i = int(bad[0])
        offset = base + int(pos[i])
        if not len_ok[i]:
            raise _corrupt(path, offset, "has a length field that fails its CRC32C checksum")
        raise _corrupt(path, offset, f"has {int(length[i])} data bytes that fail their CRC32C checksum")


def iter_tfrecords(path: str | Path, *, chunk_bytes: int = _CHUNK,
                   hasher: Any = None, progress: Callable[[int, int], None] | None = None
                   ) -> Iterator[tuple[int, bytes]]:
    """Every record of a TFRecord file as ``(byte offset of its frame, data)``, checksums
    verified. A bad checksum, a cut-off record or trailing bytes raise a one-line
    :class:`UserError` naming the byte offset. ``hasher`` (e.g. ``hashlib.sha256()``) is
    fed every byte read; ``progress(bytes_read, total)`` is called after each chunk."""
    path = Path(path)
    try:
        total = path.stat().st_size
        fh = open(path, "rb")
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or type(err).__name__}); "
                        "check the path and make the file readable") from err
    with fh:
        base, pending, done = 0, b"", 0
        while True:
            try:
                chunk = fh.read(chunk_bytes)
            except OSError as err:
                raise UserError(f"cannot read {path} ({err.strerror or type(err).__name__}); "
                                "check the disk and make the file readable") from err
            if hasher is not None and chunk:
                hasher.update(chunk)
            done += len(chunk)
            data = pending + chunk if pending else chunk
            n, pos, frames = len(data), 0, []
            while n - pos >= _HEADER:
                (length,) = struct.unpack_from("<Q", data, pos)
                if length > _MAX_RECORD:
                    if masked_crc32c(data[pos:pos + 8]) != struct.unpack_from("<I", data, pos + 8)[0]:
                        _check_frames(path, base, data, frames)  # an earlier failure comes first
                        raise _corrupt(path, base + pos, "has a length field that fails its CRC32C checksum")
                    raise UserError(f"{path} is not a NAS-Bench-101 file: the record at byte offset "
                                    f"{base + pos} is {length} bytes long; give "
                                    + " or ".join(NB101_FILES))
                end = pos + _HEADER + length + _FOOTER
                if end > n:
                    break
                frames.append((pos, length))
                pos = end
            _check_frames(path, base, data, frames)
            for p, length in frames:
                yield base + p, data[p + _HEADER:p + _HEADER + length]
            pending = data[pos:]
            base += pos
            if progress is not None:
                progress(done, total)
            if not chunk:
                break
        if pending:
            if len(pending) < _HEADER:
                raise _truncated(path, base, f"ends after {len(pending)} of its {_HEADER} header bytes")
            if masked_crc32c(pending[:8]) != struct.unpack_from("<I", pending, 8)[0]:
                raise _corrupt(path, base, "has a length field that fails its CRC32C checksum")
            (length,) = struct.unpack_from("<Q", pending, 0)
            raise _truncated(path, base, f"needs {_HEADER + length + _FOOTER} bytes but the file ends "
                                         f"after {len(pending)}")


# ---------------------------------------------------------------------------------
# ModelMetrics, decoded by hand
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationData:
    """One evaluation of a training run (accuracies are fractions in [0, 1])."""

    current_epoch: float = 0.0
    training_time: float = 0.0
    train_accuracy: float = 0.0
    validation_accuracy: float = 0.0
    test_accuracy: float = 0.0
    checkpoint_path: str = ""


@dataclass(frozen=True)
class ModelMetrics:
    """One training run: its evaluations (0: initial, 1: half way, 2: final)."""

    evaluation_data: tuple[EvaluationData, ...]
    trainable_parameters: int
    total_time: float


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("a varint runs past the end")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint is longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of a protobuf message: an int (varint), 8 or 4
    raw bytes (fixed64 / fixed32) or the bytes of a length-delimited field."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > n:
                raise ValueError(f"field {number} runs past the end")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > n:
                raise ValueError(f"field {number} runs past the end")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"field {number} has wire type {wire}, which ModelMetrics never uses")
        yield number, wire, value


def _double(number: int, wire: int, value: Any) -> float:
    if wire != 1:
        raise ValueError(f"field {number} should be a double, has wire type {wire}")
    return struct.unpack("<d", value)[0]


_EVAL_FIELDS = {1: "current_epoch", 2: "training_time", 3: "train_accuracy",
                4: "validation_accuracy", 5: "test_accuracy"}


#: the usual encoding of an EvaluationData: the five doubles in field order, no path
_EVAL_PACKED = struct.Struct("<BdBdBdBdBd")
_EVAL_TAGS = (0x09, 0x11, 0x19, 0x21, 0x29)  # (field << 3) | wire type 1, fields 1-5


def _decode_evaluation(buf: bytes) -> EvaluationData:
    if len(buf) == _EVAL_PACKED.size:  # the common layout, read in one unpack
        t1, a, t2, b, t3, c, t4, d, t5, e = _EVAL_PACKED.unpack(buf)
        if (t1, t2, t3, t4, t5) == _EVAL_TAGS:
            return EvaluationData(a, b, c, d, e)
    values: dict[str, Any] = {}
    for number, wire, value in _fields(buf):
        if number in _EVAL_FIELDS:
            values[_EVAL_FIELDS[number]] = _double(number, wire, value)
        elif number == 6:
            if wire != 2:
                raise ValueError("checkpoint_path should be a string")
            values["checkpoint_path"] = bytes(value).decode("utf-8", errors="replace")
    return EvaluationData(**values)


def decode_model_metrics(raw: bytes) -> ModelMetrics:
    """A serialized ``ModelMetrics`` protobuf; a malformed one raises ``ValueError``.
    Unknown fields are skipped, as protobuf readers do."""
    evaluations, params, total = [], 0, 0.0
    for number, wire, value in _fields(raw):
        if number == 1:
            if wire != 2:
                raise ValueError("evaluation_data should be a message")
            evaluations.append(_decode_evaluation(value))
        elif number == 2:
            if wire != 0:
                raise ValueError("trainable_parameters should be a varint")
            params = value
        elif number == 3:
            total = _double(number, wire, value)
    return ModelMetrics(tuple(evaluations), params, total)


# ---------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class NB101Row:
    """One record of the data file: one training run of one model at one budget."""

    hash: str
    epochs: int
    adjacency: str
    ops: tuple[str, ...]
    metrics: ModelMetrics

    @property
    def matrix(self) -> Matrix:
        V = len(self.ops)
        return tuple(tuple(int(self.adjacency[i * V + j]) for j in range(V)) for i in range(V))


def parse_record(data: bytes) -> NB101Row:
    """The data of one record; anything malformed raises ``ValueError`` saying what."""
    try:
        fields = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"its data is not JSON ({type(err).__name__})") from None
    if not (isinstance(fields, list) and len(fields) == 5):
        raise ValueError("its data is not the JSON array [hash, epochs, adjacency, operations, metrics]")
    module_hash, epochs, adjacency, operations, metrics = fields
    if not (isinstance(module_hash, str) and _HEX32.fullmatch(module_hash)):
        raise ValueError("its model hash is not 32 hex digits")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise ValueError("its epoch budget is not a positive integer")
    if not (isinstance(operations, str) and isinstance(adjacency, str) and isinstance(metrics, str)):
        raise ValueError("its adjacency, operations and metrics are not strings")
    ops = tuple(operations.split(","))
    if len(adjacency) != len(ops) ** 2 or set(adjacency) - {"0", "1"}:
        raise ValueError(f"its adjacency is not {len(ops)}x{len(ops)} '0'/'1' characters")
    try:
        raw = base64.b64decode(metrics)
    except (binascii.Error, ValueError):
        raise ValueError("its metrics are not base64") from None
    return NB101Row(module_hash, epochs, adjacency, ops, decode_model_metrics(raw))


def iter_rows(path: str | Path, **kw: Any) -> Iterator[tuple[int, NB101Row]]:
    """Every record of an NB101 data file as ``(byte offset, row)``; a record that is not
    an NB101 record is a one-line :class:`UserError` naming its offset."""
    path = Path(path)
    for offset, data in iter_tfrecords(path, **kw):
        try:
            row = parse_record(data)
        except ValueError as err:
            raise _corrupt(path, offset, f"is not a NAS-Bench-101 record: {err}") from None
        yield offset, row


# ---------------------------------------------------------------------------------
# query results
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class NB101Result:
    """One model at one epoch budget: the **mean over its repeats** (``repeats``, 3 in the
    benchmark) of the final evaluation's accuracies (fractions in [0, 1]) and training
    time (seconds)."""

    epochs: int
    train: float
    valid: float
    test: float
    time: float
    repeats: int

    def __str__(self) -> str:
        return (f"{self.epochs} epochs: valid {100 * self.valid:.2f} %, test {100 * self.test:.2f} %, "
                f"train {100 * self.train:.2f} %, {self.time:.1f} s (mean of {self.repeats} repeats)")


@dataclass(frozen=True)
class NB101Record:
    """What the benchmark holds for one model: its cell (pruned), trainable parameters and
    per epoch budget an :class:`NB101Result` (means over the repeats, see
    :data:`STATISTIC`)."""

    hash: str
    matrix: Matrix
    ops: tuple[str, ...]
    params: int
    epochs: dict[int, NB101Result]
    statistic: str = field(default=STATISTIC)

    def at(self, epochs: int) -> NB101Result:
        """The result at one epoch budget; a budget the file lacks is a :class:`UserError`."""
        if epochs not in self.epochs:
            have = ", ".join(str(e) for e in self.epochs)
            raise UserError(f"NAS-Bench-101 model {self.hash} has no {epochs}-epoch result in this file "
                            f"(it has {have}); use one of those budgets, or nasbench_full.tfrecord "
                            "for 4/12/36/108")
        return self.epochs[epochs]

    def __str__(self) -> str:
        parts = "; ".join(str(r) for r in self.epochs.values())
        return f"NAS-Bench-101 {self.hash}, {self.params:,} parameters; {parts}"


# ---------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------
class _Accumulator:
    """Sums per (model, budget), grown by doubling; one row per model hash."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.specs: list[tuple[str, tuple[str, ...]]] = []
        self.params: list[int] = []
        self.epoch_col: dict[int, int] = {}
        self.sums = np.zeros((1024, 4, 4))  # model, budget, (train, valid, test, time)
        self.counts = np.zeros((1024, 4), dtype=np.int32)

    def row(self, h: str, adjacency: str, ops: tuple[str, ...], params: int) -> tuple[int, bool]:
        i = self.index.get(h)
        if i is not None:
            return i, False
        i = self.index[h] = len(self.specs)
        self.specs.append((adjacency, ops))
        self.params.append(params)
        if i >= self.sums.shape[0]:
            self.sums = np.concatenate([self.sums, np.zeros_like(self.sums)])
            self.counts = np.concatenate([self.counts, np.zeros_like(self.counts)])
        return i, True

    def col(self, epochs: int) -> int:
        j = self.epoch_col.get(epochs)
        if j is None:
            j = self.epoch_col[epochs] = len(self.epoch_col)
            if j >= self.sums.shape[1]:
                self.sums = np.concatenate([self.sums, np.zeros_like(self.sums)], axis=1)
                self.counts = np.concatenate([self.counts, np.zeros_like(self.counts)], axis=1)
        return j

    def arrays(self) -> dict[str, np.ndarray]:
        N = len(self.specs)
        order = sorted(self.epoch_col)
        cols = [self.epoch_col[e] for e in order]
        counts = self.counts[:N][:, cols]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = self.sums[:N][:, cols] / counts[:, :, None]
        vmax = max((len(ops) for _, ops in self.specs), default=2)
        vocab = sorted({op for _, ops in self.specs for op in ops})
        code = {op: k for k, op in enumerate(vocab)}
        matrix = np.zeros((N, vmax, vmax), dtype=np.uint8)
        op_codes = np.full((N, vmax), -1, dtype=np.int8)
        nv = np.zeros(N, dtype=np.uint8)
        for i, (adjacency, ops) in enumerate(self.specs):
            V = len(ops)
            nv[i] = V
            matrix[i, :V, :V] = np.frombuffer(adjacency.encode("ascii"), dtype=np.uint8).reshape(V, V) - 48
            op_codes[i, :V] = [code[op] for op in ops]
        return {
            "hashes": np.array(list(self.index), dtype="S32"),
            "num_vertices": nv,
            "matrix": matrix,
            "ops": op_codes,
            "op_names": np.array(vocab, dtype=str),
            "params": np.array(self.params, dtype=np.int64),
            "epochs": np.array(order, dtype=np.int64),
            "train": means[:, :, 0],
            "valid": means[:, :, 1],
            "test": means[:, :, 2],
            "time": means[:, :, 3],
            "repeats": counts.astype(np.int32),
        }


_ARRAY_KEYS = ("hashes", "num_vertices", "matrix", "ops", "op_names", "params", "epochs",
               "train", "valid", "test", "time", "repeats")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 23), b""):
                h.update(block)
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or type(err).__name__}); "
                        "check the path and make the file readable") from err
    return h.hexdigest()


class NB101Table:
    """NAS-Bench-101 as a table: per model hash its cell, parameters and per epoch budget
    the mean over the repeats of the final train / valid / test accuracy and training
    time (see :data:`STATISTIC`).

    Build it with :meth:`load` (reads the data file once, then its cached table). Query
    with :meth:`query` (a cell graph, pruned and hashed as NB101 does) or
    :meth:`query_hash`.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                 cache_path: Path | None = None) -> None:
        self._a = {k: arrays[k] for k in _ARRAY_KEYS}
        self.meta = dict(meta)
        self.cache_path = cache_path
        self._index = {h: i for i, h in enumerate(self._a["hashes"].astype("U32").tolist())}
        self._op_names = tuple(str(op) for op in self._a["op_names"].tolist())

    # -- building ---------------------------------------------------------------
    @classmethod
    def build(cls, path: str | Path, *, verify_hashes: bool = False,
              progress: Callable[[int, int], None] | None = None) -> "NB101Table":
        """Read the whole data file into a table (no cache). ``verify_hashes`` recomputes
        every model's hash from its graph and refuses a record whose hash disagrees."""
        path = Path(path)
        acc, sha, records = _Accumulator(), hashlib.sha256(), 0
        for offset, row in iter_rows(path, hasher=sha, progress=progress):
            ev = row.metrics.evaluation_data
            if len(ev) < 3:
                raise _corrupt(path, offset, f"is not a NAS-Bench-101 record: it has {len(ev)} "
                                             "evaluations, not 3 (initial, half way, final)")
            i, new = acc.row(row.hash, row.adjacency, row.ops, row.metrics.trainable_parameters)
            if new and verify_hashes:
                try:
                    computed = graph_hash(row.matrix, row.ops)
                except UserError as err:
                    raise _corrupt(path, offset, f"holds a cell that is not an NB101 graph ({err})") from None
                if computed != row.hash:
                    raise _corrupt(path, offset, f"is keyed {row.hash} but its cell hashes to {computed}")
            j = acc.col(row.epochs)
            final = ev[2]
            acc.sums[i, j, 0] += final.train_accuracy
            acc.sums[i, j, 1] += final.validation_accuracy
            acc.sums[i, j, 2] += final.test_accuracy
            acc.sums[i, j, 3] += final.training_time
            acc.counts[i, j] += 1
            records += 1
        if records == 0:
            raise UserError(f"{path} holds no records; give " + " or ".join(NB101_FILES))
        meta = {"format": _TABLE_FORMAT, "version": _TABLE_VERSION, "source_name": path.name,
                "source_sha256": sha.hexdigest(), "source_bytes": path.stat().st_size,
                "records": records, "statistic": STATISTIC}
        return cls(acc.arrays(), meta)

    @classmethod
    def load(cls, path: str | Path, *, cache_dir: str | Path | None = None, cache: bool = True,
             verify_hashes: bool = False, progress: Callable[[int, int], None] | None = None
             ) -> "NB101Table":
        """The table of the data file ``path`` (``nasbench_only108.tfrecord`` or
        ``nasbench_full.tfrecord``), from its cache when one was built from the same
        content, else built (one pass over the file) and cached.

        The cache is ``<cache_dir>/<file name>.nb101-table-<sha256 prefix>.npz``;
        ``cache_dir`` defaults to the data file's folder. It is written atomically (a
        temporary file, then one rename), and caches of an older content of the same file
        name there are removed. ``cache=False`` builds in memory and writes nothing."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"NAS-Bench-101 data file not found at {path}; download "
                            + " or ".join(NB101_FILES) + " and give its path")
        if not cache:
            return cls.build(path, verify_hashes=verify_hashes, progress=progress)
        folder = Path(cache_dir) if cache_dir is not None else path.parent
        sha = _file_sha256(path)
        target = folder / f"{path.name}{_TABLE_SUFFIX}{sha[:32]}.npz"
        if target.is_file():
            table = cls._read_cache(target, sha)
            if table is not None:
                return table
            logger.warning("NB101 table cache %s is unreadable or stale; rebuilding it", target)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            writable = os.access(folder, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            raise UserError(f"cannot write the NAS-Bench-101 table cache in {folder}; pass cache_dir= "
                            "a writable folder (or cache=False to keep it in memory)")
        logger.info("building the NAS-Bench-101 table from %s (one pass; cached as %s)", path, target)
        table = cls.build(path, verify_hashes=verify_hashes, progress=progress)
        if table.meta["source_sha256"] != sha:
            raise UserError(f"{path} changed while it was read; wait until it is completely written, "
                            "then load it again")
        try:
            atomic_write_bytes(target, table._to_npz())
        except OSError as err:
            raise UserError(f"cannot write the NAS-Bench-101 table cache {target} "
                            f"({err.strerror or type(err).__name__}); free disk space or pass "
                            "cache_dir= a writable folder") from err
        table.cache_path = target
        for stale in folder.glob(f"{path.name}{_TABLE_SUFFIX}*.npz"):
            if stale != target:
                try:
                    stale.unlink()
                except OSError:
                    pass
        return table

    def _to_npz(self) -> bytes:
        out = io.BytesIO()
        np.savez_compressed(out, meta=np.array(json.dumps(self.meta, sort_keys=True)), **self._a)
        return out.getvalue()

    @classmethod
    def _read_cache(cls, target: Path, sha: str) -> "NB101Table | None":
        """The cached table, or None if it is unreadable, of another format or content."""
        try:
            with np.load(target, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in _ARRAY_KEYS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None
        if (meta.get("format") != _TABLE_FORMAT or meta.get("version") != _TABLE_VERSION
                or meta.get("source_sha256") != sha):
            return None
        N, E = len(arrays["hashes"]), len(arrays["epochs"])
        if any(arrays[k].shape != (N, E) for k in ("train", "valid", "test", "time", "repeats")):
            return None
        if len(arrays["params"]) != N or arrays["matrix"].shape[0] != N or arrays["ops"].shape[0] != N:
            return None
        return cls(arrays, meta, target)

    # -- queries ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, model_hash: object) -> bool:
        return model_hash in self._index

    @property
    def epochs(self) -> tuple[int, ...]:
        """The epoch budgets the file holds (108 only, or 4, 12, 36, 108)."""
        return tuple(int(e) for e in self._a["epochs"].tolist())

    def hashes(self) -> Iterator[str]:
        return iter(self._index)

    def query_hash(self, model_hash: str) -> NB101Record:
        """The record of an NB101 model hash (see :func:`~bayesnas_core.spaces.nb101_graph.graph_hash`)."""
        i = self._index.get(model_hash)
        if i is None:
            raise UserError(f"NAS-Bench-101 model {model_hash!r} is not in {self.meta.get('source_name')}; "
                            "give the hash of a pruned cell with at most 7 vertices and 9 edges "
                            "(graph_hash computes it)")
        a = self._a
        V = int(a["num_vertices"][i])
        matrix = tuple(tuple(int(v) for v in row) for row in a["matrix"][i, :V, :V].tolist())
        ops = tuple(self._op_names[k] for k in a["ops"][i, :V].tolist())
        results = {}
        for j, e in enumerate(self.epochs):
            n = int(a["repeats"][i, j])
            if n:
                results[e] = NB101Result(e, float(a["train"][i, j]), float(a["valid"][i, j]),
                                         float(a["test"][i, j]), float(a["time"][i, j]), n)
        return NB101Record(model_hash, matrix, ops, int(a["params"][i]), results)

    def query(self, matrix: Any, ops: Sequence[str]) -> NB101Record:
        """The record of a cell graph: pruned, checked against NB101's limits and hashed as
        the benchmark does; a graph outside NB101 is a one-line :class:`UserError`."""
        problem = nb101_problem(matrix, ops)
        if problem:
            raise UserError(f"the cell is not in NAS-Bench-101: {problem}; remove vertices or edges")
        m, o = prune(matrix, ops)
        return self.query_hash(graph_hash(m, o))

    def __repr__(self) -> str:
        return (f"NB101Table({len(self)} models, epochs {list(self.epochs)}, "
                f"from {self.meta.get('source_name')}; {STATISTIC})")
