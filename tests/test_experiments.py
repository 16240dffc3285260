"""Smoke versions of the ablation and proxy-study protocols: shape, resume, reproducibility."""

from __future__ import annotations

import json

import pytest

from bayesnas_core.experiments import best_epoch, mean_std, rank_correlations, table_markdown
from bayesnas_core.errors import UserError
from bayesnas_core.run import main

SMOKE = ["--preset", "lesson", "--epochs", "1", "--limit", "64", "--batch-size", "32",
         "--channels", "4", "--no-progress"]


def test_mean_std_is_population_std() -> None:
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_rank_correlations_known_values() -> None:
    r = rank_correlations([1, 2, 3, 4], [10, 20, 30, 40])
    assert r["spearman"] == pytest.approx(1.0) and r["kendall"] == pytest.approx(1.0)
    r = rank_correlations([1, 2, 3, 4], [40, 30, 20, 10])
    assert r["spearman"] == pytest.approx(-1.0)
    r = rank_correlations([1, 2, 3, 4], [10, 30, 20, 40])  # one swap: tau = (5-1)/6
    assert r["kendall"] == pytest.approx(4 / 6)


def test_table_markdown_marks_missing() -> None:
    rows = [{"label": "M = 1", "n": 2, "a": (1.0, 0.5), "b": None, "hessian_eig": (0.1, 0.0),
             "parameter_free_ops": (2.0, 0.0)}]
    md = table_markdown(rows, ("a", "b"))
    assert "| M = 1 | 2 | 1.00 ± 0.50 | missing | 0.1 ± 0 | 2.00 ± 0.00 |" in md


def test_ablation_mc_smoke_and_reproducible(tmp_path, capsys) -> None:
    args = [*SMOKE, "--mc", "1", "2", "--seeds", "0", "1", "--out", str(tmp_path / "runs")]
    assert main(["ablation-mc", *args, "--results", str(tmp_path / "a")]) == 0
    table = json.loads((tmp_path / "a" / "ablation-mc.json").read_text())
    labels = [r["label"] for r in table["rows"]]
    assert labels == ["M = 1", "M = 2", "Random baseline", "DARTS (1st)", "optimal"]
    for row in table["rows"][:4]:
        assert row["n"] == 2 and row["cifar10_test"] is not None
    assert table["rows"][0]["hessian_eig"] is not None  # collapse diagnostics recorded
    assert table["rows"][3]["parameter_free_ops"] is not None
    assert "cifar100_valid" not in table["metrics"]  # missing from the embedded table
    assert "ablation-mc --preset lesson" in table["command"]
    md = (tmp_path / "a" / "ablation-mc.md").read_text()
    assert "| M = 1 | 2 |" in md and "| optimal | 1 | 91.61" in md
    # the best epoch's cell: never worse than the final one, and it is one of the epochs' cells
    for run in table["runs"].values():
        best = run["best_epoch"]
        assert best["cifar10_test"] >= run["metrics"]["cifar10_test"] and best["epoch"] >= 1
    assert table["rows"][0]["best_epoch"][0] >= table["rows"][0]["cifar10_test"][0]
    assert "| parameter_free_ops | best_epoch |" in md
    # same command, fresh folder: identical numbers
    assert main(["ablation-mc", *args, "--results", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "ablation-mc.json").read_text())
    assert again["rows"] == table["rows"]
    # rerun into the same folder: nothing is recomputed (ledger), same table
    assert main(["ablation-mc", *args, "--results", str(tmp_path / "a")]) == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2 * 6  # 6 searches per table, not 18


def test_ablation_tf_smoke(tmp_path) -> None:
    assert main(["ablation-tf", *SMOKE, "--proxies", "synflow", "snip", "--samples", "2", "5",
                 "--seeds", "0", "--out", str(tmp_path / "runs"),
                 "--results", str(tmp_path / "t")]) == 0
    table = json.loads((tmp_path / "t" / "ablation-tf.json").read_text())
    labels = [r["label"] for r in table["rows"]]
    assert labels == ["BaLeNAS", "BaLeNAS with synflow, K = 2", "BaLeNAS with synflow, K = 5",
                      "BaLeNAS with snip, K = 2", "BaLeNAS with snip, K = 5", "optimal"]
    run = table["runs"]["s0"]
    assert run["tf"]["synflow-5"]["distinct"] >= run["tf"]["synflow-2"]["distinct"] >= 1


def test_proxy_study_smoke_resumes(tmp_path) -> None:
    args = ["proxies", *SMOKE, "--synflow-cells", "6", "--snip-grasp-cells", "3",
            "--net-channels", "4", "--net-cells", "1", "--results", str(tmp_path)]
    assert main(args) == 0
    study = json.loads((tmp_path / "proxy-study.json").read_text())
    assert set(study["correlations"]) == {"synflow", "snip", "grasp"}
    assert len(study["scores"]["synflow"]) == 6 and len(study["scores"]["grasp"]) == 3
    assert -1 <= study["correlations"]["synflow"]["cifar10_test"]["spearman"] <= 1
    assert (tmp_path / "proxy-study.png").stat().st_size > 10_000
    # an interrupted study resumes: drop the last 3 synflow scores, rerun, same values
    ledger_path = tmp_path / "proxy-study.ledger.json"
    ledger = json.loads(ledger_path.read_text())
    first = ledger["done"]["synflow"]
    ledger["done"]["synflow"] = first[:3]
    ledger_path.write_text(json.dumps(ledger))
    assert main(args) == 0
    assert json.loads(ledger_path.read_text())["done"]["synflow"] == first
    # growing the study keeps the first 6 scores and adds 4
    args[args.index("--synflow-cells") + 1] = "10"
    assert main(args) == 0
    grown = json.loads(ledger_path.read_text())["done"]["synflow"]
    assert len(grown) == 10 and grown[:6] == first
    # a smaller request reports its own cells only, and says so in its table
    args[args.index("--synflow-cells") + 1] = "4"
    assert main(args) == 0
    study = json.loads((tmp_path / "proxy-study.json").read_text())
    assert len(study["scores"]["synflow"]) == 4
    assert study["correlations"]["synflow"]["cifar10_test"]["n"] == 4
    assert "| synflow | 4 |" in (tmp_path / "proxy-study.md").read_text()
    assert len(json.loads(ledger_path.read_text())["done"]["synflow"]) == 10  # kept for later


def test_studies_write_under_runs_unless_asked(tmp_path, monkeypatch) -> None:
    """The default results folder is runs/..., never the git-tracked assets/."""
    monkeypatch.chdir(tmp_path)
    assert main(["proxies", *SMOKE, "--synflow-cells", "3", "--proxies", "synflow",
                 "--net-channels", "4", "--net-cells", "1"]) == 0
    assert (tmp_path / "runs" / "proxies" / "proxy-study.md").is_file()
    # a study records the code and the machine that made it
    study = json.loads((tmp_path / "runs" / "proxies" / "proxy-study.json").read_text())
    assert study["threads"] == study["env"]["cpu_threads"] >= 1
    assert len(study["env"]["git"]["commit"]) == 40 and isinstance(study["env"]["git"]["dirty"], bool)


def test_ledger_refuses_other_settings(tmp_path) -> None:
    args = ["proxies", *SMOKE, "--synflow-cells", "3", "--snip-grasp-cells", "3",
            "--net-channels", "4", "--net-cells", "1", "--results", str(tmp_path)]
    assert main(args) == 0
    args[args.index("--net-channels") + 1] = "8"
    assert main(args) == 2


def test_load_run_metrics_reads_the_shipped_partial_run() -> None:
    from bayesnas_core.experiments import load_run_metrics
    from bayesnas_core.paths import assets_dir

    (run,) = sorted((assets_dir() / "results" / "full-scale" / "partial").glob("*/metrics.jsonl"))
    records = load_run_metrics(str(run.parent.relative_to(assets_dir() / "results")))
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    assert all("valid_acc" in r and "wall_time_s" in r for r in records)
    with pytest.raises(UserError, match="missing"):
        load_run_metrics("full-scale/no-such-run")


@pytest.mark.parametrize("argv,needle", [
    (["ablation-mc", "--mc", "2", "0"], "--mc values must be at least 1, got [2, 0]"),
    (["ablation-tf", "--samples", "0"], "--samples values must be at least 1, got [0]"),
    (["ablation-tf", "--proxies", "zen"], "unknown proxy 'zen'"),
])
def test_study_options_are_checked_before_any_work(tmp_path, capsys, argv, needle) -> None:
    assert main([*argv, *SMOKE, "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert not (tmp_path / "r").exists()


def test_best_epoch_is_the_highest_ground_truth_first_on_ties() -> None:
    metrics = [{"epoch": 1, "arch": "a", "gt_cifar10_test": 80.0},
               {"epoch": 2, "arch": "b", "gt_cifar10_test": 91.0},
               {"epoch": 3, "arch": "c", "gt_cifar10_test": 91.0},
               {"epoch": 4, "arch": "d"}]
    assert best_epoch(metrics) == {"epoch": 2, "arch": "b", "cifar10_test": 91.0}
    assert best_epoch([{"epoch": 1, "arch": "a"}]) is None
