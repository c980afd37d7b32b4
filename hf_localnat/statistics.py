"""The statistics of the report and of :func:`hf_localnat.selection.rank_teachers`, on top of ``scipy.stats``.

- :func:`average_ranks`: ``scipy.stats.rankdata`` (ties share the mean rank).
- :func:`kendall_tau_b`, :func:`spearman`: ``scipy.stats.kendalltau`` (tau-b) and ``scipy.stats.spearmanr``,
  with the report's conventions: pairs with a NaN are dropped, and an undefined value (fewer than 2 pairs, a
  constant input) is None, not NaN with a warning.
- :func:`within_group_spearman`: the mean of the Spearman correlations inside each group (prompt).
- :func:`auroc`: the rank-based AUROC, Mann-Whitney U / (n+ n-), a tie counting 1/2.
- :func:`bootstrap_mean_ci`: the percentile bootstrap CI of a mean, resampled by ``scipy.stats.bootstrap``.
- The paired bootstrap over prompts (one resample of prompt indices shared by every teacher and metric, drawn
  by :func:`bootstrap_counts` exactly as :func:`bootstrap_mean_ci` draws, and applied as count-matrix products):
  :func:`p_top` (the probability that each teacher ranks first), :func:`resampled_means`,
  :func:`bootstrap_ratio_ci` (RSR's mean rank / mean surprisal), :func:`kendall_tau_b_rows` (tau-b of many
  small rankings at once) and :func:`binary_kendall_tau_b_ci` (tau-b of a score with correctness, prompts
  resampled), with :func:`percentile_ci`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

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


# ----------------------------------------------------------------------------------------------------------
# Paired bootstrap over prompts: one resample of prompt indices shared by every teacher and every metric
# ----------------------------------------------------------------------------------------------------------

RATIO_FLOOR = 1e-12  # a ratio's denominator is floored here, as rsr_cal.py floors its summed surprisal
TIE_TOLERANCE = 1e-12  # values this close (relative to the larger) tie: one sum read in two orders can differ


def bootstrap_counts(n: int, n_bootstrap: int, seed: int = 0) -> Iterator[np.ndarray]:
    """How often each of ``n`` items is drawn in each of ``n_bootstrap`` resamples with replacement, in chunks.

    The draws are those of :func:`bootstrap_mean_ci`: a fresh ``numpy.random.default_rng(seed)``, then
    ``rng.integers(0, n, size=(size, n))`` for consecutive chunks of ``size = max(1, BOOTSTRAP_CHUNK_VALUES // n)``
    resamples (the last chunk smaller). Each chunk is yielded as a float64 ``(size, n)`` matrix whose row ``b``
    counts how often each item is in resample ``b``, so a statistic of every resample is a matrix product.
    The buffer is reused between chunks: copy a chunk to keep it.

    Example:
        >>> chunks = list(bootstrap_counts(3, 2, seed=0))
        >>> [c.shape for c in chunks], chunks[0].sum(axis=1).tolist()
        ([(2, 3)], [3.0, 3.0])
        >>> indices = np.random.default_rng(0).integers(0, 3, size=(2, 3))  # the same draws, as indices
        >>> bool((np.stack([np.bincount(row, minlength=3) for row in indices]) == chunks[0]).all())
        True
    """
    if n < 1:
        raise ValueError("bootstrap_counts needs at least one item.")
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CHUNK_VALUES // n)
    buffer = np.empty((min(chunk, n_bootstrap), n), dtype=np.float64)
    for start in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - start)
        indices = rng.integers(0, n, size=(size, n))
        counts = buffer[:size]
        for row, drawn in zip(counts, indices, strict=True):
            row[:] = np.bincount(drawn, minlength=n)
        yield counts


def resampled_means(counts: np.ndarray, table: np.ndarray, denominator: np.ndarray | None = None) -> np.ndarray:
    """Each column's statistic in each resample: ``counts`` (resamples x rows) weighting ``table`` (rows x columns).

    Without ``denominator``: the mean of a column's non-NaN entries over the resampled rows (a row drawn twice
    counts twice). With it (same shape): the ratio ``sum(table) / sum(denominator)`` over the resampled rows
    where both are non-NaN, the denominator sum floored at :data:`RATIO_FLOOR`. NaN where a column has no
    entry among a resample's rows.

    Example:
        >>> table = np.array([[1.0, np.nan], [3.0, 4.0]])
        >>> resampled_means(np.array([[2.0, 0.0], [1.0, 1.0]]), table).tolist()
        [[1.0, nan], [2.0, 4.0]]
        >>> resampled_means(np.array([[1.0, 1.0]]), table, denominator=np.array([[2.0, 1.0], [2.0, 1.0]])).tolist()
        [[1.0, 4.0]]
    """
    values = np.asarray(table, dtype=np.float64)
    present = ~np.isnan(values)
    if denominator is not None:
        below = np.asarray(denominator, dtype=np.float64)
        if below.shape != values.shape:
            raise ValueError(f"denominator has shape {below.shape}, table {values.shape}.")
        present &= ~np.isnan(below)
    weights = np.asarray(counts, dtype=np.float64)
    answered = weights @ present.astype(np.float64)
    above = weights @ np.where(present, values, 0.0)
    out = np.full(above.shape, np.nan)
    seen = answered > 0
    if denominator is None:
        np.divide(above, answered, out=out, where=seen)
    else:
        floor = np.maximum(weights @ np.where(present, below, 0.0), RATIO_FLOOR)
        np.divide(above, floor, out=out, where=seen)
    return out


def best_shares(stats: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Per row of ``stats`` (resamples x teachers): 1 for the best column, ties (within :data:`TIE_TOLERANCE`,
    relative) sharing it evenly, 0 for the others and for NaN; a row of NaN gives all zeros.

    Example:
        >>> best_shares(np.array([[1.0, 2.0, 2.0], [3.0, np.nan, 1.0], [np.nan, np.nan, np.nan]]), True).tolist()
        [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    good = np.asarray(stats, dtype=np.float64)
    good = good if higher_is_better else -good
    defined = ~np.isnan(good)
    filled = np.where(defined, good, -np.inf)
    best = filled.max(axis=1, keepdims=True)
    scale = np.where(np.isfinite(best), np.maximum(np.abs(best), 1.0), 1.0)
    tied = defined & (filled >= best - TIE_TOLERANCE * scale)
    number = tied.sum(axis=1, keepdims=True)
    return np.divide(tied, number, out=np.zeros(good.shape), where=number > 0)


def p_top(
    table: np.ndarray | pd.DataFrame,
    higher_is_better: bool,
    n_bootstrap: int = 1000,
    seed: int = 0,
    denominator: np.ndarray | pd.DataFrame | None = None,
) -> np.ndarray:
    """P(top): per teacher, the bootstrap probability that it ranks first.

    ``table`` is prompts x teachers (teacher-prompt means, NaN where a teacher did not answer). Each of
    ``n_bootstrap`` resamples draws the prompts with replacement, once for every teacher (paired), as
    :func:`bootstrap_counts` documents: row ``b`` of chunk ``rng.integers(0, n_prompts, size=(size, n_prompts))``
    of a fresh ``numpy.random.default_rng(seed)`` holds resample ``b``'s prompt indices. A teacher's statistic
    in a resample is its mean over the resampled prompts it answered (:func:`resampled_means`); with
    ``denominator`` (a second prompts x teachers table) it is ``sum(table) / sum(denominator)`` over them (the
    RSR authors' teacher score: mean rank over mean surprisal). The best teacher of a resample (highest, or
    lowest with ``higher_is_better=False``) gets 1, tied teachers (equal within :data:`TIE_TOLERANCE`) share it,
    and a teacher absent from every resampled prompt cannot win it. Returns the shares averaged over the
    resamples: they sum to 1 unless some resample holds no answer at all.

    Vectorised: a resample's statistics are a product of its count row with the table, so 1,000 resamples of
    20,000 prompts x 10 teachers take well under a second.

    Example:
        >>> table = np.array([[1.0, 0.0], [2.0, 3.0], [3.0, 1.0]])  # teacher 0 wins 2 of 3 prompts; means 2, 4/3
        >>> p = p_top(table, higher_is_better=True, n_bootstrap=2000, seed=0)
        >>> bool(p[0] > 0.8), float(p.sum())
        (True, 1.0)
        >>> p_top(np.array([[1.0, 1.0]]), higher_is_better=False, n_bootstrap=10).tolist()  # a tie splits evenly
        [0.5, 0.5]
    """
    values = np.asarray(table, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f"p_top needs a prompts x teachers table with at least one cell, got shape {values.shape}.")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int | np.integer) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap={n_bootstrap!r}: use an int >= 1.")
    below = None if denominator is None else np.asarray(denominator, dtype=np.float64)
    wins = np.zeros(values.shape[1], dtype=np.float64)
    for counts in bootstrap_counts(values.shape[0], int(n_bootstrap), seed):
        wins += best_shares(resampled_means(counts, values, below), higher_is_better).sum(axis=0)
    return wins / int(n_bootstrap)


def percentile_ci(samples: ArrayLike, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The percentile interval (``numpy.percentile``) of the defined (non-NaN) resampled values of a statistic;
    ``(None, None)`` when there is none.

    Example:
        >>> percentile_ci([1.0, 2.0, 3.0, float("nan")], confidence=0.5)
        (1.5, 2.5)
    """
    values = np.asarray(samples, dtype=np.float64).ravel()
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return None, None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ratio_ci(
    numerator: ArrayLike, denominator: ArrayLike, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``sum(numerator) / sum(denominator)``, the pairs resampled together.

    The resamples are those of :func:`bootstrap_mean_ci` for the same number of values and seed
    (:func:`bootstrap_counts`); the denominator sum is floored at :data:`RATIO_FLOOR`. Pairs with a NaN are
    dropped first. RSR's teacher score, mean rank / mean surprisal over a teacher's prompts, is this ratio.

    Example:
        >>> bootstrap_ratio_ci([2.0, 4.0], [1.0, 1.0], n_bootstrap=1000)  # resamples: 2/1, 6/2 or 8/2
        (2.0, 4.0)
        >>> bootstrap_ratio_ci([3.0], [2.0], n_bootstrap=5)
        (1.5, 1.5)
    """
    above = np.asarray(numerator, dtype=np.float64).ravel()
    below = np.asarray(denominator, dtype=np.float64).ravel()
    if above.shape != below.shape:
        raise ValueError(f"numerator and denominator differ in length ({above.size} != {below.size}).")
    keep = ~np.isnan(above) & ~np.isnan(below)
    above, below = above[keep], below[keep]
    if above.size == 0:
        raise ValueError("bootstrap_ratio_ci needs at least one pair of values.")
    ratios = np.concatenate(
        [
            (counts @ above) / np.maximum(counts @ below, RATIO_FLOOR)
            for counts in bootstrap_counts(above.size, n_bootstrap, seed)
        ]
    )
    low, high = percentile_ci(ratios, confidence)
    return float(low), float(high)  # type: ignore[arg-type]


def kendall_tau_b_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of two ``(rows, n)`` arrays, for small ``n`` (teachers); NaN if undefined.

    Per row, the pairs with a NaN are dropped, as :func:`kendall_tau_b` drops them; differences within
    :data:`TIE_TOLERANCE` (relative) count as ties. O(rows x n^2) in a few array operations.

    Example:
        >>> kendall_tau_b_rows(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, np.nan]]), np.array([[1.0, 3.0, 2.0]] * 2))
        array([0.33333333, 1.        ])
    """
    a, b = np.atleast_2d(np.asarray(x, dtype=np.float64)), np.atleast_2d(np.asarray(y, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"x and y differ in shape ({a.shape} != {b.shape}).")
    first, second = np.triu_indices(a.shape[1], k=1)

    def signs(values: np.ndarray) -> np.ndarray:
        difference = values[:, first] - values[:, second]
        scale = np.maximum(np.maximum(np.abs(values[:, first]), np.abs(values[:, second])), 1.0)
        return np.where(np.abs(difference) <= TIE_TOLERANCE * scale, 0.0, np.sign(difference))

    sa, sb = signs(a), signs(b)
    both = ~np.isnan(sa) & ~np.isnan(sb)
    sa, sb = np.where(both, sa, 0.0), np.where(both, sb, 0.0)
    scale = np.sqrt((sa * sa).sum(axis=1) * (sb * sb).sum(axis=1))
    out = np.full(a.shape[0], np.nan)
    np.divide((sa * sb).sum(axis=1), scale, out=out, where=scale > 0)
    return np.clip(out, -1.0, 1.0)


def binary_kendall_tau_b_ci(
    x: ArrayLike,
    labels: ArrayLike,
    groups: Sequence | np.ndarray | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of Kendall's tau-b between scores ``x`` and 0/1 ``labels`` (correctness).

    Rows with a NaN are dropped first. The bootstrap resamples whole ``groups`` (prompts) with replacement, every
    row of a drawn group coming along (a row drawn twice is two tied rows, as ``scipy.stats.kendalltau`` would
    see the resampled arrays); without ``groups`` each row is its own group. The draws are
    :func:`bootstrap_counts` over the groups in order of first appearance. Each resample's tau-b is exact
    integer pair counting: with labels 0/1, ``S = sum over (1, 0) pairs of sign(x1 - x0)`` and
    ``tau_b = S / sqrt((n(n-1)/2 - ties in x) * n1 n0)``, read from the resampled weights of each distinct
    ``x`` value, so 1,000 resamples of 100,000 rows take seconds. ``(None, None)`` when tau-b is undefined in
    every resample.

    Example:
        >>> x, y = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2], [0, 0, 1, 1, 1, 0]
        >>> low, high = binary_kendall_tau_b_ci(x, y, groups=["a", "a", "b", "b", "c", "c"], n_bootstrap=500)
        >>> bool(-1.0 <= low <= kendall_tau_b(x, y) <= high <= 1.0)
        True
    """
    import scipy.sparse

    a = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if a.shape != y.shape:
        raise ValueError(f"x and labels differ in length ({a.size} != {y.size}).")
    keep = np.isfinite(a) & np.isfinite(y)
    if not np.isin(y[keep], (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1 (or NaN for unknown).")
    if groups is None:
        codes = np.arange(int(keep.sum()))
    else:
        keys = pd.Series(list(groups))
        if len(keys) != a.size:
            raise ValueError(f"groups has {len(keys)} entries for {a.size} rows.")
        codes = pd.factorize(keys[keep].reset_index(drop=True), sort=False, use_na_sentinel=False)[0]
    a, y = a[keep], y[keep]
    if a.size == 0:
        return None, None
    num_groups = int(codes.max()) + 1
    values, value_codes = np.unique(a, return_inverse=True)
    shape = (num_groups, values.size)

    def per_value(mask: np.ndarray) -> scipy.sparse.csr_matrix:  # value x group: rows of that value and label
        ones = np.ones(int(mask.sum()))
        return scipy.sparse.csr_matrix((ones, (codes[mask], value_codes[mask])), shape=shape).T.tocsr()

    positives, negatives = per_value(y == 1.0), per_value(y == 0.0)
    step = max(1, BOOTSTRAP_CHUNK_VALUES // values.size)
    taus = []
    for counts in bootstrap_counts(num_groups, n_bootstrap, seed):
        for start in range(0, counts.shape[0], step):
            weights = counts[start : start + step].T  # groups x resamples
            pos = np.asarray(positives @ weights).T  # resamples x values: positive rows of each value
            neg = np.asarray(negatives @ weights).T
            neg_up_to = np.cumsum(neg, axis=1)
            n1, n0 = pos.sum(axis=1), neg_up_to[:, -1]
            below, above = neg_up_to - neg, n0[:, None] - neg_up_to
            s = (pos * (below - above)).sum(axis=1)
            total = pos + neg
            n = n1 + n0
            untied_x = n * (n - 1) / 2 - (total * (total - 1) / 2).sum(axis=1)
            scale = np.sqrt(untied_x * n1 * n0)
            tau = np.full(s.shape, np.nan)
            np.divide(s, scale, out=tau, where=scale > 0)
            taus.append(np.clip(tau, -1.0, 1.0))
    return percentile_ci(np.concatenate(taus), confidence)
