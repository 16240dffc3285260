"""The speed benchmark: rows for every path and method, JSON written, bad input refused."""

from __future__ import annotations

import json

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
        ("darts", None, "plain"), ("darts", None, "fast"), ("balenas", 2, "plain"), ("balenas", 2, "fast")]
    for r in rows:
        assert r["ms_per_step"] > 0 and r["steps_timed"] == 1
        assert r["s_per_epoch"] == r["ms_per_step"] * report["config"]["steps_per_epoch"] / 1000
        assert r["projected_min_50_epochs"] == r["s_per_epoch"] * 50 / 60
    assert rows[0]["speedup_vs_plain"] == 1.0
    assert rows[1]["speedup_vs_plain"] == rows[0]["ms_per_step"] / rows[1]["ms_per_step"]
    assert report["env"]["torch"] and report["config"]["C"] == 8


def test_bench_refuses_unknown_path(tmp_path, capsys) -> None:
    assert bench.main(["--device", "cpu", "--paths", "turbo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown path 'turbo'" in err
    assert not list(tmp_path.iterdir())
