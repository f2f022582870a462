"""Statistics of the evaluation: per-scene means and paired bootstrap intervals over scenes.

The unit of the evaluation is the scene: its tracks share one picture and one set of captions,
so they are not independent draws. Every figure is first averaged within a scene (over its
takes and its tracks 2..k), and intervals come from resampling scenes, never tracks.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same figures give the same interval on every run
CONFIDENCE = 0.95
# Fewer scenes get no interval. A percentile bootstrap's interval is too narrow over few scenes:
# with no true difference (normal differences, 1,000-2,000 trials each), its 95 % interval left
# out 0 for 52 % of comparisons over 2 scenes, 17 % over 5, 10 % over 10, 8.9 % over 12, 7.9 % over
# 24 and 6.7 % over 48, against 5 % (a Student-t interval: 5 % from 2 scenes on).
MIN_INTERVAL_SCENES = 10


def finite_mean(values: Sequence[float | None]) -> float | None:
    """The mean of the finite values, or None when there are none."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def paired_bootstrap(a: Sequence[float | None], b: Sequence[float | None], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> dict:
    """The mean paired difference a − b over scenes and its percentile bootstrap interval:
    scenes are drawn with replacement `resamples` times, the mean difference of each draw is
    taken, and the interval runs between the (1 − confidence)/2 and (1 + confidence)/2
    quantiles of those means. `a[i]` and `b[i]` are the same scene; a scene whose value is
    missing or not finite on either side (or both) is left out of every pair, and `n` counts the
    pairs (metrics.summarize drops a missing value from its own row only). Returns {"mean_diff", "ci95": [lo, hi], "n": scenes}
    (None and [None, None] with no scene; [None, None] under MIN_INTERVAL_SCENES: resampling
    one scene says nothing about the next, and a few scenes give an interval far too narrow, so
    nothing is called significant there)."""
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs one value per scene on both sides, got {len(a)} and {len(b)}.")
    differences = np.asarray([float(x) - float(y) for x, y in zip(a, b)
                              if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)])
    n = int(differences.size)
    if n < MIN_INTERVAL_SCENES:
        return {"mean_diff": float(differences.mean()) if n else None, "ci95": [None, None], "n": n}
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = differences[draws].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"mean_diff": float(differences.mean()), "ci95": [float(low), float(high)], "n": n}


def bootstrap_mean(values: Sequence[float | None], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                   confidence: float = CONFIDENCE) -> dict:
    """The mean of one figure over scenes and its percentile bootstrap interval, drawn exactly
    as `paired_bootstrap` draws (a figure that is already a ratio or a difference within each
    scene). Returns {"mean", "ci95": [lo, hi], "n"}; a scene without a finite value is left out."""
    values = list(values)
    paired = paired_bootstrap(values, [0.0] * len(values), resamples, seed, confidence)
    return {"mean": paired["mean_diff"], "ci95": paired["ci95"], "n": paired["n"]}


def excludes_zero(comparison: dict) -> bool:
    """Whether an interval from `paired_bootstrap` lies entirely on one side of 0."""
    low, high = comparison["ci95"]
    return low is not None and (low > 0.0 or high < 0.0)


def shown_interval(mean: float | None, ci95, n: int) -> str:
    """A figure as a table shows it: "+0.123 [+0.100, +0.150]", "+0.123 [n = 5: no interval]"
    under MIN_INTERVAL_SCENES, "-" without a value."""
    if mean is None:
        return "-"
    low, high = ci95
    if low is None:
        return f"{mean:+.3f} [n = {n}: no interval]"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
