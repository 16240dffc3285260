"""``python -m bayesnas_core.run train``: a cell trained from scratch, NB201 or DARTS. Resume is
bit-identical, every mistake is one line (exit 2, no run folder), and a recipe's parameter
count is the stand-alone network's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bayesnas_core.config import TRAIN_PRESETS, get_train_preset, train_config_from_dict
from bayesnas_core.errors import Interrupted
from bayesnas_core.run import main
from bayesnas_core.runs import RunDir
from bayesnas_core.spaces import NB201Network, get_space
from bayesnas_core.spaces.counting import count_parameters as count_with_aux
from bayesnas_core.train import build_network, count_parameters, cutout_batch, resolve_cell, run_train

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
    (["--arch", "7", "--recipe", "gpu"], "unknown recipe 'gpu'; use --recipe one of cpu, nb201, "
     "darts-cpu, darts-cifar10-eval, darts-imagenet-eval"),
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
NB201_RECIPES = [name for name in TRAIN_PRESETS if get_train_preset(name).space == "nb201"]


def test_every_recipe_is_of_a_space_the_trainer_trains() -> None:
    assert NB201_RECIPES == ["cpu", "nb201"]
    assert {get_train_preset(name).space for name in TRAIN_PRESETS} == {"nb201", "darts"}


@pytest.mark.parametrize("recipe", NB201_RECIPES)
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


# ---------------------------------------------------------------------------------
# DARTS genotypes
# ---------------------------------------------------------------------------------
#: the darts-cpu recipe shrunk to seconds: 64 + 64 train images (32x32, so the auxiliary
#: head runs), C=4, 5 cells; drop path, Cutout, the auxiliary head and clipping stay on
DARTS_TINY = ["--genotype", "darts-v2", "--recipe", "darts-cpu", "--channels", "4", "--cells", "5",
              "--limit", "64", "--batch-size", "32", "--threads", "1"]


def test_darts_genotype_trains_and_resumes_bit_identically(tmp_path, capsys) -> None:
    """``train --genotype darts-v2 --recipe darts-cpu`` writes the run directory of an NB201
    run (no ground truth: DARTS has no tabular benchmark), and 3 epochs straight equal 1
    epoch, Ctrl-C, then ``--resume``, bit for bit: drop path's draws, the Cutout squares and
    the auxiliary head all continue where they stopped."""
    assert main(["train", *DARTS_TINY, "--epochs", "3", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert [ln.split(",")[0] for ln in out.splitlines() if ln.startswith("epoch ")] == \
        ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "the DARTS space has no tabular benchmark" in out
    assert "M parameters without the auxiliary head" in out
    straight = RunDir(_only_run(tmp_path / "a"))
    assert "-train-darts-cpu-darts-v2-s0" in straight.path.name
    assert {p.name for p in straight.path.iterdir()} == {"config.json", "env.json", "metrics.jsonl",
                                                          "checkpoint.pt", "result.json"}
    space = get_space("darts")
    cfg = train_config_from_dict(straight.read_json("config.json"))
    assert cfg.space == "darts" and cfg.arch == space.format(space.parse("darts-v2"))
    assert (cfg.auxiliary_weight, cfg.drop_path_prob, cfg.cutout, cfg.grad_clip) == (0.4, 0.2, 8, 5.0)
    result = straight.read_json("result.json")
    assert result["space"] == "darts" and result["index"] is None and result["ground_truth"] is None
    assert result["ground_truth_metric"] is None and result["ground_truth_value"] is None
    net = space.build_network("darts-v2", C=4, N=5, num_classes=10, in_channels=1, auxiliary=True)
    assert result["params"] == count_with_aux(net) < count_with_aux(net, exclude_auxiliary=False)
    metrics = straight.read_metrics()
    assert [r["drop_path_prob"] for r in metrics] == [0.0, 0.2 / 3, 0.2 * 2 / 3]
    assert all(r["train_aux_loss"] > 0 for r in metrics)

    cfg.out, cfg.epochs = str(tmp_path / "b"), 3

    def ctrl_c(record: dict) -> None:
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        run_train(cfg, progress=False, log=lambda line: None, on_record=ctrl_c)
    resumed = RunDir(_only_run(tmp_path / "b"))
    assert resumed.load_checkpoint()["epoch"] == 1
    assert main(["train", "--resume", str(resumed.path), "--no-progress"]) == 0
    a, b = straight.load_checkpoint(), resumed.load_checkpoint()
    assert a["epoch"] == b["epoch"] == 3 and a["model"].keys() == b["model"].keys()
    assert any("auxiliary_head" in k for k in a["model"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert _untimed(straight.read_metrics()) == _untimed(resumed.read_metrics())


@pytest.mark.parametrize("argv, needle", [
    (["--recipe", "darts-cpu"], "pass --genotype GENOTYPE"),
    (["--recipe", "darts-cpu", "--genotype", "darts-v3"], "not a DARTS genotype: 'darts-v3'"),
    (["--recipe", "darts-cpu", "--genotype", "Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], "
      "reduce=[], reduce_concat=[2])"], "not a DARTS genotype"),
    (["--recipe", "darts-cpu", "--genotype", "__import__('os').system('touch pwned')"],
     "not a DARTS genotype"),
    (["--recipe", "darts-cpu", "--genotype", MIXED], "is an NB201 arch string, but recipe darts-cpu "
     "trains darts genotypes; pass --genotype one of darts-v1, darts-v2, pc-darts"),
    (["--recipe", "darts-cpu", "--arch", "1462"], "'1462' is an NB201 index, but recipe darts-cpu"),
    (["--genotype", "darts-v2"], "'darts-v2' is a DARTS genotype, but recipe cpu trains NB201 cells; "
     "add --recipe one of darts-cpu, darts-cifar10-eval, darts-imagenet-eval"),
    (["--recipe", "darts-imagenet-eval", "--genotype", "darts-v2"],
     "ImageNet (ILSVRC-2012) is not loadable here"),
    (["--recipe", "darts-cpu", "--genotype", "darts-v2", "--image-size", "16"],
     "the auxiliary head of the DARTS network cannot run on 16x16 images (it is built for 8x8 "
     "features); pass --image-size 32 or --auxiliary-weight 0"),
    (["--recipe", "darts-cpu", "--genotype", "darts-v2", "--channels", "5"], "--channels must be even"),
    (["--recipe", "darts-cpu", "--genotype", "darts-v2", "--drop-path-prob", "1"],
     "--drop-path-prob must be in [0, 1)"),
    (["--arch", "7", "--auxiliary-weight", "0.4"], "--auxiliary-weight is a DARTS network setting, "
     "but recipe cpu trains nb201 cells"),
    (["--arch", "7", "--imagenet-network"], "--imagenet-network is a DARTS network setting"),
    (["--arch", "7", "--lr-schedule", "step"], "--lr-schedule must be cosine or exponential"),
    (["--arch", "7", "--lr-gamma", "0"], "--lr-gamma must be in (0, 1]"),
    (["--arch", "7", "--cutout", "-1"], "--cutout must be >= 0"),
    (["--arch", "7", "--grad-clip", "-5"], "--grad-clip must be >= 0"),
    (["--arch", "7", "--grad-clip", "inf"], "--grad-clip must be a finite number"),
])
def test_every_darts_mistake_is_one_line_exit_2_and_no_folder(tmp_path, capsys, monkeypatch, argv,
                                                              needle) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    assert main(["train", *argv, "--limit", "64", "--out", str(out)]) == 2
    assert needle in _error_line(capsys)
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "pwned").exists()


def test_darts_recipes_are_darts_evaluations_with_the_published_parameter_counts() -> None:
    """DARTS-V2 under DARTS's CIFAR-10 evaluation has 3.3M parameters and under its ImageNet
    (mobile) evaluation 4.7M, the auxiliary head not counted (built, not trained)."""
    cifar = get_train_preset("darts-cifar10-eval")
    assert (cifar.space, cifar.dataset, cifar.C, cifar.N, cifar.epochs, cifar.batch_size) == \
        ("darts", "cifar10", 36, 20, 600, 96)
    assert (cifar.lr, cifar.lr_min, cifar.lr_schedule, cifar.momentum, cifar.nesterov) == \
        (0.025, 0.0, "cosine", 0.9, False)
    assert (cifar.weight_decay, cifar.cutout, cifar.drop_path_prob, cifar.auxiliary_weight,
            cifar.grad_clip, cifar.augment, cifar.device) == (3e-4, 16, 0.2, 0.4, 5.0, True, "cuda")
    imagenet = get_train_preset("darts-imagenet-eval")
    assert (imagenet.C, imagenet.N, imagenet.epochs, imagenet.batch_size, imagenet.lr) == (48, 14, 250, 128, 0.1)
    assert (imagenet.lr_schedule, imagenet.lr_gamma, imagenet.momentum, imagenet.weight_decay) == \
        ("exponential", 0.97, 0.9, 3e-5)
    assert (imagenet.label_smoothing, imagenet.auxiliary_weight, imagenet.grad_clip,
            imagenet.imagenet_network) == (0.1, 0.4, 5.0, True)
    for cfg, classes, published in ((cifar, 10, 3.3), (imagenet, 1000, 4.7)):
        cfg.arch, cfg.device = "darts-v2", "cpu"
        net = build_network(cfg, cfg.arch, classes, 3)
        assert net.auxiliary_head is not None
        assert round(count_parameters(net) / 1e6, 1) == published
        assert count_parameters(net) == count_with_aux(net) < count_with_aux(net, exclude_auxiliary=False)


def test_cutout_zeroes_one_clipped_square_per_image_deterministically() -> None:
    x = torch.ones(200, 2, 16, 16)
    cut = cutout_batch(x, 4, torch.Generator().manual_seed(3))
    assert torch.equal(cutout_batch(x, 4, torch.Generator().manual_seed(3)), cut)  # seed -> squares
    assert not torch.equal(cutout_batch(x, 4, torch.Generator().manual_seed(4)), cut)
    assert torch.equal(cut[:, 0], cut[:, 1])  # the same square in every channel
    zero = cut[:, 0] == 0
    assert set(cut.unique().tolist()) == {0.0, 1.0} and zero.any(dim=(1, 2)).all()
    rows, cols = zero.any(dim=2), zero.any(dim=1)
    assert torch.equal(zero, rows[:, :, None] & cols[:, None, :])  # a rectangle, clipped
    for r in (rows, cols):
        first, count = r.int().argmax(dim=1), r.sum(dim=1)
        assert (count <= 4).all() and (count >= 2).all()  # a centre at the border keeps 2 of 4
        assert all(r[i, first[i]:first[i] + count[i]].all() for i in range(len(r)))  # contiguous
    assert (zero.sum(dim=(1, 2)) == 16).any()  # a centre inside: the whole 4x4 square
    assert cutout_batch(x, 0, torch.Generator()) is x


def test_neutral_new_fields_train_nb201_as_the_defaults(tmp_path) -> None:
    """The DARTS-era fields at their neutral values change nothing: the same metrics and
    weights; an exponential schedule multiplies the rate by --lr-gamma every epoch."""
    base = ["train", "--arch", MIXED, *TINY, "--epochs", "2", "--no-progress", "--augment"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--cutout", "0", "--grad-clip", "0",
                 "--lr-schedule", "cosine", "--lr-gamma", "0.5", "--auxiliary-weight", "0",
                 "--drop-path-prob", "0", "--no-imagenet-network"]) == 0
    a, b = RunDir(_only_run(tmp_path / "a")), RunDir(_only_run(tmp_path / "b"))
    assert _untimed(a.read_metrics()) == _untimed(b.read_metrics())
    ca, cb = a.load_checkpoint()["model"], b.load_checkpoint()["model"]
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    assert main([*base, "--out", str(tmp_path / "c"), "--lr-schedule", "exponential",
                 "--lr-gamma", "0.5", "--cutout", "4", "--grad-clip", "1"]) == 0
    c = RunDir(_only_run(tmp_path / "c")).read_metrics()
    assert [r["lr"] for r in c] == [0.1, 0.05]
    assert c[0]["train_loss"] != a.read_metrics()[0]["train_loss"]  # cutout and clipping act


def test_configs_written_before_the_darts_fields_load_as_nb201() -> None:
    cfg = train_config_from_dict({"arch": ALL_SKIP, "recipe": "cpu", "epochs": 3})
    assert (cfg.space, cfg.cutout, cfg.grad_clip, cfg.lr_schedule, cfg.auxiliary_weight,
            cfg.drop_path_prob, cfg.imagenet_network) == ("nb201", 0, 0.0, "cosine", 0.0, 0.0, False)


def test_a_darts_genotype_is_parsed_by_its_space_and_named_in_the_run_folder() -> None:
    """A shipped genotype keeps its name, in any spelling or as its text; another genotype is
    named by a hash of its text; ``range`` concats parse (as DARTS prints them)."""
    space = get_space("darts")
    cfg = get_train_preset("darts-cpu")
    for text in ("DARTS_V2", space.format(space.parse("darts-v2"))):
        cfg.arch = text
        genotype, index, label = resolve_cell(cfg)
        assert (genotype, index, label) == (space.parse("darts-v2"), None, "darts-v2")
    custom = space.format(space.parse("darts-v1")).replace("[2, 3, 4, 5]", "range(2, 6)", 1)
    cfg.arch = custom.replace("('skip_connect', 2)", "('sep_conv_5x5', 2)", 1)
    genotype, _, label = resolve_cell(cfg)
    assert label.startswith("genotype-") and len(label) == len("genotype-") + 8
    assert genotype.normal[-1] == ("sep_conv_5x5", 2)
