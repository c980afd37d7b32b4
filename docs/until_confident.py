#!/usr/bin/env python3
"""Compare a ``rank-teachers --until_confident`` ranking with the ranking on a whole scored pool.

The whole-pool ranking is read from a report's ``report.json`` (``sections.ranking.metrics[METRIC].teachers``),
as ``hf-localnat report`` writes it (docs/math_l5_200/report.json for the 200 MATH-L5 prompts).

Example:
    .venv/bin/python docs/until_confident.py /tmp/uc/ranking.json docs/math_l5_200/report.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_localnat.statistics import kendall_tau_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ranking", type=Path, help="The --output of rank-teachers --until_confident (.json).")
    parser.add_argument("report", type=Path, help="report.json of the whole pool.")
    parser.add_argument("--metric", default="local_naturalness")
    args = parser.parse_args()
    budget = json.loads(args.ranking.read_text())
    whole = json.loads(args.report.read_text())["sections"]["ranking"]["metrics"][args.metric]["teachers"]
    budget_mean = {row["teacher"]: row["mean"] for row in budget}
    whole_mean = {row["teacher"]: row["mean"] for row in whole}
    teachers = sorted(budget_mean.keys() & whole_mean.keys())
    tau = kendall_tau_b([budget_mean[t] for t in teachers], [whole_mean[t] for t in teachers])
    top_budget = min(budget, key=lambda row: row["rank"])
    top_whole = min(whole, key=lambda row: row["rank"])
    print(f"teachers compared: {len(teachers)}")
    print(f"top on the budget: {top_budget['teacher']} (P(top) {top_budget.get('p_top', float('nan')):.3f})")
    print(f"top on the whole pool: {top_whole['teacher']}")
    print(f"same top teacher: {top_budget['teacher'] == top_whole['teacher']}")
    print(f"Kendall tau-b between the two rankings (teacher means): {tau:+.3f}")
    print("rank  budget                          whole pool")
    by_rank = {row["rank"]: row["teacher"] for row in whole}
    for row in sorted(budget, key=lambda r: r["rank"]):
        print(f"{row['rank']:>4}  {row['teacher']:<30}  {by_rank.get(row['rank'], '')}")


if __name__ == "__main__":
    main()
