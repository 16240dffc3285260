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
import platform
import random
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
    "environment_info",
    "seed_everything",
]

CHECKPOINT = "checkpoint.pt"


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) from one seed."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    if dev.type == "cuda" and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = platform.processor() or platform.machine()
    return info


class RunDir:
    """A run's folder on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- creation -----------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, name: str, config: dict[str, Any],
               env: dict[str, Any] | None = None) -> "RunDir":
        """Make a fresh run folder ``root/name`` (suffixed if taken) with config and env."""
        root = Path(root)
        path = root / name
        k = 1
        while path.exists():
            k += 1
            path = root / f"{name}-{k}"
        path.mkdir(parents=True)
        run = cls(path)
        run.write_json("config.json", config)
        run.write_json("env.json", env if env is not None else environment_info())
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """Open an existing run folder (for ``--resume``)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"no run directory at {path} (config.json missing); "
                            "pass --resume the folder a previous run printed")
        return cls(path)

    # -- files --------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> Path:
        atomic_write_json(self.path / name, obj)
        return self.path / name

    def read_json(self, name: str) -> Any:
        p = self.path / name
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            raise UserError(f"{p} is missing; the run directory is incomplete") from None
        except json.JSONDecodeError:
            raise UserError(f"{p} is not valid JSON; the run directory is corrupt") from None

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with ``records`` (one line each), atomically."""
        text = "".join(json.dumps(r, default=_json_default) + "\n" for r in records)
        atomic_write_bytes(self.path / "metrics.jsonl", text.encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    # -- checkpoints ----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Save ``state`` with ``torch.save``, atomically."""
        import io

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any]:
        """Load the checkpoint; missing or corrupt raises a one-line :class:`UserError`."""
        p = self.checkpoint_path
        if not p.is_file():
            raise UserError(f"no checkpoint in {self.path}; the run stopped before its first "
                            "epoch ended: start it again without --resume")
        try:
            state = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as err:  # torch raises many types for a damaged file
            raise UserError(f"checkpoint {p} is corrupt ({type(err).__name__}); delete it and "
                            "start the run again without --resume") from None
        if not isinstance(state, dict) or "epoch" not in state:
            raise UserError(f"checkpoint {p} is not a bayesnas checkpoint; start the run again "
                            "without --resume")
        return state
