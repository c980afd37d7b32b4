"""bench/predict_time.py: the length-stratified sample behind the time prediction."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("predict_time", Path(__file__).parents[1] / "bench" / "predict_time.py")
predict_time = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(predict_time)


def test_one_row_from_each_length_stratum() -> None:
    lengths = [100 - i for i in range(100)]  # row i has length 100 - i: the longest rows come first
    for seed in range(5):
        sample = predict_time.stratified_sample(lengths, 10, seed=seed)
        assert len(sample) == len(set(sample)) == 10
        # Sorted by length, stratum j holds rows 90-10j .. 99-10j: exactly one sampled row in each.
        strata = sorted((lengths[i] - 1) // 10 for i in sample)
        assert strata == list(range(10))


def test_sample_is_seeded_and_capped() -> None:
    lengths = [7, 3, 3, 9, 1, 4, 4, 8]
    assert predict_time.stratified_sample(lengths, 4, seed=1) == predict_time.stratified_sample(lengths, 4, seed=1)
    assert predict_time.stratified_sample(lengths, 50) == list(range(8))
    assert {tuple(predict_time.stratified_sample(lengths, 4, seed=s)) for s in range(20)} != {
        tuple(predict_time.stratified_sample(lengths, 4, seed=0))
    }


def test_runs_are_exchangeable_blocks_of_length_neighbours() -> None:
    lengths = [3 * i % 97 for i in range(97)]  # distinct lengths in shuffled order
    sample = predict_time.stratified_sample(lengths, 40, seed=3)
    runs = predict_time.split_into_runs(sample, lengths, runs=8, seed=3)
    assert len(runs) == 8 and sorted(i for run in runs for i in run) == sorted(sample)
    ranked = sorted(sample, key=lambda i: lengths[i])
    for run in runs:  # 40 rows in 5 blocks of 8 length-neighbours: each run holds exactly one of each block
        assert sorted(ranked.index(i) // 8 for i in run) == [0, 1, 2, 3, 4]


def test_rate_interval_against_a_hand_computation() -> None:
    seconds, tokens = [10.0, 13.0, 11.0, 14.0], [100, 120, 100, 120]
    rate, half_width = predict_time.rate_interval(seconds, tokens)
    assert rate == 48 / 440
    residuals = [s - rate * t for s, t in zip(seconds, tokens, strict=True)]
    se = (sum(r * r for r in residuals) / 3 / 4) ** 0.5 / 110
    assert abs(half_width - 3.182 * se) < 1e-9
    assert predict_time.rate_interval([5.0], [50])[1] == float("inf")  # one run: no spread, no bound


def test_a_short_last_block_goes_to_random_runs() -> None:
    lengths = list(range(10))  # 10 rows into 4 runs: blocks of 4, 4 and a short last block of the 2 longest rows
    takers = set()
    for seed in range(20):
        runs = predict_time.split_into_runs(list(range(10)), lengths, runs=4, seed=seed)
        assert sorted(len(run) for run in runs) == [2, 2, 3, 3]
        takers.add(tuple(j for j, run in enumerate(runs) if {8, 9} & set(run)))
    assert len(takers) > 1
