"""Which metric selects responses that loop (the same lines over and over), in a scored multi-teacher pool.

A response loops when it has at least MIN_LINES non-empty lines and fewer than MAX_UNIQUE of them are distinct
(after stripping). The rule is deliberately crude; --min-lines and --max-unique show how the counts move.

    python docs/repetition_loops.py $WORK/math_l5_200.scored.parquet
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import datasets
import pandas as pd

from hf_localnat.metrics import METRIC_COLUMNS
from hf_localnat.selection import select_responses


def loops(response: str | None, min_lines: int, max_unique: float) -> bool:
    """Whether a response repeats its lines: many lines, few of them distinct.

    Example:
        >>> loops("a\\nb\\n" * 15, 20, 0.5), loops("\\n".join(map(str, range(30))), 20, 0.5)
        (True, False)
    """
    lines = [line.strip() for line in (response or "").splitlines() if line.strip()]
    return len(lines) >= min_lines and len(set(lines)) / len(lines) < max_unique


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scored", help="A scored pool (.parquet) with prompt_id, teacher, response and metrics.")
    parser.add_argument("--min-lines", type=int, default=20, help="Fewest non-empty lines a loop has.")
    parser.add_argument("--max-unique", type=float, default=0.5, help="Largest share of distinct lines a loop has.")
    args = parser.parse_args(argv)
    pool = pd.read_parquet(args.scored).reset_index(drop=True)
    pool["loops"] = [loops(r, args.min_lines, args.max_unique) for r in pool["response"]]
    looping = pool[pool["loops"]]
    out: dict = {
        "rule": {"min_lines": args.min_lines, "max_unique": args.max_unique},
        "num_rows": len(pool),
        "num_prompts": int(pool["prompt_id"].nunique()),
        "num_looping": int(len(looping)),
        "looping_by_teacher": dict(Counter(looping["teacher"]).most_common()),
        "looping_accuracy": float(looping["correct"].mean()) if "correct" in pool and len(looping) else None,
        "num_prompts_with_looping": int(looping["prompt_id"].nunique()),
        "selected_looping": {},
        "selection_accuracy": {},
        "selection_accuracy_without_looping": {},
    }
    columns = [c for c in ("prompt_id", "correct", "loops", *METRIC_COLUMNS.values()) if c in pool]
    rows = datasets.Dataset.from_pandas(pool[columns], preserve_index=False)
    for metric in METRIC_COLUMNS.values():
        if metric not in pool:
            continue
        best = select_responses(rows, by=metric).to_pandas()  # the product's own one-per-prompt selection
        out["selected_looping"][metric] = int(best["loops"].sum())
        if "correct" in pool:
            out["selection_accuracy"][metric] = float(best["correct"].mean())
            kept = select_responses(rows, by=metric, where=lambda row: not row["loops"]).to_pandas()
            out["selection_accuracy_without_looping"][metric] = float(kept["correct"].mean())
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
