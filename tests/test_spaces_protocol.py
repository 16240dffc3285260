"""The search-space protocol: every registered space through the one search loop, and a
new architecture distribution added without touching the loop."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from bayesnas_core.config import get_preset
from bayesnas_core.distributions import PointEstimate, register_method
from bayesnas_core.gradients import leaves, like
from bayesnas_core.run import main
from bayesnas_core.search import arch_parameters, build_supernet, search_step
from bayesnas_core.spaces import SearchSpace, get_space, space_names

TINY = {"nb201": ["--channels", "4", "--cells", "1"],
        "darts": ["--channels", "4", "--cells", "3"],
        "nb1shot1-3": ["--channels", "4", "--cells", "3"]}


def test_the_three_spaces_are_registered_and_follow_the_protocol() -> None:
    assert set(space_names()) >= {"nb201", "darts", "nb1shot1-3"}
    for name in space_names():
        space = get_space(name)
        assert isinstance(space, SearchSpace), name
        shapes = space.arch_shapes()
        net = space.build_supernet(C=4, N=3 if name != "nb201" else 1, num_classes=10, in_channels=1)
        logits = {k: torch.randn(*v, generator=torch.Generator().manual_seed(0)) for k, v in shapes.items()}
        weights = {k: v.softmax(-1) for k, v in logits.items()}
        x = torch.randn(4, 1, 16, 16)
        one = net(x, weights if len(shapes) > 1 else next(iter(weights.values())))
        assert one.shape == (4, 10)
        g = space.genotype(logits)
        assert space.parse(space.format(g)) == g
        assert 0 <= space.num_parameter_free(g) <= space.num_choices()
        for k in shapes:
            assert len(space.choice_names(k)) == shapes[k][-1]
            assert len(space.row_names(k)) == shapes[k][0]


@pytest.mark.parametrize("space", ["darts", "nb1shot1-3"])
@pytest.mark.parametrize("method,order", [("darts", 1), ("balenas", 1), ("darts", 2), ("balenas", 2)])
def test_every_space_searches_through_the_same_loop(tmp_path, capsys, space, method, order) -> None:
    rc = main(["--space", space, *TINY[space], "--method", method, "--order", str(order),
               "--mc-samples", "2", "--epochs", "1", "--limit", "32", "--batch-size", "16",
               "--image-size", "16", "--curvature-iters", "1", "--threads", "1", "--no-progress",
               "--out", str(tmp_path)])
    assert rc == 0
    (run,) = tmp_path.iterdir()
    result = json.loads((run / "result.json").read_text())
    assert result["space"] == space
    g = get_space(space).parse(result["arch"])  # the genotype in the space's own text form
    assert get_space(space).format(g) == result["arch"]
    history = json.loads((run / "history.json").read_text())
    assert set(history["ops"]) == set(get_space(space).arch_shapes())  # one entry per tensor
    mu = history["epochs"][-1]["mu"]
    assert {k: len(v) for k, v in mu.items()} == {k: s[0] for k, s in get_space(space).arch_shapes().items()}
    assert (history["epochs"][-1]["sigma"] is None) == (method == "darts")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["arch"] == result["arch"] and "hessian_eig" in metrics[-1]
    if space == "darts":  # the cells drawn into the run directory: a real PNG
        assert (run / "genotype.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics[-1]["alpha_travel_bound"] > 0


def test_darts_space_resume_is_bit_identical(tmp_path, monkeypatch) -> None:
    """Interrupted after its first epoch's checkpoint, then resumed: the same mu, sigma and
    architecture logits' history as an uninterrupted run."""
    import bayesnas_core.experiments as E
    import bayesnas_core.runs as R
    from bayesnas_core.config import config_from_dict
    from bayesnas_core.errors import Interrupted

    args = ["--space", "darts", *TINY["darts"], "--method", "balenas", "--mc-samples", "2",
            "--epochs", "2", "--limit", "32", "--batch-size", "16", "--image-size", "16",
            "--curvature-iters", "0", "--threads", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    (full,) = (tmp_path / "a").iterdir()
    cfg = config_from_dict(json.loads((full / "config.json").read_text()))
    cfg.out = str(tmp_path / "b")
    save = R.RunDir.save_checkpoint

    def save_then_stop(self, state):
        save(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(R.RunDir, "save_checkpoint", save_then_stop)
    with pytest.raises(Interrupted):
        E.run_search(cfg, progress=False, log=lambda s: None)
    monkeypatch.setattr(R.RunDir, "save_checkpoint", save)
    (part,) = (tmp_path / "b").iterdir()
    assert len(json.loads((part / "history.json").read_text())["epochs"]) == 1
    E.run_search(resume=part, progress=False, log=lambda s: None)
    assert (json.loads((full / "history.json").read_text())
            == json.loads((part / "history.json").read_text()))
    assert (json.loads((full / "result.json").read_text())["arch"]
            == json.loads((part / "result.json").read_text())["arch"])


def _nb101_writer():
    path = Path(__file__).with_name("test_nb101.py")
    spec = importlib.util.spec_from_file_location("_nb101_test_writer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_nb1shot1_search_reports_nb101_ground_truth_when_given_the_file(tmp_path, capsys) -> None:
    """Without --nb101-file the run says how to get the ground truth; with a data file
    holding the cells the (seeded) search passes through, it reports the mean of the repeats."""
    args = ["--preset", "nb1shot1-cpu", "--epochs", "2", "--limit", "32", "--batch-size", "16",
            "--threads", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "--nb101-file" in capsys.readouterr().out
    (run,) = (tmp_path / "a").iterdir()
    space = get_space("nb1shot1-3")
    archs = {json.loads(line)["arch"] for line in (run / "metrics.jsonl").read_text().splitlines()}
    w = _nb101_writer()
    data = b""
    for i, text in enumerate(sorted(archs)):
        g = space.parse(text)
        m, ops = g.spec
        # EvaluationData fields: epoch, training time, train, valid and test accuracy
        evals = [(108.0, 10.0, 0.9, 0.80 + 0.01 * i + 0.001 * r, 0.79 + 0.001 * r) for r in range(3)]
        for r in range(3):
            metrics = w._metrics([evals[r]] * 3, 1000, 100.0)
            data += w._frame(w._payload(g.graph_hash, 108, [list(map(int, row)) for row in m], list(ops), metrics))
    f = tmp_path / "nasbench_only108.tfrecord"
    f.write_bytes(data)
    assert main([*args, "--out", str(tmp_path / "b"), "--nb101-file", str(f)]) == 0
    out = capsys.readouterr().out
    assert "mean of 3 repeats" in out and "nb101_test" in out
    (run_b,) = (tmp_path / "b").iterdir()
    result = json.loads((run_b / "result.json").read_text())
    assert result["arch"] == json.loads((run / "result.json").read_text())["arch"]
    assert result["ground_truth"]["metrics"]["nb101_test"] == pytest.approx(79.1)  # mean of 79.0, 79.1, 79.2


def test_a_new_distribution_needs_no_change_to_the_loop(tmp_path, monkeypatch) -> None:
    """A Gumbel-softmax-like strategy (mixing by a tempered softmax) registered from outside
    runs through search_step and the CLI's search."""
    import bayesnas_core.distributions as D

    monkeypatch.setattr(D, "_METHODS", dict(D._METHODS))

    class Tempered(PointEstimate):
        def mixing(self, logits):
            return like(logits, [(t / 0.5).softmax(-1) for t in leaves(logits)])

    @register_method("tempered")
    def _build(cfg, arch, num_valid, generator):
        s = cfg.search
        return Tempered(arch, lr=s.a_lr, betas=tuple(s.a_betas), weight_decay=0.0, order=s.order)

    cfg = get_preset("lesson")
    cfg.search.method, cfg.space.C, cfg.space.N = "tempered", 4, 1
    cfg.validate()
    model = build_supernet(cfg, 10, 1)
    arch, _ = arch_parameters(model, get_space("nb201"))
    dist = _build(cfg, arch, 16, None)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.1)
    before = arch.detach().clone()
    batch = (torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))
    stats = search_step(model, w_opt, dist, batch, batch, grad_clip=5.0)
    assert set(stats) == {"train_loss", "train_acc", "valid_loss", "valid_acc"}
    assert not torch.equal(before, arch)
    rc = main(["--preset", "lesson", "--method", "tempered", "--epochs", "1", "--limit", "64",
               "--channels", "4", "--threads", "1", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0


@pytest.mark.parametrize("space", ["darts", "nb1shot1-3"])
def test_balenas_tf_ranks_drawn_genotypes_by_synflow_on_the_evaluation_network(tmp_path, space) -> None:
    import bayesnas_core.experiments as E

    cfg = get_preset("darts-cpu" if space == "darts" else "nb1shot1-cpu")
    cfg.space.C, cfg.space.N, cfg.select.C, cfg.select.N = 4, 3, 4, 3
    cfg.search.epochs, cfg.data.limit, cfg.data.batch_size, cfg.search.curvature_iters = 1, 32, 16, 0
    cfg.select.method, cfg.select.samples, cfg.threads, cfg.out = "synflow", 6, 1, str(tmp_path)
    r = E.run_search(cfg, progress=False, log=lambda s: None)
    sel = r["selection"]
    sp = get_space(space)
    assert len(sel["draws"]) == 6 and 1 <= len(sel["candidates"]) <= 6
    assert len({c["arch"] for c in sel["candidates"]}) == len(sel["candidates"])  # distinct
    best = max(sel["candidates"], key=lambda c: c["score"])
    assert r["arch"] == best["arch"] and sp.format(sp.parse(r["arch"])) == r["arch"]
    assert sel["argmax_arch"] == json.loads((Path(r["run_dir"]) / "metrics.jsonl").read_text()
                                            .splitlines()[-1])["arch"]
