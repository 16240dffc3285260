"""Sweeps on Ray (``python -m bayesnas_core.run sweep ... --backend ray``): the same ledger
and tables as the serial command, bit for bit on the CPU, and a task whose worker dies is
retried by Ray and resumes from its checkpoint.

One local Ray instance with 2 CPUs serves the module (it takes about 10 s to start).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from bayesnas_core.run import main
from bayesnas_core.sweep import DIE_ONCE_ENV, DIED_MARKER

TINY = ["--preset", "lesson", "--limit", "64", "--channels", "4", "--threads", "1", "--no-progress"]
#: what may differ between two runs of the same search: timings, the machine, the command
TIMING = {"wall_time_s", "step_ms", "hessian_eig_s", "data_load_s", "selection_s",
          "session_wall_time_s", "env", "command", "run_dir"}


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _json(path: Path):
    return json.loads(path.read_text())


def _table_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.startswith("|")]


@pytest.fixture(scope="module")
def local_ray():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail('Ray is missing; the test extra installs it: pip install -e ".[test]"')
        pytest.skip('Ray is not installed (pip install -e ".[distributed]")')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# --- without Ray ---------------------------------------------------------------------------

def test_ray_backend_without_ray_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["sweep", "ablation-mc", *TINY, "--epochs", "1", "--mc", "1", "--seeds", "0",
                 "--backend", "ray", "--out", str(tmp_path / "runs"),
                 "--results", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert 'pip install -e ".[distributed]"' in err
    assert not (tmp_path / "res").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["sweep", "ablation-xx"], "unknown study 'ablation-xx'"),
    (["sweep", "ablation-mc", "--address", "auto"], "--address only apply to --backend ray"),
    (["sweep", "ablation-tf", "--backend", "dask"], "invalid choice: 'dask'"),
])
def test_sweep_mistakes_are_one_line(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("study", ["ablation-mc", "ablation-tf"])
def test_sweep_takes_every_option_of_the_serial_command(study, capsys) -> None:
    def options(argv: list[str]) -> set[str]:
        with pytest.raises(SystemExit):
            main(argv)
        return {w.strip(",[]") for w in capsys.readouterr().out.split() if w.startswith("--")}

    serial, swept = options([study, "--help"]), options(["sweep", study, "--help"])
    assert serial and serial <= swept
    assert {"--backend", "--address", "--gpus-per-task", "--num-cpus", "--max-retries"} <= swept


def _tiny_unit(tmp_path, **search):
    from bayesnas_core.config import get_preset
    from bayesnas_core.experiments import ablation_mc_units

    cfg = get_preset("lesson")
    cfg.search.epochs, cfg.data.limit, cfg.space.C, cfg.threads = 1, 64, 4, 1
    cfg.out = str(tmp_path / "runs")
    for key, value in search.items():
        setattr(cfg.search, key, value)
    return ablation_mc_units(cfg, [1], [0])[0]


def test_a_unit_resumes_in_its_folder_and_refuses_other_settings(tmp_path) -> None:
    """What a retried task does, in this process: the unit's folder holds one run; a second
    attempt continues it (here from its last checkpoint) and returns the same entry; an
    attempt that left no checkpoint is cleared; a run with other settings is refused."""
    from bayesnas_core.errors import UserError
    from bayesnas_core.sweep import resumable_run, run_unit

    unit = _tiny_unit(tmp_path)
    folder = tmp_path / "runs" / unit.folder
    first, info = run_unit(unit, folder)
    assert info["resumed_from_epoch"] is None and Path(info["run_dir"]).parent == folder
    stale = folder / "stale-attempt"  # died before its first checkpoint
    stale.mkdir()
    (stale / "config.json").write_text((Path(info["run_dir"]) / "config.json").read_text())
    again, info2 = run_unit(unit, folder)
    assert not stale.exists() and info2 == {**info, "resumed_from_epoch": 1}
    assert _without_timings(again) == _without_timings(first)
    other = _tiny_unit(tmp_path, a_lr=1e-2)
    with pytest.raises(UserError, match=r"other settings \(search.a_lr\).*another --out"):
        resumable_run(folder, other.cfg)


# --- on a local Ray --------------------------------------------------------------------------

def test_ray_sweep_gives_the_serial_table(local_ray, tmp_path, capsys) -> None:
    study = [*TINY, "--epochs", "1", "--mc", "1", "2", "--seeds", "0", "1",
             "--out", str(tmp_path / "runs")]
    assert main(["ablation-mc", *study, "--results", str(tmp_path / "serial")]) == 0
    capsys.readouterr()
    assert main(["sweep", "ablation-mc", *study, "--results", str(tmp_path / "ray"),
                 "--backend", "ray"]) == 0
    out = capsys.readouterr().out
    assert out.count("submitted to Ray") == 6 and out.count(": done (") == 6
    serial, swept = (_json(tmp_path / d / "ablation-mc.json") for d in ("serial", "ray"))
    assert swept["rows"] == serial["rows"]  # labels, archs, every mean and std, bit for bit
    assert _without_timings(swept) == _without_timings(serial)  # and every run's summary
    assert list(swept["runs"]) == list(serial["runs"])  # in the serial order
    assert (_without_timings(_json(tmp_path / "ray" / "ablation-mc.ledger.json"))
            == _without_timings(_json(tmp_path / "serial" / "ablation-mc.ledger.json")))
    assert (_table_lines(tmp_path / "ray" / "ablation-mc.md")
            == _table_lines(tmp_path / "serial" / "ablation-mc.md"))
    # every search ran in its unit's own folder, one run each
    for key in swept["runs"]:
        assert len([d for d in (tmp_path / "runs" / f"ablation-mc-{key}").iterdir() if d.is_dir()]) == 1
    # the same sweep again: every unit is in the ledger, nothing is submitted
    assert main(["sweep", "ablation-mc", *study, "--results", str(tmp_path / "ray"),
                 "--backend", "ray"]) == 0
    assert "submitted to Ray" not in capsys.readouterr().out
    assert _json(tmp_path / "ray" / "ablation-mc.json")["rows"] == serial["rows"]


def test_killed_task_is_retried_and_resumes_from_its_checkpoint(local_ray, tmp_path, capsys,
                                                                monkeypatch) -> None:
    runs = tmp_path / "runs"
    study = [*TINY, "--epochs", "2", "--mc", "2", "--seeds", "1", "--out", str(runs)]
    # the uninterrupted reference: the serial code path
    assert main(["sweep", "ablation-mc", *study, "--results", str(tmp_path / "serial")]) == 0
    (reference,) = runs.glob("*-balenas-o1-m2-s1")
    capsys.readouterr()
    # the worker of balenas-m2-s1 exits right after epoch 1's checkpoint; Ray retries it
    monkeypatch.setenv(DIE_ONCE_ENV, "balenas-m2-s1")
    assert main(["sweep", "ablation-mc", *study, "--results", str(tmp_path / "ray"),
                 "--backend", "ray", "--max-retries", "1"]) == 0
    out = capsys.readouterr().out
    unit = runs / "ablation-mc-balenas-m2-s1"
    assert (unit / DIED_MARKER).is_file()  # the first attempt died
    (resumed,) = [d for d in unit.iterdir() if d.is_dir()]  # the retry continued that run
    assert f"balenas-m2-s1: done ({resumed}, resumed from the checkpoint after epoch 1)" in out
    (darts,) = [ln for ln in out.splitlines() if "darts-s1: done (" in ln]
    assert "resumed" not in darts and not (runs / "ablation-mc-darts-s1" / DIED_MARKER).exists()
    # the resumed run is the uninterrupted one: every epoch's record, mu and sigma, the result
    metrics = [_without_timings(json.loads(ln)) for ln in (resumed / "metrics.jsonl").read_text().splitlines()]
    expect = [_without_timings(json.loads(ln)) for ln in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics == expect
    assert _json(resumed / "history.json") == _json(reference / "history.json")
    assert (_without_timings(_json(resumed / "result.json"))
            == _without_timings(_json(reference / "result.json")))
    # and the table completes, equal to the serial one
    serial, swept = (_json(tmp_path / d / "ablation-mc.json") for d in ("serial", "ray"))
    assert swept["rows"] == serial["rows"]
    assert _without_timings(swept["runs"]) == _without_timings(serial["runs"])


def test_ray_sweep_of_ablation_tf_gives_the_serial_table(local_ray, tmp_path) -> None:
    study = [*TINY, "--epochs", "1", "--proxies", "synflow", "--samples", "2", "3",
             "--seeds", "0", "1", "--out", str(tmp_path / "runs")]
    assert main(["ablation-tf", *study, "--results", str(tmp_path / "serial")]) == 0
    assert main(["sweep", "ablation-tf", *study, "--results", str(tmp_path / "ray"),
                 "--backend", "ray"]) == 0
    serial, swept = (_json(tmp_path / d / "ablation-tf.json") for d in ("serial", "ray"))
    assert swept["rows"] == serial["rows"]
    assert _without_timings(swept) == _without_timings(serial)
    assert list(swept["runs"]) == ["s0", "s1"]


def test_ray_sweep_on_cuda_without_gpus_is_one_line(local_ray, tmp_path, capsys) -> None:
    """A CPU-only driver may sweep onto GPU workers (the device is checked in the tasks), but
    a Ray without GPUs would leave the tasks waiting forever: refused in one line."""
    assert main(["sweep", "ablation-mc", *TINY, "--epochs", "1", "--mc", "1", "--seeds", "0",
                 "--device", "cuda", "--backend", "ray", "--out", str(tmp_path / "runs"),
                 "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert "asks for 1 GPU but the Ray cluster has 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
