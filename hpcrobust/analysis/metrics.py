"""The statistics behind the figures: intervals, smoothed logits, line fits, target compute, bootstrap.

Pure numpy, so each can be checked against numbers worked out by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


def wilson(k: np.ndarray | float, n: np.ndarray | float, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion k/n (NaN where n == 0)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        mid = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.clip(mid - half, 0, 1), np.clip(mid + half, 0, 1)


def laplace(k: np.ndarray | float, n: np.ndarray | float) -> np.ndarray:
    """(k+1)/(n+2): keeps ASR 0 and 1 finite on a logit scale."""
    return (np.asarray(k, dtype=np.float64) + 1) / (np.asarray(n, dtype=np.float64) + 2)


def logit10(p: np.ndarray | float) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(p / (1 - p))


@dataclass
class LineFit:
    slope: float
    intercept: float
    r2: float
    n: int


def ols(x: np.ndarray, y: np.ndarray) -> LineFit:
    """Least-squares line through the finite points; NaN slope with fewer than two distinct x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(x) == 0:
        return LineFit(np.nan, np.nan, np.nan, int(len(x)))
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    slope = ((x - xm) * (y - ym)).sum() / sxx
    intercept = ym - slope * xm
    ss_tot = ((y - ym) ** 2).sum()
    ss_res = ((y - intercept - slope * x) ** 2).sum()
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return LineFit(float(slope), float(intercept), float(r2), int(len(x)))


@dataclass
class TargetCompute:
    iteration: float  # fractional iteration at which ASR first reaches the target (NaN: never)
    flops: float  # cumulative attack FLOPs there, interpolated the same way
    never: bool  # the curve is defined but stays below the target


def target_compute(asr: np.ndarray, cum_flops: np.ndarray, target: float) -> TargetCompute:
    """Attack compute to reach `target` ASR, by linear interpolation between iterations.

    Iteration 0 (before any attack step) already at the target costs the setup FLOPs. A curve
    with undefined ASR (no example correct before the attack) is neither reached nor 'never'.
    """
    asr, cum = np.asarray(asr, dtype=np.float64), np.asarray(cum_flops, dtype=np.float64)
    if not len(asr) or not np.isfinite(asr).all():
        return TargetCompute(np.nan, np.nan, False)
    hit = np.nonzero(asr >= target)[0]
    if not len(hit):
        return TargetCompute(np.nan, np.nan, True)
    i = int(hit[0])
    if i == 0:
        return TargetCompute(0.0, float(cum[0]), False)
    frac = (target - asr[i - 1]) / (asr[i] - asr[i - 1])
    return TargetCompute(i - 1 + frac, float(cum[i - 1] + frac * (cum[i] - cum[i - 1])), False)


def _suff_stats(groups: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """[group, (n, Σx, Σy, Σxx, Σxy)] over each group's finite points."""
    out = np.zeros((len(groups), 5))
    for g, (x, y) in enumerate(groups):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        out[g] = (len(x), x.sum(), y.sum(), (x * x).sum(), (x * y).sum())
    return out


def bootstrap_slope(groups: list[tuple[np.ndarray, np.ndarray]], n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the pooled OLS slope, resampling whole groups (seeds) with replacement.

    Seeds, not points, are the independent units: points of one seed share its model. Each
    resample's fit comes from summed per-seed sufficient statistics, so 1000 resamples cost little.
    """
    stats = _suff_stats(groups)
    stats = stats[stats[:, 0] > 0]
    if len(stats) < 2:
        return np.nan, np.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(stats), size=(n_boot, len(stats)))
    counts = np.zeros((n_boot, len(stats)))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1)
    n, sx, sy, sxx, sxy = (counts @ stats).T
    with np.errstate(divide="ignore", invalid="ignore"):
        var = sxx - sx * sx / n
        slope = (sxy - sx * sy / n) / var
    slope = slope[np.isfinite(slope) & (var > 1e-12 * np.maximum(sxx, 1))]
    if len(slope) < n_boot // 2:
        return np.nan, np.nan
    lo, hi = np.quantile(slope, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def seed_summary(values: np.ndarray) -> tuple[float, float, float]:
    """(median, min, max) over seeds, ignoring NaN."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return np.nan, np.nan, np.nan
    return float(np.median(v)), float(v.min()), float(v.max())
