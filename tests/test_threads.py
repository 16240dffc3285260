"""The CPU thread policy: the rule, the record in a run, the restore, the bench both ways,
and the hint a user sees when a step runs far slower than the idle benchmark."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bayesnas_core import bench
from bayesnas_core.run import main
from bayesnas_core.threads import (busy_cpus, default_threads, idle_reference, slow_step_hint,
                                   torch_threads)

FAST = ["--preset", "lesson", "--epochs", "1", "--limit", "128", "--channels", "4",
        "--no-progress"]


@pytest.mark.parametrize("cpus,busy,threads", [(1, 0.0, 1), (2, 0.1, 2), (2, 0.6, 1), (2, 1.0, 1),
                                                (2, 3.0, 1), (16, 4.2, 12), (16, 0.0, 16)])
def test_default_leaves_the_busy_cpus_to_others(cpus, busy, threads, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(cpus, busy) == threads


def test_omp_num_threads_wins(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads(16, 0.0) == 3


def test_busy_cpus_sees_a_busy_process(monkeypatch) -> None:
    """Measured, not assumed: with one process spinning, at least half a CPU is busy."""
    with bench.busy_processes(1):
        loaded = busy_cpus(0.5)
    assert loaded >= 0.5


def test_a_run_records_its_threads_and_restores_the_callers(tmp_path, capsys) -> None:
    before = torch.get_num_threads()
    assert main([*FAST, "--out", str(tmp_path / "a")]) == 0
    assert torch.get_num_threads() == before
    (run,) = list((tmp_path / "a").iterdir())
    used = json.loads((run / "config.json").read_text())["threads"]
    assert 1 <= used <= (os.cpu_count() or 1)
    assert json.loads((run / "env.json").read_text())["cpu_threads"] == used
    assert main([*FAST, "--threads", "2", "--out", str(tmp_path / "b")]) == 0
    (run,) = list((tmp_path / "b").iterdir())
    assert json.loads((run / "config.json").read_text())["threads"] == 2
    assert json.loads((run / "env.json").read_text())["cpu_threads"] == 2
    assert torch.get_num_threads() == before


def test_torch_threads_restores_after_an_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError
    assert torch.get_num_threads() == before


REPORTS = [{"file": "bench-cpu-lesson-x.json", "config": {"preset": "lesson", "device": "cpu"},
            "env": {"cpu_threads": 2},
            "rows": [{"method": "balenas", "path": "fast", "mc_samples": 3, "threads": 1, "load": 0,
                      "ms_per_step": 10.0},
                     {"method": "balenas", "path": "fast", "mc_samples": 3, "threads": 1, "load": 1,
                      "ms_per_step": 99.0},
                     {"method": "darts", "path": "fast", "mc_samples": None, "ms_per_step": 7.0},
                     {"method": "balenas", "path": "fast", "mc_samples": 3, "threads": 1, "load": 0,
                      "order": 2, "ms_per_step": 40.0}]}]


def test_idle_reference_picks_the_matching_idle_row() -> None:
    ref = idle_reference(REPORTS, preset="lesson", method="balenas", mc_samples=3, path="fast", threads=1)
    assert ref == (10.0, "bench-cpu-lesson-x.json")
    # rows without a thread tag count as the report's thread count
    assert idle_reference(REPORTS, preset="lesson", method="darts", mc_samples=None, path="fast",
                          threads=2) == (7.0, "bench-cpu-lesson-x.json")
    assert idle_reference(REPORTS, preset="default", method="balenas", mc_samples=3, path="fast",
                          threads=1) is None
    # a second-order row is the reference of second-order runs only
    assert idle_reference(REPORTS, preset="lesson", method="balenas", mc_samples=3, path="fast",
                          threads=1, order=2) == (40.0, "bench-cpu-lesson-x.json")


def test_slow_step_hint_only_when_far_slower() -> None:
    assert slow_step_hint(25.0, (10.0, "f.json"), 2) is None
    line = slow_step_hint(300.0, (10.0, "f.json"), 2)
    assert line is not None and "\n" not in line and "30x" in line and "--threads 1" in line
    assert "assets/bench/f.json" in line
    assert slow_step_hint(300.0, None, 2) is None


def test_a_slow_run_prints_the_hint(tmp_path, capsys, monkeypatch) -> None:
    """What the user sees: one note line when the benchmark says steps should be faster."""
    monkeypatch.setattr(bench, "load_reports", lambda folder=None: [
        {"file": "bench-cpu-lesson-fake.json", "config": {"preset": "lesson", "device": "cpu"},
         "env": {"cpu_threads": 1},
         "rows": [{"method": "balenas", "path": "fast", "mc_samples": 3, "threads": t, "load": 0,
                   "ms_per_step": 0.001} for t in (1, 2, 4, 8)]}])
    assert main([*FAST, "--out", str(tmp_path)]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note: a step takes")]
    assert len(notes) == 1 and "bench-cpu-lesson-fake.json" in notes[0]


def test_bench_times_each_thread_count_idle_and_loaded(tmp_path) -> None:
    rc = bench.main(["--device", "cpu", "--preset", "lesson", "--steps", "1", "--warmup", "1",
                     "--mc", "1", "--paths", "fast", "--threads", "1", "2", "--load", "0", "1",
                     "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("bench-cpu-lesson-*.json")
    report = json.loads(path.read_text())
    tags = {(r["method"], r["threads"], r["load"]) for r in report["rows"]}
    assert tags == {(m, t, k) for m in ("balenas", "darts") for t in (1, 2) for k in (0, 1)}
    assert report["config"]["threads"] == [1, 2] and report["config"]["loads"] == [0, 1]
    assert set(report["config"]["policy_threads"]) == {"0", "1"}
    assert any("threads 2 load 1" in line for line in bench.report_lines({**report, "file": "x"}))
