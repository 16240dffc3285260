"""Hostile and careless input: one line and exit 2, nothing executed, nothing left behind,
nothing lost.

The table below runs every mistake through the real entry point (:func:`main`) and checks
what the user sees (exit status 2, one ``error:`` line on stderr, no traceback) and what
is left on disk (no new folder; a run directory or export folder byte-identical to
before).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest
import torch

from bayesnas_core.run import main
from bayesnas_core.runs import RunDir, atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
FAST = ["--preset", "lesson", "--epochs", "1", "--limit", "128", "--channels", "4",
        "--no-progress"]
#: a folder nobody can write, root included (sysfs refuses new entries)
UNWRITABLE = "/sys/bayesnas-test-folder"


class Payload:
    """A pickle that runs a shell command when unpickled (what an attacker would drop)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished 1-epoch run to copy from (a fresh copy per test)."""
    out = tmp_path_factory.mktemp("shared-run")
    assert main([*FAST, "--out", str(out)]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    d = json.loads(path.read_text())
    out = edit(d)
    path.write_text(json.dumps(d if out is None else out))


# ---------------------------------------------------------------------------------
# the table: (id, setup(tmp, run) -> argv, needle in the one error line)
# ``tmp`` is an empty folder; ``run`` a private copy of a finished run inside it.
# ---------------------------------------------------------------------------------
def _search(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: [*FAST, "--out", str(tmp / "out"), *extra]


def _file_out(tmp: Path, run: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return [*FAST, "--out", str(tmp / "afile")]


def _resume_with(edit: Callable[[dict], object]) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, run: Path) -> list[str]:
        _edit_json(run / "config.json", edit)
        return ["--resume", str(run)]
    return setup


def _set(section: str | None, key: str, value) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        (d if section is None else d[section])[key] = value
    return edit


def _resume_raw(text: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, run: Path) -> list[str]:
        (run / "config.json").write_text(text)
        return ["--resume", str(run)]
    return setup


def _payload_checkpoint(tmp: Path, run: Path) -> list[str]:
    torch.save({"epoch": 1, "model": Payload(tmp / "PWNED")}, run / "checkpoint.pt")
    return ["--resume", str(run)]


def _corrupt_checkpoint(tmp: Path, run: Path) -> list[str]:
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    return ["--resume", str(run)]


def _no_checkpoint(tmp: Path, run: Path) -> list[str]:
    (run / "checkpoint.pt").unlink()
    return ["--resume", str(run)]


def _export(*names: str, to: str = "dest") -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: ["export", *[str(tmp / n) for n in names], "--to", str(tmp / to)]


def _export_missing(name: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, run: Path) -> list[str]:
        (run / name).unlink()
        return ["export", str(run), "--to", str(tmp / "dest")]
    return setup


def _export_to_file(tmp: Path, run: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["export", str(run), "--to", str(tmp / "afile")]


def _export_same_name(tmp: Path, run: Path) -> list[str]:
    other = _copy_run(run, tmp / "elsewhere" / run.name)
    return ["export", str(run), str(other), "--to", str(tmp / "dest")]


def _export_onto_other_run(tmp: Path, run: Path) -> list[str]:
    dest = tmp / "dest" / run.name
    _copy_run(run, dest)
    _edit_json(dest / "result.json", _set(None, "seed", 99))
    return ["export", str(run), "--to", str(tmp / "dest")]


def _export_bad_late(tmp: Path, run: Path) -> list[str]:
    bad = _copy_run(run, tmp / "bad-run")
    (bad / "history.json").unlink()
    return ["export", str(run), str(bad), "--to", str(tmp / "dest")]


def _export_corrupt_result(tmp: Path, run: Path) -> list[str]:
    (run / "result.json").write_text("{not json")
    return ["export", str(run), "--to", str(tmp / "dest")]


def _export_result_not_a_run(tmp: Path, run: Path) -> list[str]:
    (run / "result.json").write_text("[]")
    return ["export", str(run), "--to", str(tmp / "dest")]


def _export_bad_summary(tmp: Path, run: Path) -> list[str]:
    (tmp / "dest").mkdir()
    (tmp / "dest" / "summary.json").write_text('{"runs": 3}')
    return ["export", str(run), "--to", str(tmp / "dest")]


def _study_results_file(cmd: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, run: Path) -> list[str]:
        (tmp / "afile").write_text("x")
        return [cmd, *FAST, "--results", str(tmp / "afile")]
    return setup


def _ledger(content: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, run: Path) -> list[str]:
        (tmp / "res").mkdir()
        (tmp / "res" / "ablation-mc.ledger.json").write_text(content)
        return ["ablation-mc", *FAST, "--mc", "1", "--seeds", "0", "--results", str(tmp / "res")]
    return setup


def _fashion(kind: str) -> Callable[[Path, Path], list[str]]:
    """A folder of the four Fashion-MNIST ``.gz`` files (tiny, valid idx content), then
    spoiled one way."""
    import gzip
    import struct

    def setup(tmp: Path, run: Path) -> list[str]:
        root = tmp / "fmnist"
        root.mkdir()
        n = 8
        for part in ("train", "t10k"):
            images = struct.pack(">IIII", 0x0803, n, 28, 28) + bytes(n * 28 * 28)
            labels = struct.pack(">II", 0x0801, n) + bytes(range(n))
            if kind == "label" and part == "t10k":
                labels = labels[:-1] + bytes([12])
            (root / f"{part}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
            (root / f"{part}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
        target = root / "train-images-idx3-ubyte.gz"
        if kind == "garbage":
            target.write_bytes(bytes(range(256)) * 10)
        elif kind == "truncated":
            target.write_bytes(target.read_bytes()[:40])
        return [*FAST, "--dataset", "fashion-mnist", "--data-root", str(root), "--out", str(tmp / "out")]
    return setup


def _proxies(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: ["proxies", *FAST, "--results", str(tmp / "res"), *extra]


CASES: list[tuple[str, Callable[[Path, Path], list[str]], str]] = [
    # --- search options
    ("method", _search("--method", "sgd"), "use --method darts or balenas"),
    ("dataset", _search("--dataset", "mnist"), "unknown dataset 'mnist'"),
    ("mc-zero", _search("--mc-samples", "0"), "--mc-samples must be at least 1"),
    ("order", _search("--order", "3"), "--order must be 1 or 2"),
    ("select", _search("--select", "random"), "unknown selection 'random'"),
    ("select-k", _search("--select", "synflow", "--select-samples", "0"), "--select-samples"),
    ("preset", _search("--preset", "huge"), "unknown preset 'huge'"),
    ("epochs-word", _search("--epochs", "two"), "invalid int value: 'two'"),
    ("epochs-zero", _search("--epochs", "0"), "--epochs must be at least 1"),
    ("unknown-flag", _search("--bogus"), "unrecognized arguments: --bogus"),
    ("a-lr-inf", _search("--a-lr", "inf"), "--a-lr must be a finite number"),
    ("w-lr-inf", _search("--w-lr", "inf"), "--w-lr must be a finite number"),
    ("a-lr-nan", _search("--a-lr", "nan"), "--a-lr must be a finite number"),
    ("w-lr-neg", _search("--w-lr", "-1"), "--w-lr must be positive"),
    ("seed-float", _search("--seed", "1e29"), "invalid int value: '1e29'"),
    ("seed-huge", _search("--seed", "1" + "0" * 29), "--seed must be an integer from 0"),
    ("seed-neg", _search("--seed", "-1"), "--seed must be an integer from 0"),
    ("batch-zero", _search("--batch-size", "0"), "--batch-size must be at least 1"),
    ("batch-too-big", _search("--batch-size", "4096"), "lower the batch size"),
    ("image-size", _search("--image-size", "15"), "--image-size must be a multiple of 4"),
    ("limit-zero", _search("--limit", "0"), "--limit must be at least 1"),
    ("dtype", _search("--dtype", "float16"), "--dtype must be float32 or float64"),
    ("device", _search("--device", "tpu"), "unknown device 'tpu'"),
    ("channels", _search("--channels", "0"), "--channels must be at least 1"),
    ("cells", _search("--cells", "-1"), "--cells must be at least 1"),
    ("cell-impl", _search("--cell-impl", "einsum"), "unknown cell implementation 'einsum'"),
    ("data-root", _search("--dataset", "cifar10", "--data-root", "/nonexistent/cifar"), "--data-root"),
    ("nb201-file", _search("--nb201-file", "/nonexistent/NAS-Bench-201-v1_1-096897.pth"), "--nb201-file"),
    ("out-is-file", _file_out, "is a file, not a folder; pass --out a folder"),
    ("data-garbage-gz", _fashion("garbage"), "replace it with an intact copy"),
    ("data-truncated-gz", _fashion("truncated"), "replace it with an intact copy"),
    ("data-label-range", _fashion("label"), "outside the classes 0..9"),
    ("out-unwritable", _search("--out", UNWRITABLE), "pass --out a writable folder"),
    ("command-typo", lambda tmp, run: ["lookp", "0"], "did you mean 'lookup'?"),
    ("command-unknown", lambda tmp, run: ["frobnicate"], "unknown command 'frobnicate'"),
    # --- lookup
    ("lookup-superscript", lambda tmp, run: ["lookup", "²"], "not a NAS-Bench-201 arch string"),
    ("lookup-range", lambda tmp, run: ["lookup", "15625"], "15625"),
    ("lookup-malformed", lambda tmp, run: ["lookup", "|nor_conv_3x3~0|+|"], "not a NAS-Bench-201 arch string"),
    # --- export
    ("export-nothing", _export("nowhere"), "no run directory at"),
    ("export-no-history", _export_missing("history.json"), "history.json is missing"),
    ("export-no-result", _export_missing("result.json"), "is not a finished run"),
    ("export-to-file", _export_to_file, "--to"),
    ("export-to-unwritable", lambda tmp, run: ["export", str(run), "--to", UNWRITABLE], "pass --to a writable folder"),
    ("export-same-name", _export_same_name, "share the folder name"),
    ("export-onto-other", _export_onto_other_run, "already holds another run"),
    ("export-bad-late", _export_bad_late, "history.json is missing"),
    ("export-corrupt-result", _export_corrupt_result, "is not valid JSON"),
    ("export-result-list", _export_result_not_a_run, "is not a finished run's result"),
    ("export-bad-summary", _export_bad_summary, "is not an export summary"),
    # --- studies
    ("proxies-net-channels", _proxies("--net-channels", "0"), "--net-channels values must be at least 1"),
    ("proxies-net-cells", _proxies("--net-cells", "-1"), "--net-cells values must be at least 1"),
    ("proxies-cells", _proxies("--synflow-cells", "2"), "score from 3 to 15625 cells"),
    ("proxies-too-many", _proxies("--snip-grasp-cells", "20000"), "score from 3 to 15625 cells"),
    ("proxies-unknown", _proxies("--proxies", "jacov"), "unknown proxy 'jacov'"),
    ("ablation-mc-results-file", _study_results_file("ablation-mc"), "pass --results a folder"),
    ("ablation-tf-results-file", _study_results_file("ablation-tf"), "pass --results a folder"),
    ("proxies-results-unwritable", _proxies("--results", UNWRITABLE), "pass --results a writable folder"),
    ("ablation-mc-zero", lambda tmp, run: ["ablation-mc", *FAST, "--mc", "0"], "--mc values must be at least 1"),
    ("ablation-tf-zero", lambda tmp, run: ["ablation-tf", *FAST, "--samples", "0"], "--samples values must be at least 1"),
    ("ledger-list", _ledger("[]"), "is not a study ledger"),
    ("ledger-corrupt", _ledger("{oops"), "is corrupt; delete it"),
    # --- resume
    ("resume-nowhere", lambda tmp, run: ["--resume", str(tmp / "nowhere")], "no run directory at"),
    ("resume-extra-option", lambda tmp, run: ["--resume", str(run), "--epochs", "9"], "drop the other options"),
    ("resume-config-list", _resume_raw("[]"), "the top level must be a JSON object"),
    ("resume-config-garbage", _resume_raw("{oops"), "is not valid JSON"),
    ("resume-search-null", _resume_with(_set(None, "search", None)), "search must be a JSON object, got null"),
    ("resume-C-string", _resume_with(_set("space", "C", "8")), "space.C must be an integer, got '8'"),
    ("resume-seed", _resume_with(_set(None, "seed", 5)), "seed (0 in the checkpoint, 5 now)"),
    ("resume-limit", _resume_with(_set("data", "limit", 64)), "data.limit (128 in the checkpoint, 64 now)"),
    ("resume-dtype", _resume_with(_set(None, "dtype", "float64")), "dtype ('float32' in the checkpoint, 'float64' now)"),
    ("resume-channels", _resume_with(_set("space", "C", 8)), "space.C (4 in the checkpoint, 8 now)"),
    ("resume-a-lr-inf", _resume_with(_set("search", "a_lr", float("inf"))), "--a-lr must be a finite number"),
    ("resume-payload", _payload_checkpoint, "nothing from it was run"),
    ("resume-corrupt", _corrupt_checkpoint, "is corrupt"),
    ("resume-no-checkpoint", _no_checkpoint, "no checkpoint in"),
]


@pytest.mark.parametrize("case,setup,needle", CASES, ids=[c[0] for c in CASES])
def test_every_mistake_is_one_line_exit_2_and_leaves_nothing(case, setup, needle, tmp_path,
                                                             finished_run, capsys,
                                                             monkeypatch) -> None:
    cache = tmp_path.parent / f"{tmp_path.name}-cache"  # outside the folder compared below
    monkeypatch.setenv("BAYESNAS_CACHE", str(cache))
    run = _copy_run(finished_run, tmp_path / "run")
    argv = setup(tmp_path, run)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err  # one line, so no traceback
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert needle in lines[0], lines[0]
    after = _snapshot(tmp_path)
    assert after == before, sorted(set(after) ^ set(before))  # nothing made, moved or changed
    assert not (tmp_path / "PWNED").exists()
    assert not Path(UNWRITABLE).exists()
    assert not [p for p in cache.rglob("*") if p.is_file()]  # nothing cached from bad data


def test_there_are_at_least_forty_cases() -> None:
    kinds = {"search": 0, "lookup": 0, "export": 0, "study": 0, "resume": 0}
    for case, _, _ in CASES:
        kind = case.split("-")[0]
        kind = {"proxies": "study", "ablation": "study", "ledger": "study", "data": "search"}.get(kind, kind)
        kinds[kind if kind in kinds else "search"] += 1
    assert len(CASES) >= 40 and all(n >= 3 for n in kinds.values()), kinds


def test_mistake_in_a_real_process_prints_no_traceback(tmp_path) -> None:
    """The entry point as a user starts it: exit 2, one stderr line, nothing created."""
    for argv in (["--a-lr", "inf"], ["lookup", "²"], ["lookp", "0"]):
        proc = subprocess.run([sys.executable, "-m", "bayesnas_core.run", *FAST, "--out",
                               str(tmp_path / "out"), *argv] if argv[0].startswith("-") else
                              [sys.executable, "-m", "bayesnas_core.run", *argv],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------
# security: nothing in a file a user is handed runs
# ---------------------------------------------------------------------------------
def test_payload_checkpoint_runs_nothing_even_where_torch_defaults_to_pickle(
        tmp_path, finished_run, capsys, monkeypatch) -> None:
    """torch < 2.6 unpickled by default; the env variable restores that default on a newer
    torch. A checkpoint holding a call must be refused and the call never made."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PWNED"
    run = _copy_run(finished_run, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["metrics"].append(Payload(marker))  # inside a real checkpoint
    torch.save(state, run / "checkpoint.pt")
    # the test can fail: a plain torch.load under this variable runs the payload
    torch.load(run / "checkpoint.pt", weights_only=None)
    assert marker.exists()
    marker.unlink()
    assert main(["--resume", str(run)]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "GLOBAL posix.system" in line and "nothing from it was run" in line
    assert not marker.exists()


def test_payload_benchmark_file_runs_nothing(tmp_path, capsys, monkeypatch) -> None:
    """``--nb201-file``: nas_201_api calls torch.load without weights_only; the project
    loads the file itself as plain data first."""
    from nas_201_api import NASBench201API

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PWNED"
    path = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    torch.save({"meta_archs": [], "arch2infos": {}, "evaluated_indexes": [],
                "x": Payload(marker)}, path)
    with pytest.raises(Exception):  # the API alone runs the payload (then fails on the dict)
        NASBench201API(str(path), verbose=False)
        raise AssertionError("unreachable")
    assert marker.exists()
    marker.unlink()
    assert main(["lookup", "0", "--nb201-file", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "refused and not run" in err
    assert not marker.exists()


def test_checkpoint_of_a_real_run_loads_as_plain_data(finished_run) -> None:
    state = RunDir(finished_run).load_checkpoint()
    assert state["epoch"] == 1 and isinstance(state["a_opt"], dict)


# ---------------------------------------------------------------------------------
# resume compares the whole configuration
# ---------------------------------------------------------------------------------
def test_resume_names_every_differing_field_and_allows_device_and_speed(
        tmp_path, finished_run, capsys) -> None:
    run = _copy_run(finished_run, tmp_path / "run")

    def edit(d: dict) -> None:
        d["seed"], d["dtype"], d["data"]["limit"], d["space"]["N"] = 3, "float64", 100, 2
    _edit_json(run / "config.json", edit)
    assert main(["--resume", str(run)]) == 2
    line = capsys.readouterr().err
    for field in ("seed", "dtype", "data.limit", "space.N"):
        assert field in line
    # device, output folder and speed-only options may change
    _copy_run(finished_run, tmp_path / "run2")

    def move(d: dict) -> None:
        d["out"], d["search"]["cell_impl"] = "/elsewhere", "conv"
    _edit_json(tmp_path / "run2" / "config.json", move)
    assert main(["--resume", str(tmp_path / "run2"), "--no-progress", "--device", "cpu"]) == 0


# ---------------------------------------------------------------------------------
# export: merge, refuse clashes and escapes, all or nothing
# ---------------------------------------------------------------------------------
def test_export_merges_and_reexport_replaces_its_own_row(tmp_path, finished_run, capsys) -> None:
    a = _copy_run(finished_run, tmp_path / "a" / "run-a")
    b = _copy_run(finished_run, tmp_path / "b" / "run-b")
    _edit_json(b / "result.json", _set(None, "seed", 7))
    dest = tmp_path / "dest"
    assert main(["export", str(a), "--to", str(dest)]) == 0
    assert main(["export", str(b), "--to", str(dest)]) == 0
    rows = json.loads((dest / "summary.json").read_text())["runs"]
    assert sorted(r["run"] for r in rows) == ["run-a", "run-b"]
    assert main(["export", str(a), "--to", str(dest)]) == 0  # the same run again
    rows = json.loads((dest / "summary.json").read_text())["runs"]
    assert sorted(r["run"] for r in rows) == ["run-a", "run-b"]
    assert not (dest / "run-a" / "checkpoint.pt").exists()
    assert (dest / "run-a" / "history.json").read_bytes() == (a / "history.json").read_bytes()


def test_export_of_a_dotdot_path_stays_inside_the_destination(tmp_path, finished_run) -> None:
    run = _copy_run(finished_run, tmp_path / "runs" / "the-run")
    (run / "sub").mkdir()
    dest = tmp_path / "deep" / "dest"
    assert main(["export", f"{run}/sub/..", "--to", str(dest)]) == 0
    assert (dest / "the-run" / "result.json").is_file()
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["dest"]


def test_export_files_take_the_users_umask(tmp_path, finished_run) -> None:
    old = os.umask(0o002)
    try:
        assert main(["export", str(finished_run), "--to", str(tmp_path / "d")]) == 0
        atomic_write_bytes(tmp_path / "x.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "d" / "summary.json").stat().st_mode & 0o777 == 0o664
    assert (finished_run / "result.json").stat().st_mode & 0o777 == 0o666 & ~old


# ---------------------------------------------------------------------------------
# housekeeping
# ---------------------------------------------------------------------------------
def test_resume_removes_stale_temp_files(tmp_path, finished_run, capsys) -> None:
    run = _copy_run(finished_run, tmp_path / "run")
    stale = run / ".checkpoint.pt.abc123_x.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["--resume", str(run), "--no-progress"]) == 0
    assert not stale.exists() and (run / "checkpoint.pt").is_file()


def test_simultaneous_run_folders_all_get_their_own(tmp_path) -> None:
    made: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(40)

    def create() -> None:
        try:
            barrier.wait()
            made.append(RunDir.create(tmp_path, "same-name", {"x": 1}, {"env": 1}).path)
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=create) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(made)) == 40
    assert all((p / "config.json").is_file() for p in made)


def test_full_disk_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    """A write that fails for lack of space (ENOSPC) ends in one line, exit 2."""
    import errno

    import bayesnas_core.runs as runs

    real = runs.atomic_write_bytes

    def full(path, data):
        if Path(path).name == "checkpoint.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    monkeypatch.setattr(runs, "atomic_write_bytes", full)
    assert main([*FAST, "--out", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "No space left on device" in line and "checkpoint.pt" in line


def test_ctrl_c_names_the_folder_and_the_exact_command(tmp_path, capsys, monkeypatch) -> None:
    import bayesnas_core.experiments as experiments

    real = experiments.search
    calls = {"n": 0}

    def interrupted_after(epochs: int):
        def fake(cfg, data, **kw):
            if epochs:
                cfg.search.epochs = epochs
                real(cfg, data, **kw)
            raise KeyboardInterrupt
        return fake

    monkeypatch.setattr(experiments, "search", interrupted_after(0))
    assert main([*FAST, "--out", str(tmp_path / "a")]) == 130
    err = capsys.readouterr().err.strip()
    (run,) = list((tmp_path / "a").iterdir())
    assert err == (f"interrupted before the first epoch ended; {run} holds only config.json and "
                   "env.json (no checkpoint): delete it and run the command again")
    monkeypatch.setattr(experiments, "search", interrupted_after(1))
    assert main([*FAST, "--epochs", "3", "--out", str(tmp_path / "b")]) == 130
    err = capsys.readouterr().err.strip()
    (run,) = list((tmp_path / "b").iterdir())
    assert err == (f"interrupted; {run} has a checkpoint after epoch 1: continue with "
                   f"python -m bayesnas_core.run --resume {run}")
    del calls


# ---------------------------------------------------------------------------------
# kill and resume at random points, saves included
# ---------------------------------------------------------------------------------
SLOW_SAVE = """
import os, sys, time
real_fsync = os.fsync
saves = 0
def slow_fsync(fd):
    # the SAVE_AT-th temporary checkpoint is written but not yet renamed: the parent
    # kills us here
    global saves
    if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
        saves += 1
        if saves == int(os.environ.get("SAVE_AT", "0")):
            sys.stderr.write("SAVING\\n"); sys.stderr.flush()
            time.sleep(5)
    real_fsync(fd)
os.fsync = slow_fsync
from bayesnas_core.run import main
sys.exit(main(sys.argv[1:]))
"""


def _result_of(run: Path) -> dict:
    r = json.loads((run / "result.json").read_text())
    return {"mu": r["mu"], "sigma": r["sigma"], "arch": r["arch"],
            "metrics": [{k: v for k, v in m.items() if not k.endswith(("_s", "_ms"))}  # timings
                        for m in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())]}


@pytest.mark.slow
def test_kill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path) -> None:
    import random
    import signal
    import time

    argv = ["--preset", "lesson", "--epochs", "8", "--limit", "64", "--channels", "4",
            "--batch-size", "16"]  # output is a pipe: one plain line per epoch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    ref = subprocess.run([sys.executable, "-m", "bayesnas_core.run", *argv, "--out",
                          str(tmp_path / "ref")], env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    (ref_run,) = list((tmp_path / "ref").iterdir())
    rng = random.Random(2026)
    out = tmp_path / "killed"
    run: Path | None = None
    kills = {"save": 0, "random": 0}
    for attempt in range(12):
        during_save = attempt < 2 or attempt % 2 == 1  # two kills inside a save first
        cmd = [sys.executable, "-c", SLOW_SAVE,
               *(argv + ["--out", str(out)] if run is None else ["--resume", str(run)])]
        save_at = rng.randint(1, 2) if during_save else 0
        proc = subprocess.Popen(cmd, env={**env, "SAVE_AT": str(save_at)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if during_save:
            for line in proc.stderr:  # until the SAVE_AT-th save pauses (or the run ends)
                if line.strip() == "SAVING":  # inside the save: kill now
                    time.sleep(rng.uniform(0.0, 0.5))
                    break
        else:  # a random point of the session's second epoch or later
            for line in proc.stdout:
                if line.startswith("epoch "):
                    break
            time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills["save" if during_save else "random"] += 1
        proc.communicate(timeout=300)
        if run is None and out.exists():
            found = list(out.iterdir())
            run = found[0] if found else None
        if run is not None and (run / "result.json").exists():
            break
        if run is not None and not (run / "checkpoint.pt").exists():
            shutil.rmtree(run)  # killed before the first checkpoint: start again
            run = None
    assert run is not None and (run / "result.json").exists(), kills
    assert kills["save"] >= 2 and kills["random"] >= 1, kills
    assert _result_of(run) == _result_of(ref_run)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
