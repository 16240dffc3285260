"""ipywidgets panels for the lessons.

Each panel is a column of controls above an ``ipywidgets.Image`` that shows a PNG of the
Figure a module-level callback ``show_*`` returns; each ``show_*`` draws what a
``compute_*`` library function returns. Both are plain functions with pytest tests, so no
logic lives only in a notebook. A panel draws once when it is made and again whenever a
control's value changes; the heavy one (a search) draws when its button is pressed. The
picture is the Image widget's value, so it shows in a running kernel and is kept in the
notebook's saved widget state. ``panel.controls`` (name -> widget), ``panel.image``,
``panel.status`` (a line for progress and errors) and ``panel.redraw()`` are there for
tests and for readers who want to drive a panel from code.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Callable

from matplotlib.figure import Figure

from . import viz
from .config import get_preset
from .experiments import bayesian_regression_demo, run_search
from .spaces import OP_NAMES

__all__ = [
    "figure_png",
    "compute_edge_mixture",
    "show_edge_mixture",
    "edge_mixture_panel",
    "show_regression_posterior",
    "regression_panel",
    "compute_quick_search",
    "show_quick_search",
    "quick_search_panel",
    "compute_tf_selection",
    "show_tf_selection",
    "tf_selection_panel",
]

#: Resolution of the panels' pictures (the inline backend's default).
PANEL_DPI = 100


def figure_png(fig: Figure, dpi: int = PANEL_DPI) -> bytes:
    """The Figure as PNG bytes (cropped to what is drawn, as the inline backend does);
    the Figure is closed afterwards, so redraws do not pile figures up."""
    buf = BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        viz.close(fig)
    return buf.getvalue()


def _panel(draw: Callable[..., Figure], controls: dict[str, Any], *, fixed: dict[str, Any] | None = None,
           button: Any = None, progress: bool = False) -> Any:
    """Controls above an Image; ``draw(**fixed, **values)`` is drawn into the Image on
    creation and on every value change, or, with a ``button``, only on a press (then
    ``progress=True`` passes ``draw`` a ``progress`` callable that writes the status line).
    A failure while redrawing is shown in the status line, not lost in the kernel's log."""
    import ipywidgets as W

    image = W.Image(format="png")
    status = W.Label(value="")
    extra = dict(fixed or {})
    if progress:
        extra["progress"] = lambda line: setattr(status, "value", str(line))

    def redraw() -> None:
        values = {name: w.value for name, w in controls.items()}
        image.value = figure_png(draw(**extra, **values))

    def on_event(_: Any = None) -> None:
        if button is not None:
            button.disabled = True
        status.value = "running…" if button is not None else ""  # a search overwrites it per epoch
        try:
            redraw()
        except Exception as e:  # a panel shows its error; the kernel's log is not on screen
            status.value = f"failed: {type(e).__name__}: {e}"
        finally:
            if button is not None:
                button.disabled = False

    if button is None:
        for w in controls.values():
            w.observe(on_event, names="value")
        redraw()  # in the notebook cell: an error here is raised where the reader sees it
    else:
        button.on_click(on_event)
        status.value = f"press “{button.description}”"
    box = W.VBox([*controls.values(), *([button] if button is not None else [])])
    panel = W.VBox([box, status, image])
    panel.controls, panel.image, panel.status, panel.button = controls, image, status, button
    panel.redraw = redraw
    return panel


# -- lesson 1: how one edge mixes its ops --------------------------------------------
def compute_edge_mixture(none: float = 0.0, skip_connect: float = 0.0, nor_conv_1x1: float = 0.0,
                         nor_conv_3x3: float = 0.0, avg_pool_3x3: float = 0.0) -> dict[str, Any]:
    """softmax of one edge's alpha, and the op DARTS would keep (the argmax)."""
    alpha = [none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]
    weights = viz.softmax_row(alpha)
    return {"alpha": alpha, "weights": weights, "argmax": OP_NAMES[weights.index(max(weights))]}


def show_edge_mixture(none: float = 0.0, skip_connect: float = 0.0, nor_conv_1x1: float = 0.0,
                      nor_conv_3x3: float = 0.0, avg_pool_3x3: float = 0.0) -> Figure:
    """Bar chart of the mixing weights of one edge."""
    r = compute_edge_mixture(none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3)
    ax = viz.new_axes((5.0, 2.8))
    ax.bar(viz.OP_LABELS, r["weights"], color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_ylabel("softmax(α)")
    ax.set_title(f"edge output = Σ w·op(x); argmax keeps {r['argmax']}")
    return ax.figure


def edge_mixture_panel() -> Any:
    """Five alpha sliders -> the edge's mixing weights."""
    import ipywidgets as W

    sliders = {name: W.FloatSlider(value=0.0, min=-3.0, max=3.0, step=0.1, description=name,
                                   continuous_update=False, style={"description_width": "initial"})
               for name in OP_NAMES}  # "initial": the label is as wide as the op's name
    return _panel(show_edge_mixture, sliders)


# -- lesson 2: Vadam on a problem with a known posterior ------------------------------
def show_regression_posterior(batch_size: int = 1, mc_samples: int = 1,
                              prior_precision: float = 1.0, seed: int = 0) -> Figure:
    """Vadam's learned N(mu, sigma^2) against the exact posterior, per weight."""
    r = bayesian_regression_demo(batch_size=batch_size, mc_samples=mc_samples,
                                 prior_precision=prior_precision, seed=seed)
    axes = viz.new_axes((9.0, 3.0), ncols=2)
    for j, ax in enumerate(axes):
        m, s = r["mu_exact"][j], r["sigma_mean_field"][j]
        xs = [m - 6 * s + 12 * s * i / 300 for i in range(301)]
        ax.plot(xs, [viz.gaussian_pdf(x, m, s) for x in xs], "k-", label="exact (mean field)")
        ax.plot(xs, [viz.gaussian_pdf(x, r["mu"][j], r["sigma"][j]) for x in xs], "r--", label="Vadam")
        ax.set_title(f"w{j + 1}: σ Vadam / exact = {r['sigma'][j] / s:.2f}")
        ax.legend(fontsize=7)
    axes[0].figure.suptitle(f"batch {batch_size}, M = {mc_samples}, prior precision {prior_precision}")
    return axes[0].figure


def regression_panel() -> Any:
    """Sliders for batch size, M and the prior -> Vadam vs the exact posterior."""
    import ipywidgets as W

    return _panel(show_regression_posterior, {
        "batch_size": W.SelectionSlider(options=[1, 2, 4, 8, 16, 32], value=1, description="batch",
                                        continuous_update=False),
        "mc_samples": W.IntSlider(value=1, min=1, max=8, description="M", continuous_update=False),
        "prior_precision": W.FloatLogSlider(value=1.0, base=10, min=-2, max=3, description="λ",
                                            continuous_update=False),
        "seed": W.IntSlider(value=0, min=0, max=9, description="seed", continuous_update=False),
    })


# -- lesson 3: a small search ------------------------------------------------------------
def compute_quick_search(method: str = "balenas", mc_samples: int = 3, epochs: int = 4,
                         seed: int = 0, limit: int = 512, out: str | None = None,
                         progress: bool | Callable[[str], Any] = True) -> dict[str, Any]:
    """A lesson-scale search (the ``lesson`` preset) on ``limit`` images, written under
    ``out`` (default :func:`bayesnas_core.paths.lesson_runs_dir`); returns the run's result
    record with its per-epoch metrics and history. ``progress``: True for progress bars, a
    callable for one plain line per epoch."""
    from .paths import lesson_runs_dir

    cfg = get_preset("lesson")
    cfg.search.method, cfg.search.mc_samples, cfg.search.epochs = method, mc_samples, epochs
    cfg.seed, cfg.data.limit = seed, limit
    cfg.out = str(lesson_runs_dir()) if out is None else out
    record = run_search(cfg, progress=progress, log=lambda s: None)
    from .runs import RunDir

    run = RunDir(record["run_dir"])
    record["metrics"] = run.read_metrics()
    record["history"] = run.read_json("history.json")["epochs"]
    return record


def show_quick_search(method: str = "balenas", mc_samples: int = 3, epochs: int = 4,
                      seed: int = 0, limit: int = 512, out: str | None = None,
                      progress: bool | Callable[[str], Any] = True) -> Figure:
    """Run :func:`compute_quick_search` and draw softmax(mu) and the curves; the title
    carries the selected cell's whole arch string."""
    r = compute_quick_search(method, mc_samples, epochs, seed, limit, out, progress)
    axes = viz.new_axes((13.0, 3.3), ncols=3)
    viz.alpha_heatmap(r["mu"], ax=axes[0], title=f"softmax(μ), {method}")
    viz.metric_curves({method: r["metrics"]}, "valid_acc", ax=axes[1], ylabel="supernet valid acc")
    viz.metric_curves({method: r["metrics"]}, "parameter_free_ops", ax=axes[2],
                      ylabel="parameter-free ops in argmax cell")
    gt = r["ground_truth"]["metrics"]["cifar10_test"]
    axes[0].figure.suptitle(f"{r['arch']}  (NB201 CIFAR-10 test {gt:.2f} %)", fontsize=9)
    return axes[0].figure


def quick_search_panel(limit: int = 512, out: str | None = None) -> Any:
    """Method, M, epochs, seed -> a search on ``limit`` images when "Run search" is
    pressed (nothing runs on creation); the status line shows one line per epoch."""
    import ipywidgets as W

    return _panel(show_quick_search, {
        "method": W.Dropdown(options=["balenas", "darts"], value="balenas", description="method"),
        "mc_samples": W.IntSlider(value=3, min=1, max=4, description="M"),
        "epochs": W.IntSlider(value=4, min=1, max=10, description="epochs"),
        "seed": W.IntSlider(value=0, min=0, max=9, description="seed"),
    }, fixed={"limit": limit, "out": out}, button=W.Button(description="Run search"), progress=True)


# -- lesson 4: BaLeNAS-TF --------------------------------------------------------------
def compute_tf_selection(mu: list[list[float]], sigma: list[list[float]], proxy: str = "synflow",
                         samples: int = 20, seed: int = 0, C: int = 8, N: int = 1,
                         image_size: int = 16) -> dict[str, Any]:
    """BaLeNAS-TF on a learned (mu, sigma) over the shipped Fashion-MNIST subset's shape:
    the distinct sampled cells, their proxy scores and NB201 ground truth."""
    import torch

    from .benchmarks import open_benchmark
    from .select import select_tf

    from .data import load_search_data

    bench = open_benchmark()
    data = load_search_data("fashion-mnist-subset", image_size=image_size, limit=32)
    x, y = data.train.x, data.train.y  # the labelled batch SNIP and GraSP use
    sel = select_tf(torch.tensor(mu), torch.tensor(sigma), proxy=proxy, samples=samples,
                    generator=torch.Generator().manual_seed(seed), num_classes=10,
                    in_channels=1, image_size=image_size, batch=(x, y), C=C, N=N, init_seed=seed)
    cands = [{"arch": str(c.arch), "log10": c.log10,
              "cifar10_test": bench.query(str(c.arch)).metrics["cifar10_test"]}
             for c in sel.candidates]
    return {"best": str(sel.best), "best_cifar10_test": bench.query(str(sel.best)).metrics["cifar10_test"],
            "candidates": cands}


def show_tf_selection(mu: list[list[float]], sigma: list[list[float]], proxy: str = "synflow",
                      samples: int = 20, seed: int = 0) -> Figure:
    """Scatter of the sampled cells: proxy score vs NB201 accuracy, the pick marked."""
    r = compute_tf_selection(mu, sigma, proxy, samples, seed)
    ax = viz.proxy_scatter([c["log10"] for c in r["candidates"]],
                           [c["cifar10_test"] for c in r["candidates"]],
                           title=f"{proxy}, K = {samples}: {len(r['candidates'])} distinct cells",
                           xlabel=f"{proxy} (signed log10)", ylabel="NB201 CIFAR-10 test (%)")
    best = next(c for c in r["candidates"] if c["arch"] == r["best"])
    ax.scatter([best["log10"]], [best["cifar10_test"]], s=80, facecolors="none", edgecolors="red",
               label=f"pick: {best['cifar10_test']:.2f} %")
    ax.legend(fontsize=8)
    ax.figure.suptitle(f"pick: {r['best']}", fontsize=7)
    return ax.figure


def tf_selection_panel(mu: list[list[float]], sigma: list[list[float]]) -> Any:
    """Proxy and K -> BaLeNAS-TF's pick from the given distribution."""
    import ipywidgets as W

    return _panel(show_tf_selection, {
        "proxy": W.Dropdown(options=["synflow", "snip", "grasp"], value="synflow", description="proxy"),
        "samples": W.SelectionSlider(options=[5, 10, 20, 50, 100], value=20, description="K",
                                     continuous_update=False),
        "seed": W.IntSlider(value=0, min=0, max=9, description="seed", continuous_update=False),
    }, fixed={"mu": mu, "sigma": sigma})
