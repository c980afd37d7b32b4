"""Predict how long `hf-localnat score` takes on a pool, from the throughput score_bench.py measured.

Scoring cost is proportional to response tokens: the global pass (which also yields RSR's ranks) runs at the
bench's global tokens/s, the local windows at its local tokens/s. This counts the pool's response tokens with the
student's tokenizer and divides.

    .venv/bin/python bench/predict_time.py POOL.jsonl --global-tps 484 --local-tps 191 --metrics global,local,rsr

With --measured-seconds (for instance from `/usr/bin/time`), it also prints measured / predicted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pool", help="A long-format pool (.jsonl, .json, .parquet, .csv).")
    parser.add_argument("--student", default=None, help="Student whose tokenizer counts tokens (default: embedded).")
    parser.add_argument("--metrics", default="global,local", help="Metrics the scoring run computes.")
    parser.add_argument("--global-tps", type=float, required=True, help="Engine global tokens/s from score_bench.")
    parser.add_argument("--local-tps", type=float, required=True, help="Engine local tokens/s from score_bench.")
    parser.add_argument("--response-column", default="response")
    parser.add_argument("--measured-seconds", type=float, default=None, help="Compare with a measured run.")
    args = parser.parse_args(argv)

    from hf_localnat.data_io import load_rows
    from hf_localnat.metrics import normalize_metrics
    from hf_localnat.student import load_student

    metrics = normalize_metrics(args.metrics)
    _, tokenizer = load_student(args.student)
    responses = [r or "" for r in load_rows(args.pool)[args.response_column]]
    tokens = sum(len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"])
    seconds = 0.0
    if {"global", "rsr"} & set(metrics):
        seconds += tokens / args.global_tps
    if "local" in metrics:
        seconds += tokens / args.local_tps
    result = {"rows": len(responses), "response_tokens": tokens, "metrics": list(metrics), "predicted_s": seconds}
    if args.measured_seconds is not None:
        result["measured_s"] = args.measured_seconds
        result["measured_over_predicted"] = args.measured_seconds / seconds
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
