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
