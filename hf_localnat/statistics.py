"""The statistics of the report and of :func:`hf_localnat.selection.rank_teachers`, on top of ``scipy.stats``.

- :func:`average_ranks`: ``scipy.stats.rankdata`` (ties share the mean rank).
- :func:`kendall_tau_b`, :func:`spearman`: ``scipy.stats.kendalltau`` (tau-b) and ``scipy.stats.spearmanr``,
  with the report's conventions: pairs with a NaN are dropped, and an undefined value (fewer than 2 pairs, a
  constant input) is None, not NaN with a warning.
- :func:`within_group_spearman`: the mean of the Spearman correlations inside each group (prompt).
- :func:`auroc`: the rank-based AUROC, Mann-Whitney U / (n+ n-), a tie counting 1/2.
- :func:`bootstrap_mean_ci`: the percentile bootstrap CI of a mean, resampled by ``scipy.stats.bootstrap``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.stats

MIN_ROWS_PER_GROUP = 3  # within-group Spearman needs at least this many rows in a group
# Resampled values held in memory at once. The resamples are drawn in chunks of this many values, and the
# chunking fixes the random stream: changing it changes every published CI.
BOOTSTRAP_CHUNK_VALUES = 4_000_000

ArrayLike = Sequence[float] | np.ndarray


def average_ranks(values: ArrayLike) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing the mean of the ranks they span (``scipy.stats.rankdata``).

    A NaN ranks after every number, each NaN on its own rank in order of appearance (as ``np.argsort``
    orders them), so the result never has a NaN.

    Example:
        >>> average_ranks([10.0, 30.0, 20.0, 30.0]).tolist()
        [1.0, 3.5, 2.0, 3.5]
        >>> average_ranks([2.0, float("nan"), 1.0, float("nan")]).tolist()
        [2.0, 3.0, 1.0, 4.0]
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    nan = np.isnan(x)
    ranks = np.empty(x.size, dtype=np.float64)
    # rankdata would make every rank NaN; ranking the numbers alone keeps them as they were ranked before.
    ranks[~nan] = scipy.stats.rankdata(x[~nan], method="average")
    ranks[nan] = np.arange(x.size - nan.sum() + 1, x.size + 1, dtype=np.float64)
    return ranks


def _finite_pairs(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"x and y differ in length ({a.size} != {b.size}).")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _undefined(a: np.ndarray, b: np.ndarray) -> bool:
    """Fewer than 2 pairs, or a constant side: scipy would warn and return NaN."""
    return a.size < 2 or bool(np.all(a == a[0])) or bool(np.all(b == b[0]))


def kendall_tau_b(x: ArrayLike, y: ArrayLike) -> float | None:
    """Kendall's tau-b of two paired samples (ties in either corrected for); None when undefined.

    Pairs with a NaN (or an infinity) are dropped. Undefined with fewer than 2 pairs or when ``x`` or ``y`` is
    constant. ``scipy.stats.kendalltau``: O(n log n).

    Example:
        >>> kendall_tau_b([1, 2, 3], [1, 2, 3]), kendall_tau_b([1, 2, 3], [3, 2, 1])
        (1.0, -1.0)
        >>> round(kendall_tau_b([1, 2, 3], [1, 1, 2]), 4)  # 2 concordant, 1 tie in y: 2 / sqrt(3 * 2)
        0.8165
        >>> kendall_tau_b([1, 1, 1], [1, 2, 3]) is None
        True
    """
    a, b = _finite_pairs(x, y)
    if _undefined(a, b):
        return None
    return float(scipy.stats.kendalltau(a, b, variant="b").statistic)


def spearman(x: ArrayLike, y: ArrayLike) -> float | None:
    """Spearman's rank correlation (Pearson's r of average ranks); None when undefined.

    Pairs with a NaN (or an infinity) are dropped. Undefined with fewer than 2 pairs or when ``x`` or ``y`` is
    constant. ``scipy.stats.spearmanr``.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), round(spearman([1, 2, 3], [3, 1, 2]), 12)
        (1.0, -0.5)
        >>> spearman([1, 2, float("nan")], [5, 5, 1]) is None  # the NaN pair dropped, y is then constant
        True
    """
    a, b = _finite_pairs(x, y)
    if _undefined(a, b):
        return None
    return float(np.clip(scipy.stats.spearmanr(a, b).statistic, -1.0, 1.0))


def within_group_spearman(
    groups: Sequence | np.ndarray,
    x: ArrayLike,
    y: ArrayLike,
    min_rows: int = MIN_ROWS_PER_GROUP,
) -> tuple[float | None, int]:
    """Mean over groups of the Spearman correlation within each group, and how many groups it averages.

    Rows with a NaN are dropped first. A group counts when it has at least ``min_rows`` rows and neither
    ``x`` nor ``y`` is constant within it. Returns ``(None, 0)`` when no group counts.

    Example:
        >>> within_group_spearman(["a"] * 3 + ["b"] * 3 + ["c"] * 2, [1, 2, 3, 1, 2, 3, 1, 2],
        ...                       [1, 2, 3, 3, 1, 2, 5, 6])
        (0.25, 2)
    """
    # One grouped pass (within-group ranks, then Pearson sums per group), not a spearmanr call per group:
    # on 7,500 prompts that loop takes ~2 s per metric and length, this pass ~40 ms. Same value per group.
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    frame = pd.DataFrame({"g": pd.Series(list(groups))[keep].to_numpy(), "x": a[keep], "y": b[keep]})
    frame = frame[frame.groupby("g")["x"].transform("size") >= min_rows]
    if frame.empty:
        return None, 0
    by_group = frame.groupby("g")
    rx, ry = by_group["x"].rank(method="average"), by_group["y"].rank(method="average")
    dx = rx - rx.groupby(frame["g"]).transform("mean")
    dy = ry - ry.groupby(frame["g"]).transform("mean")
    sums = pd.DataFrame({"g": frame["g"], "xy": dx * dy, "xx": dx * dx, "yy": dy * dy}).groupby("g").sum()
    counted = (sums["xx"] > 0) & (sums["yy"] > 0)
    if not counted.any():
        return None, 0
    rho = sums.loc[counted, "xy"] / np.sqrt(sums.loc[counted, "xx"] * sums.loc[counted, "yy"])
    return float(np.clip(rho, -1.0, 1.0).mean()), int(counted.sum())


def auroc(positives: ArrayLike, negatives: ArrayLike) -> float | None:
    """Area under the ROC curve of a score that should be higher for positives (Mann-Whitney U / n+ n-).

    The probability that a random positive outscores a random negative, a tie counting 1/2: U from the
    average ranks (``scipy.stats.rankdata``) of the pooled scores. NaNs are dropped; None when either side
    is empty.

    Example:
        >>> auroc([3.0, 2.0], [1.0, 2.0])  # pairs: 3>1, 3>2, 2>1, 2=2 -> (3 + 0.5) / 4
        0.875
        >>> auroc([1.0], []) is None
        True
    """
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if pos.size == 0 or neg.size == 0:
        return None
    ranks = scipy.stats.rankdata(np.concatenate([pos, neg]), method="average")
    u = float(ranks[: pos.size].sum()) - pos.size * (pos.size + 1) / 2.0
    return u / (pos.size * neg.size)


def bootstrap_mean_ci(
    values: ArrayLike, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values``: ``n_bootstrap`` resamples with replacement.

    ``scipy.stats.bootstrap`` draws the resamples from a fresh ``numpy.random.default_rng(seed)``, in
    batches of at most :data:`BOOTSTRAP_CHUNK_VALUES` values (the draws of hf_localnat 0.1, so its CIs are
    reproduced exactly). The interval is ``numpy.percentile`` of the resampled means, as before: scipy's own
    ``confidence_interval`` interpolates with another formula and can differ in the last digit. One value
    gives the interval ``(value, value)``.

    Example:
        >>> low, high = bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0], n_bootstrap=2000, seed=0)
        >>> bool(1.0 <= low < 2.5 < high <= 4.0)
        True
        >>> bootstrap_mean_ci([2.5], n_bootstrap=10)
        (2.5, 2.5)
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value.")
    if n == 1:
        means = np.full(n_bootstrap, x[0])  # scipy refuses one observation; every resample is that value
    else:
        with warnings.catch_warnings():
            if n_bootstrap < 2:
                # scipy's standard error of one resample divides by zero degrees of freedom; it is not used.
                warnings.simplefilter("ignore", RuntimeWarning)
            result = scipy.stats.bootstrap(
                (x,),
                np.mean,
                n_resamples=n_bootstrap,
                batch=max(1, BOOTSTRAP_CHUNK_VALUES // n),
                vectorized=True,
                confidence_level=confidence,
                method="percentile",
                random_state=np.random.default_rng(seed),
            )
        means = result.bootstrap_distribution
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)
