"""Turn a wide table (one response column per teacher) into hf_localnat's long format.

Each input row becomes one output row per teacher: ``prompt_id, prompt, teacher, response`` followed by the
row's other columns, kept as they are. The teacher is the column name (minus ``--teacher_prefix``). The prompt id
comes from ``--id_column``, else from a hash of the normalized prompt (stable across files and runs). An empty
(null) response cell means that teacher did not answer that prompt: no row is written for it.

Example:
    python dataset_scripts/wide_to_long.py wide.jsonl pool.jsonl --prompt_column question \
        --teacher_prefix resp_ --reference_column reference_answer
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    add_correctness,
    add_output_arguments,
    check_output,
    extra_columns,
    fail,
    load_long,
    note_replaced,
    prompt_hash,
    save_long,
    text_cell,
)


def wide_to_long(
    rows: list[dict],
    teachers: dict[str, str],
    prompt_column: str = "prompt",
    id_column: str | None = None,
    source: str = "input",
) -> list[dict]:
    """Long rows from wide ones; ``teachers`` maps each response column to its teacher name.

    Example:
        >>> wide_to_long([{"prompt": "2+2?", "resp_a": "4", "resp_b": None, "level": 1}],
        ...              {"resp_a": "a", "resp_b": "b"})
        [{'prompt_id': '30ad205245cd2523', 'prompt': '2+2?', 'teacher': 'a', 'response': '4', 'level': 1}]
    """
    used = {prompt_column, *teachers}
    if id_column:
        used.add(id_column)
    long_rows = []
    for index, row in enumerate(rows):
        where = f"{source} row {index}"
        prompt = text_cell(
            row.get(prompt_column), f"{where}, column {prompt_column!r}", "Fix the row or pick --prompt_column."
        )
        extras = extra_columns(row, used)
        prompt_id = row[id_column] if id_column else prompt_hash(prompt)
        if prompt_id is None:
            fail(f"{where}, column {id_column!r}: empty id. Fill it in, or drop --id_column to hash the prompt.")
        for column, teacher in teachers.items():
            response = text_cell(
                row.get(column), f"{where}, column {column!r}", "Fix the cell.", allow_none=True, numbers=True
            )
            if response is None:
                continue
            long_rows.append({"prompt_id": prompt_id, "prompt": prompt, "teacher": teacher, "response": response})
            long_rows[-1].update(extras)
    return long_rows


def teacher_columns(columns: list[str], teachers: str | None, prefix: str | None, source: str) -> dict[str, str]:
    """Map response columns to teacher names from ``--teachers a,b`` or ``--teacher_prefix resp_``.

    Example:
        >>> teacher_columns(["prompt", "resp_a", "resp_b"], None, "resp_", "wide.jsonl")
        {'resp_a': 'a', 'resp_b': 'b'}
    """
    if teachers is not None:
        names = [name.strip() for name in teachers.split(",") if name.strip()]
        missing = [name for name in names if name not in columns]
        if missing:
            fail(f"{source}: teacher column {missing[0]!r} not found (columns: {', '.join(columns)}). Fix --teachers.")
        if not names:
            fail("--teachers is empty. List the response columns, e.g. --teachers gpt4o,claude.")
        return {name: name for name in names}
    found = {column: column[len(prefix) :] for column in columns if column.startswith(prefix) and column != prefix}
    if not found:
        fail(f"{source}: no column starts with {prefix!r} (columns: {', '.join(columns)}). Fix --teacher_prefix.")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="Wide table: .jsonl, .json, .parquet, .csv or a dataset folder.")
    parser.add_argument("output", help="Where to write the long rows (.jsonl, .json, .parquet, .csv or a folder).")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--teachers", help="Comma-separated response columns, one per teacher (the teacher names).")
    group.add_argument(
        "--teacher_prefix", "--teacher-prefix",
        help="Every column starting with this is a teacher: resp_gpt4o -> gpt4o."
    )
    parser.add_argument("--prompt_column", "--prompt-column", default="prompt", help="Column holding the prompt.")
    parser.add_argument(
        "--id_column", "--id-column", default=None, help="Column holding the prompt id (default: hash of prompt)."
    )
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    check_output(args.output, [args.input], args.overwrite)
    required = [args.prompt_column] + [c for c in (args.id_column, args.reference_column) if c]
    def needed(names: list[str]) -> list[str]:  # the prompt and the response columns are read as they are
        return [args.prompt_column, *teacher_columns(names, args.teachers, args.teacher_prefix, args.input)]

    rows = load_long(args.input, required=required, needed=needed)
    columns = list(rows[0]) if rows else []
    teachers = teacher_columns(columns, args.teachers, args.teacher_prefix, args.input)
    if args.prompt_column in teachers or args.id_column in teachers:
        fail(f"the prompt or id column is also listed as a teacher ({', '.join(teachers)}). Fix the teacher options.")
    note_replaced(columns, [args.prompt_column, args.id_column, *teachers], args.input)
    long_rows = wide_to_long(rows, teachers, args.prompt_column, args.id_column, args.input)
    add_correctness(long_rows, args.reference_column)
    save_long(long_rows, args.output, overwrite=args.overwrite, inputs=[args.input])
    skipped = len(rows) * len(teachers) - len(long_rows)
    note = f" ({skipped} empty responses skipped)" if skipped else ""
    print(f"wrote {len(long_rows)} rows: {len(rows)} prompts x {len(teachers)} teachers{note} -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
