"""Small statistics helpers (no numpy: the harness must not need more than the project does)."""

from __future__ import annotations

import math
from typing import Iterable


def _clean(values: Iterable[float | None]) -> list[float]:
    return sorted(float(v) for v in values if v is not None and not math.isnan(float(v)))


def percentile(values: Iterable[float | None], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), like numpy's default; None for no data."""
    data = _clean(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    return percentile(values, 50)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


def diff(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a - b


def summary(values: Iterable[float | None]) -> dict:
    data = _clean(values)
    return {
        "n": len(data),
        "median": median(data),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "min": data[0] if data else None,
        "max": data[-1] if data else None,
    }


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{suffix}"
