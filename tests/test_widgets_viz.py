"""Widget callbacks and plots: each is a library function that must do its job."""

from __future__ import annotations

import math

import pytest
from matplotlib.figure import Figure

from bayesnas_core import viz, widgets
from bayesnas_core.experiments import bayesian_regression_demo


def test_edge_mixture_softmax_and_argmax() -> None:
    r = widgets.compute_edge_mixture(nor_conv_3x3=2.0, skip_connect=1.0)
    assert math.isclose(sum(r["weights"]), 1.0)
    e = [1.0, math.e, 1.0, math.e**2, 1.0]
    assert r["weights"] == pytest.approx([v / sum(e) for v in e])
    assert r["argmax"] == "nor_conv_3x3"
    fig = widgets.show_edge_mixture(nor_conv_3x3=2.0)
    assert isinstance(fig, Figure) and "nor_conv_3x3" in fig.axes[0].get_title()


def test_regression_demo_recovers_the_posterior() -> None:
    """Batch 1: Vadam ~ the exact mean-field posterior (15%: see tests/test_vadam.py);
    batch 16: sigma inflated by about sqrt(16) = 4 (between 2x and 6x)."""
    r = bayesian_regression_demo(batch_size=1, epochs=20)
    for mu, mu_x, s, s_x in zip(r["mu"], r["mu_exact"], r["sigma"], r["sigma_mean_field"]):
        assert abs(mu - mu_x) < 0.25 * s_x
        assert abs(s / s_x - 1) < 0.15
    big = bayesian_regression_demo(batch_size=16, epochs=20)
    ratio = big["sigma"][0] / big["sigma_mean_field"][0]
    assert 2.0 < ratio < 6.0
    fig = widgets.show_regression_posterior(batch_size=16)
    assert len(fig.axes) == 2 and "σ Vadam / exact" in fig.axes[0].get_title()


def test_quick_search_callback(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = widgets.compute_quick_search("darts", 1, epochs=1, limit=128)
    assert len(r["metrics"]) == 1 and len(r["history"]) == 1 and r["arch"].startswith("|")
    fig = widgets.show_quick_search("balenas", 2, epochs=1)
    assert len(fig.axes) >= 3 and "NB201 CIFAR-10 test" in fig._suptitle.get_text()


def test_tf_selection_callback() -> None:
    mu = [[0.0, 0.0, 0.5, 1.0, 0.0]] * 6
    sigma = [[1.0] * 5] * 6
    r = widgets.compute_tf_selection(mu, sigma, "synflow", samples=10)
    scores = {c["arch"]: c["log10"] for c in r["candidates"]}
    assert r["best"] == max(scores, key=scores.get)
    assert 1 <= len(r["candidates"]) <= 10
    fig = widgets.show_tf_selection(mu, sigma, "snip", samples=5)
    assert "snip, K = 5" in fig.axes[0].get_title()


def test_panels_build() -> None:
    assert widgets.edge_mixture_panel().children
    assert widgets.quick_search_panel().children  # manual: nothing runs on creation
    assert widgets.tf_selection_panel([[0.0] * 5] * 6, [[1.0] * 5] * 6).children


def test_plots_draw_from_records() -> None:
    hist = [{"epoch": e, "mu": [[0.1 * e] * 5] * 6, "sigma": [[0.5] * 5] * 6} for e in (1, 2, 3)]
    ax = viz.alpha_trajectory(hist, edge=2)
    assert len(ax.lines) == 5 and len(ax.collections) == 5  # a sigma band per op
    ax = viz.alpha_heatmap(hist[-1]["mu"])
    assert len(ax.texts) == 30
    ax = viz.posterior_densities([0, 1, 2, 3, 4], [1, 1, 1, 1, 1])
    assert len(ax.lines) == 5
    recs = [{"epoch": 1, "x": 1.0}, {"epoch": 2, "x": 2.0}]
    ax = viz.metric_curves({"a": recs}, "x")
    assert list(ax.lines[0].get_ydata()) == [1.0, 2.0]
    table = {"title": "t", "rows": [{"label": "M = 1", "cifar10_test": (90.0, 1.0)},
                                    {"label": "x", "cifar10_test": None}]}
    ax = viz.ablation_bars(table)
    assert len(ax.patches) == 1
