#!/usr/bin/env python3
"""Compare a ``rank-teachers --until_confident`` ranking with the ranking on a whole scored pool.

The budget ranking is either the command's ``--output`` (``--ranking FILE``), or rebuilt from the blocks it saved
(``--blocks .OUT.partial --pool POOL``; the prompt order is the command's, from ``--seed`` and ``--block_prompts``),
which also prints the top teacher's P(top) after each finished block: a run stopped before its threshold still
leaves its figures. The whole-pool ranking is read from a report's ``report.json``
(``sections.ranking.metrics[METRIC].teachers``), as ``hf-localnat report`` writes it (docs/math_l5_200/report.json
for the 200 MATH-L5 prompts).

Example:
    .venv/bin/python docs/until_confident.py docs/math_l5_200/report.json --ranking /tmp/uc/ranking.json
    .venv/bin/python docs/until_confident.py docs/math_l5_200/report.json \\
        --blocks /tmp/uc/.ranking.json.partial --pool /tmp/uc/math_l5_200.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from hf_localnat.budget import prompt_blocks
from hf_localnat.data_io import load_rows
from hf_localnat.selection import rank_teachers
from hf_localnat.statistics import kendall_tau_b


def ranking_from_blocks(work: Path, pool_path: str, metric: str, block_prompts: int, seed: int, n_bootstrap: int):
    """The ranking on every block the run finished (P(top) printed after each), as rank_until_confident ranks."""
    pool = load_rows(pool_path)
    scored, table = [], None
    for index, (rows, _) in enumerate(prompt_blocks(pool["prompt_id"], block_prompts, seed)):
        chunks = sorted((work / f"block-{index:06d}").glob("chunk-*.parquet"))
        scores = pa.concat_tables([pq.read_table(c) for c in chunks]) if chunks else None
        if scores is None or scores.num_rows != len(rows):
            break  # an unfinished block: the run stopped in it
        block = pool.select(rows)
        for column in (metric, "num_response_tokens"):
            block = block.add_column(column, scores.column(column).to_pylist())
        scored.append(block)
        so_far = datasets.concatenate_datasets(scored)
        table = rank_teachers(so_far, by=metric, n_bootstrap=n_bootstrap, seed=seed)
        top = table.iloc[0]
        print(
            f"after {len(set(so_far['prompt_id']))} prompts ({sum(so_far['num_response_tokens'])} response tokens): "
            f"top {top['teacher']}, P(top) {top['p_top']:.3f}"
        )
    if table is None:
        raise SystemExit(f"{work}: no finished block.")
    return table.to_dict("records")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.json of the whole pool.")
    parser.add_argument("--ranking", type=Path, help="The --output of rank-teachers --until_confident (.json).")
    parser.add_argument("--blocks", type=Path, help="The run's work folder (.OUT.partial), to rebuild the ranking.")
    parser.add_argument("--pool", help="With --blocks: the pool the run scored.")
    parser.add_argument("--block_prompts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_bootstrap", type=int, default=1000)
    parser.add_argument("--metric", default="local_naturalness")
    args = parser.parse_args()
    if (args.ranking is None) == (args.blocks is None) or (args.blocks is not None and not args.pool):
        parser.error("give --ranking FILE, or --blocks DIR with --pool POOL")
    if args.ranking is not None:
        budget = json.loads(args.ranking.read_text())
    else:
        budget = ranking_from_blocks(
            args.blocks, args.pool, args.metric, args.block_prompts, args.seed, args.n_bootstrap
        )
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
