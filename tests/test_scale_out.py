"""Scale-out: datasets.map with num_proc workers that load the student lazily, one per rank."""

from __future__ import annotations

import numpy as np
from conftest import DEMO_POOL
from datasets import load_dataset

from hf_localnat import NaturalnessScorer


def test_map_with_rank_and_num_proc_matches_one_process(tiny_student_dir, tmp_path):
    ds = load_dataset("json", data_files=str(DEMO_POOL), split="train", cache_dir=str(tmp_path)).select(range(24))
    scorer = NaturalnessScorer(student=str(tiny_student_dir), metrics="global,local,rsr", window=2)
    single = ds.map(scorer, batched=True, batch_size=8, load_from_cache_file=False)
    assert scorer.model is not None  # loaded lazily on first use in this process
    fresh = NaturalnessScorer(student=str(tiny_student_dir), metrics="global,local,rsr", window=2)
    multi = ds.map(fresh, batched=True, batch_size=8, with_rank=True, num_proc=2, load_from_cache_file=False)
    assert fresh.model is None  # the parent never loaded weights; each worker did
    assert multi["prompt_id"] == single["prompt_id"]
    for column in ("global_naturalness", "local_naturalness", "rsr"):
        np.testing.assert_allclose(multi[column], single[column], atol=1e-6)
