"""Scale-out: datasets.map with num_proc workers, and `accelerate launch` with several processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import DEMO_POOL, run_accelerate
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


def test_accelerate_launch_two_cpu_processes_matches_one_process(tiny_student_dir, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(DEMO_POOL.read_text().splitlines(keepends=True)[:40]))
    common = [
        "score",
        str(pool),
        "--student",
        str(tiny_student_dir),
        "--metrics",
        "global,local,rsr",
        "--window",
        "2",
        "--return-steps",
        "--chunk-rows",
        "4",
    ]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    single = subprocess.run(
        [sys.executable, "-m", "hf_localnat", *common, "--output", str(tmp_path / "one.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    multi = run_accelerate(["-m", "hf_localnat", *common, "--output", str(tmp_path / "two.jsonl")], tmp_path)
    assert multi.returncode == 0, multi.stderr
    assert "process 0 of 2" in multi.stderr
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] + r["teacher"] for r in two] == [r["prompt_id"] + r["teacher"] for r in one]
    for a, b in zip(one, two, strict=True):
        for column in ("global_naturalness", "local_naturalness", "rsr"):
            assert b[column] == pytest.approx(a[column], abs=1e-6)
        assert a["step_spans"] == b["step_spans"]
    assert not list(tmp_path.glob(".two.jsonl*")), "the work folder is removed after the main process writes"
