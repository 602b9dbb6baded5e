"""Latency statistics, trtexec-style: percentiles, the summary of a list of milliseconds, and the
warning for an unstable measurement. Shared by `edgecxr bench` and the orientation gate's own timing,
which `bench` reports (so neither imports the other for them)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: warn when the coefficient of variation of a latency exceeds this (percent), as trtexec does
CV_WARN_PCT = 2.5
PERCENTILES = (90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between order statistics (numpy's default).

    Written out rather than calling np.percentile so the definition in the JSON is unambiguous and
    tested; it matches np.percentile(values, q, method="linear").
    """
    if not len(values):
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    data = sorted(float(v) for v in values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """trtexec-style summary of a list of milliseconds; empty input gives {}."""
    if not len(values):
        return {}
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std())
    out = {
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": mean,
        "median": percentile(values, 50),
    }
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    out["std"] = std
    # the coefficient of variation (std / mean); the key keeps trtexec's name for it
    out["coefficient_of_variance_pct"] = 100.0 * std / mean if mean > 0 else 0.0
    return {k: round(v, 4) for k, v in out.items()}


def stability_warnings(name: str, stats: dict[str, float], threshold: float = CV_WARN_PCT) -> list[str]:
    cv = stats.get("coefficient_of_variance_pct")
    if cv is not None and cv > threshold:
        return [
            f"{name} is unstable: coefficient of variation {cv:.1f}% > {threshold}% "
            "(close other programs, check thermal throttling, or run more iterations and a longer warm-up)"
        ]
    return []
