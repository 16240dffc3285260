"""Widget callbacks and plots: each is a library function that must do its job."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from bayesnas_core import viz, widgets
from bayesnas_core.experiments import bayesian_regression_demo
from bayesnas_core.spaces import OP_NAMES, Arch


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


PNG = b"\x89PNG\r\n\x1a\n"


def _png(panel) -> bytes:
    """What the reader sees: the picture in the panel's Image widget (and no error line)."""
    assert not panel.status.value.startswith("failed"), panel.status.value
    data = bytes(panel.image.value)
    assert data.startswith(PNG), "no picture in the panel"
    return data


def _moved(panel, name: str, value) -> bytes:
    """Move one control as a reader would; return the picture it leaves."""
    before = _png(panel)
    panel.controls[name].value = value
    after = _png(panel)
    assert after != before, f"moving {name} did not redraw the picture"
    return after


def test_edge_mixture_panel_shows_its_picture() -> None:
    panel = widgets.edge_mixture_panel()
    assert panel.image in panel.children  # the picture is part of what the cell displays
    _moved(panel, "nor_conv_3x3", 2.0)
    for name in OP_NAMES:  # the whole op name is the label, sized to its text
        w = panel.controls[name]
        assert w.description == name and w.style.description_width == "initial"


def test_regression_panel_shows_its_picture() -> None:
    panel = widgets.regression_panel()
    _moved(panel, "batch_size", 16)


def test_tf_selection_panel_shows_its_picture() -> None:
    panel = widgets.tf_selection_panel([[0.0, 0.0, 0.5, 1.0, 0.0]] * 6, [[1.0] * 5] * 6)
    _moved(panel, "samples", 5)
    _moved(panel, "proxy", "snip")


def test_quick_search_panel_shows_its_picture_on_run() -> None:
    panel = widgets.quick_search_panel(limit=64)
    assert not bytes(panel.image.value)  # manual: nothing runs on creation
    assert "Run search" in panel.status.value
    panel.controls["epochs"].value, panel.controls["mc_samples"].value = 1, 1
    assert not bytes(panel.image.value)  # moving a control does not start a search
    panel.button.click()
    first = _png(panel)
    assert panel.status.value.startswith("epoch 1/1") and not panel.button.disabled
    panel.controls["method"].value = "darts"
    panel.button.click()
    assert _png(panel) != first


def test_quick_search_writes_to_the_lesson_runs_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("BAYESNAS_RUNS", str(tmp_path / "lesson-runs"))
    r = widgets.compute_quick_search("darts", 1, epochs=1, limit=64, progress=False)
    assert Path(r["run_dir"]).resolve().is_relative_to((tmp_path / "lesson-runs").resolve())


def _colorbar_label(ax) -> str:
    return ax.images[0].colorbar.ax.get_ylabel()


def test_heatmap_colour_bars_name_their_quantity() -> None:
    table = [[0.1 * i + 0.01 * j for j in range(5)] for i in range(6)]
    assert _colorbar_label(viz.alpha_heatmap(table)) == "softmax(α)"
    assert _colorbar_label(viz.alpha_heatmap(table, softmax=False)) == "α"
    assert _colorbar_label(viz.sigma_heatmap(table)) == "σ"
    # lesson 2's call: raw sigma values titled "σ per edge and op"
    ax = viz.alpha_heatmap(table, softmax=False, title="σ per edge and op")
    assert _colorbar_label(ax) == "σ" and ax.get_title() == "σ per edge and op"


def _render(fig):
    """Draw the figure as a PNG would be drawn; return the renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _visible_ticks(ax, which: str) -> list[float]:
    _render(ax.figure)
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    ticks = ax.get_xticks() if which == "x" else ax.get_yticks()
    return [t for t in ticks if lo <= t <= hi]


@pytest.mark.parametrize("epochs", [1, 3, 8])
def test_count_and_epoch_axes_tick_whole_numbers(epochs: int) -> None:
    recs = [{"epoch": e, "parameter_free_ops": 2 + e % 3, "valid_acc": 0.1 * e} for e in range(1, epochs + 1)]
    ax = viz.metric_curves({"a": recs}, "parameter_free_ops")
    for which in ("x", "y"):
        ticks = _visible_ticks(ax, which)
        assert ticks and all(t == round(t) for t in ticks), (which, ticks)
    ax = viz.metric_curves({"a": recs}, "valid_acc")  # a fraction keeps fractional ticks
    assert any(t != round(t) for t in _visible_ticks(ax, "y"))
    hist = [{"epoch": e, "mu": [[0.0] * 5] * 6} for e in range(1, epochs + 1)]
    ticks = _visible_ticks(viz.alpha_trajectory(hist), "x")
    assert ticks and all(t == round(t) for t in ticks)


def test_log_axis_labels_do_not_overlap() -> None:
    rows = [{"method": "darts", "mc_samples": None, "path": p, "projected_min_50_epochs": m}
            for p, m in (("plain", 45.0), ("fast", 31.0), ("graph", 10.2), ("compiled", 2.6))]
    report = {"config": {"epochs": 50, "preset": "p"}, "env": {"device": "d", "torch": "t"}, "rows": rows}
    ax = viz.bench_bars(report, goals={"darts": 3.0})
    renderer = _render(ax.figure)
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels(which="both")
             if t.get_visible() and t.get_text()]
    assert len(boxes) >= 3
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "x tick labels overlap"


def test_arch_strings_are_shown_whole(tmp_path) -> None:
    fig = widgets.show_quick_search("darts", 1, epochs=1, limit=64, out=str(tmp_path), progress=False)
    shown = fig._suptitle.get_text().split()[0]
    assert len(shown) > 40 and Arch.parse(shown).num_parameter_free >= 0  # the whole cell parses
    fig = widgets.show_tf_selection([[0.0, 0.0, 0.5, 1.0, 0.0]] * 6, [[1.0] * 5] * 6, samples=5)
    pick = fig._suptitle.get_text().removeprefix("pick: ")
    assert len(pick) > 40 and str(Arch.parse(pick)) == pick


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
