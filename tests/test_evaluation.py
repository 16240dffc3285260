"""The Fashion-MNIST reference and the paired comparison of methods (bayesnas_core.evaluation)."""

from __future__ import annotations

import json
import math

import pytest

from bayesnas_core.benchmarks import open_benchmark
from bayesnas_core.errors import UserError
from bayesnas_core.evaluation import (ALL_SKIP, METRIC, compare_methods, fmnist_reference,
                                      sign_test_p, stratified_cells)
from bayesnas_core.config import get_train_preset


@pytest.fixture(scope="module")
def bench():
    return open_benchmark(None)


def test_stratified_sample_spans_the_range_one_cell_per_stratum(bench):
    cells = stratified_cells(bench, 30, seed=0)
    assert cells == stratified_cells(bench, 30, seed=0)  # seeded
    assert cells != stratified_cells(bench, 30, seed=1)
    accs = [bench.query(a).metrics[METRIC] for a in cells]
    col = sorted(bench.column(METRIC))
    n = len(col)
    for k, acc in enumerate(accs):  # the k-th cell lies in the k-th 30-quantile band
        assert col[k * n // 30] <= acc <= col[(k + 1) * n // 30 - 1]
    assert len(set(cells)) == 30
    with pytest.raises(UserError, match="--sample-cells"):
        stratified_cells(bench, 0, seed=0)


def test_sign_test_matches_the_binomial_by_hand():
    assert sign_test_p(5, 0) == pytest.approx(2 / 32)
    assert sign_test_p(4, 1) == pytest.approx(2 * 6 / 32)
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(3, 3) == 1.0
    assert sign_test_p(10, 0) == pytest.approx(2 / 1024)


def _study(tmp_path, rows):
    """An exported study folder with one fake run per row (summary.json, metrics.jsonl)."""
    study = tmp_path / "study"
    study.mkdir()
    for r in rows:
        run = study / r["run"]
        run.mkdir()
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": e, "arch": r["arch"], f"gt_{METRIC}": v}) + "\n"
                    for e, v in enumerate(r.pop("curve"), 1)))
    (study / "summary.json").write_text(json.dumps({"runs": rows}))
    return study


def _row(run, method, order, mc, seed, acc, curve, arch=ALL_SKIP):
    return {"run": run, "method": method, "order": order, "mc_samples": mc, "seed": seed,
            "arch": arch, METRIC: acc, "parameter_free_ops": 6, "wall_time_s": 1.0, "curve": curve}


def test_comparison_pairs_methods_on_shared_seeds(tmp_path):
    rows = [_row("d0", "darts", 1, None, 0, 50.0, [60.0, 50.0]),
            _row("d1", "darts", 1, None, 1, 54.0, [54.0]),
            _row("b0", "balenas", 1, 3, 0, 53.0, [53.0]),
            _row("b1", "balenas", 1, 3, 1, 52.0, [70.0, 52.0]),
            _row("b2", "balenas", 1, 3, 2, 90.0, [90.0])]  # seed 2 has no DARTS partner
    out = compare_methods(_study(tmp_path, rows))
    by = {r["label"]: r for r in out["rows"]}
    bal, darts = by["balenas (order 1, M=3)"], by["darts (order 1)"]
    assert darts["final"] == pytest.approx((52.0, 2.0))
    assert darts["best_epoch"] == pytest.approx((57.0, 3.0))  # best epoch of each run: 60, 54
    p = bal["paired"]["final"]
    assert p["seeds"] == [0, 1] and p["diffs"] == pytest.approx([3.0, -2.0])
    assert (p["wins"], p["ties"], p["losses"]) == (1, 0, 1)
    assert bal["paired"]["trained"] is None and bal["trained"] is None
    md = (tmp_path / "study" / "comparison.md").read_text()
    assert "| balenas (order 1, M=3) | final | 0.50 ± 2.50 | 1 / 0 / 1 | 1.000 |" in md


def test_comparison_refuses_a_missing_baseline_and_a_duplicate_seed(tmp_path):
    study = _study(tmp_path, [_row("b0", "balenas", 1, 3, 0, 53.0, [53.0]),
                              _row("b1", "balenas", 1, 3, 0, 52.0, [52.0])])
    with pytest.raises(UserError, match="two balenas"):
        compare_methods(study)
    with pytest.raises(UserError, match="not an export summary"):
        compare_methods(tmp_path / "nowhere")


def test_reference_trains_each_cell_once_resumes_and_correlates(tmp_path, bench, monkeypatch):
    """A tiny recipe: 3 stratified cells + all-skip + the best cell, seed 0, plus the cell
    of an exported study for seeds 0 and 1; a second call trains nothing new."""
    recipe = get_train_preset("cpu")
    recipe.epochs, recipe.limit, recipe.threads, recipe.C = 1, 64, 1, 4
    recipe.out = str(tmp_path / "runs")
    study = tmp_path / "study"
    study.mkdir()
    picked = bench.arch_str(123)
    (study / "summary.json").write_text(json.dumps({"runs": [{"arch": picked}, {"arch": picked}]}))
    out = fmnist_reference(recipe, cells=3, sample_seed=0, seeds=[0], include=[study],
                           include_seeds=[0, 1], results_dir=tmp_path / "ref", progress=False,
                           log=lambda s: None, bench=bench)
    ledger = json.loads((tmp_path / "ref" / "reference.ledger.json").read_text())["done"]
    assert len(ledger) == 3 + 2 + 2  # 3 strata, 2 anchors, the picked cell at seeds 0 and 1
    row = next(r for r in out["rows"] if r["arch"] == picked)
    assert row["seeds"] == [0, 1] and row["picked"] == 2 and not row["in_sample"]
    extra = [a for a in (ALL_SKIP, bench.best(METRIC).arch_str) if a not in stratified_cells(bench, 3, 0)]
    assert out["spearman_sample"]["n"] == 3 and out["spearman_all"]["n"] == 3 + len(extra) + 1
    assert math.isfinite(out["spearman_sample"]["spearman"])
    assert [r["arch"] for r in out["rows"] if r["anchor"]] == sorted(extra, key=lambda a: bench.query(a).metrics[METRIC])
    import bayesnas_core.train as train

    monkeypatch.setattr(train, "run_train", lambda *a, **k: pytest.fail("trained again"))
    again = fmnist_reference(recipe, cells=3, sample_seed=0, seeds=[0], include=[study],
                             include_seeds=[0, 1], results_dir=tmp_path / "ref", progress=False,
                             log=lambda s: None, bench=bench)
    assert again["rows"] == out["rows"]
    recipe.epochs = 2
    with pytest.raises(UserError, match="other settings"):
        fmnist_reference(recipe, cells=3, sample_seed=0, seeds=[0], results_dir=tmp_path / "ref",
                         progress=False, log=lambda s: None, bench=bench)
