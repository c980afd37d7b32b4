"""Turn rows that hold several sampled generations per prompt (a list column) into hf_localnat's long format.

The OpenR1-Math layout is the example: ``problem``, ``answer``, ``generations: list[str]``,
``correctness_math_verify: list[bool]``. Each generation becomes one row: ``prompt_id, prompt, teacher, response,
sample_index`` (its place in the list), then the input's other columns. A list column with one value per generation
(``--spread`` names them; by default every list column with one value per generation, conversations excepted) is
spread along: the i-th generation's row gets its i-th value. A row where such a list has another length is an error
that names it. The teacher comes from ``--teacher_column``, or is one name for every row (``--teacher``). The prompt
id comes from ``--id_column``, else from a hash of the normalized prompt, so it is stable across files and runs. An
empty (null) generation is skipped.

With one teacher and several samples per prompt, select within each prompt as usual: rejection sampling by
naturalness is ``hf-localnat select SCORED --group_by prompt_id --where "correct == True" --k 1``.

Example:
    python dataset_scripts/generations_to_long.py openr1.parquet pool.jsonl --prompt_column problem \
        --teacher deepseek-r1 --reference_column answer
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
    save_long,
    teacher_and_id,
    text_cell,
)


def spread_columns(rows: list[dict], generations_column: str, spread: list[str] | None, source: str) -> list[str]:
    """The list columns spread along the generations: ``spread`` if given; else every list column that has one
    value per generation in some row with two or more generations (a conversation, a list of ``role`` dicts, is
    never one). Such a column with another length in any row is an error naming the row: spreading it would be
    wrong and keeping it whole would be a guess, so ``--spread`` says which it is.

    Example:
        >>> rows = [{"g": ["a", "b"], "ok": [True, False], "tags": ["x"]}, {"g": ["c"], "ok": [True], "tags": ["y"]}]
        >>> spread_columns(rows, "g", None, "input")
        ['ok']
    """
    if spread is not None:
        return spread

    def count(row: dict) -> int:
        generations = row.get(generations_column)
        return len(generations) if isinstance(generations, list) else -1

    def conversation(values: list) -> bool:
        return bool(values) and all(isinstance(v, dict) and "role" in v for v in values)

    names = list(dict.fromkeys(c for row in rows for c in row if c != generations_column))
    columns = []
    for column in names:
        if any(isinstance(row.get(column), list) and conversation(row[column]) for row in rows):
            continue
        if not any(isinstance(row.get(column), list) and 2 <= count(row) == len(row[column]) for row in rows):
            continue
        for index, row in enumerate(rows):
            v = row.get(column)
            if v is not None and (not isinstance(v, list) or len(v) != count(row)) and count(row) >= 0:
                got = f"{len(v)} values" if isinstance(v, list) else f"a {type(v).__name__}"
                fail(f"{source} row {index}, column {column!r}: {got} for {count(row)} generations, where other "
                     f"rows have one value per generation. Fix the row, or name the columns to spread with "
                     f"--spread (the others are kept whole).")  # fmt: skip
        columns.append(column)
    return columns


def generations_to_long(
    rows: list[dict],
    prompt_column: str = "problem",
    generations_column: str = "generations",
    teacher: str | None = None,
    teacher_column: str | None = None,
    id_column: str | None = None,
    spread: list[str] | None = None,
    source: str = "input",
) -> list[dict]:
    """One long row per generation; list columns in ``spread`` (default: :func:`spread_columns`) go along.

    Example:
        >>> rows = [{"problem": "2+2?", "generations": ["4", "5"], "ok": [True, False], "level": 1}]
        >>> [(r["teacher"], r["response"], r["sample_index"], r["ok"]) for r in generations_to_long(rows, teacher="r1")]
        [('r1', '4', 0, True), ('r1', '5', 1, False)]
    """
    columns = spread_columns(rows, generations_column, spread, source)
    used = {prompt_column, generations_column, "sample_index", *columns, *(c for c in (id_column, teacher_column) if c)}
    long_rows = []
    for index, row in enumerate(rows):
        where = f"{source} row {index}"
        prompt = text_cell(
            row.get(prompt_column), f"{where}, column {prompt_column!r}", "Fix the row or pick --prompt_column."
        )
        generations = row.get(generations_column)
        if not isinstance(generations, list):
            got = "nothing" if generations is None else type(generations).__name__
            fail(f"{where}, column {generations_column!r}: expected a list of generations, got {got}. "
                 "Fix the row or pick --generations_column.")  # fmt: skip
        for column in columns:
            values = row.get(column)
            if values is None:  # nothing recorded for this row: None for each of its generations
                continue
            if not isinstance(values, list) or len(values) != len(generations):
                count = len(values) if isinstance(values, list) else type(values).__name__
                fail(f"{where}, column {column!r}: {count} values for {len(generations)} generations. Give one "
                     f"value per generation, or leave the column out of --spread.")  # fmt: skip
        prompt_id, name = teacher_and_id(row, where, prompt, teacher, teacher_column, id_column)
        extras = extra_columns(row, used)
        for sample, generation in enumerate(generations):
            response = text_cell(
                generation, f"{where}, column {generations_column!r}, generation {sample}", "Fix the generation.",
                allow_none=True,
            )  # fmt: skip
            if response is None:
                continue
            out = {"prompt_id": prompt_id, "prompt": prompt, "teacher": name, "response": response}
            out["sample_index"] = sample
            out.update({column: None if row.get(column) is None else row[column][sample] for column in columns})
            out.update(extras)
            long_rows.append(out)
    return long_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="Rows with a list of generations: .jsonl, .json, .parquet or a folder.")
    parser.add_argument("output", help="Where to write the long rows (.jsonl, .json, .parquet, .csv or a folder).")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--teacher", help="One teacher name for every row (e.g. the model that sampled them).")
    group.add_argument("--teacher_column", "--teacher-column", help="Column naming the teacher of each row.")
    parser.add_argument("--prompt_column", "--prompt-column", default="problem", help="Column holding the prompt.")
    parser.add_argument(
        "--generations_column", "--generations-column", default="generations",
        help="Column holding the list of generations.",
    )  # fmt: skip
    parser.add_argument(
        "--id_column", "--id-column", default=None, help="Column holding the prompt id (default: hash of prompt)."
    )
    parser.add_argument(
        "--spread", default=None,
        help="Comma-separated list columns with one value per generation (default: every such list column).",
    )  # fmt: skip
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    check_output(args.output, [args.input], args.overwrite)
    required = [args.prompt_column, args.generations_column]
    required += [c for c in (args.id_column, args.teacher_column, args.reference_column) if c]
    rows = load_long(args.input, required=required, needed=[args.prompt_column, args.generations_column])
    spread = [c.strip() for c in args.spread.split(",") if c.strip()] if args.spread else None
    for column in spread or []:
        if rows and column not in rows[0]:
            fail(f"{args.input}: --spread column {column!r} not found (columns: {', '.join(rows[0])}).")
    note_replaced(rows[0] if rows else [], required, args.input)
    long_rows = generations_to_long(
        rows, args.prompt_column, args.generations_column, args.teacher, args.teacher_column, args.id_column, spread,
        args.input,
    )  # fmt: skip
    add_correctness(long_rows, args.reference_column)
    save_long(long_rows, args.output, overwrite=args.overwrite, inputs=[args.input])
    prompts = len({row["prompt_id"] for row in long_rows})
    print(f"wrote {len(long_rows)} generations of {prompts} prompts -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
