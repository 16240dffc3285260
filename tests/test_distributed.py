"""``torchrun -m bayesnas_core.run train``: data-parallel training on 2 CPU ranks (gloo).

What is checked, and how rigorously:

- **The step.** Under DDP each rank runs its 8 rows of every global batch of 16 with its
  own batch-norm statistics, and the ranks' gradients are averaged. :func:`_emulate` does
  the same in one process: per global batch (drawn, cropped, flipped and cut out by the
  library exactly as a single-process run draws it) it runs the K shards one after
  another, each normalised by its own statistics and starting from rank 0's running
  statistics (DDP broadcasts them before every forward), accumulates the gradients of
  ``loss_shard / K`` and takes one SGD step; the running statistics kept are shard 0's.
  With K = 1 the emulator is checked **bit for bit** against the library's own
  single-process run (so it computes what the trainer computes); with K = 2 the
  torchrun run must match it in float64 within ``TOL`` (absolute, on weights, batch-norm
  buffers, momentum buffers and losses), the round-off of gloo's all-reduce average
  against a sum in another order. As a control, the single-process run (one batch-norm
  batch of 16) differs from the 2-rank run by far more than ``TOL``: the comparison sees
  batch norm's sharding, so it would see a wrong shard, mask or gradient scale.
- **The replicas.** result.json's ``replica_max_abs_diff`` is the all-reduced largest
  difference between any rank's parameters and momentum buffers and rank 0's; it is 0.0.
  The helper script also perturbs rank 1 in a group of its own and sees the check report
  the perturbation (it is a measurement, not a constant).
- **Files.** Only rank 0 writes: one run directory with the usual five files, nothing in
  the working directory; the summary is printed once.
- **Resume.** 1 epoch, Ctrl-C (on both ranks), ``torchrun ... --resume``: bit-identical to
  the uninterrupted 2-rank run (CPU, same world size). The same checkpoint resumed by one
  process (world size 1, same global batch) ends where the emulator with 2 shards in epoch
  1 and 1 in epoch 2 ends, within ``TOL``.
- **Drop path** (DARTS) draws its masks for the whole global batch: two shards' outputs
  are the rows of the unsharded output (batch norm in eval mode, so rows are independent).
- **Mistakes**: a global batch that does not split evenly is one line on rank 0, silence
  on the others, exit 2, no folder.

Three torchrun launches of 2 processes, about 10 s each on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesnas_core.config import get_train_preset
from bayesnas_core.data import TensorSplit, load_search_data
from bayesnas_core.run import main
from bayesnas_core.runs import RunDir, seed_everything
from bayesnas_core.spaces import get_space
from bayesnas_core.threads import torch_threads
from bayesnas_core.train import (_DropPath, _cutout_generator, _scheduler, _train_batches, build_network,
                                 cutout_batch, evaluate, run_train, training_splits)

REPO = Path(__file__).resolve().parent.parent
MIXED = "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|avg_pool_3x3~1|nor_conv_1x1~2|"
#: 128 train images of 8x8 (8 global batches of 16 per epoch), C=4, float64, crop + flip + Cutout
FIELDS = {"arch": MIXED, "limit": 64, "image_size": 8, "C": 4, "batch_size": 16, "threads": 1,
          "augment": True, "cutout": 4, "dtype": "float64", "epochs": 2}
ARGS = ["--arch", MIXED, "--limit", "64", "--image-size", "8", "--channels", "4", "--batch-size", "16",
        "--threads", "1", "--augment", "--cutout", "4", "--dtype", "float64", "--epochs", "2"]
#: float64, absolute (weights are O(1)): all-reduce average vs. the emulator's accumulated
#: sum, 16 SGD steps. Measured: weights and momentum 0.0 (with 2 ranks gloo's sum of the
#: halved gradients is the emulator's sum), losses 4.4e-16 (the sharded test sums)
TOL = 1e-12
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
RUN_FILES = {"config.json", "env.json", "metrics.jsonl", "checkpoint.pt", "result.json"}

#: launched by torchrun: 1 epoch, then Ctrl-C (the in-process hook), in a process group the
#: script makes itself (run_train uses it and leaves it); then the replica check is shown a
#: perturbed rank 1
HELPER = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist
    from bayesnas_core.config import get_train_preset
    from bayesnas_core.errors import Interrupted
    from bayesnas_core.train import Distributed, _replica_difference, run_train

    dist.init_process_group("gloo")
    cfg = get_train_preset("cpu")
    for name, value in json.loads(sys.argv[1]).items():
        setattr(cfg, name, value)

    def ctrl_c(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    try:
        run_train(cfg, progress=False, log=lambda line: None, on_record=ctrl_c)
    except Interrupted as err:
        stopped = str(err)
    ddp = Distributed.from_env()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    same = _replica_difference(ddp, model, opt)
    with torch.no_grad():
        model.bias[1] += 0.25 * ddp.rank
    perturbed = _replica_difference(ddp, model, opt)
    if ddp.main:
        print(json.dumps({"stopped": stopped, "same": same, "perturbed": perturbed}))
    dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def _only_run(out: Path) -> RunDir:
    (run,) = [p for p in out.iterdir()]
    return RunDir(run)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> RunDir:
    """2 epochs on 2 ranks, uninterrupted, started from an empty working directory."""
    base = tmp_path_factory.mktemp("straight")
    cwd = base / "cwd"
    cwd.mkdir()
    done = _torchrun(["-m", "bayesnas_core.run", "train", *ARGS, "--out", str(base / "out"),
                      "--no-progress"], cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained cell") == 1  # rank 0 prints the summary, rank 1 nothing
    assert done.stdout.count("run directory: ") == 2  # when made, and in the summary
    assert list(cwd.iterdir()) == []
    return _only_run(base / "out")


def _emulate(shards_per_epoch: list[int]) -> tuple[nn.Module, torch.optim.Optimizer, list[dict]]:
    """One process computing what ``len(shards_per_epoch)`` epochs of DDP compute with K =
    ``shards_per_epoch[e]`` ranks in epoch ``e`` (the module docstring says how)."""
    cfg = get_train_preset("cpu")
    for name, value in FIELDS.items():
        setattr(cfg, name, value)
    cfg.validate()
    data = load_search_data(cfg.dataset, cfg.root, image_size=cfg.image_size, limit=cfg.limit,
                            seed=cfg.seed, device="cpu")
    train, test, _ = training_splits(data)
    train, test = TensorSplit(train.x.double(), train.y), TensorSplit(test.x.double(), test.y)
    with torch_threads(1):
        seed_everything(cfg.seed)
        model = build_network(cfg, get_space("nb201").parse(MIXED), data.num_classes, data.in_channels)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        sched = _scheduler(cfg, opt)
        batches = _train_batches(cfg, train, data.name)
        records = []
        for epoch, k in enumerate(shards_per_epoch):
            model.train()
            cut = _cutout_generator(cfg, epoch, train.x.device)
            b = cfg.batch_size // k
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in batches.epoch(epoch):
                x = cutout_batch(x, cfg.cutout, cut)
                opt.zero_grad(set_to_none=True)
                start = [t.clone() for t in model.buffers()]  # rank 0's, broadcast to every rank
                kept = None
                for r in range(k):
                    for t, s in zip(model.buffers(), start):
                        t.copy_(s)
                    xs, ys = x[r * b:(r + 1) * b], y[r * b:(r + 1) * b]
                    logits = model(xs)
                    loss = F.cross_entropy(logits, ys)
                    (loss / k).backward()
                    if r == 0:
                        kept = [t.clone() for t in model.buffers()]
                    loss_sum += loss.item() * len(ys)
                    correct += int((logits.argmax(-1) == ys).sum())
                    seen += len(ys)
                with torch.no_grad():
                    for t, s in zip(model.buffers(), kept):
                        t.copy_(s)
                opt.step()
            sched.step()
            test_loss, test_acc = evaluate(model, test, cfg.batch_size)
            records.append({"train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                            "test_loss": test_loss, "test_acc": test_acc})
    return model, opt, records


def _max_diff(state: dict, model: nn.Module) -> float:
    ref = model.state_dict()
    assert state.keys() == ref.keys()
    return max((state[k].double() - ref[k].double()).abs().max().item() for k in ref)


def _momentum_diff(opt_state: dict, opt: torch.optim.Optimizer) -> float:
    ours = [opt.state[p]["momentum_buffer"] for p in opt.param_groups[0]["params"]]
    theirs = [opt_state["state"][i]["momentum_buffer"] for i in range(len(ours))]
    return max((a - b).abs().max().item() for a, b in zip(ours, theirs))


def _metric_diff(records: list[dict], emulated: list[dict]) -> float:
    assert [(r["train_acc"], r["test_acc"]) for r in records] == \
        [(e["train_acc"], e["test_acc"]) for e in emulated]
    return max(abs(r[k] - e[k]) for r, e in zip(records, emulated) for k in ("train_loss", "test_loss"))


def test_two_ranks_compute_the_sharded_global_step(straight, tmp_path, monkeypatch) -> None:
    """The 2-rank run equals one process running the two shards of every global batch
    (within TOL, float64); the emulator itself equals the library's single-process run bit
    for bit; the replicas end identical; only rank 0 wrote."""
    assert {p.name for p in straight.path.iterdir()} == RUN_FILES
    result, env = straight.read_json("result.json"), straight.read_json("env.json")
    job = result["distributed"]
    assert (job["world_size"], job["global_batch"], job["per_rank_batch"]) == (2, 16, 8)
    assert job["backend"] in ("gloo", "cpu:gloo,cuda:nccl")  # CPU tensors go through gloo either way
    assert job["replica_max_abs_diff"] == 0.0 and job["replicas_identical"] is True
    assert "unchanged" in job["lr_rule"] and "per-rank batch statistics" in job["batch_norm"]
    assert env["distributed"]["world_size"] == 2 and env["distributed"]["per_rank_batch"] == 8
    config = straight.read_json("config.json")
    assert config["batch_size"] == 16 and not {"world_size", "distributed"} & set(config)
    metrics = straight.read_metrics()
    assert [r["world_size"] for r in metrics] == [2, 2]
    ckpt = straight.load_checkpoint()

    model, opt, emulated = _emulate([2, 2])
    assert _max_diff(ckpt["model"], model) < TOL
    assert _momentum_diff(ckpt["optimizer"], opt) < TOL
    assert _metric_diff(metrics, emulated) < TOL

    # the emulator with one shard is the library's single-process run, bit for bit
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    cfg = get_train_preset("cpu")
    for name, value in FIELDS.items():
        setattr(cfg, name, value)
    cfg.out = str(tmp_path / "single")
    single = run_train(cfg, progress=False, log=lambda line: None)
    assert single["distributed"]["world_size"] == 1 and single["distributed"]["replicas_identical"] is None
    one_model, one_opt, one_emulated = _emulate([1, 1])
    one = RunDir(single["run_dir"])
    assert _max_diff(one.load_checkpoint()["model"], one_model) == 0.0
    assert _momentum_diff(one.load_checkpoint()["optimizer"], one_opt) == 0.0
    assert _metric_diff(one.read_metrics(), one_emulated) == 0.0
    # control: batch norm over 16 images instead of 2 x 8 is visible far above TOL
    assert _max_diff(ckpt["model"], one_model) > 1e6 * TOL


def test_resume_under_torchrun_is_bit_identical(straight, tmp_path, monkeypatch, capsys) -> None:
    """Ctrl-C after epoch 1 on both ranks, then ``torchrun ... train --resume``: the same
    weights, buffers, momentum and metrics as the uninterrupted 2-rank run, bit for bit.
    The checkpoint also resumes in one process (world size 1, same global batch): it ends
    where the emulator with 2 shards, then 1, ends. The replica check sees a perturbation."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    script = tmp_path / "interrupt.py"
    script.write_text(HELPER)
    fields = FIELDS | {"out": str(tmp_path / "out")}
    stopped = _torchrun([str(script), json.dumps(fields)], cwd)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    report = json.loads(stopped.stdout.strip().splitlines()[-1])
    run = _only_run(tmp_path / "out")
    assert report["stopped"] == (f"interrupted; {run.path} has a checkpoint after epoch 1: continue with "
                                 f"torchrun --nproc_per_node K -m bayesnas_core.run train --resume {run.path}")
    assert report["same"] == 0.0 and abs(report["perturbed"] - 0.25) < 1e-6
    assert run.load_checkpoint()["epoch"] == 1 and not (run.path / "result.json").exists()
    one_rank = tmp_path / "resumed-by-one-process"
    shutil.copytree(run.path, one_rank)

    done = _torchrun(["-m", "bayesnas_core.run", "train", "--resume", str(run.path), "--no-progress"], cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {run.path}" in done.stdout and list(cwd.iterdir()) == []
    a, b = straight.load_checkpoint(), run.load_checkpoint()
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x["momentum_buffer"], y["momentum_buffer"])
               for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()))
    timing = ("step_ms", "epoch_s", "wall_time_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in straight.read_metrics()] == \
        [{k: v for k, v in r.items() if k not in timing} for r in run.read_metrics()]
    assert run.read_json("result.json")["distributed"]["replicas_identical"] is True

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert main(["train", "--resume", str(one_rank), "--no-progress"]) == 0
    capsys.readouterr()
    resumed = RunDir(one_rank)
    assert [r["world_size"] for r in resumed.read_metrics()] == [2, 1]
    assert resumed.read_json("result.json")["distributed"]["world_size"] == 1
    model, opt, emulated = _emulate([2, 1])
    assert _max_diff(resumed.load_checkpoint()["model"], model) < TOL
    assert _metric_diff(resumed.read_metrics(), emulated) < TOL


def test_drop_path_masks_follow_the_global_batch() -> None:
    """DARTS drop path under sharding: rank 0's and rank 1's outputs (each drawing the
    global batch's masks from the same generator and keeping its rows) are the rows of the
    unsharded output; the masks act (p = 0.5 changes the output)."""
    space = get_space("darts")
    torch.manual_seed(0)
    model = space.build_network("darts-v2", C=4, N=3, num_classes=10, in_channels=1, auxiliary=False,
                                dtype=torch.float64)
    model.train()
    for m in model.modules():  # running statistics: rows independent of the batch around them
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)

    def run(rows: slice, prob: float) -> torch.Tensor:
        paths = _DropPath(model, rows, 8)
        gen = torch.Generator().manual_seed(123)
        paths.start_epoch(prob, gen)
        try:
            with torch.no_grad():
                return model(x[rows])
        finally:
            for h in paths.handles:
                h.remove()

    full = run(slice(0, 8), 0.5)
    shards = torch.cat([run(slice(0, 4), 0.5), run(slice(4, 8), 0.5)])
    assert (shards - full).abs().max().item() < 1e-12
    assert (run(slice(0, 8), 0.0) - full).abs().max().item() > 1e-3


def test_a_batch_that_does_not_split_is_one_line_on_rank_0(tmp_path, monkeypatch, capsys) -> None:
    """torchrun's variables for 3 ranks and --batch-size 16: rank 0 prints one line, rank 1
    nothing; both exit 2 before any rendezvous or folder. An incomplete set is one line."""
    env = {"WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for rank in (0, 1):
        for k, v in (env | {"RANK": str(rank)}).items():
            monkeypatch.setenv(k, v)
        assert main(["train", *ARGS, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        if rank == 0:
            assert err == ["error: --batch-size 16 is the global batch and does not split evenly across 3 "
                           "ranks; pass a multiple of 3 (e.g. 15)"]
        else:
            assert err == []
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("MASTER_ADDR")
    assert main(["train", *ARGS, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: WORLD_SIZE is set but MASTER_ADDR is not: start data-parallel training "
                           "with torchrun")
    assert not (tmp_path / "out").exists()
