"""The speed benchmark: rows for every path and method, JSON written, bad input refused."""

from __future__ import annotations

import json

import pytest
import torch

from bayesnas_core import bench


def test_bench_writes_side_by_side_rows(tmp_path, capsys) -> None:
    rc = bench.main(["--device", "cpu", "--preset", "lesson", "--steps", "1", "--warmup", "1",
                     "--mc", "2", "--paths", "plain", "fast", "graph", "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("bench-cpu-lesson-*.json")
    report = json.loads(path.read_text())
    rows = report["rows"]
    # graph is CUDA-only and dropped on the CPU; plain and fast for DARTS and BaLeNAS M=2
    assert [(r["method"], r["mc_samples"], r["path"]) for r in rows] == [
        ("balenas", 2, "plain"), ("balenas", 2, "fast"), ("darts", None, "plain"), ("darts", None, "fast")]
    for r in rows:
        assert r["ms_per_step"] > 0 and r["steps_timed"] == 1
        assert r["s_per_epoch"] == pytest.approx(r["ms_per_step"] * report["config"]["steps_per_epoch"] / 1000)
        assert r["projected_min_50_epochs"] == pytest.approx(r["s_per_epoch"] * 50 / 60)
    assert rows[0]["speedup_vs_plain"] == 1.0
    assert rows[1]["speedup_vs_plain"] == pytest.approx(rows[0]["ms_per_step"] / rows[1]["ms_per_step"])
    assert report["env"]["torch"] and report["config"]["C"] == 8
    # the fused fast path launches far fewer kernels than the plain one
    for plain, fast in (rows[0:2], rows[2:4]):
        assert fast["kernel_ops_per_step"] < 0.8 * plain["kernel_ops_per_step"]


def test_bench_times_second_order_beside_first(tmp_path) -> None:
    """``--order 1 2``: every path and method in both orders in one report, each row
    tagged with its order, speedups against the plain row of the same order, and a
    second-order step costing more than a first-order one (it runs more passes)."""
    rc = bench.main(["--device", "cpu", "--preset", "lesson", "--steps", "2", "--warmup", "1",
                     "--mc", "2", "--order", "1", "2", "--paths", "plain", "fast", "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("bench-cpu-lesson-o12-*.json")
    report = json.loads(path.read_text())
    rows = report["rows"]
    assert report["config"]["orders"] == [1, 2]
    assert [(r["order"], r["method"], r["path"]) for r in rows] == [
        (o, m, p) for o in (1, 2) for m in ("balenas", "darts") for p in ("plain", "fast")]
    for plain, fast in zip(rows[0::2], rows[1::2]):
        assert fast["speedup_vs_plain"] == pytest.approx(plain["ms_per_step"] / fast["ms_per_step"])
    first, second = rows[:4], rows[4:]
    for a, b in zip(first, second):  # the unrolled step runs about twice as many passes
        assert b["kernel_ops_per_step"] > 1.5 * a["kernel_ops_per_step"]
    assert [bench.report_lines(report)[i].split()[3:5] for i in (1, 5)] == [["order", "1"], ["order", "2"]]
    from bayesnas_core.viz import bench_label
    assert bench_label(second[0]) == "balenas M=2 2nd order" and bench_label(first[2]) == "darts"


def test_kernel_ops_leave_out_views() -> None:
    x = torch.randn(4, 3)
    counts = bench.count_kernel_ops(lambda: (x + 1).relu().view(2, 6).t().sum())
    assert counts == {"add": 1, "relu": 1, "sum": 1}


def test_bench_refuses_unknown_path(tmp_path, capsys) -> None:
    assert bench.main(["--device", "cpu", "--paths", "turbo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown path 'turbo'" in err
    assert not list(tmp_path.iterdir())


def test_shipped_reports_load_and_read(tmp_path) -> None:
    """The shipped benchmark JSONs load; every row becomes a line; the figure has one bar
    per row and a goal marker where a goal's row exists."""
    from bayesnas_core import viz

    reports = bench.load_reports()
    assert any(r["config"]["device"] == "cuda" for r in reports)
    assert any(r["config"]["device"] == "cpu" for r in reports)
    for rep in reports:
        lines = bench.report_lines(rep)
        assert len(lines) == 1 + len(rep["rows"]) and rep["file"] in lines[0]
        ax = viz.bench_bars(rep, goals={"darts": 3.0, "balenas M=3": 5.0})
        assert len(ax.patches) == len([r for r in rep["rows"] if "error" not in r])
        assert len(ax.collections) == 2  # both goals have rows in every shipped report
    (tmp_path / "bench-x.json").write_text(json.dumps({
        "config": {"epochs": 50, "preset": "p"}, "env": {"device": "d", "torch": "t"},
        "rows": [{"method": "darts", "mc_samples": None, "path": "graph", "error": "boom"}]}))
    (rep,) = bench.load_reports(tmp_path)
    assert bench.report_lines(rep)[1].endswith("failed: boom")
