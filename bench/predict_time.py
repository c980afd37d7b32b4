"""Predict how long `hf-localnat score` takes on a pool, before running it.

Two predictions, both printed as JSON:

- **sample** (default): time the real `hf-localnat score` command on a length-stratified sample of the pool's
  rows, with the same flags, and scale the per-token part to the pool's token count. The rows are sorted by
  response length, cut into ``--sample-rows`` equal strata, and one row is drawn from each (``--seed``), so the
  sample has the pool's length distribution: longer responses cost more per token, so a sample of short rows
  predicts too little. A one-row run first measures the fixed cost (start-up, model load, writing).
- **throughput** (with ``--global-tps`` and ``--local-tps``): the pool's response tokens divided by the engine
  rates `bench/score_bench.py` printed. Quick, but only as representative as the bench's rows.

    .venv/bin/python bench/predict_time.py POOL.jsonl --metrics global,local,rsr --return_steps
    .venv/bin/python bench/predict_time.py POOL.jsonl --metrics global,local,rsr --global-tps 484 --local-tps 191

Flags this script does not know (``--metrics``, ``--window``, ``--splitter``, ...) go to `hf-localnat score`
unchanged. With --measured-seconds (for instance the wall time from `/usr/bin/time -v`), it also prints
measured / predicted.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def stratified_sample(lengths: list[int], n: int, seed: int = 0) -> list[int]:
    """Indices of ``n`` rows, one drawn at random from each of ``n`` equal strata of rows sorted by length.

    Example:
        >>> sorted(stratified_sample([5, 1, 9, 3], 2, seed=0))  # one of the two shortest, one of the two longest
        [1, 2]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = min(n, len(order))
    rng = random.Random(seed)
    edges = [round(j * len(order) / n) for j in range(n + 1)]
    return sorted(order[rng.randrange(edges[j], edges[j + 1])] for j in range(n))


def timed_score(pool, rows: list[int], score_flags: list[str], work: Path, name: str) -> float:
    """Wall seconds of `hf-localnat score` on ``rows`` of ``pool``, run as a user would run it."""
    subset = work / f"{name}.jsonl"
    pool.select(rows).to_json(subset, lines=True, force_ascii=False)
    command = [sys.executable, "-m", "hf_localnat", "score", str(subset), "--output", str(work / f"{name}.parquet")]
    start = time.perf_counter()
    subprocess.run([*command, *score_flags], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pool", help="A long-format pool (.jsonl, .json, .parquet, .csv).")
    parser.add_argument("--student", default=None, help="Student (default: embedded); also passed to score.")
    parser.add_argument("--metrics", default="global,local", help="Metrics the scoring run computes.")
    parser.add_argument("--response-column", default="response")
    parser.add_argument("--sample-rows", type=int, default=64, help="Rows in the timed sample (0: no sample run).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the draw within each length stratum.")
    parser.add_argument("--global-tps", type=float, default=None, help="Engine global tokens/s from score_bench.")
    parser.add_argument("--local-tps", type=float, default=None, help="Engine local tokens/s from score_bench.")
    parser.add_argument("--measured-seconds", type=float, default=None, help="Compare with a measured run.")
    args, score_flags = parser.parse_known_args(argv)

    from hf_localnat.data_io import load_rows
    from hf_localnat.metrics import normalize_metrics
    from hf_localnat.student import load_student

    metrics = normalize_metrics(args.metrics)
    score_flags = ["--metrics", ",".join(metrics), *score_flags]
    if args.student:
        score_flags += ["--student", args.student]
    _, tokenizer = load_student(args.student)
    pool = load_rows(args.pool)
    responses = [r or "" for r in pool[args.response_column]]
    lengths = [len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    tokens = sum(lengths)
    result: dict = {"rows": len(responses), "response_tokens": tokens, "metrics": list(metrics)}

    if args.global_tps and args.local_tps:
        seconds = 0.0
        if {"global", "rsr"} & set(metrics):
            seconds += tokens / args.global_tps
        if "local" in metrics:
            seconds += tokens / args.local_tps
        result["throughput_predicted_s"] = seconds

    if args.sample_rows > 0:
        sample = stratified_sample(lengths, args.sample_rows, args.seed)
        probe = min((i for i in range(len(lengths)) if lengths[i] > 0), key=lambda i: lengths[i])
        with tempfile.TemporaryDirectory(prefix="predict_time_") as work:
            fixed_s = timed_score(pool, [probe], score_flags, Path(work), "probe")
            sample_s = timed_score(pool, sample, score_flags, Path(work), "sample")
        sample_tokens = sum(lengths[i] for i in sample)
        per_token_s = max(sample_s - fixed_s, 0.0) / max(sample_tokens - lengths[probe], 1)
        result.update(
            sample_rows=len(sample),
            sample_tokens=sample_tokens,
            sample_mean_tokens=sample_tokens / len(sample),
            pool_mean_tokens=tokens / len(responses),
            fixed_s=fixed_s,
            sample_s=sample_s,
            predicted_s=fixed_s + per_token_s * (tokens - lengths[probe]),
            score_flags=score_flags,
        )
    if args.measured_seconds is not None:
        result["measured_s"] = args.measured_seconds
        for key in ("predicted_s", "throughput_predicted_s"):
            if key in result:
                result[key.replace("predicted_s", "measured_over_predicted")] = args.measured_seconds / result[key]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
