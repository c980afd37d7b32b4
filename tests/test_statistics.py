"""hf_localnat.statistics (scipy.stats) against slow, independent computations: pair counts and direct formulas.

The report's published numbers (docs/*/report.json) and every rank_teachers CI were computed by the hand-written
versions these replaced, so each function must agree with a plain reference to 1e-12 on random inputs with ties,
NaNs, small and large n; the bootstrap must reproduce the old chunked draws exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import datasets
import numpy as np
import pytest

from hf_localnat import report, statistics
from hf_localnat.selection import rank_teachers
from hf_localnat.statistics import (
    auroc,
    average_ranks,
    bootstrap_mean_ci,
    kendall_tau_b,
    spearman,
    within_group_spearman,
)

TOLERANCE = 1e-12

# ----------------------------------------------------------------------------------------------------------
# Slow references (pure Python, O(n^2) where it is a pair count)
# ----------------------------------------------------------------------------------------------------------


def finite_pairs(x: Sequence[float], y: Sequence[float]) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]


def ref_ranks(values: Sequence[float]) -> list[float]:
    """Average rank by counting: 1 + (values below) + (ties, this one excluded) / 2."""
    return [1 + sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]


def ref_kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    pairs = finite_pairs(x, y)
    n = len(pairs)
    concordant = discordant = tied_x = tied_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = pairs[i][0] - pairs[j][0], pairs[i][1] - pairs[j][1]
            tied_x += dx == 0
            tied_y += dy == 0
            concordant += dx * dy > 0
            discordant += dx * dy < 0
    total = n * (n - 1) // 2
    if n < 2 or tied_x == total or tied_y == total:
        return None
    return (concordant - discordant) / math.sqrt((total - tied_x) * (total - tied_y))


def ref_spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r of the average ranks, summed exactly (math.fsum)."""
    pairs = finite_pairs(x, y)
    if len(pairs) < 2:
        return None
    rx, ry = ref_ranks([a for a, _ in pairs]), ref_ranks([b for _, b in pairs])
    mean = (len(pairs) + 1) / 2  # the mean of average ranks is always (n + 1) / 2
    sxy = math.fsum((a - mean) * (b - mean) for a, b in zip(rx, ry, strict=True))
    sxx, syy = math.fsum((a - mean) ** 2 for a in rx), math.fsum((b - mean) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def ref_auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """Share of (positive, negative) pairs the positive wins, a tie counting 1/2."""
    pos = [float(p) for p in positives if math.isfinite(p)]
    neg = [float(q) for q in negatives if math.isfinite(q)]
    if not pos or not neg:
        return None
    wins = math.fsum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def ref_within_group_spearman(
    groups: Sequence, x: Sequence[float], y: Sequence[float], min_rows: int = 3
) -> tuple[float | None, int]:
    by_group: dict = {}
    for g, a, b in zip(groups, x, y, strict=True):
        if math.isfinite(a) and math.isfinite(b):
            by_group.setdefault(g, []).append((a, b))
    rhos = [
        rho
        for rows in by_group.values()
        if len(rows) >= min_rows and (rho := ref_spearman([a for a, _ in rows], [b for _, b in rows])) is not None
    ]
    return (math.fsum(rhos) / len(rhos), len(rhos)) if rhos else (None, 0)


def ref_bootstrap_ci(values: np.ndarray, n_bootstrap: int, confidence: float, seed: int, chunk_values: int):
    """hf_localnat 0.1's _bootstrap_ci, as it drew: rng.integers(0, n, (size, n)) in chunks of <= chunk_values."""
    rng = np.random.default_rng(seed)
    n = len(values)
    chunk = max(1, chunk_values // max(n, 1))
    means = np.empty(n_bootstrap, dtype=np.float64)
    for start in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - start)
        means[start : start + size] = values[rng.integers(0, n, size=(size, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


# ----------------------------------------------------------------------------------------------------------
# Random inputs
# ----------------------------------------------------------------------------------------------------------


def random_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Continuous, tied, heavily tied, rounded or wide-ranged values; sometimes NaNs, sometimes constant."""
    kind = int(rng.integers(0, 5))
    if kind == 0:
        x = rng.normal(size=n)
    elif kind == 1:
        x = rng.integers(0, max(2, n // 3 + 1), size=n).astype(float)
    elif kind == 2:
        x = rng.integers(0, 3, size=n).astype(float)
    elif kind == 3:
        x = np.round(rng.normal(size=n), 1)
    else:
        x = rng.exponential(size=n) * 1e6
    if n and rng.random() < 0.3:
        x[rng.random(n) < 0.2] = np.nan
    if n and rng.random() < 0.05:
        x[:] = x[0]
    return x


SIZES = [0, 1, 2, 3, 4, 5, 7, 10, 20, 60]


def assert_close(got: float | None, want: float | None) -> None:
    if want is None:
        assert got is None
    else:
        assert got is not None and abs(got - want) <= TOLERANCE, (got, want)


@pytest.fixture(autouse=True)
def no_warnings():
    # The undefined cases return None; scipy's ConstantInputWarning / SmallSampleWarning must not leak out.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ----------------------------------------------------------------------------------------------------------
# Against the references
# ----------------------------------------------------------------------------------------------------------


def test_average_ranks_against_counting():
    rng = np.random.default_rng(0)
    for _ in range(300):
        x = random_values(rng, int(rng.choice(SIZES)))
        finite = x[~np.isnan(x)]
        ranks = average_ranks(x)
        assert ranks[~np.isnan(x)].tolist() == ref_ranks(finite.tolist())  # exact: ranks are halves
        # A NaN ranks after the numbers, each on its own rank in order of appearance.
        assert ranks[np.isnan(x)].tolist() == list(range(finite.size + 1, x.size + 1))
    assert average_ranks([]).tolist() == []


@pytest.mark.parametrize("seed", range(4))
def test_kendall_tau_b_against_pair_count(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(150):
        n = int(rng.choice(SIZES))
        x, y = random_values(rng, n), random_values(rng, n)
        assert_close(kendall_tau_b(x, y), ref_kendall_tau_b(x, y))
    for n in (150, 300):  # large n, with ties
        x, y = np.round(rng.normal(size=n), 1), rng.integers(0, 20, size=n).astype(float)
        assert_close(kendall_tau_b(x, y), ref_kendall_tau_b(x, y))


@pytest.mark.parametrize("seed", range(4))
def test_spearman_against_direct_formula(seed):
    rng = np.random.default_rng(200 + seed)
    for _ in range(150):
        n = int(rng.choice(SIZES))
        x, y = random_values(rng, n), random_values(rng, n)
        assert_close(spearman(x, y), ref_spearman(x, y))
    for n in (500, 2000):
        x, y = rng.integers(0, 50, size=n).astype(float), rng.normal(size=n)
        assert_close(spearman(x, y), ref_spearman(x, y))


@pytest.mark.parametrize("seed", range(4))
def test_auroc_against_pair_count(seed):
    rng = np.random.default_rng(300 + seed)
    for _ in range(150):
        pos, neg = random_values(rng, int(rng.choice(SIZES))), random_values(rng, int(rng.choice(SIZES)))
        assert_close(auroc(pos, neg), ref_auroc(pos, neg))
    pos, neg = rng.integers(0, 10, size=400).astype(float), rng.integers(0, 12, size=700).astype(float)
    assert_close(auroc(pos, neg), ref_auroc(pos, neg))


@pytest.mark.parametrize("seed", range(3))
def test_within_group_spearman_against_per_group_formula(seed):
    rng = np.random.default_rng(400 + seed)
    for _ in range(60):
        n = int(rng.choice([0, 2, 5, 10, 30, 120]))
        groups = rng.integers(0, max(1, n // int(rng.choice([2, 3, 5]))), size=n)
        x, y = random_values(rng, n), random_values(rng, n)
        rho, count = within_group_spearman(groups, x, y)
        want, want_count = ref_within_group_spearman(groups.tolist(), x, y)
        assert count == want_count
        assert_close(rho, want)


def test_undefined_cases_are_none():
    nan = float("nan")
    for f in (kendall_tau_b, spearman):
        assert f([], []) is None and f([1.0], [2.0]) is None
        assert f([1, 1, 1], [1, 2, 3]) is None and f([1, 2, 3], [4, 4, 4]) is None  # constant
        assert f([1, nan, 2], [nan, 1, 2]) is None  # one finite pair left
        assert f([1, 2, nan, 3], [1, 2, 5, 3]) == pytest.approx(1.0)  # the NaN pair is dropped
        assert f([1, 2, float("inf"), 3], [3, 2, 1, 0]) == pytest.approx(-1.0)  # so is an infinite one
        with pytest.raises(ValueError, match="differ in length"):
            f([1, 2], [1, 2, 3])
    assert auroc([], [1.0]) is None and auroc([1.0], [nan]) is None
    assert within_group_spearman([], [], []) == (None, 0)


# ----------------------------------------------------------------------------------------------------------
# Bootstrap: the old draws, exactly
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_values", [statistics.BOOTSTRAP_CHUNK_VALUES, 50, 7, 1])
def test_bootstrap_reproduces_the_chunked_draws_exactly(monkeypatch, chunk_values):
    # Small chunk sizes make one call draw in many chunks, as a large pool does with the real size.
    monkeypatch.setattr(statistics, "BOOTSTRAP_CHUNK_VALUES", chunk_values)
    rng = np.random.default_rng(chunk_values)
    for _ in range(40):
        n = int(rng.choice([1, 2, 3, 5, 17, 60]))
        values = np.round(rng.normal(size=n), int(rng.integers(0, 3)))  # ties too
        n_bootstrap = int(rng.choice([1, 2, 57, 400]))
        confidence = float(rng.choice([0.95, 0.9, 0.5]))
        seed = int(rng.integers(0, 1000))
        want = ref_bootstrap_ci(values, n_bootstrap, confidence, seed, chunk_values)
        assert bootstrap_mean_ci(values, n_bootstrap, confidence, seed) == want


def test_bootstrap_multi_chunk_at_the_real_size():
    values = np.random.default_rng(1).normal(size=4001)  # 4,000,000 // 4001 = 999 resamples a chunk: 2 chunks
    want = ref_bootstrap_ci(values, 1000, 0.95, 3, statistics.BOOTSTRAP_CHUNK_VALUES)
    assert bootstrap_mean_ci(values, 1000, 0.95, 3) == want


def test_bootstrap_one_value_and_no_value():
    assert bootstrap_mean_ci([2.5], 1) == bootstrap_mean_ci([2.5], 100) == (2.5, 2.5)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_mean_ci([], 10)


def test_rank_teachers_cis_are_the_old_ones():
    rng = np.random.default_rng(5)
    rows = [
        {"prompt_id": f"p{p}", "teacher": t, "local_naturalness": float(np.round(rng.normal(), 2))}
        for p in range(40)
        for t in ("a", "b", "c")
        if not (t == "c" and p % 3)  # c answers fewer prompts
    ]
    table = rank_teachers(datasets.Dataset.from_list(rows), n_bootstrap=500, confidence=0.9, seed=11)
    for _, row in table.iterrows():
        means = [r["local_naturalness"] for r in rows if r["teacher"] == row["teacher"]]  # one answer per prompt
        want = ref_bootstrap_ci(np.array(means), 500, 0.9, 11, statistics.BOOTSTRAP_CHUNK_VALUES)
        assert (row["ci_low"], row["ci_high"]) == want


def test_report_reexports_the_statistics():
    # `from hf_localnat.report import spearman` (and the others) keeps working after the move.
    for name in ("average_ranks", "kendall_tau_b", "spearman", "within_group_spearman", "auroc"):
        assert getattr(report, name) is getattr(statistics, name)
