"""``python -m bayesnas_core.run train``: a cell trained from scratch. Resume is bit-identical,
every mistake is one line (exit 2, no run folder), and a recipe's parameter count is the
stand-alone network's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bayesnas_core.config import TRAIN_PRESETS, get_train_preset, train_config_from_dict
from bayesnas_core.errors import Interrupted
from bayesnas_core.run import main
from bayesnas_core.runs import RunDir
from bayesnas_core.spaces import NB201Network
from bayesnas_core.train import build_network, count_parameters, run_train

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
MIXED = "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|avg_pool_3x3~1|nor_conv_1x1~2|"
#: the cpu recipe shrunk to seconds: 128 + 128 train images of 8x8, C=4
TINY = ["--limit", "64", "--image-size", "8", "--channels", "4", "--batch-size", "32",
        "--threads", "1"]
TIMING = ("step_ms", "epoch_s", "wall_time_s")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # exactly one line, no traceback
    assert err[0].startswith("error: ")
    return err[0]


def _only_run(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_resume_is_bit_identical(tmp_path, capsys) -> None:
    """3 epochs straight == 1 epoch, Ctrl-C, then ``train --resume`` to 3: the same weights,
    batch-norm statistics, momentum buffers and metrics, bit for bit (CPU)."""
    assert main(["train", "--arch", MIXED, *TINY, "--epochs", "3", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    straight = RunDir(_only_run(tmp_path / "a"))

    cfg = get_train_preset("cpu")
    cfg.arch, cfg.limit, cfg.image_size, cfg.C, cfg.batch_size, cfg.threads = MIXED, 64, 8, 4, 32, 1
    cfg.epochs, cfg.out = 3, str(tmp_path / "b")

    def ctrl_c(record: dict) -> None:
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        run_train(cfg, progress=False, log=lambda line: None, on_record=ctrl_c)
    resumed = RunDir(_only_run(tmp_path / "b"))
    assert str(info.value) == (f"interrupted; {resumed.path} has a checkpoint after epoch 1: continue "
                               f"with python -m bayesnas_core.run train --resume {resumed.path}")
    assert resumed.load_checkpoint()["epoch"] == 1 and not (resumed.path / "result.json").exists()

    capsys.readouterr()
    assert main(["train", "--resume", str(resumed.path), "--no-progress"]) == 0
    assert f"resuming {resumed.path}" in capsys.readouterr().out
    a, b = straight.load_checkpoint(), resumed.load_checkpoint()
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    buffers = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    assert all(torch.equal(x, s["momentum_buffer"]) for x, s in zip(buffers, b["optimizer"]["state"].values()))
    assert _untimed(straight.read_metrics()) == _untimed(resumed.read_metrics())
    assert [r["epoch"] for r in resumed.read_metrics()] == [1, 2, 3]
    ra, rb = straight.read_json("result.json"), resumed.read_json("result.json")
    for key in ("arch", "index", "final_test_acc", "final_test_loss", "best_test_acc", "params"):
        assert ra[key] == rb[key]


def test_run_directory_records_the_cell_and_its_ground_truth(tmp_path, capsys) -> None:
    """An NB201 index names the cell; the run folder holds config, env, metrics, checkpoint
    and result; redirected output is one plain line per epoch."""
    assert main(["train", "--arch", "1462", *TINY, "--epochs", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    epochs = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(",")[0] for ln in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("test_acc " in ln and "train_loss " in ln for ln in epochs)
    assert "\r" not in out and "\x1b[" not in out
    run = RunDir(_only_run(tmp_path))
    assert {p.name for p in run.path.iterdir()} == {"config.json", "env.json", "metrics.jsonl",
                                                     "checkpoint.pt", "result.json"}
    cfg = train_config_from_dict(run.read_json("config.json"))
    assert cfg.arch == ALL_CONV3 and cfg.threads == 1 and cfg.recipe == "cpu"
    result = run.read_json("result.json")
    assert result["index"] == 1462 and result["arch"] == ALL_CONV3
    assert result["ground_truth"]["metrics"]["cifar10_test"] == pytest.approx(93.76)
    assert result["ground_truth_metric"] is None  # no NB201 numbers for Fashion-MNIST
    assert result["final_test_acc"] == run.read_metrics()[-1]["test_acc"]
    assert 0 <= result["best_test_acc"] <= 100 and result["best_test_acc"] >= result["final_test_acc"]
    metrics = run.read_metrics()
    assert metrics[0]["lr"] == 0.1 and metrics[1]["lr"] < 0.1  # cosine, per epoch


@pytest.mark.parametrize("argv, needle", [
    (["--arch", "|nor_conv_3x3~0|+|nor_conv_3x3~1|"], "not a NAS-Bench-201 arch string"),
    (["--arch", "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|"], "not a NAS-Bench-201 arch string"),
    (["--arch", "15625"], "NB201 index 15625 is out of range"),
    ([], "pass --arch ARCH"),
    (["--arch", "7", "--recipe", "gpu"], "unknown recipe 'gpu'; use --recipe one of cpu, nb201"),
    (["--arch", "7", "--epochs", "0"], "--epochs must be at least 1"),
    (["--arch", "7", "--epochs", "two"], "argument --epochs: invalid int value"),
    (["--arch", "7", "--lr", "nan"], "--lr must be a finite number"),
    (["--arch", "7", "--lr", "-0.1"], "need --lr > 0"),
    (["--arch", "7", "--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--arch", "7", "--momentum", "0"], "nesterov needs a momentum"),
    (["--arch", "7", "--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--arch", "7", "--image-size", "10"], "--image-size must be a multiple of 4"),
    (["--arch", "7", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--arch", "7", "--dataset", "cifar10"], "cifar10 needs a data folder: pass --data-root DIR"),
    (["--arch", "7", "--dataset", "cifar10", "--data-root", "/nonexistent/data"], "CIFAR-10 not found"),
    (["--arch", "7", "--limit", "8", "--batch-size", "64"], "smaller than one batch of 64"),
    (["--arch", "7", "--dtype", "float16"], "--dtype must be float32 or float64"),
    (["--arch", "7", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--resume", "/nonexistent/run"], "no run directory at /nonexistent/run"),
    (["--resume", "/nonexistent/run", "--epochs", "3"], "--resume continues with the run's stored settings"),
])
def test_every_mistake_is_one_line_exit_2_and_no_folder(tmp_path, capsys, argv, needle) -> None:
    out = tmp_path / "runs"
    resume = argv[:1] == ["--resume"]  # --resume takes no --out
    assert main(["train", *argv, *([] if resume else ["--out", str(out)])]) == 2
    assert needle in _error_line(capsys)
    assert not out.exists() or not any(out.iterdir())


def test_resume_refuses_another_configuration(tmp_path, capsys) -> None:
    assert main(["train", "--arch", ALL_SKIP, *TINY, "--epochs", "1", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    run = _only_run(tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["lr"] = 0.05
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    assert "cannot resume with another configuration: lr (0.1 in the checkpoint, 0.05 now)" in _error_line(capsys)
    (run / "checkpoint.pt").write_bytes(b"garbage")
    config["lr"] = 0.1
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run)]) == 2
    assert "is corrupt" in _error_line(capsys)


# Parameter counts: NAS-Bench-201's network at C=16, N=5, 10 classes, 3 channels, derived
# by hand in tests/test_spaces.py (everything but the cells: 73,306; a cell adds
# 9C^2 + 2C per nor_conv_3x3 and C^2 + 2C per nor_conv_1x1, over C = 16, 32, 64).
NB201_PARAMS = {ALL_CONV3: 1_531_546, ALL_SKIP: 73_306}  # NB201 reports 1.53 MB for ALL_CONV3
RECIPE_DATA = {"cpu": (10, 1), "nb201": (10, 3)}  # (classes, channels) of the recipe's dataset


@pytest.mark.parametrize("recipe", list(TRAIN_PRESETS))
@pytest.mark.parametrize("arch", [ALL_CONV3, ALL_SKIP, MIXED])
def test_recipe_parameter_count_is_the_standalone_networks(recipe, arch) -> None:
    cfg = get_train_preset(recipe)
    cfg.device = "cpu"
    classes, channels = RECIPE_DATA[recipe]
    reference = NB201Network(arch, C=cfg.C, N=cfg.N, num_classes=classes, in_channels=channels)
    assert count_parameters(build_network(cfg, arch, classes, channels)) == \
        sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("arch", list(NB201_PARAMS))
def test_nb201_recipe_has_the_benchmarks_parameter_count(arch) -> None:
    cfg = get_train_preset("nb201")
    assert (cfg.dataset, cfg.C, cfg.N, cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_min) == \
        ("cifar10", 16, 5, 200, 256, 0.1, 0.0)
    assert (cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.augment) == (0.9, True, 5e-4, True)
    cfg.device = "cpu"
    assert count_parameters(build_network(cfg, arch, 10, 3)) == NB201_PARAMS[arch]


def test_result_parameter_count_is_the_trained_networks(tmp_path) -> None:
    assert main(["train", "--arch", MIXED, *TINY, "--epochs", "1", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    result = json.loads((_only_run(tmp_path) / "result.json").read_text())
    net = NB201Network(MIXED, C=4, N=1, num_classes=10, in_channels=1)
    assert result["params"] == sum(p.numel() for p in net.parameters())


def test_out_that_is_a_file_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("")
    assert main(["train", "--arch", "7", *TINY, "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in _error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_non_finite_loss_is_one_line(tmp_path, capsys) -> None:
    assert main(["train", "--arch", "7", *TINY, "--epochs", "2", "--lr", "1e30",
                 "--out", str(tmp_path), "--no-progress"]) == 2
    assert "non-finite loss in epoch 1; training stopped and no checkpoint was written" in _error_line(capsys)
