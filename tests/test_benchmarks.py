"""NAS-Bench-201 ground truth: the embedded table and the official file through nas_201_api."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pytest
import torch

from bayesnas_core.benchmarks import (
    METRICS,
    GroundTruth,
    NB201Table,
    OfficialNB201,
    format_ground_truth,
    missing_hint,
    open_benchmark,
)
from bayesnas_core.errors import UserError
from bayesnas_core.spaces import OP_NAMES
from bayesnas_core.paths import assets_dir

ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
CSV = assets_dir() / "nb201" / "nb201_200ep_4metrics.csv"


@pytest.fixture(scope="module")
def table() -> NB201Table:
    return NB201Table.load()


# ---------------------------------------------------------------------------------
# embedded table
# ---------------------------------------------------------------------------------
def test_table_size_and_roundtrip_all_cells(table: NB201Table) -> None:
    assert len(table) == 15_625 == len(OP_NAMES) ** 6
    for i in range(len(table)):
        assert table.index_of(table.arch_str(i)) == i
    assert len(set(table)) == 15_625


def test_table_maxima(table: NB201Table) -> None:
    expected = {"cifar10_valid": 91.6067, "cifar10_test": 94.3733, "cifar100_test": 73.5133, "imagenet16_test": 47.3111}
    for metric, top in expected.items():
        assert max(table.column(metric)) == top
        best = table.best(metric)
        assert best.metrics[metric] == top
        assert table.query(best.arch_str).index == best.index


def test_all_skip_cell_collapse(table: NB201Table) -> None:
    gt = table.query(ALL_SKIP)
    assert gt.arch_str == ALL_SKIP and gt.index == table.index_of(ALL_SKIP)
    assert gt.metrics["cifar10_valid"] == 39.7693
    assert gt.metrics["cifar10_test"] == 54.2967
    assert gt.metrics["cifar100_test"] == 15.6067
    assert gt.metrics["imagenet16_test"] == 16.3222
    assert table.query(gt.index) == gt
    assert gt.source == "embedded table (200 epochs, seed mean)"


def test_table_missing_metrics_are_none_with_hint(table: NB201Table) -> None:
    gt = table.query(0)
    assert set(gt.metrics) == set(METRICS)
    assert gt.metrics["cifar100_valid"] is None and gt.metrics["imagenet16_valid"] is None
    assert gt.missing() == ["cifar100_valid", "imagenet16_valid"]
    hint = missing_hint(gt)
    assert hint is not None and "--nb201-file" in hint and "\n" not in hint
    assert "cifar100_valid" in hint and "imagenet16_valid" in hint
    text = format_ground_truth(gt)
    lines = text.splitlines()
    assert len(lines) == 1 + len(METRICS)
    assert sum("missing" in ln for ln in lines) == 2
    assert "81.9827" in text  # cifar10_valid of cell 0
    with pytest.raises(UserError, match="--nb201-file"):
        table.column("cifar100_valid")
    with pytest.raises(UserError):
        table.column("cifar10_acc")
    full = GroundTruth("x", 0, {m: 50.0 for m in METRICS}, "s")
    assert full.missing() == [] and missing_hint(full) is None


@pytest.mark.parametrize(
    "bad",
    [
        ALL_SKIP.replace("skip_connect~1", "conv_3x3~1", 1),  # op not in the vocabulary
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|",  # two nodes
        "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+|none~0|",  # four nodes
        "nor_conv_3x3~0+|none~0|none~1|+|none~0|none~1|none~2|",  # missing bars
        "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~3|+|none~0|none~1|none~2|",  # bad input node
        "|none~0|+|none~0|none~1|+|none~0|none~1|",  # node 3 lacks an edge
        "",
    ],
)
def test_malformed_arch_strings(table: NB201Table, bad: str) -> None:
    with pytest.raises(UserError) as info:
        table.index_of(bad)
    msg = str(info.value)
    assert "\n" not in msg and "not a NAS-Bench-201 arch string" in msg
    assert "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|" in msg and "skip_connect" in msg
    with pytest.raises(UserError):
        table.query(bad)


def test_bad_indices(table: NB201Table) -> None:
    for bad in (-1, 15_625, True):
        with pytest.raises(UserError):
            table.query(bad)


def test_shipped_csv_sha256_matches_readme() -> None:
    readme = (CSV.parent / "README.md").read_text(encoding="utf-8")
    shas = re.findall(r"\b[0-9a-f]{64}\b", readme)
    assert len(shas) == 1
    assert hashlib.sha256(CSV.read_bytes()).hexdigest() == shas[0]


def test_table_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        NB201Table.load(tmp_path / "nope.csv")
    lines = CSV.read_text(encoding="utf-8").splitlines(keepends=True)
    short = tmp_path / "short.csv"
    short.write_text("".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(UserError, match="15624 rows"):
        NB201Table.load(short)
    bad_header = tmp_path / "header.csv"
    bad_header.write_text("idx," + "".join(lines)[6:], encoding="utf-8")
    with pytest.raises(UserError, match="header"):
        NB201Table.load(bad_header)
    bad_value = tmp_path / "value.csv"
    bad_value.write_text("".join(lines).replace("81.9827", "abc", 1), encoding="utf-8")
    with pytest.raises(UserError, match="corrupt"):
        NB201Table.load(bad_value)


def test_open_benchmark_default_is_table() -> None:
    assert isinstance(open_benchmark(None), NB201Table)


# ---------------------------------------------------------------------------------
# official file, built with the official API's own classes
# ---------------------------------------------------------------------------------
# Final-epoch accuracy of each (dataset, eval set); distinct so a mixed-up split shows.
SPLIT = {
    ("cifar10-valid", "x-valid"): 1.0,
    ("cifar10-valid", "ori-test"): 2.0,
    ("cifar10", "ori-test"): 3.0,
    ("cifar100", "x-valid"): 4.0,
    ("cifar100", "x-test"): 5.0,
    ("cifar100", "ori-test"): 6.0,
    ("ImageNet16-120", "x-valid"): 7.0,
    ("ImageNet16-120", "x-test"): 8.0,
    ("ImageNet16-120", "ori-test"): 9.0,
}
SEED_OFFSET = {777: 0.5, 888: 2.0}  # seed mean adds 1.25; either seed alone differs
HP_BASE = {"12": 20.0, "200": 60.0}  # 12-epoch numbers are far lower
EVALUATED = (0, 1835, 6111)  # NB201 indices given results; slot k adds 10 * k


def _final_acc(hp: str, slot: int, dataset: str, split: str, seed: int) -> float:
    return HP_BASE[hp] + 10.0 * slot + SPLIT[(dataset, split)] + SEED_OFFSET[seed]


def _fake_official(arch_strs: list[str]) -> dict:
    """A NAS-Bench-201 file's dict: 15,625 meta_archs, results for 3 cells, 2 seeds each."""
    from nas_201_api.api_utils import ArchResults, ResultsCount

    arch2infos = {}
    for slot, index in enumerate(EVALUATED):
        hp_results = {}
        for hp, epochs in (("12", 12), ("200", 200)):
            arch_res = ArchResults(index, arch_strs[index])
            for dataset in ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120"):
                for seed in (777, 888):
                    train_acc = {e: 10.0 + e * 0.1 for e in range(epochs)}
                    train_loss = {e: 2.0 - e * 0.001 for e in range(epochs)}
                    config = {"channel": 16, "num_cells": 5, "arch_str": arch_strs[index], "class_num": 10}
                    rc = ResultsCount(dataset, None, train_acc, train_loss, 1.0, 50.0, config, seed, epochs, [0.01])
                    rc.update_train_info(train_acc, None, train_loss, {e: 1.0 for e in range(epochs)})
                    accs, losses, times = {}, {}, {}
                    for (ds, split) in SPLIT:
                        if ds != dataset:
                            continue
                        final = _final_acc(hp, slot, ds, split, seed)
                        for e in range(epochs):  # earlier epochs are 30 points worse
                            key = f"{split}@{e}"
                            accs[key] = final if e == epochs - 1 else final - 30.0
                            losses[key], times[key] = 1.0, 0.1
                    rc.update_eval(accs, losses, times)
                    arch_res.update(dataset, seed, rc)
            hp_results[hp] = arch_res
        arch2infos[index] = {"less": hp_results["12"].state_dict(), "full": hp_results["200"].state_dict()}
    return {"meta_archs": list(arch_strs), "arch2infos": arch2infos, "evaluated_indexes": list(EVALUATED)}


# Worked by hand from the numbers above: 60 (hp=200) + 10*slot + split + 1.25 (seed mean).
EXPECTED = {
    0: {  # slot 0
        "cifar10_valid": 62.25,  # cifar10-valid x-valid
        "cifar10_test": 64.25,  # cifar10 ori-test
        "cifar100_valid": 65.25,
        "cifar100_test": 66.25,
        "imagenet16_valid": 68.25,
        "imagenet16_test": 69.25,
    },
    1835: {  # slot 1
        "cifar10_valid": 72.25,
        "cifar10_test": 74.25,
        "cifar100_valid": 75.25,
        "cifar100_test": 76.25,
        "imagenet16_valid": 78.25,
        "imagenet16_test": 79.25,
    },
    6111: {  # slot 2
        "cifar10_valid": 82.25,
        "cifar10_test": 84.25,
        "cifar100_valid": 85.25,
        "cifar100_test": 86.25,
        "imagenet16_valid": 88.25,
        "imagenet16_test": 89.25,
    },
}


@pytest.fixture(scope="module")
def official_dict(table: NB201Table) -> dict:
    return _fake_official(list(table))


def _check_official(bench: OfficialNB201, table: NB201Table) -> None:
    assert len(bench) == 15_625
    for index, expected in EXPECTED.items():
        for arch in (index, table.arch_str(index)):
            gt = bench.query(arch)
            assert gt.index == index and gt.arch_str == table.arch_str(index)
            assert gt.metrics == expected  # exact: hp=200, seed mean, last epoch
            assert gt.missing() == [] and missing_hint(gt) is None
            assert "hp=200, seed mean" in gt.source
    with pytest.raises(UserError, match="no results"):
        bench.query(5)
    with pytest.raises(UserError, match="not a NAS-Bench-201 arch string"):
        bench.query("|none~0|")
    assert bench.best("cifar100_valid").index == 6111
    assert "missing" not in format_ground_truth(bench.query(ALL_SKIP))


def test_official_dict_gives_200_epoch_seed_mean(official_dict: dict, table: NB201Table) -> None:
    bench = OfficialNB201.load(official_dict)
    _check_official(bench, table)
    # The API's own defaults (hp='12', a random seed) give other numbers for this dict.
    api_default = bench.api.get_more_info(1835, "cifar100", is_random=False)["valid-accuracy"]
    assert api_default == 20.0 + 10.0 + 4.0 + 1.25
    one_seed = bench.api.get_more_info(1835, "cifar100", hp="200", is_random=777)["valid-accuracy"]
    assert one_seed == 74.5 != EXPECTED[1835]["cifar100_valid"]


def test_official_file_by_path(official_dict: dict, table: NB201Table, tmp_path: Path) -> None:
    path = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    torch.save(official_dict, path)
    logged: list[str] = []
    bench = open_benchmark(path, log=logged.append)
    assert isinstance(bench, OfficialNB201)
    assert len(logged) == 1 and "\n" not in logged[0]
    msg = logged[0]
    assert "NAS-Bench-201 v1.1" in msg and "GB" in msg and "RAM" in msg
    assert "NAS-Bench-201-v1_1-096897.pth" in bench.source
    _check_official(bench, table)


def test_official_file_with_numpy_1_scalars(tmp_path: Path) -> None:
    """Files pickled in 2020 hold numpy.core.* names; torch's weights_only load must allow them."""
    import io

    import numpy as np

    from nas_201_api.api_utils import ArchResults, ResultsCount

    arch = ALL_SKIP
    res = ArchResults(0, arch)
    rc = ResultsCount("cifar10-valid", None, [50.0], [1.0], np.float64(1.0), np.float64(2.0), {}, 1, 1, [0.01])
    rc.update_eval({"x-valid@0": np.float64(42.5)}, {"x-valid@0": 1.0}, {"x-valid@0": 0.1})
    res.update("cifar10-valid", 1, rc)
    data = {"meta_archs": [arch], "arch2infos": {0: {"less": res.state_dict(), "full": res.state_dict()}},
            "evaluated_indexes": [0]}
    buf = io.BytesIO()
    torch.save(data, buf, _use_new_zipfile_serialization=False)  # the 2020 format
    raw = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "NAS-Bench-201-v1_0-e61699.pth"
    path.write_bytes(raw)
    bench = OfficialNB201.load(path, log=lambda s: None)
    gt = bench.query(0)
    assert gt.metrics["cifar10_valid"] == 42.5
    assert gt.missing() == ["cifar10_test", "cifar100_valid", "cifar100_test", "imagenet16_valid", "imagenet16_test"]
    assert "--nb201-file" not in (missing_hint(gt) or "")


def test_official_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--nb201-file") as info:
        OfficialNB201.load(tmp_path / "NAS-Bench-201-v1_1-096897.pth", log=lambda s: None)
    assert "\n" not in str(info.value)
    corrupt = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    corrupt.write_bytes(random.Random(0).randbytes(4096))
    logged: list[str] = []
    with pytest.raises(UserError) as info:
        OfficialNB201.load(corrupt, log=logged.append)
    assert "\n" not in str(info.value) and "cannot read" in str(info.value)
    assert len(logged) == 1
    wrong = tmp_path / "other.pth"
    torch.save({"meta_archs": []}, wrong)
    with pytest.raises(UserError, match="cannot read"):
        OfficialNB201.load(wrong, log=lambda s: None)
    with pytest.raises(UserError, match="NATS"):
        OfficialNB201.load(tmp_path / "NATS-tss-v1_0-3ffb9-simple", log=lambda s: None)
    with pytest.raises(UserError, match="format"):
        OfficialNB201.load({"meta_archs": []})


def test_format_ground_truth_never_invents_numbers() -> None:
    gt = GroundTruth("a", 3, {m: (None if i % 2 else 10.0 * i + 0.5) for i, m in enumerate(METRICS)}, "s")
    lines = format_ground_truth(gt).splitlines()[1:]
    assert len(lines) == len(METRICS)
    for i, line in enumerate(lines):
        assert line.endswith("missing" if i % 2 else f"{10.0 * i + 0.5:.4f} %")


def test_cli_lookup_with_official_file(official_dict: dict, tmp_path: Path, capsys) -> None:
    """`--nb201-file` on the command line: all six metrics come from the official file."""
    from bayesnas_core.run import main

    path = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    torch.save(official_dict, path)
    assert main(["lookup", ALL_SKIP, "--nb201-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "missing" not in out and "hp=200, seed mean" in out
    for value in EXPECTED[1835].values():
        assert f"{value:.4f}" in out
