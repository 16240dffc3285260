"""NAS-Bench-101 without TensorFlow: cell graphs, the model hash, the stand-alone network,
and the data-file reader, on the real record in ``shared/data/nb101`` and on files these
tests write themselves (with their own bitwise CRC32C and protobuf encoder)."""

from __future__ import annotations

import base64
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesnas_core.benchmarks.nb101 import (
    STATISTIC,
    NB101Table,
    crc32c,
    decode_model_metrics,
    iter_rows,
    iter_tfrecords,
    masked_crc32c,
)
from bayesnas_core.benchmarks import nb101 as nb101_module
from bayesnas_core.errors import UserError
from bayesnas_core.spaces.nb101_graph import (
    BN_MOMENTUM,
    NB101Network,
    graph_hash,
    nb101_problem,
    prune,
    vertex_channels,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "nb101" / "one_record.tfrecord"
if not REAL.is_file():  # the checkout may sit elsewhere; the shared data stays at /work/shared
    REAL = Path("/work/shared/data/nb101/one_record.tfrecord")
REAL_HASH = "00005c142e6f48ac74fdcf73e3439874"
REAL_ADJ = "0100110001000000010010000010000001000000010000000"
REAL_OPS = ["input", "conv3x3-bn-relu", "maxpool3x3", "conv3x3-bn-relu", "conv3x3-bn-relu",
            "conv1x1-bn-relu", "output"]
REAL_MATRIX = [[int(REAL_ADJ[7 * i + j]) for j in range(7)] for i in range(7)]
needs_real = pytest.mark.skipif(not REAL.is_file(), reason="shared/data/nb101/one_record.tfrecord is absent")


# ---------------------------------------------------------------------------------
# an independent writer: bitwise CRC32C, protobuf by hand, TFRecord framing
# ---------------------------------------------------------------------------------
def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = _crc32c_bitwise(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _metrics(evals: list[tuple[float, float, float, float, float]], params: int, total: float,
             path: str | None = None) -> bytes:
    msg = bytearray()
    for e in evals:
        sub = b"".join(bytes([(f << 3) | 1]) + struct.pack("<d", v) for f, v in enumerate(e, start=1))
        if path is not None:
            p = path.encode()
            sub += bytes([(6 << 3) | 2]) + _varint(len(p)) + p
        msg += bytes([(1 << 3) | 2]) + _varint(len(sub)) + sub
    msg += bytes([2 << 3]) + _varint(params)
    msg += bytes([(3 << 3) | 1]) + struct.pack("<d", total)
    return bytes(msg)


def _frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(length)) + data + struct.pack("<I", _masked(data))


def _payload(h: str, epochs: int, matrix: list[list[int]], ops: list[str], metrics: bytes) -> bytes:
    adjacency = "".join(str(v) for row in matrix for v in row)
    b64 = base64.encodebytes(metrics).decode()  # with newlines, as the real file has them
    return json.dumps([h, epochs, adjacency, ",".join(ops), b64]).encode()


CELLS = [
    ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["input", "conv3x3-bn-relu", "output"]),
    ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["input", "maxpool3x3", "output"]),
    ([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]],
     ["input", "conv1x1-bn-relu", "conv3x3-bn-relu", "output"]),
    (REAL_MATRIX, REAL_OPS),
]


def _write_file(path: Path, *, seed: int = 0, budgets: tuple[int, ...] = (4, 108),
                repeats: int = 3) -> dict:
    """Write an NB101-format file; return the expected means per (hash, budget)."""
    rng = random.Random(seed)
    frames, expected = [], {}
    for matrix, ops in CELLS:
        h = graph_hash(matrix, ops)
        params = rng.randrange(1000, 10 ** 7)
        for epochs in budgets:
            finals = []
            for r in range(repeats):
                final = (float(epochs), rng.uniform(10, 2000), rng.random(), rng.random(), rng.random())
                finals.append(final)
                evals = [(0.0, 0.0, 0.1, 0.1, 0.1), (epochs / 2, final[1] / 2, 0.5, 0.5, 0.5), final]
                # one record in three carries a checkpoint path, to cover the general decoder
                raw = _metrics(evals, params, final[1] * 1.1, path="gs://x/ckpt" if r == 1 else None)
                frames.append(_frame(_payload(h, epochs, matrix, ops, raw)))
            expected[(h, epochs)] = {
                "params": params, "time": np.mean([f[1] for f in finals]),
                "train": np.mean([f[2] for f in finals]), "valid": np.mean([f[3] for f in finals]),
                "test": np.mean([f[4] for f in finals]),
            }
    rng.shuffle(frames)
    path.write_bytes(b"".join(frames))
    return expected


def _offsets(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(data):
        out.append(pos)
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 12 + n + 4
    return out


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------
# CRC32C
# ---------------------------------------------------------------------------------
def test_crc32c_check_value_and_mask() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    data = bytes(range(256)) * 3
    assert crc32c(data) == _crc32c_bitwise(data)
    assert crc32c(data[100:], crc32c(data[:100])) == crc32c(data)
    assert masked_crc32c(data) == _masked(data)


def test_vectorised_crc_matches_pure_python() -> None:
    rng = np.random.default_rng(0)
    buf = rng.integers(0, 256, size=3000, dtype=np.uint8)
    starts = rng.integers(0, 1500, size=40)
    lengths = rng.integers(0, 1500, size=40)
    got = nb101_module._crc32c_many(buf, starts, lengths)
    raw = buf.tobytes()
    assert [int(v) for v in got] == [crc32c(raw[s:s + n]) for s, n in zip(starts, lengths)]


# ---------------------------------------------------------------------------------
# cell graphs and the hash
# ---------------------------------------------------------------------------------
def test_real_record_hash_is_reproduced() -> None:
    assert graph_hash(REAL_MATRIX, REAL_OPS) == REAL_HASH
    # numpy and torch inputs give the same hash (ints are converted to plain ints)
    assert graph_hash(np.array(REAL_MATRIX), REAL_OPS) == REAL_HASH
    assert graph_hash(torch.tensor(REAL_MATRIX), REAL_OPS) == REAL_HASH


def test_hash_is_isomorphism_invariant_and_label_sensitive() -> None:
    a = [[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    ops = ["input", "conv1x1-bn-relu", "conv3x3-bn-relu", "output"]
    # the same graph with vertices 1 and 2 swapped
    swapped = ["input", "conv3x3-bn-relu", "conv1x1-bn-relu", "output"]
    assert graph_hash(a, ops) == graph_hash(a, swapped)
    chain = [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert graph_hash(chain, ops) != graph_hash(chain, swapped)
    assert graph_hash(a, ops) != graph_hash(a, ["input", "maxpool3x3", "conv3x3-bn-relu", "output"])


def test_prune_removes_vertices_off_every_input_output_path() -> None:
    # vertex 2 has no way to the output; vertex 3 is not reachable from the input
    m = [[0, 1, 1, 0, 0],
         [0, 0, 0, 0, 1],
         [0, 0, 0, 0, 0],
         [0, 0, 0, 0, 1],
         [0, 0, 0, 0, 0]]
    ops = ["input", "conv3x3-bn-relu", "maxpool3x3", "conv1x1-bn-relu", "output"]
    pm, po = prune(m, ops)
    assert pm == ((0, 1, 0), (0, 0, 1), (0, 0, 0))
    assert po == ("input", "conv3x3-bn-relu", "output")
    assert graph_hash(m, ops) == graph_hash(pm, po)
    with pytest.raises(UserError) as e:
        prune([[0, 1, 0], [0, 0, 0], [0, 0, 0]], ["input", "maxpool3x3", "output"])
    assert "no path" in _one_line_error(e)


@pytest.mark.parametrize("matrix, ops, needle", [
    ([[0, 1], [1, 0]], ["input", "output"], "upper-triangular"),
    ([[0, 2], [0, 0]], ["input", "output"], "not 0 or 1"),
    ([[0, 1], [0, 0]], ["input", "conv3x3-bn-relu", "output"], "3 ops for 2 vertices"),
    ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["input", "conv5x5", "output"], "conv5x5"),
    ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["output", "maxpool3x3", "input"], "first op"),
])
def test_malformed_graphs_are_one_line_user_errors(matrix, ops, needle) -> None:
    with pytest.raises(UserError) as e:
        graph_hash(matrix, ops)
    assert needle in _one_line_error(e)


def test_nb101_limits() -> None:
    V = 8
    chain = [[1 if j == i + 1 else 0 for j in range(V)] for i in range(V)]
    assert "8 vertices" in nb101_problem(chain, ["input"] + ["conv3x3-bn-relu"] * 6 + ["output"])
    dense = [[1 if j > i else 0 for j in range(6)] for i in range(6)]  # 15 edges
    assert "15 edges" in nb101_problem(dense, ["input"] + ["conv3x3-bn-relu"] * 4 + ["output"])
    assert nb101_problem(REAL_MATRIX, REAL_OPS) is None


def test_network_has_the_benchmarks_parameter_count() -> None:
    net = NB101Network(REAL_MATRIX, REAL_OPS)
    assert sum(p.numel() for p in net.parameters()) == 8_555_530  # the record's trainable_parameters
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert BN_MOMENTUM == pytest.approx(0.003)
    assert bns and all(m.momentum == pytest.approx(0.003) for m in bns)


def test_network_forward_and_downsampling() -> None:
    net = NB101Network(REAL_MATRIX, REAL_OPS, stem_channels=4, num_classes=7)
    sizes = []
    for stack in net.stacks:
        stack.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert sizes == [32, 16, 8]  # NB101's 2x2 pooling, not 32 -> 17 -> 9
    sizes.clear()
    net(torch.randn(2, 3, 9, 9))
    assert sizes == [9, 5, 3]  # TensorFlow 'same' rounds odd sizes up


def test_vertex_channels_split_the_output() -> None:
    # vertices 2 and 3 feed the output (7 = 4 + 3); vertex 1 feeds both and takes the wider
    m = [[0, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    assert vertex_channels(5, 7, m) == [5, 4, 4, 3, 7]


# ---------------------------------------------------------------------------------
# the real record
# ---------------------------------------------------------------------------------
@needs_real
def test_real_record_is_read() -> None:
    rows = list(iter_rows(REAL))
    assert len(rows) == 1
    offset, row = rows[0]
    assert offset == 0 and row.hash == REAL_HASH and row.epochs == 4
    assert list(row.ops) == REAL_OPS and row.matrix == tuple(map(tuple, REAL_MATRIX))
    assert row.metrics.trainable_parameters == 8_555_530
    assert len(row.metrics.evaluation_data) == 3
    assert row.metrics.evaluation_data[2].test_accuracy == 0.3504607379436493
    assert graph_hash(row.matrix, row.ops) == row.hash


@needs_real
def test_real_record_table_and_query(tmp_path: Path) -> None:
    table = NB101Table.load(REAL, cache_dir=tmp_path, verify_hashes=True)
    assert len(table) == 1 and table.epochs == (4,) and REAL_HASH in table
    rec = table.query(REAL_MATRIX, REAL_OPS)
    assert rec.hash == REAL_HASH and rec.params == 8_555_530
    r = rec.at(4)
    assert r.test == 0.3504607379436493 and r.repeats == 1
    assert rec.statistic == STATISTIC and "mean" in STATISTIC
    assert "mean of 1 repeats" in str(rec)
    with pytest.raises(UserError) as e:
        rec.at(108)
    assert "108" in _one_line_error(e)
    with pytest.raises(UserError) as e:
        table.query_hash("0" * 32)
    _one_line_error(e)
    with pytest.raises(UserError) as e:  # a graph outside NB101
        table.query([[1 if j == i + 1 else 0 for j in range(8)] for i in range(8)],
                    ["input"] + ["maxpool3x3"] * 6 + ["output"])
    assert "8 vertices" in _one_line_error(e)


# ---------------------------------------------------------------------------------
# files written here
# ---------------------------------------------------------------------------------
def test_many_records_give_the_mean_of_the_repeats(tmp_path: Path) -> None:
    f = tmp_path / "nasbench_full.tfrecord"
    expected = _write_file(f)
    table = NB101Table.load(f, cache_dir=tmp_path / "cache", verify_hashes=True)
    assert len(table) == len(CELLS) and table.epochs == (4, 108)
    assert table.meta["records"] == len(CELLS) * 2 * 3
    for (h, epochs), exp in expected.items():
        rec = table.query_hash(h)
        assert rec.params == exp["params"]
        r = rec.at(epochs)
        assert r.repeats == 3
        for k in ("train", "valid", "test", "time"):
            assert getattr(r, k) == pytest.approx(exp[k], rel=1e-12)
    # a query by (unpruned, relabelled) graph finds the same model
    dead = [[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]  # vertex 2 leads nowhere
    rec = table.query(dead, ["input", "conv3x3-bn-relu", "maxpool3x3", "output"])
    assert rec.hash == graph_hash(*CELLS[0])


def test_records_across_chunk_boundaries(tmp_path: Path) -> None:
    f = tmp_path / "x.tfrecord"
    _write_file(f, budgets=(108,))
    whole = list(iter_tfrecords(f))
    assert [o for o, _ in whole] == _offsets(f.read_bytes())
    for chunk in (1, 13, 50, 511):
        assert list(iter_tfrecords(f, chunk_bytes=chunk)) == whole


def test_flipped_data_byte_names_the_record_offset(tmp_path: Path) -> None:
    f = tmp_path / "nasbench_only108.tfrecord"
    _write_file(f, budgets=(108,))
    data = bytearray(f.read_bytes())
    offsets = _offsets(bytes(data))
    k = len(offsets) // 2
    data[offsets[k] + 12 + 40] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        NB101Table.load(f, cache=False)
    msg = _one_line_error(e)
    assert f"byte offset {offsets[k]} " in msg and "corrupt" in msg and "CRC32C" in msg
    assert "download the file again" in msg


def test_flipped_length_byte_names_the_record_offset(tmp_path: Path) -> None:
    f = tmp_path / "x.tfrecord"
    _write_file(f, budgets=(108,))
    data = bytearray(f.read_bytes())
    offsets = _offsets(bytes(data))
    for k, bit in ((3, 0x01), (5, 0x40)):  # a small change, and one making the length huge
        bad = bytearray(data)
        bad[offsets[k] + (0 if bit == 0x01 else 6)] ^= bit
        f.write_bytes(bytes(bad))
        with pytest.raises(UserError) as e:
            list(iter_tfrecords(f))
        msg = _one_line_error(e)
        assert f"byte offset {offsets[k]} " in msg and "length field" in msg


def test_flipped_checksum_byte_is_caught(tmp_path: Path) -> None:
    f = tmp_path / "x.tfrecord"
    _write_file(f, budgets=(108,))
    data = bytearray(f.read_bytes())
    offsets = _offsets(bytes(data))
    data[offsets[1] - 1] ^= 0x80  # the last byte of record 0: its data checksum
    f.write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        list(iter_tfrecords(f))
    assert "byte offset 0 " in _one_line_error(e)


def test_truncated_file_names_the_record_offset(tmp_path: Path) -> None:
    f = tmp_path / "x.tfrecord"
    _write_file(f, budgets=(108,))
    data = f.read_bytes()
    last = _offsets(data)[-1]
    for cut, needle in ((len(data) - 10, "needs"), (last + 5, "header")):
        f.write_bytes(data[:cut])
        with pytest.raises(UserError) as e:
            NB101Table.load(f, cache=False)
        msg = _one_line_error(e)
        assert "truncated" in msg and f"byte offset {last} " in msg and needle in msg


def test_records_that_are_not_nb101_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "x.tfrecord"
    good = _frame(_payload(graph_hash(*CELLS[0]), 108, *CELLS[0],
                           _metrics([(0, 0, 0, 0, 0)] * 3, 10, 1.0)))
    for payload, needle in ((b"not json", "not JSON"), (b'["a", 1]', "JSON array"),
                            (json.dumps(["0" * 32, 108, "01", "input,output", "AAAA"]).encode(),
                             "adjacency")):
        f.write_bytes(good + _frame(payload))
        with pytest.raises(UserError) as e:
            NB101Table.load(f, cache=False)
        msg = _one_line_error(e)
        assert f"byte offset {len(good)} " in msg and needle in msg
    # a record keyed by a hash its cell does not have
    f.write_bytes(_frame(_payload("f" * 32, 108, *CELLS[0], _metrics([(0, 0, 0, 0, 0)] * 3, 10, 1.0))))
    NB101Table.load(f, cache=False)  # accepted unless asked to verify
    with pytest.raises(UserError) as e:
        NB101Table.load(f, cache=False, verify_hashes=True)
    assert "hashes to" in _one_line_error(e)
    f.write_bytes(b"")
    with pytest.raises(UserError) as e:
        NB101Table.load(f, cache=False)
    assert "no records" in _one_line_error(e)


def test_metrics_decoder_skips_unknown_fields() -> None:
    raw = _metrics([(1, 2, 3, 4, 5)] * 3, 42, 7.5, path="p")
    raw += bytes([(9 << 3) | 0]) + _varint(300) + bytes([(10 << 3) | 5]) + b"\0\0\0\0"
    mm = decode_model_metrics(raw)
    assert mm.trainable_parameters == 42 and mm.total_time == 7.5
    assert mm.evaluation_data[1].validation_accuracy == 4 and mm.evaluation_data[0].checkpoint_path == "p"
    with pytest.raises(ValueError):
        decode_model_metrics(raw[:-3])


# ---------------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------------
def test_cache_is_reused_and_invalidated_by_content(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "data" / "nasbench_only108.tfrecord"
    f.parent.mkdir()
    first = _write_file(f, seed=1, budgets=(108,))
    table = NB101Table.load(f)  # default: beside the data file
    cache = table.cache_path
    assert cache is not None and cache.parent == f.parent and cache.is_file()
    with np.load(cache, allow_pickle=False) as z:  # plain arrays, no pickle
        assert "meta" in z.files and json.loads(str(z["meta"]))["source_sha256"]
    assert not [p for p in f.parent.iterdir() if p.name.endswith(".tmp")]

    def no_build(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(NB101Table, "build", classmethod(no_build))
    again = NB101Table.load(f)
    assert again.cache_path == cache and len(again) == len(table)
    monkeypatch.undo()

    second = _write_file(f, seed=2, budgets=(108,))  # same name, new content
    fresh = NB101Table.load(f)
    assert fresh.cache_path != cache and not cache.exists()  # the stale table is gone
    h = graph_hash(*CELLS[0])
    assert fresh.query_hash(h).at(108).valid == pytest.approx(second[(h, 108)]["valid"])
    assert fresh.query_hash(h).at(108).valid != pytest.approx(first[(h, 108)]["valid"])

    fresh.cache_path.write_bytes(b"garbage")  # a damaged cache is rebuilt, not trusted
    rebuilt = NB101Table.load(f)
    assert rebuilt.query_hash(h).at(108).valid == pytest.approx(second[(h, 108)]["valid"])
    with np.load(rebuilt.cache_path, allow_pickle=False) as z:
        assert len(z["hashes"]) == len(CELLS)


def test_cache_dir_and_no_cache(tmp_path: Path) -> None:
    f = tmp_path / "d" / "x.tfrecord"
    f.parent.mkdir()
    _write_file(f, budgets=(108,))
    t = NB101Table.load(f, cache=False)
    assert t.cache_path is None and sorted(p.name for p in f.parent.iterdir()) == ["x.tfrecord"]
    t = NB101Table.load(f, cache_dir=tmp_path / "c" / "d")
    assert t.cache_path.parent == tmp_path / "c" / "d"
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError) as e:
        NB101Table.load(f, cache_dir=blocker)
    assert "cache_dir=" in _one_line_error(e)
    with pytest.raises(UserError) as e:
        NB101Table.load(tmp_path / "missing.tfrecord")
    assert "not found" in _one_line_error(e)
