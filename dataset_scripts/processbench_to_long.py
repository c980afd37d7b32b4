"""Turn ProcessBench step-labelled solutions into hf_localnat's long format, one row per solution.

Each solution's ``steps`` are joined with blank lines, so ``--splitter paragraph`` recovers them as the scored
steps (a blank line inside a step is folded to one newline so it cannot split the step). ``label`` (index of the
first wrong step, -1 when all are right), ``steps`` and ``final_answer_correct`` are kept: ``hf-localnat report``
reads them to put step scores next to the first error.

Example:
    python dataset_scripts/processbench_to_long.py ../shared/data/steplabels/processbench_math.json \\
        processbench_math.jsonl --sample 200
    hf-localnat score processbench_math.jsonl --splitter paragraph --metrics local --return_steps \\
        --output processbench_math.scored.parquet
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import check_output, fail, load_long, save_long  # noqa: E402

STEP_SEPARATOR = "\n\n"
REQUIRED = ("id", "generator", "problem", "steps", "label")


def processbench_rows(records: list[dict], source: str = "input") -> list[dict]:
    """Long-format rows from ProcessBench records; a malformed record exits with one line naming it.

    Example:
        >>> processbench_rows([{"id": "m-0", "generator": "g", "problem": "1+1?", "steps": ["1+1=2.", "So 2."],
        ...                     "label": -1}])[0]["response"]
        '1+1=2.\\n\\nSo 2.'
    """
    rows = []
    for index, record in enumerate(records):
        missing = [key for key in REQUIRED if record.get(key) is None]
        if missing:
            fail(f"{source} record {index}: missing {', '.join(missing)}. Is this a ProcessBench file?")
        steps = record["steps"]
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
            fail(f"{source} record {index} ({record['id']}): 'steps' must be a non-empty list of non-empty strings.")
        label = record["label"]
        if not isinstance(label, int) or not -1 <= label < len(steps):
            fail(f"{source} record {index} ({record['id']}): label {label!r} is not -1 or a step index.")
        clean = [re.sub(r"\n\s*\n", "\n", step.strip()) for step in steps]
        rows.append(
            {
                "prompt_id": str(record["id"]),
                "prompt": record["problem"],
                "teacher": record["generator"],
                "response": STEP_SEPARATOR.join(clean),
                "steps": clean,
                "label": label,
                "final_answer_correct": record.get("final_answer_correct"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="A ProcessBench .json file (a list of records).")
    parser.add_argument("output", help="Where to write the long-format rows (.jsonl or .parquet).")
    parser.add_argument("--limit", type=int, default=None, help="Keep only the first N solutions.")
    parser.add_argument(
        "--sample", type=int, default=None, help="Keep a random N solutions (the files are sorted by label)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed for --sample.")
    parser.add_argument("--overwrite", action="store_true", help="Replace OUTPUT if it exists.")
    args = parser.parse_args(argv)
    check_output(args.output, [args.input], args.overwrite)
    path = Path(args.input)
    if not path.is_file():
        fail(f"{path} not found. Point at processbench_<subset>.json.")
    # hf_localnat's reader, as in every script: a JSON array (ProcessBench's layout) or JSON lines.
    records = load_long(path, required=REQUIRED, needed=("problem", "steps", "label"))
    if args.sample is not None:
        keep = sorted(random.Random(args.seed).sample(range(len(records)), min(args.sample, len(records))))
        records = [records[i] for i in keep]
    rows = processbench_rows(records[: args.limit] if args.limit else records, str(path))
    save_long(rows, args.output, overwrite=args.overwrite, inputs=[args.input])
    print(f"wrote {len(rows)} solutions -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
