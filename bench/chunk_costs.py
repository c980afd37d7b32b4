"""Per-chunk cost of a finished `hf-localnat score` run, and how well tokens or FLOPs predicted it.

Reads the chunk end times from the run's progress bar (its stderr log), counts each 64-row chunk's response
tokens and floor FLOPs (global + local, as `score_bench.py` counts them), and prints seconds per 1,000 tokens
and per TFLOP for each chunk, their coefficients of variation, and what `predict_time.py`'s sample would have
predicted had it scaled by FLOPs instead of tokens.

    .venv/bin/python bench/chunk_costs.py POOL.jsonl SCORE.log PREDICT.json [--window 4 --seed 0]

(The files `docs/make_docs.sh` writes: `$WORK/math_l5_200.jsonl`, the score command's stderr, and
`$WORK/math_l5_200.predict.json`.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from predict_time import stratified_sample  # noqa: E402
from score_bench import Rows, floor_flops, work_counts  # noqa: E402


def chunk_end_seconds(log: str, total: int) -> list[tuple[int, int]]:
    """(rows done, seconds elapsed) at each progress-bar update of the scoring log, first sighting of each."""
    ends: dict[int, int] = {}
    for done, clock in re.findall(rf"(\d+)/{total} \[([\d:]+)<", log):
        seconds = sum(int(part) * 60**i for i, part in enumerate(reversed(clock.split(":"))))
        ends.setdefault(int(done), seconds)
    return sorted(ends.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pool")
    parser.add_argument("log")
    parser.add_argument("predict_json")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from hf_localnat.student import load_student

    rows = [json.loads(line) for line in open(args.pool, encoding="utf-8")]
    model, tokenizer = load_student(None)

    def work(indices) -> tuple[int, float]:
        subset = Rows([rows[i]["prompt"] for i in indices], [rows[i]["response"] or "" for i in indices])
        scored, forwards, context = work_counts(tokenizer, subset, args.window, local=False)
        flops = floor_flops(model, forwards, context, scored)
        scored_l, forwards_l, context_l = work_counts(tokenizer, subset, args.window, local=True)
        return scored, flops + floor_flops(model, forwards_l, context_l, scored_l)

    print("| first row | teacher | seconds | tokens | s per 1k tokens | s per TFLOP |")
    print("|---:|---|---:|---:|---:|---:|")
    per_token, per_flop = [], []
    prev_rows, prev_s, pool_flops = 0, 0, 0.0
    for done, seconds in chunk_end_seconds(Path(args.log).read_text(errors="replace"), len(rows)):
        if done == prev_rows:
            continue
        tokens, flops = work(range(prev_rows, done))
        spent = seconds - prev_s
        per_token.append(spent / tokens)
        per_flop.append(spent / flops)
        pool_flops += flops
        teacher = rows[prev_rows].get("teacher", "")
        rates = f"{1e3 * spent / tokens:.2f} | {1e12 * spent / flops:.2f}"
        print(f"| {prev_rows} | {teacher} | {spent} | {tokens} | {rates} |")
        prev_rows, prev_s = done, seconds

    def cv(values: list[float]) -> float:
        return float(np.std(values) / np.mean(values))

    print(f"coefficient of variation: per token {cv(per_token):.3f}, per floor FLOP {cv(per_flop):.3f}")
    prediction = json.loads(Path(args.predict_json).read_text())
    responses = [r["response"] or "" for r in rows]
    lengths = [len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    _, sample_flops = work(stratified_sample(lengths, prediction["sample_rows"], args.seed))
    if prev_rows < len(rows):  # a log that stops early: count the rows it never reached
        pool_flops += work(range(prev_rows, len(rows)))[1]
    fixed = prediction["fixed_s"]
    # The sample's per-token part: one run (older predictions) or several, each paying the fixed cost once.
    run_s = prediction.get("run_s") or [prediction["sample_s"]]
    variable_s = sum(max(s - fixed, 0.0) for s in run_s)
    print(f"token-scaled prediction {prediction['predicted_s']:.0f} s (predict_time.py)")
    print(f"FLOP-scaled prediction {fixed + variable_s * pool_flops / sample_flops:.0f} s (same sample)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
