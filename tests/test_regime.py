"""The regime quantities a run records per epoch (bayesnas_core.regime)."""

from __future__ import annotations

import json

import pytest
import torch

from bayesnas_core.config import to_dict
from bayesnas_core.regime import draw_matches_argmax, epoch_regime, planned_regime
from bayesnas_core.runs import RunDir
from bayesnas_core.search import search

from conftest import make_tiny_config, make_tiny_data


def test_draws_match_the_argmax_as_a_point_mass_or_uniformly() -> None:
    mu = torch.tensor([[0.0, 3.0, 0.0, 0.0, 0.0]] * 6)
    assert draw_matches_argmax(mu, torch.full_like(mu, 1e-6)) == 1.0
    flat = torch.zeros(6, 5)
    assert draw_matches_argmax(flat, torch.ones(6, 5)) == pytest.approx(0.2, abs=0.01)
    # one standard deviation apart: P(argmax kept) is between uniform and certain
    p = draw_matches_argmax(torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]] * 6), torch.ones(6, 5))
    assert 0.3 < p < 0.6


def test_epoch_regime_by_hand() -> None:
    mu = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]] * 6)
    sigma = torch.full((6, 5), 0.5)
    s = torch.full((6, 5), 2e-4)
    r = epoch_regime(mu=mu, sigma=sigma, a_lr=3e-4, arch_steps=1000, beta2=0.999, num_data=2000,
                     prior_precision=1.0, exp_avg_sq=s, train_acc=0.9, valid_acc=0.7)
    assert r["alpha_travel_bound"] == pytest.approx(0.3)
    assert r["mu_range"] == 4.0
    assert r["s_warmup"] == pytest.approx(1 - 0.999 ** 1000)
    assert r["ns_over_lambda"] == pytest.approx(0.4)
    assert r["mu_spread_over_sigma"] == pytest.approx(2 ** 0.5 / 0.5)
    assert r["train_valid_gap"] == pytest.approx(0.2)
    darts = epoch_regime(mu=mu, sigma=None, a_lr=3e-4, arch_steps=10, beta2=0.999, num_data=None,
                         prior_precision=1.0, exp_avg_sq=None, train_acc=0.5, valid_acc=0.5)
    assert darts["ns_over_lambda"] is None and darts["draw_matches_argmax"] is None


def test_planned_regime_of_the_paper() -> None:
    """The paper's NB201 search: 50 epochs of 25,000 / 64 steps at lr 3e-4."""
    r = planned_regime(epochs=50, train_size=25_000, batch_size=64, a_lr=3e-4, beta2=0.999)
    assert r["arch_steps"] == 50 * 390 and r["alpha_travel_bound"] == pytest.approx(5.85)
    assert r["s_warmup"] > 0.999


@pytest.mark.parametrize("method", ["balenas", "darts"])
def test_a_search_records_its_regime(tmp_path, method) -> None:
    cfg = make_tiny_config(tmp_path, method=method)
    run = RunDir.create(cfg.out, "r", to_dict(cfg), env={})
    search(cfg, make_tiny_data(), run=run, progress=False)
    metrics = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    steps = len(make_tiny_data().train) // cfg.data.batch_size
    for rec in metrics:
        assert rec["alpha_travel_bound"] == pytest.approx(cfg.search.a_lr * steps * rec["epoch"])
        assert rec["train_valid_gap"] == pytest.approx(rec["train_acc"] - rec["valid_acc"])
    last = metrics[-1]
    state = run.load_checkpoint()
    if method == "darts":
        assert last["ns_over_lambda"] is None
        return
    s = state["a_opt"]["state"][0]["exp_avg_sq"]
    n = cfg.search.num_data or len(make_tiny_data().valid)
    assert last["ns_over_lambda"] == pytest.approx(float((n * s.double()).mean()) / cfg.search.prior_precision)
    assert 0.0 < last["draw_matches_argmax"] <= 1.0


def test_run_regime_recomputes_what_the_run_recorded(tmp_path, capsys) -> None:
    """From config, history and metrics alone (as for runs made before the quantities were
    recorded): equal to the per-epoch records, N s from the recorded sigma."""
    from bayesnas_core.regime import run_regime
    from bayesnas_core.run import REGIME_COLUMNS, main

    assert main(["--preset", "lesson", "--epochs", "2", "--limit", "128", "--channels", "4",
                 "--no-progress", "--out", str(tmp_path)]) == 0
    (run,) = list(tmp_path.iterdir())
    recorded = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    again = run_regime(run)
    assert [r["epoch"] for r in again] == [1, 2]
    for rec, r in zip(recorded, again):
        for key in REGIME_COLUMNS:
            # N s / lambda from a float32 sigma: 1/sigma^2 - lambda is exact to ~1e-6 lambda
            tol = 1e-6 if key == "ns_over_lambda" else 1e-9
            assert r[key] == pytest.approx(rec[key], rel=1e-4, abs=tol), key
    capsys.readouterr()
    assert main(["regime", str(run)]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith(f"| {run.name} | 2 | ") and row.count("|") == len(REGIME_COLUMNS) + 3
    assert main(["regime", str(run / "config.json")]) == 2  # not a run folder: one line
