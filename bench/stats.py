"""Percentiles for latency samples.

``percentile`` interpolates linearly between closest ranks, the definition numpy
uses by default (``method="linear"``), so numbers here compare with numbers from
numpy-based tools. Pure Python: sorting n samples costs O(n log n), negligible
beside the thousands of timed calls that produced them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``; NaN when there are none."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    if not samples:
        return math.nan
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction
