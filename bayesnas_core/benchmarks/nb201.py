"""NAS-Bench-201 ground truth: the embedded table, or the official benchmark file.

Two sources answer the same question, "how good is this cell after the benchmark's
200-epoch training, averaged over seeds?":

* :class:`NB201Table` reads the small table shipped in ``assets/nb201/`` (15,625 rows,
  4 of the 6 metrics; see ``assets/nb201/README.md``). CIFAR-100 valid and
  ImageNet16-120 valid are not in it and come back as ``None``, never as a guess.
* :class:`OfficialNB201` reads the official file (``NAS-Bench-201-v1_1-096897.pth`` or
  ``v1_0-e61699.pth``) through the official ``nas_201_api`` package, always with
  ``hp='200'``, the seed mean and the last epoch.

Both index cells in the NB201 order (the official ``meta_archs`` order).
"""

from __future__ import annotations

import contextlib
import csv
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Union

from ..errors import UserError
from ..paths import assets_dir
from ..runs import refused_global, load_plain
from ..spaces.nb201 import Arch

__all__ = [
    "METRICS",
    "TABLE_METRICS",
    "OFFICIAL_FILES",
    "GroundTruth",
    "NB201Table",
    "OfficialNB201",
    "open_benchmark",
    "missing_hint",
    "format_ground_truth",
]

#: The six ground-truth metrics (accuracy %, 200 epochs, seed mean), in report order.
METRICS: tuple[str, ...] = (
    "cifar10_valid",
    "cifar10_test",
    "cifar100_valid",
    "cifar100_test",
    "imagenet16_valid",
    "imagenet16_test",
)
#: The NB201 op vocabulary (the same tuple as ``bayesnas_core.spaces.OP_NAMES``).
#: The metrics the embedded table holds; the other two need the official file.
TABLE_METRICS: tuple[str, ...] = ("cifar10_valid", "cifar10_test", "cifar100_test", "imagenet16_test")
#: Official file names -> what they are.
OFFICIAL_FILES: dict[str, str] = {
    "NAS-Bench-201-v1_0-e61699.pth": "NAS-Bench-201 v1.0",
    "NAS-Bench-201-v1_1-096897.pth": "NAS-Bench-201 v1.1",
}
RECOMMENDED_FILE = "NAS-Bench-201-v1_1-096897.pth"
NUM_CELLS = 5 ** 6
TABLE_SOURCE = "embedded table (200 epochs, seed mean)"

_TABLE_HEADER = ["index", "arch_str", *TABLE_METRICS]
_LABELS = {
    "cifar10_valid": "CIFAR-10 valid (cifar10-valid, x-valid)",
    "cifar10_test": "CIFAR-10 test (cifar10, ori-test)",
    "cifar100_valid": "CIFAR-100 valid (x-valid)",
    "cifar100_test": "CIFAR-100 test (x-test)",
    "imagenet16_valid": "ImageNet16-120 valid (x-valid)",
    "imagenet16_test": "ImageNet16-120 test (x-test)",
}
# metric -> (official dataset name, key of get_more_info's answer). Read off
# nas_201_api/api_201.py get_more_info: for 'cifar10-valid' valid = 'x-valid'; for
# 'cifar10' test = 'ori-test'; for 'cifar100' / 'ImageNet16-120' valid = 'x-valid' and
# test = 'x-test' (their 'ori-test' is x-valid + x-test, reported as 'valtest').
_OFFICIAL_KEYS: dict[str, tuple[str, str]] = {
    "cifar10_valid": ("cifar10-valid", "valid-accuracy"),
    "cifar10_test": ("cifar10", "test-accuracy"),
    "cifar100_valid": ("cifar100", "valid-accuracy"),
    "cifar100_test": ("cifar100", "test-accuracy"),
    "imagenet16_valid": ("ImageNet16-120", "valid-accuracy"),
    "imagenet16_test": ("ImageNet16-120", "test-accuracy"),
}

ArchRef = Union[str, int]


@dataclass(frozen=True)
class GroundTruth:
    """The benchmark's numbers for one cell; a metric the source lacks is ``None``."""

    arch_str: str
    index: int
    metrics: dict[str, float | None]
    source: str

    def missing(self) -> list[str]:
        """The metrics this source could not give, in :data:`METRICS` order."""
        return [m for m in METRICS if self.metrics.get(m) is None]


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def _parse_arch(arch_str: Any) -> str:
    """Validate an arch string (UserError naming the format) and return it."""
    return str(Arch.parse(arch_str))


def _check_int_index(index: Any, n: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise UserError(f"an NB201 architecture is an index or an arch string, not {index!r}")
    if not 0 <= index < n:
        raise UserError(f"NB201 index {index} is out of range; use 0..{n - 1}")
    return index


def _argmax(values: list[float | None]) -> int:
    best, best_v = -1, -math.inf
    for i, v in enumerate(values):
        if v is not None and v > best_v:
            best, best_v = i, v
    return best


# ---------------------------------------------------------------------------------
# the embedded table
# ---------------------------------------------------------------------------------
class NB201Table:
    """The shipped 15,625-row table: 4 metrics, 200-epoch training, seed mean."""

    def __init__(self, arch_strs: list[str], columns: Mapping[str, list[float]], path: Path) -> None:
        self._arch_strs = list(arch_strs)
        self._index = {s: i for i, s in enumerate(self._arch_strs)}
        self._columns = {m: list(columns[m]) for m in TABLE_METRICS}
        self.path = path

    @classmethod
    def load(cls, path: Path | None = None) -> "NB201Table":
        """Read and check the table (default ``assets/nb201/nb201_200ep_4metrics.csv``)."""
        path = Path(path) if path is not None else assets_dir() / "nb201" / "nb201_200ep_4metrics.csv"
        fix = "restore it from the repository (assets/nb201/)"
        if not path.is_file():
            raise UserError(f"NB201 table not found at {path}; {fix} or set BAYESNAS_ASSETS")

        def corrupt(why: str) -> UserError:
            return UserError(f"NB201 table {path} is corrupt ({why}); {fix}")

        try:
            with path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise corrupt(type(err).__name__) from err
        if not rows or rows[0] != _TABLE_HEADER:
            raise corrupt(f"header is not {','.join(_TABLE_HEADER)}")
        body = rows[1:]
        if len(body) != NUM_CELLS:
            raise corrupt(f"{len(body)} rows instead of {NUM_CELLS}")
        arch_strs: list[str] = []
        columns: dict[str, list[float]] = {m: [] for m in TABLE_METRICS}
        for i, row in enumerate(body):
            if len(row) != len(_TABLE_HEADER) or row[0] != str(i):
                raise corrupt(f"row {i + 1} is malformed or out of index order")
            try:
                arch_strs.append(_parse_arch(row[1]))
            except UserError as err:
                raise corrupt(f"row {i + 1} has a bad arch string") from err
            for m, cell in zip(TABLE_METRICS, row[2:]):
                try:
                    v = float(cell)
                except ValueError as err:
                    raise corrupt(f"row {i + 1} {m} is not a number") from err
                if not 0.0 <= v <= 100.0:
                    raise corrupt(f"row {i + 1} {m}={cell} is not an accuracy in %")
                columns[m].append(v)
        if len(set(arch_strs)) != NUM_CELLS:
            raise corrupt("duplicate arch strings")
        return cls(arch_strs, columns, path)

    def __len__(self) -> int:
        return len(self._arch_strs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._arch_strs)

    def arch_str(self, index: int) -> str:
        """The arch string of the ``index``-th cell (NB201 order)."""
        return self._arch_strs[_check_int_index(index, len(self))]

    def index_of(self, arch_str: str) -> int:
        """The NB201 index of an arch string; UserError if it is malformed."""
        return self._index[_parse_arch(arch_str)]

    def _resolve(self, arch: ArchRef) -> int:
        return self.index_of(arch) if isinstance(arch, str) else _check_int_index(arch, len(self))

    def query(self, arch: ArchRef) -> GroundTruth:
        """Ground truth of one cell; ``cifar100_valid`` and ``imagenet16_valid`` are None."""
        i = self._resolve(arch)
        metrics: dict[str, float | None] = {
            m: (self._columns[m][i] if m in self._columns else None) for m in METRICS
        }
        return GroundTruth(self._arch_strs[i], i, metrics, TABLE_SOURCE)

    def column(self, metric: str) -> list[float]:
        """One metric for all cells, in index order."""
        _check_metric(metric)
        if metric not in self._columns:
            raise UserError(
                f"{metric} is not in the embedded table; pass --nb201-file {RECOMMENDED_FILE} to use it"
            )
        return list(self._columns[metric])

    def best(self, metric: str) -> GroundTruth:
        """The cell with the highest ``metric`` (the first one on ties)."""
        return self.query(_argmax(self.column(metric)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------
# the official file
# ---------------------------------------------------------------------------------
def _describe_file(name: str) -> str:
    if name in OFFICIAL_FILES:
        return OFFICIAL_FILES[name] + " benchmark file"
    return "NAS-Bench-201-format benchmark file (name not one of the official releases)"


def _numpy_safe_globals() -> list[Any]:
    """Numpy types a benchmark file written in 2020 may hold, for ``weights_only`` loads."""
    try:
        import numpy as np
    except ImportError:  # nas_201_api needs numpy, so this only guards odd installs
        return []
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct]
    allowed += sorted({type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"}, key=str)
    # Files pickled under numpy 1.x name these numpy.core.*; numpy 2 moved them.
    allowed += [
        (core.multiarray.scalar, "numpy.core.multiarray.scalar"),
        (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    ]
    return allowed


def _safe_globals() -> contextlib.AbstractContextManager[Any]:
    import torch

    ctx = getattr(torch.serialization, "safe_globals", None)
    return ctx(_numpy_safe_globals()) if ctx is not None else contextlib.nullcontext()


def _first_line(err: BaseException) -> str:
    """A short, single-line reason for a failed load (torch's advice text left out)."""
    refused = refused_global(err) if isinstance(err, pickle.UnpicklingError) else None
    if refused:  # a weights_only refusal: say what was refused (nothing was run)
        return f"not a plain-data torch file: it holds {refused}, which was refused and not run"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]


def _fmt_gb(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 0.1 else "under 0.1 GB"


class _Shared(dict):
    """A dict that ``copy.deepcopy`` returns as is: ``NASBench201API`` deep-copies a dict
    it is given, which would hold the multi-GB benchmark twice in memory."""

    def __deepcopy__(self, memo: dict) -> "_Shared":
        return self


class OfficialNB201:
    """The official NAS-Bench-201 file, read by ``nas_201_api``; queries are hp=200 seed means."""

    def __init__(self, api: Any, name: str) -> None:
        self.api = api
        self.name = name
        self._columns: dict[str, list[float | None]] = {}

    @property
    def source(self) -> str:
        return f"official file {self.name} (hp=200, seed mean)"

    @classmethod
    def load(
        cls, path_or_dict: str | Path | dict, *, log: Callable[[str], Any] = print
    ) -> "OfficialNB201":
        """Load the official file (a path) or its already-loaded dict."""
        from nas_201_api import NASBench201API

        if isinstance(path_or_dict, dict):
            try:
                api = NASBench201API(_Shared(path_or_dict), verbose=False)
            except (AssertionError, KeyError, TypeError, ValueError, AttributeError) as err:
                raise UserError(
                    f"the dict is not in the NAS-Bench-201 format ({_first_line(err)}); "
                    f"pass the official {RECOMMENDED_FILE} as --nb201-file"
                ) from err
            return cls(api, "(in-memory dict)")

        path = Path(path_or_dict).expanduser()
        name = path.name
        if name.startswith("NATS-"):
            raise UserError(
                f"{name} is a NATS-Bench file, which nas_201_api cannot read; "
                f"pass --nb201-file {RECOMMENDED_FILE} (or NAS-Bench-201-v1_0-e61699.pth)"
            )
        if not path.is_file():
            raise UserError(
                f"NAS-Bench-201 file not found: {path}; download {RECOMMENDED_FILE} and pass its path "
                "as --nb201-file (or leave --nb201-file out to use the embedded table)"
            )
        gb = path.stat().st_size / 1e9
        ram = f"roughly {_fmt_gb(2 * gb)} to {_fmt_gb(3 * gb)}" if gb >= 0.1 else "under 0.3 GB"
        log(
            f"Loading {_describe_file(name)} {name} ({_fmt_gb(gb)}): loading needs {ram} of free RAM "
            "(2-3x the file size) and can take minutes."
        )
        fix = f"download {RECOMMENDED_FILE} again and pass it as --nb201-file"
        try:
            # Loaded here as plain data (weights_only=True on every torch version, numpy's
            # plain types allowed): nas_201_api's own torch.load would unpickle anything on
            # torch < 2.6. The API then gets the dict, without its deep copy.
            with _safe_globals():
                data = load_plain(path)
            if not isinstance(data, dict):
                raise TypeError(f"the file holds a {type(data).__name__}, not a dict")
            api = NASBench201API(_Shared(data), verbose=False)
            api.filename = name
            del data
        except MemoryError as err:
            raise UserError(
                f"ran out of memory loading {name}; it needs about {_fmt_gb(3 * gb)} of free RAM "
                "(or leave --nb201-file out to use the embedded table)"
            ) from err
        except (
            pickle.UnpicklingError,
            RuntimeError,
            EOFError,
            OSError,
            AssertionError,
            KeyError,
            ValueError,
            TypeError,
            AttributeError,
            ImportError,
        ) as err:
            raise UserError(f"cannot read {path} as a NAS-Bench-201 file ({_first_line(err)}); {fix}") from err
        return cls(api, name)

    def __len__(self) -> int:
        return len(self.api.meta_archs)

    def arch_str(self, index: int) -> str:
        """The arch string of the ``index``-th cell (NB201 order)."""
        return self.api.meta_archs[_check_int_index(index, len(self))]

    def index_of(self, arch_str: str) -> int:
        """The NB201 index of an arch string; UserError if malformed or not in the file."""
        s = _parse_arch(arch_str)
        index = self.api.query_index_by_arch(s)
        if index < 0:
            raise UserError(f"{s} is not in {self.name}; is it a NAS-Bench-201 benchmark file?")
        return int(index)

    def _resolve(self, arch: ArchRef) -> int:
        return self.index_of(arch) if isinstance(arch, str) else _check_int_index(arch, len(self))

    def _dataset_info(self, index: int, dataset: str) -> dict[str, Any] | None:
        # EXPLICIT arguments: the API's defaults are hp='12' (the 12-epoch schedule) and
        # is_random=True (one randomly chosen seed) -- the most common source of wrong
        # NB201 numbers. We want the 200-epoch schedule, the mean over all seeds, and the
        # last epoch (iepoch=None).
        try:
            return self.api.get_more_info(index, dataset, iepoch=None, hp="200", is_random=False)
        except KeyError:  # this dataset was not trained for this cell in this file
            return None

    def _evaluated(self, index: int) -> bool:
        return index in self.api.arch2infos_dict

    def query(self, arch: ArchRef) -> GroundTruth:
        """Ground truth of one cell: hp=200, seed mean, last epoch, all six metrics."""
        i = self._resolve(arch)
        if not self._evaluated(i):
            raise UserError(f"cell {i} has no results in {self.name}; pick another cell or file")
        infos: dict[str, dict[str, Any] | None] = {}
        metrics: dict[str, float | None] = {}
        for m in METRICS:
            dataset, key = _OFFICIAL_KEYS[m]
            if dataset not in infos:
                infos[dataset] = self._dataset_info(i, dataset)
            info = infos[dataset]
            value = None if info is None else info.get(key)
            metrics[m] = None if value is None else float(value)
        return GroundTruth(self.api.meta_archs[i], i, metrics, self.source)

    def column(self, metric: str) -> list[float | None]:
        """One metric for all cells, in index order (None where the file has no result)."""
        _check_metric(metric)
        if metric not in self._columns:
            dataset, key = _OFFICIAL_KEYS[metric]
            values: list[float | None] = []
            for i in range(len(self)):
                info = self._dataset_info(i, dataset) if self._evaluated(i) else None
                value = None if info is None else info.get(key)
                values.append(None if value is None else float(value))
            self._columns[metric] = values
        return list(self._columns[metric])

    def best(self, metric: str) -> GroundTruth:
        """The cell with the highest ``metric`` (the first one on ties)."""
        i = _argmax(self.column(metric))
        if i < 0:
            raise UserError(f"{self.name} has no {metric} results; pass the official {RECOMMENDED_FILE}")
        return self.query(i)


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------
def open_benchmark(
    nb201_file: str | Path | None = None, *, log: Callable[[str], Any] = print
) -> NB201Table | OfficialNB201:
    """The official file when one is given, else the embedded table."""
    if nb201_file is None or str(nb201_file) == "":
        return NB201Table.load()
    return OfficialNB201.load(nb201_file, log=log)


def missing_hint(gt: GroundTruth) -> str | None:
    """One line saying which metrics are missing and how to get them; None if none are."""
    missing = gt.missing()
    if not missing:
        return None
    if gt.source == TABLE_SOURCE:
        return (
            f"{', '.join(missing)}: not in the embedded table; "
            f"pass --nb201-file {RECOMMENDED_FILE} to fill them"
        )
    return f"{', '.join(missing)}: not in the {gt.source} for this cell"


def format_ground_truth(gt: GroundTruth) -> str:
    """A header line, then one line per metric ('missing' where the source has none)."""
    width = max(len(v) for v in _LABELS.values())
    lines = [f"NB201 cell {gt.index} {gt.arch_str} -- {gt.source}"]
    for m in METRICS:
        v = gt.metrics.get(m)
        lines.append(f"  {_LABELS[m]:<{width}}  {'missing' if v is None else f'{v:.4f} %'}")
    return "\n".join(lines)
