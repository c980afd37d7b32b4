"""Predict how long `hf-localnat score` takes on a pool, before running it.

Two predictions, both printed as JSON:

- **sample** (default): time the real `hf-localnat score` command on a length-stratified sample of the pool's
  rows, with the same flags, and scale the per-token part to the pool's token count. The rows are sorted by
  response length, cut into ``--sample_rows`` equal strata, and one row is drawn from each (``--seed``), so the
  sample has the pool's length distribution: longer responses cost more per token, so a sample of short rows
  predicts too little. A one-row run first measures the fixed cost (start-up, model load, writing).
  The sample is timed as ``--runs`` separate runs, each holding one row of every block of ``--runs`` neighbouring
  strata, so the runs are exchangeable draws of the pool's length mix. Their spread gives the sampling error of
  the seconds per token (ratio estimator, Student t), and ``predicted_upper_s`` is the one-sided 97.5% upper
  bound: the time a run should finish within unless the machine itself slows down.
- **throughput** (with ``--global_tps`` and ``--local_tps``): the pool's response tokens divided by the engine
  rates `bench/score_bench.py` printed. Quick, but only as representative as the bench's rows.

    .venv/bin/python bench/predict_time.py POOL.jsonl --metrics global,local,rsr --return_steps
    .venv/bin/python bench/predict_time.py POOL.jsonl --metrics global,local,rsr --global_tps 484 --local_tps 191

Flags this script does not know (``--metrics``, ``--window``, ``--splitter``, ...) go to `hf-localnat score`
unchanged. With --measured_seconds (for instance the wall time from `/usr/bin/time -v`), it also prints
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
        >>> sorted(stratified_sample([5, 1, 9, 3], 2, seed=0))  # one of rows {1, 3} (shortest), one of {0, 2}
        [2, 3]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = min(n, len(order))
    rng = random.Random(seed)
    edges = [round(j * len(order) / n) for j in range(n + 1)]
    return sorted(order[rng.randrange(edges[j], edges[j + 1])] for j in range(n))


def split_into_runs(sample: list[int], lengths: list[int], runs: int, seed: int = 0) -> list[list[int]]:
    """Deal a sample into ``runs`` exchangeable runs: each gets one row of every block of ``runs`` length-neighbours.

    Example:
        >>> split_into_runs([0, 1, 2, 3], [4, 3, 2, 1], runs=2, seed=0)  # one of {3, 2} and one of {1, 0} each
        [[1, 3], [0, 2]]
    """
    order = sorted(sample, key=lambda i: (lengths[i], i))
    rng = random.Random(seed)
    dealt: list[list[int]] = [[] for _ in range(runs)]
    for start in range(0, len(order), runs):
        block = order[start : start + runs]
        rng.shuffle(block)
        # A short last block (the longest rows) goes to randomly chosen runs, not always the first ones.
        targets = range(runs) if len(block) == runs else sorted(rng.sample(range(runs), len(block)))
        for target, row in zip(targets, block, strict=True):
            dealt[target].append(row)
    return [sorted(run) for run in dealt if run]


# Two-sided 95% Student t quantiles (t_0.975) by degrees of freedom; 1.96 beyond the table.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 20: 2.086, 30: 2.042}


def rate_interval(seconds: list[float], tokens: list[int]) -> tuple[float, float]:
    """Seconds per token over several timed runs (ratio estimator) and the half-width of its 95% interval.

    Example:
        >>> rate_interval([10.0, 12.0], [100, 100])  # 0.11 s/token, spread 0.01 over 2 runs: t_0.975(1) * 0.01
        (0.11, 0.12706)
    """
    rate = sum(seconds) / sum(tokens)
    n = len(seconds)
    if n < 2:
        return rate, float("inf")
    residuals = [s - rate * t for s, t in zip(seconds, tokens, strict=True)]
    mean_tokens = sum(tokens) / n
    standard_error = (sum(r * r for r in residuals) / (n - 1) / n) ** 0.5 / mean_tokens
    df = n - 1
    t = T_975[max(k for k in T_975 if k <= df)] if df <= 30 else 1.96  # rounding df down: a wider interval
    return rate, round(t * standard_error, 12)


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
    parser.add_argument("--response_column", "--response-column", default="response")
    parser.add_argument(
        "--sample_rows", "--sample-rows", type=int, default=96, help="Rows in the timed sample (0: no sample run)."
    )
    parser.add_argument("--runs", type=int, default=8, help="Separate timed runs the sample is dealt into.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the draw within each length stratum.")
    parser.add_argument(
        "--global_tps", "--global-tps", type=float, default=None, help="Engine global tokens/s from score_bench."
    )
    parser.add_argument(
        "--local_tps", "--local-tps", type=float, default=None, help="Engine local tokens/s from score_bench."
    )
    parser.add_argument(
        "--measured_seconds", "--measured-seconds", type=float, default=None, help="Compare with a measured run."
    )
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
        runs = split_into_runs(sample, lengths, max(1, args.runs), args.seed)
        probe = min((i for i in range(len(lengths)) if lengths[i] > 0), key=lambda i: lengths[i])
        with tempfile.TemporaryDirectory(prefix="predict_time_") as work:
            fixed_s = timed_score(pool, [probe], score_flags, Path(work), "probe")
            run_s = [timed_score(pool, run, score_flags, Path(work), f"run{j}") for j, run in enumerate(runs)]
        run_tokens = [sum(lengths[i] for i in run) for run in runs]
        # Each run pays the fixed cost once; what is left is the per-token part.
        rate, half_width = rate_interval([max(s - fixed_s, 0.0) for s in run_s], run_tokens)
        remaining = tokens - lengths[probe]
        result.update(
            sample_rows=len(sample),
            sample_runs=len(runs),
            sample_tokens=sum(run_tokens),
            sample_mean_tokens=sum(run_tokens) / len(sample),
            pool_mean_tokens=tokens / len(responses),
            fixed_s=fixed_s,
            run_s=run_s,
            run_tokens=run_tokens,
            seconds_per_1k_tokens=1000 * rate,
            seconds_per_1k_tokens_ci95=1000 * half_width,
            predicted_s=fixed_s + rate * remaining,
            predicted_upper_s=fixed_s + (rate + half_width) * remaining,
            score_flags=score_flags,
        )
    if args.measured_seconds is not None:
        result["measured_s"] = args.measured_seconds
        for key, ratio in (("predicted_s", "measured_over_predicted"), ("predicted_upper_s", "measured_over_upper"),
                           ("throughput_predicted_s", "throughput_measured_over_predicted")):
            if key in result:
                result[ratio] = args.measured_seconds / result[key]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
