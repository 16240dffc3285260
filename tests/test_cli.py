"""The command line: the main job's run directory, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bayesnas_core.run import main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--preset", "lesson", "--epochs", "1", "--limit", "128", "--channels", "4",
        "--no-progress"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # exactly one line, no traceback
    assert err[0].startswith("error: ")
    return err[0]


def test_main_job_subprocess_writes_a_complete_run_directory(tmp_path) -> None:
    """The real entry point, as a user runs it (scaled down to one short epoch)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bayesnas_core.run", *FAST, "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "selected cell (argmax): |" in proc.stdout
    assert "cifar10_test" in proc.stdout.replace("CIFAR-10 test", "cifar10_test")
    assert "missing" in proc.stdout and "--nb201-file" in proc.stdout
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for name in ("config.json", "env.json", "metrics.jsonl", "history.json", "checkpoint.pt",
                 "result.json"):
        assert (run / name).is_file(), name
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] and "commit" in env["git"]
    result = json.loads((run / "result.json").read_text())
    assert result["method"] == "balenas" and result["mc_samples"] == 3
    assert result["ground_truth"]["metrics"]["cifar10_test"] > 0
    assert result["ground_truth"]["metrics"]["cifar100_valid"] is None
    hist = json.loads((run / "history.json").read_text())
    assert len(hist["epochs"]) == 1 and len(hist["epochs"][0]["sigma"]) == 6


def test_tf_selection_from_the_command_line(tmp_path) -> None:
    assert main([*FAST, "--out", str(tmp_path), "--select", "snip", "--select-samples", "6"]) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    sel = json.loads((run / "result.json").read_text())["selection"]
    assert sel["method"] == "snip" and len(sel["draws"]) == 6
    assert sel["argmax"]["arch"].startswith("|") and sel["ground_truth"]["metrics"]["cifar10_test"]
    best = max(sel["candidates"], key=lambda c: c["score"])
    assert best["arch"] == sel["arch"]
    assert all(c["ground_truth"]["cifar10_test"] is not None for c in sel["candidates"])


def test_resume_continues_a_run(tmp_path, capsys) -> None:
    assert main([*FAST, "--epochs", "2", "--out", str(tmp_path)]) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    first = json.loads((run / "result.json").read_text())
    # resuming a finished run does no more epochs and reproduces the result
    assert main(["--resume", str(run), "--no-progress"]) == 0
    again = json.loads((run / "result.json").read_text())
    assert again["mu"] == first["mu"] and again["arch"] == first["arch"]


@pytest.mark.parametrize("argv,needle", [
    (["--method", "sgd"], "unknown method 'sgd'; use --method darts or balenas"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--mc-samples", "0"], "--mc-samples must be at least 1"),
    (["--order", "3"], "--order must be 1 or 2"),
    (["--select", "random"], "unknown selection 'random'"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--epochs", "two"], "invalid int value: 'two'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent/cifar"], "--data-root"),
    (["--nb201-file", "/nonexistent/NAS-Bench-201-v1_1-096897.pth"], "--nb201-file"),
    (["--a-lr", "0"], "--a-lr must be positive"),
    (["--w-lr", "-1"], "--w-lr must be positive"),
    (["--channels", "0"], "--channels must be at least 1"),
    (["--cells", "0"], "--cells must be at least 1"),
    (["--image-size", "15"], "--image-size must be a multiple of 4"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_user_mistakes_get_one_line_and_exit_2(tmp_path, capsys, argv, needle) -> None:
    code = main([*FAST, "--out", str(tmp_path), *argv])
    assert code == 2
    assert needle in _error_line(capsys)


def test_mistakes_leave_no_run_directory(tmp_path, capsys) -> None:
    assert main([*FAST, "--out", str(tmp_path), "--channels", "0"]) == 2
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_resume_keeps_stored_settings(tmp_path, capsys, monkeypatch) -> None:
    assert main([*FAST, "--out", str(tmp_path)]) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    capsys.readouterr()
    assert main(["--resume", "/nonexistent/run"]) == 2
    assert "no run directory at /nonexistent/run" in _error_line(capsys)
    assert main(["--resume", str(run), "--epochs", "9"]) == 2
    assert "drop the other options" in _error_line(capsys)
    assert main(["--resume", str(run), "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    # speed options may change on resume; a bad value is one line
    assert main(["--resume", str(run), "--no-progress", "--plain-path", "--no-cuda-graph"]) == 0
    assert main(["--resume", str(run), "--cell-impl", "einsum"]) == 2
    assert "unknown cell implementation 'einsum'" in _error_line(capsys)
    # a run stored before newer speed-only fields existed still resumes (defaults fill them)
    for name in ("config.json",):
        stored = json.loads((run / name).read_text())
        for key in ("cell_impl", "compile_cells", "cuda_graph"):
            stored["search"].pop(key)
        (run / name).write_text(json.dumps(stored))
    import torch as _torch

    state = _torch.load(run / "checkpoint.pt", weights_only=True)
    for key in ("cell_impl", "compile_cells", "cuda_graph"):
        state["config"]["search"].pop(key)
    _torch.save(state, run / "checkpoint.pt")
    assert main(["--resume", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    # a run made on a GPU, resumed where there is none: one line, not a traceback
    cfg = json.loads((run / "config.json").read_text())
    cfg["device"] = "cuda"
    (run / "config.json").write_text(json.dumps(cfg))
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--resume", str(run)]) == 2
    assert "pass --device cpu" in _error_line(capsys)


def test_float64_search(tmp_path) -> None:
    assert main([*FAST, "--out", str(tmp_path), "--dtype", "float64", "--method", "darts"]) == 0


def test_malformed_arch_string(capsys) -> None:
    assert main(["lookup", "|nor_conv_3x3~0|+|nor_conv_3x3~1|"]) == 2
    assert "not a NAS-Bench-201 arch string" in _error_line(capsys)


def test_lookup_prints_every_metric(capsys) -> None:
    arch = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    assert main(["lookup", arch]) == 0
    out = capsys.readouterr().out
    assert "54.2967" in out and "39.7693" in out and out.count("missing") == 2


def test_missing_and_corrupt_checkpoint(tmp_path, capsys) -> None:
    assert main([*FAST, "--out", str(tmp_path)]) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    capsys.readouterr()
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(b"not a checkpoint at all")
    assert main(["--resume", str(run)]) == 2
    assert "is corrupt" in _error_line(capsys)
    ckpt.unlink()
    assert main(["--resume", str(run)]) == 2
    assert "no checkpoint in" in _error_line(capsys)


def test_non_finite_loss_is_a_one_line_error(tmp_path, capsys) -> None:
    code = main([*FAST, "--out", str(tmp_path), "--method", "darts", "--w-lr", "1e30"])
    assert code == 2
    line = _error_line(capsys)
    assert "non-finite loss at epoch 1" in line and "lower the learning rates" in line


def test_cuda_request_without_cuda(capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*FAST, "--device", "cuda"]) == 2
    assert "pass --device cpu" in _error_line(capsys)


def test_top_level_help_lists_every_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "bayesnas_core.run", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    listed = [ln.split()[0] for ln in proc.stdout.splitlines() if ln.startswith("  ")]
    assert listed == ["search", "lookup", "export", "ablation-mc", "ablation-tf", "proxies", "regime",
                      "train", "reference", "compare", "sweep"]
    assert "COMMAND --help" in proc.stdout


def test_redirected_output_is_one_plain_line_per_epoch(tmp_path) -> None:
    """With stdout and stderr going to a file (a log, a pipe, CI), no progress bars: one line
    per epoch, no cursor movements."""
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "bayesnas_core.run", *FAST[:-1], "--epochs", "3",
                               "--out", str(tmp_path / "out")], cwd=REPO, stdout=fh, stderr=fh,
                              timeout=300)
    assert proc.returncode == 0
    text = log.read_text()
    assert "\x1b[" not in text and "\r" not in text
    epochs = [ln for ln in text.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(",")[0] for ln in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("free_ops " in ln and "valid_loss " in ln for ln in epochs)
    assert len(text) < 6000


def test_the_result_says_what_it_means(tmp_path, capsys) -> None:
    import csv

    from bayesnas_core.paths import assets_dir

    assert main([*FAST, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (run,) = list(tmp_path.iterdir())
    result = json.loads((run / "result.json").read_text())
    free = result["arch"].count("none~") + result["arch"].count("skip_connect~") + \
        result["arch"].count("avg_pool_3x3~")
    assert f"what this means: {free}/6 edges are parameter-free" in out
    # the mean and std of all cells, computed here from the shipped CSV itself
    with open(assets_dir() / "nb201" / "nb201_200ep_4metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh)]
    col = next(k for k in rows[0] if "cifar10" in k and "test" in k and "100" not in k)
    vals = [float(r[col]) for r in rows]
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
    assert f"a random cell: {mean:.2f} ± {std:.2f} %" in out
    mine = result["ground_truth"]["metrics"]["cifar10_test"]
    assert f"better than {100 * sum(v < mine for v in vals) / len(vals):.0f} % of the 15,625" in out


def test_every_setting_has_a_flag_that_sets_it() -> None:
    """The options are generated from the config dataclasses: each scalar field is
    reachable and its flag sets exactly that field."""
    import argparse

    from bayesnas_core.config import FLAGS, config_fields, get_preset
    from bayesnas_core.config import get_field as _get
    from bayesnas_core.run import _add_config_flags, build_config

    special = {"dtype": "float64", "device": "cpu", "search.method": "darts", "search.order": "2",
               "data.dataset": "fashion-mnist", "space.name": "nb201", "select.method": "synflow",
               "search.cell_impl": "conv", "data.image_size": "8", "threads": "1",
               "nb201_file": "x.pth", "data.root": "/data", "out": "o", "search.a_betas": "0.6 0.99",
               "search.num_data": "100", "search.prec_init": "2.0", "search.w_momentum": "0.5"}
    base = get_preset("default")
    fields = config_fields()
    assert set(fields) == set(FLAGS)
    for dotted, hint in fields.items():
        flag = FLAGS[dotted][0]
        current = _get(base, dotted)
        if isinstance(current, bool):
            argv = [flag if not current else "--no-" + flag[2:]]
            want = not current
        else:
            raw = special.get(dotted, "7" if "int" in str(hint) else "0.25")
            argv = [flag, *raw.split()]
            want = type(current)(raw) if current is not None and not isinstance(current, tuple) else None
        p = argparse.ArgumentParser()
        _add_config_flags(p)
        cfg = build_config(p.parse_args(argv))
        got = _get(cfg, dotted)
        if dotted not in ("device", "space.name"):  # the only values this machine accepts
            assert got != current, (dotted, argv)
        if want is not None:
            assert got == want, (dotted, got, want)


def test_a_closed_pipe_is_not_a_traceback() -> None:
    """``lookup ... | head -1``: the reader stops early; no traceback, exit 141 (SIGPIPE's)."""
    proc = subprocess.Popen([sys.executable, "-m", "bayesnas_core.run", "lookup", "0", "1", "2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
