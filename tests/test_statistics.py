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
    binary_kendall_tau_b_ci,
    bootstrap_counts,
    bootstrap_mean_ci,
    bootstrap_ratio_ci,
    kendall_tau_b,
    kendall_tau_b_rows,
    p_top,
    resampled_means,
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


def ref_resample_indices(n: int, n_bootstrap: int, seed: int, chunk_values: int) -> list[np.ndarray]:
    """The documented draws: default_rng(seed).integers(0, n, (size, n)) for chunks of chunk_values // n rows."""
    rng = np.random.default_rng(seed)
    chunk = max(1, chunk_values // n)
    out: list[np.ndarray] = []
    for start in range(0, n_bootstrap, chunk):
        out.extend(rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n)))
    return out


def ref_teacher_stat(
    table: np.ndarray, denominator: np.ndarray | None, prompts: Sequence[int], teacher: int
) -> float | None:
    """A teacher's mean (or sum/sum ratio) over the listed prompts it answered, a prompt listed twice counting twice."""
    above, below = [], []
    for p in prompts:
        value = table[p][teacher]
        other = 1.0 if denominator is None else denominator[p][teacher]
        if math.isnan(value) or math.isnan(other):
            continue
        above.append(float(value))
        below.append(float(other))
    if not above:
        return None
    if denominator is None:
        return math.fsum(above) / len(above)
    return math.fsum(above) / max(math.fsum(below), 1e-12)


def ref_p_top(table, higher, n_bootstrap, seed, denominator=None, chunk_values=statistics.BOOTSTRAP_CHUNK_VALUES):
    """Loop over resamples and teachers; the best (exact equality is a tie) shares one win."""
    n_prompts, n_teachers = len(table), len(table[0])
    wins = [0.0] * n_teachers
    for prompts in ref_resample_indices(n_prompts, n_bootstrap, seed, chunk_values):
        stats = [ref_teacher_stat(table, denominator, prompts, t) for t in range(n_teachers)]
        defined = [s for s in stats if s is not None]
        if not defined:
            continue
        best = max(defined) if higher else min(defined)
        winners = [t for t, s in enumerate(stats) if s == best]
        for t in winners:
            wins[t] += 1.0 / len(winners)
    return [w / n_bootstrap for w in wins]


def ref_percentile_ci(samples: list[float], confidence: float) -> tuple[float | None, float | None]:
    if not samples:
        return None, None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(np.array(samples), [tail, 100.0 - tail])
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


# ----------------------------------------------------------------------------------------------------------
# Paired bootstrap over prompts: counts, P(top), ratio CIs, tau-b CIs
# ----------------------------------------------------------------------------------------------------------


def random_table(rng: np.random.Generator, n_prompts: int, n_teachers: int) -> np.ndarray:
    """Continuous or coarse (many exact ties) values, some teachers missing prompts, one duplicated teacher."""
    table = rng.normal(size=(n_prompts, n_teachers))
    if rng.random() < 0.5:
        table = np.round(table)  # resampled means tie exactly between different teachers
    if n_teachers > 2 and rng.random() < 0.5:
        table[:, -1] = table[:, 0]  # identical teachers: every resample ties them
    table[rng.random(table.shape) < 0.25] = np.nan
    table[0, 0] = 0.5 if np.isnan(table[0, 0]) else table[0, 0]  # never an empty table
    return table


@pytest.mark.parametrize("chunk_values", [statistics.BOOTSTRAP_CHUNK_VALUES, 10, 1])
def test_bootstrap_counts_are_the_documented_draws(monkeypatch, chunk_values):
    monkeypatch.setattr(statistics, "BOOTSTRAP_CHUNK_VALUES", chunk_values)
    for n, n_bootstrap, seed in [(1, 3, 0), (4, 7, 1), (9, 25, 2)]:
        got = np.concatenate([c.copy() for c in bootstrap_counts(n, n_bootstrap, seed)])
        want = [[sum(int(i) == item for i in row) for item in range(n)]
                for row in ref_resample_indices(n, n_bootstrap, seed, chunk_values)]  # fmt: skip
        assert got.tolist() == want


def test_bootstrap_counts_draw_what_bootstrap_mean_ci_draws():
    values = np.random.default_rng(3).normal(size=37)
    means = np.concatenate([c @ values / values.size for c in bootstrap_counts(values.size, 500, 9)])
    low, high = np.percentile(means, [2.5, 97.5])
    assert bootstrap_mean_ci(values, 500, 0.95, 9) == pytest.approx((low, high), abs=1e-12)


def test_resampled_means_against_loops():
    rng = np.random.default_rng(4)
    table = random_table(rng, 8, 4)
    denominator = rng.random(size=table.shape) + 0.5
    denominator[rng.random(table.shape) < 0.1] = np.nan
    indices = ref_resample_indices(8, 30, 5, statistics.BOOTSTRAP_CHUNK_VALUES)
    counts = next(bootstrap_counts(8, 30, 5))
    for below in (None, denominator):
        got = resampled_means(counts, table, below)
        for b, prompts in enumerate(indices):
            for t in range(4):
                want = ref_teacher_stat(table, below, prompts, t)
                assert math.isnan(got[b, t]) if want is None else got[b, t] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_p_top_against_a_loop_over_the_same_resamples(monkeypatch, seed):
    rng = np.random.default_rng(100 + seed)
    chunk_values = int(rng.choice([statistics.BOOTSTRAP_CHUNK_VALUES, 13]))  # one chunk, or many
    monkeypatch.setattr(statistics, "BOOTSTRAP_CHUNK_VALUES", chunk_values)
    n_prompts, n_teachers = int(rng.integers(1, 12)), int(rng.integers(1, 5))
    table = random_table(rng, n_prompts, n_teachers)
    higher = bool(rng.random() < 0.5)
    n_bootstrap = int(rng.choice([1, 7, 60]))
    got = p_top(table, higher, n_bootstrap, seed)
    want = ref_p_top(table.tolist(), higher, n_bootstrap, seed, chunk_values=chunk_values)
    assert got.tolist() == pytest.approx(want, abs=1e-12)
    denominator = np.abs(rng.normal(size=table.shape)) + 0.1
    if rng.random() < 0.5:
        denominator = np.round(denominator, 1) + 0.1  # coarse: ratios tie too
    got = p_top(table + 3.0, higher, n_bootstrap, seed, denominator=denominator)
    want = ref_p_top((table + 3.0).tolist(), higher, n_bootstrap, seed, denominator.tolist(), chunk_values)
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_p_top_statistical_sanity():
    # Teacher 0 is better by 0.3 sd on 400 shared prompts: it almost always ranks first; identical teachers split.
    rng = np.random.default_rng(8)
    base = rng.normal(size=(400, 1))
    table = np.hstack([base + 0.3, base, base])
    assert p_top(table, True, 500, 0).tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert p_top(table, False, 500, 0).tolist() == pytest.approx([0.0, 0.5, 0.5])
    assert p_top(np.array([[1.0, np.nan], [np.nan, 2.0]]), True, 2000, 1).sum() == pytest.approx(1.0)


def test_p_top_is_fast_on_a_large_pool():
    import time

    table = np.random.default_rng(0).normal(size=(20_000, 10))
    started = time.perf_counter()
    p_top(table, True, 1000, 0)
    assert time.perf_counter() - started < 10.0  # about half a second on one shared CPU core


@pytest.mark.parametrize("seed", range(6))
def test_bootstrap_ratio_ci_against_a_loop(seed):
    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(1, 15))
    above, below = rng.random(n) * 20, rng.random(n) + 0.5
    above[rng.random(n) < 0.15] = np.nan
    if np.isnan(above).all():
        above[0] = 1.0
    keep = ~np.isnan(above)
    a, b = above[keep], below[keep]
    ratios = [
        math.fsum(a[i] for i in prompts) / math.fsum(b[i] for i in prompts)
        for prompts in ref_resample_indices(a.size, 300, seed, statistics.BOOTSTRAP_CHUNK_VALUES)
    ]
    low, high = ref_percentile_ci(ratios, 0.9)
    assert bootstrap_ratio_ci(above, below, 300, 0.9, seed) == pytest.approx((low, high), abs=1e-12)


def test_kendall_tau_b_rows_against_pair_count():
    rng = np.random.default_rng(9)
    x = rng.integers(0, 4, size=(200, 5)).astype(float)
    y = np.round(rng.normal(size=(200, 5)), 1)
    x[rng.random(x.shape) < 0.15] = np.nan
    got = kendall_tau_b_rows(x, y)
    for row in range(200):
        want = ref_kendall_tau_b(x[row].tolist(), y[row].tolist())
        assert math.isnan(got[row]) if want is None else abs(got[row] - want) <= TOLERANCE


@pytest.mark.parametrize("seed", range(5))
def test_binary_kendall_tau_b_ci_against_resampled_pair_counts(monkeypatch, seed):
    rng = np.random.default_rng(300 + seed)
    monkeypatch.setattr(statistics, "BOOTSTRAP_CHUNK_VALUES", int(rng.choice([statistics.BOOTSTRAP_CHUNK_VALUES, 9])))
    n = int(rng.integers(2, 30))
    x = np.round(rng.normal(size=n), int(rng.integers(0, 2)))  # ties in x
    labels = (rng.random(n) < 0.5).astype(float)
    labels[rng.random(n) < 0.1] = np.nan
    groups = [f"p{g}" for g in rng.integers(0, max(1, n // 3), size=n)]
    got = binary_kendall_tau_b_ci(x, labels, groups, n_bootstrap=80, confidence=0.9, seed=seed)

    kept = [i for i in range(n) if math.isfinite(labels[i])]
    order = list(dict.fromkeys(groups[i] for i in kept))  # groups in order of first appearance
    rows_of = {g: [i for i in kept if groups[i] == g] for g in order}
    taus = []
    if kept:
        for drawn in ref_resample_indices(len(order), 80, seed, statistics.BOOTSTRAP_CHUNK_VALUES):
            rows = [i for g in drawn for i in rows_of[order[g]]]
            tau = ref_kendall_tau_b([x[i] for i in rows], [labels[i] for i in rows])
            if tau is not None:
                taus.append(tau)
    want = ref_percentile_ci(taus, 0.9)
    if want[0] is None:
        assert got == (None, None)
    else:
        assert got == pytest.approx(want, abs=1e-12)


def test_binary_kendall_tau_b_ci_rows_as_groups_and_bad_labels():
    x, y = [1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1]
    assert binary_kendall_tau_b_ci(x, y, n_bootstrap=50) == binary_kendall_tau_b_ci(x, y, range(4), n_bootstrap=50)
    assert binary_kendall_tau_b_ci([1.0, 2.0], [1, 1], n_bootstrap=20) == (None, None)  # one class: undefined
    with pytest.raises(ValueError, match="0/1"):
        binary_kendall_tau_b_ci([1.0, 2.0], [0, 2])
