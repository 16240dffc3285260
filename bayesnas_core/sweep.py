"""Sweeps: a study's independent searches as Ray tasks.

``python -m bayesnas_core.run sweep ablation-mc|ablation-tf [options] --backend ray`` runs
the study of the same name (:func:`~bayesnas_core.experiments.ablation_mc`,
:func:`~bayesnas_core.experiments.ablation_tf`) with a :class:`RayRunner`: each unit the
ledger lacks (one search, see :class:`~bayesnas_core.experiments.StudyUnit`) becomes one
Ray task, on a local Ray instance or a cluster. A task asks for one GPU when the study runs
on ``cuda`` (``gpus_per_task``), else for ``cfg.threads`` CPUs (1 unless ``--threads`` says
otherwise). The results land in the same ledger and tables as the serial command's:

- **one writer.** A task returns its ledger entry; the driver writes the ledger as entries
  arrive, and a unit already in the ledger is never submitted.
- **resume.** A task searches in a run directory under ``cfg.out/<study>-<unit key>/``, a
  folder fixed by the unit, so when Ray retries a task whose worker died (``max_retries``;
  a Python exception is a mistake and is not retried) the new attempt continues from that
  run's last checkpoint (``run_search(resume=...)``) instead of starting over. A cluster
  needs ``--out`` on a filesystem every node sees for a retry elsewhere to find it.
- **serial results.** On the CPU the tasks compute bit for bit what the serial command
  computes with the same ``--threads``; only wall times and the environment differ.

Ray is an optional extra (``pip install -e ".[distributed]"``); only this module imports
it, and only when a Ray runner runs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import RunConfig, config_differences, config_from_dict
from .errors import UserError
from .experiments import Progress, StudyUnit, ablation_mc, ablation_tf
from .runs import RunDir

__all__ = ["BACKENDS", "STUDIES", "INSTALL_HINT", "RayRunner", "import_ray", "sweep",
           "run_unit", "resumable_run"]

#: the studies a sweep can run, by subcommand name
STUDIES: dict[str, Callable[..., Any]] = {"ablation-mc": ablation_mc, "ablation-tf": ablation_tf}
BACKENDS = ("serial", "ray")
INSTALL_HINT = 'pip install -e ".[distributed]"'

#: Fault injection for tests: a unit key. The driver reads it when it submits; that unit's
#: worker exits (``os._exit(1)``) right after the checkpoint of its first epoch, once: it
#: first writes :data:`DIED_MARKER` into the unit's folder, and never dies while that exists.
DIE_ONCE_ENV = "BAYESNAS_SWEEP_DIE_ONCE"
DIED_MARKER = "died-once"

#: how often Ray re-runs a task whose worker died, by default
MAX_RETRIES = 3


def import_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`UserError` naming the install command."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def sweep(study: str, cfg: RunConfig, *study_args: Any, backend: str = "serial",
          address: str | None = None, num_cpus: int | None = None,
          gpus_per_task: float | None = None, max_retries: int = MAX_RETRIES,
          **study_kw: Any) -> dict[str, Any]:
    """Run ``study`` (a :data:`STUDIES` name) with ``backend``: ``serial`` is the study's own
    function unchanged; ``ray`` runs its missing units as Ray tasks (:class:`RayRunner`),
    with ``cfg.threads`` 1 when it is None. Returns the study's table record."""
    if study not in STUDIES:
        raise UserError(f"unknown study {study!r}; sweep one of: {', '.join(STUDIES)}")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    if backend == "serial":
        return STUDIES[study](cfg, *study_args, **study_kw)
    import_ray()  # before anything is written
    cfg = copy.deepcopy(cfg)
    if cfg.threads is None:  # one CPU slot per task, one thread in it
        cfg.threads = 1
    runner = RayRunner(address=address, num_cpus=num_cpus, gpus_per_task=gpus_per_task,
                       max_retries=max_retries)
    return STUDIES[study](cfg, *study_args, runner=runner, **study_kw)


class RayRunner:
    """A :data:`~bayesnas_core.experiments.Runner` that runs each unit as a Ray task.

    Ray is started for the call and shut down after it: locally with ``num_cpus`` CPUs
    (None: the machine's), or connected to the cluster at ``address`` (``"auto"``: the one
    ``ray start`` began on this machine; ``"ray://host:10001"``: Ray Client). When Ray is
    already initialised (a notebook, a test) the runner uses it and leaves it running.
    ``gpus_per_task`` (None: 1 on ``cuda``, 0 on the CPU; fractions share a GPU) and
    ``max_retries`` (re-runs of a task whose worker died) become the tasks' options.
    """

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 gpus_per_task: float | None = None, max_retries: int = MAX_RETRIES) -> None:
        if address is not None and num_cpus is not None:
            raise UserError("--num-cpus sizes a local Ray instance; a cluster (--address) has "
                            "the CPUs its nodes started with: drop one of them")
        if num_cpus is not None and num_cpus < 1:
            raise UserError(f"--num-cpus must be at least 1, got {num_cpus}")
        if gpus_per_task is not None and gpus_per_task < 0:
            raise UserError(f"--gpus-per-task must be at least 0, got {gpus_per_task}")
        if max_retries < 0:
            raise UserError(f"--max-retries must be at least 0, got {max_retries}")
        self.address, self.num_cpus = address, num_cpus
        self.gpus_per_task, self.max_retries = gpus_per_task, max_retries

    def __call__(self, units: list[StudyUnit], put: Callable[[str, Any], None], *,
                 progress: Progress = True, log: Callable[[str], None] = print,
                 bench: Any = None) -> None:
        ray = import_ray()
        gpus = self._gpus(units)
        own = not ray.is_initialized()
        if own:
            self._init(ray)
        try:
            self._check_resources(ray, units, gpus, log=log, strict=self.address is None)
            self._run(ray, units, put, gpus, verbose=progress is not False, log=log)
        finally:
            if own:
                ray.shutdown()

    def _gpus(self, units: list[StudyUnit]) -> float:
        import torch

        devices = {torch.device(u.cfg.device) for u in units}
        cuda = any(d.type == "cuda" for d in devices)
        if any(d.type == "cuda" and d.index is not None for d in devices):
            raise UserError("with --backend ray pass --device cuda, without an index: Ray gives "
                            "each task its own GPU")
        if not cuda and self.gpus_per_task:
            raise UserError("--gpus-per-task needs --device cuda")
        return (1.0 if cuda else 0.0) if self.gpus_per_task is None else float(self.gpus_per_task)

    def _init(self, ray: Any) -> None:
        try:
            if self.address is not None:
                ray.init(address=self.address)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, include_dashboard=False)
        except ConnectionError as err:
            raise UserError(f"cannot reach the Ray cluster at --address {self.address} ({err}); "
                            "start it with `ray start --head`, or drop --address for a local "
                            "Ray") from None

    @staticmethod
    def _check_resources(ray: Any, units: list[StudyUnit], gpus: float, *,
                         log: Callable[[str], None], strict: bool) -> None:
        """Tasks that no node could run wait forever: refuse them in one line (``strict``: a
        local Ray), or say so in a note (a cluster, whose autoscaler may still add nodes)."""
        have = ray.cluster_resources()
        need_cpus = max(u.cfg.threads or 1 for u in units)
        problems = []
        if need_cpus > have.get("CPU", 0):
            problems.append(f"each task asks for {need_cpus} CPUs (--threads) but the Ray cluster "
                            f"has {have.get('CPU', 0):g}; lower --threads")
        if gpus > have.get("GPU", 0):
            problems.append(f"each task asks for {gpus:g} GPU but the Ray cluster has "
                            f"{have.get('GPU', 0):g}; start Ray on GPU machines, or use --device cpu")
        if problems and strict:
            raise UserError(problems[0])
        for line in problems:
            log(f"note: {line} (the tasks wait until the cluster has them)")

    def _run(self, ray: Any, units: list[StudyUnit], put: Callable[[str, Any], None],
             gpus: float, *, verbose: bool, log: Callable[[str], None]) -> None:
        task = ray.remote(run_unit)
        die_once = os.environ.get(DIE_ONCE_ENV)
        refs: dict[Any, StudyUnit] = {}
        for unit in units:
            folder = Path(unit.cfg.out).resolve() / unit.folder
            ref = task.options(num_cpus=unit.cfg.threads or 1, num_gpus=gpus,
                               max_retries=self.max_retries, retry_exceptions=False,
                               name=unit.folder).remote(unit, str(folder), verbose,
                                                        die_once == unit.key)
            refs[ref] = unit
            log(f"{unit.label}: submitted to Ray ({folder})")
        failed: list[tuple[StudyUnit, BaseException]] = []
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                unit = refs[ready[0]]
                try:
                    entry, info = ray.get(ready[0])
                except ray.exceptions.RayError as err:
                    failed.append((unit, _cause(ray, err)))
                    log(f"{unit.label}: failed: {_one_line(failed[-1][1])}")
                    continue
                put(unit.key, entry)
                resumed = (f", resumed from the checkpoint after epoch {info['resumed_from_epoch']}"
                           if info["resumed_from_epoch"] is not None else "")
                log(f"{unit.label}: done ({info['run_dir']}{resumed})")
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        if failed:
            unit, err = failed[0]
            if not isinstance(err, UserError):
                raise err
            raise UserError(f"{len(failed)} of {len(units)} units failed, the others are in the "
                            f"ledger; {unit.key}: {err}")


def _cause(ray: Any, err: BaseException) -> BaseException:
    """The exception a task raised (a mistake: a :class:`UserError` as it is), or a
    :class:`UserError` for a worker that kept dying."""
    if isinstance(err, ray.exceptions.RayTaskError):
        return err.cause if err.cause is not None else err
    if isinstance(err, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        return UserError(f"its worker died more often than --max-retries allows ({type(err).__name__}); "
                         "run the same command again to continue from its checkpoint")
    return err


def _one_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# ---------------------------------------------------------------------------------
# inside a task
# ---------------------------------------------------------------------------------
def run_unit(unit: StudyUnit, folder: str | Path, verbose: bool = False,
             die_once: bool = False) -> tuple[Any, dict[str, Any]]:
    """Run ``unit`` with its run directory in ``folder``, continuing from the checkpoint of
    an earlier attempt there (:func:`resumable_run`). Returns its ledger entry and
    ``{"run_dir", "resumed_from_epoch"}`` (None: a fresh run). ``verbose``: one line per
    epoch, prefixed with the unit's key. ``die_once``: see :data:`DIE_ONCE_ENV`."""
    from .threads import torch_threads

    folder = Path(folder)
    resume = resumable_run(folder, unit.cfg)
    info: dict[str, Any] = {"run_dir": None, "resumed_from_epoch": None}
    if resume is not None:
        info["resumed_from_epoch"] = int(RunDir(resume).load_checkpoint()["epoch"])
    cfg = copy.deepcopy(unit.cfg)
    cfg.out = str(folder)

    def say(line: str) -> None:
        if verbose:
            print(f"[{unit.key}] {line}", flush=True)

    with _dying_once(folder if die_once else None), torch_threads(cfg.threads or 1):
        entry = unit.work(cfg, *unit.args, progress=say if verbose else False, log=say,
                          bench=None, resume=resume)
    info["run_dir"] = str(resume if resume is not None else _runs_in(folder)[-1])
    return entry, info


def _runs_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and (d / "config.json").is_file())


def resumable_run(folder: str | Path, cfg: RunConfig) -> Path | None:
    """The run directory in a unit's ``folder`` to continue (the one with a checkpoint), or
    None. An earlier attempt that ended before its first checkpoint is removed (it holds
    no training); a run with other settings than ``cfg`` is a one-line :class:`UserError`."""
    found: list[Path] = []
    for d in _runs_in(Path(folder)):
        stored = config_from_dict(RunDir(d).read_json("config.json"), where=str(d / "config.json"))
        diffs = config_differences(stored, cfg)
        if diffs:
            raise UserError(f"{d} is a search with other settings ({', '.join(diffs[:4])}); "
                            f"sweep into another --out, or delete {folder}")
        if (d / "checkpoint.pt").is_file():
            found.append(d)
        else:
            shutil.rmtree(d)
    if len(found) > 1:
        raise UserError(f"{folder} holds {len(found)} runs of one unit ({', '.join(p.name for p in found)}); "
                        "delete all but one")
    return found[0] if found else None


@contextlib.contextmanager
def _dying_once(folder: Path | None) -> Iterator[None]:
    """With a ``folder`` and no :data:`DIED_MARKER` in it, end this process right after the
    first epoch's checkpoint is saved (fault injection for tests; a no-op otherwise)."""
    if folder is None or (folder / DIED_MARKER).exists():
        yield
        return
    original = RunDir.save_checkpoint

    def save_then_die(self: RunDir, state: dict[str, Any]) -> None:
        original(self, state)
        if state.get("epoch") == 1:
            (folder / DIED_MARKER).touch()
            os._exit(1)

    RunDir.save_checkpoint = save_then_die  # type: ignore[method-assign]
    try:
        yield
    finally:
        RunDir.save_checkpoint = original  # type: ignore[method-assign]
