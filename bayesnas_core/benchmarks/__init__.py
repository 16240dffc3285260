"""Benchmarks: NAS-Bench-201 ground truth from the embedded table or the official file."""

from .nb201 import (
    METRICS,
    OFFICIAL_FILES,
    TABLE_METRICS,
    GroundTruth,
    NB201Table,
    OfficialNB201,
    format_ground_truth,
    missing_hint,
    open_benchmark,
)

__all__ = [
    "METRICS",
    "OFFICIAL_FILES",
    "TABLE_METRICS",
    "GroundTruth",
    "NB201Table",
    "OfficialNB201",
    "format_ground_truth",
    "missing_hint",
    "open_benchmark",
]
