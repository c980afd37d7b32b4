"""Keep every teacher's response for the first N prompts of a long-format pool.

A pool file is often sorted by teacher, so ``--limit`` on the CLI would keep
whole teachers, not whole prompts. This keeps all rows of the first N distinct
``prompt_id`` values (in order of first appearance, or sorted with --sort).

Example:
    python dataset_scripts/take_prompts.py ../shared/data/multiteacher/zeroeval_math_l5.jsonl \
        math_l5_200.jsonl --prompts 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import check_output, fail, load_long, save_long  # noqa: E402


def take_prompts(rows: list[dict], prompts: int, id_column: str = "prompt_id", sort: bool = False) -> list[dict]:
    """Rows of the first ``prompts`` distinct ids, in their original order.

    Example:
        >>> take_prompts([{"prompt_id": 2}, {"prompt_id": 1}, {"prompt_id": 2}], 1)
        [{'prompt_id': 2}, {'prompt_id': 2}]
    """
    ids = [row[id_column] for row in rows]
    order = sorted(set(ids), key=str) if sort else list(dict.fromkeys(ids))
    keep = set(order[:prompts])
    return [row for row in rows if row[id_column] in keep]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="Long-format pool: .jsonl, .json, .parquet or .csv.")
    parser.add_argument("output", help="Where to write the rows kept (.jsonl or .parquet).")
    parser.add_argument("--prompts", type=int, required=True, help="How many distinct prompts to keep.")
    parser.add_argument("--id_column", "--id-column", default="prompt_id", help="Column that identifies a prompt.")
    parser.add_argument("--sort", action="store_true", help="Take the smallest ids, not the first seen.")
    parser.add_argument("--overwrite", action="store_true", help="Replace OUTPUT if it exists.")
    args = parser.parse_args(argv)
    check_output(args.output, [args.input], args.overwrite)
    rows = load_long(args.input, required=(args.id_column,))
    if args.prompts < 1:
        fail(f"--prompts must be >= 1, got {args.prompts}")
    kept = take_prompts(rows, args.prompts, args.id_column, args.sort)
    save_long(kept, args.output, overwrite=args.overwrite, inputs=[args.input])
    print(f"kept {len(kept)} rows of {len({r[args.id_column] for r in kept})} prompts -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
