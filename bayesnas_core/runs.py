"""The run directory: config, versions, metrics, histories, checkpoints, results.

Layout of a run directory::

    config.json        asdict(RunConfig)
    env.json           versions, git commit, device, command line
    metrics.jsonl      one JSON object per epoch
    history.json       mu and sigma of every edge after every epoch
    checkpoint.pt      everything needed to resume (written atomically every epoch)
    result.json        the final result

Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

__all__ = [
    "RunDir",
    "atomic_write_bytes",
    "atomic_write_json",
    "cpu_model",
    "environment_info",
    "load_plain",
    "refused_global",
    "seed_everything",
]

CHECKPOINT = "checkpoint.pt"


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) from one seed."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def _umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


#: Temporary files of :func:`atomic_write_bytes` (``.NAME.RANDOM.tmp``)
TMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the permissions the user's umask gives
    a new file (``mkstemp`` alone would make it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def environment_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Versions, git commit, platform and device of this process."""
    import torchvision

    from . import __version__

    info: dict[str, Any] = {
        "bayesnas": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "argv": sys.argv,
        "git": _git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    dev = torch.device(device) if device is not None else torch.device("cpu")
    info["torch_device"] = str(dev)
    info["cpu"] = cpu_model()
    if dev.type == "cuda" and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = info["cpu"]
    return info


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                name = line.split(":", 1)[1].strip()
                if name:
                    return f"{name} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


class RunDir:
    """A run's folder on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- creation -----------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, name: str, config: dict[str, Any],
               env: dict[str, Any] | None = None) -> "RunDir":
        """Make a fresh run folder ``root/name`` (the next free suffix if taken, also when
        another process takes it at the same moment) with config and env."""
        root = Path(root)
        k = 1
        while True:
            path = root / (name if k == 1 else f"{name}-{k}")
            try:
                root.mkdir(parents=True, exist_ok=True)
                path.mkdir()
                break
            except FileExistsError:
                if not root.is_dir():
                    raise UserError(f"--out {root} is a file, not a folder; pass --out a folder") from None
                k += 1
            except OSError as err:
                raise UserError(f"cannot create a run directory in {root} ({_os_reason(err)}); "
                                "pass --out a writable folder") from None
        run = cls(path)
        try:
            run.write_json("config.json", config)
            run.write_json("env.json", env if env is not None else environment_info())
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # leave no half-made folder behind
            raise
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """Open an existing run folder (for ``--resume``)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"no run directory at {path} (config.json missing); "
                            "pass --resume the folder a previous run printed")
        run = cls(path)
        run.remove_stale_temp_files()
        return run

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temporary files a killed atomic write left behind (one process owns a
        run directory at a time, so none of them is being written now)."""
        removed = []
        for p in self.path.iterdir():
            if p.is_file() and TMP_PATTERN.match(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    # -- files --------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> Path:
        with _writing(self.path / name):
            atomic_write_json(self.path / name, obj)
        return self.path / name

    def read_json(self, name: str) -> Any:
        p = self.path / name
        try:
            return json.loads(p.read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise UserError(f"{p} is missing; the run directory is incomplete") from None
        except json.JSONDecodeError:
            raise UserError(f"{p} is not valid JSON; the run directory is corrupt") from None

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with ``records`` (one line each), atomically."""
        text = "".join(json.dumps(r, default=_json_default) + "\n" for r in records)
        with _writing(self.path / "metrics.jsonl"):
            atomic_write_bytes(self.path / "metrics.jsonl", text.encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        try:
            return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise UserError(f"{p} is not valid JSON lines; the run directory is corrupt") from None

    # -- checkpoints ----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Save ``state`` with ``torch.save``, atomically."""
        import io

        buf = io.BytesIO()
        torch.save(state, buf)
        with _writing(self.checkpoint_path):
            atomic_write_bytes(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any]:
        """Load the checkpoint as plain data (``weights_only=True``: tensors, numbers,
        strings and containers; nothing in the file is executed). Missing, corrupt or
        foreign raises a one-line :class:`UserError`."""
        p = self.checkpoint_path
        if not p.is_file():
            raise UserError(f"no checkpoint in {self.path}; the run stopped before its first "
                            "epoch ended: start it again without --resume")
        try:
            state = load_plain(p)
        except pickle.UnpicklingError as err:
            if refused_global(err):
                raise UserError(f"checkpoint {p} holds code or objects a bayesnas checkpoint never "
                                f"holds ({refused_global(err)}); nothing from it was run: delete "
                                "it and start the run again without --resume") from None
            raise UserError(f"checkpoint {p} is corrupt (UnpicklingError); delete it and "
                            "start the run again without --resume") from None
        except Exception as err:  # torch raises many types for a damaged file
            raise UserError(f"checkpoint {p} is corrupt ({type(err).__name__}); delete it and "
                            "start the run again without --resume") from None
        if not isinstance(state, dict) or "epoch" not in state:
            raise UserError(f"checkpoint {p} is not a bayesnas checkpoint; start the run again "
                            "without --resume")
        return state


def load_plain(path: str | Path | Any, **kw: Any) -> Any:
    """``torch.load`` with ``weights_only=True`` on every torch version: tensors, numbers,
    strings and containers only (plus ``safe_globals`` the caller allows in a
    ``torch.serialization.safe_globals`` block); a pickled object or call is refused with
    ``pickle.UnpicklingError`` and never run."""
    return torch.load(path, map_location="cpu", weights_only=True, **kw)


def refused_global(err: BaseException) -> str | None:
    """The global a ``weights_only`` load refused (e.g. ``GLOBAL posix.system``): what a
    file needs to run code. None for any other failure (a damaged file)."""
    m = re.search(r"unsupported (?:global:? ?)?(GLOBAL [\w.]+)", str(err), re.IGNORECASE)
    return m.group(1) if m else None


def _os_reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


class _writing:
    """Turn an ``OSError`` while writing ``path`` (full disk, read-only folder, a file
    where a folder should be) into a one-line :class:`UserError`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, err: Any, tb: Any) -> bool:
        if isinstance(err, OSError):
            raise UserError(f"cannot write {self.path} ({_os_reason(err)}); free disk space or "
                            "make the folder writable, then run the command again") from None
        return False
