"""Join several single-teacher datasets into one hf_localnat long-format pool.

Each ``--input NAME=PATH`` holds one teacher's responses (a prompt column and a response column). Rows are matched
across teachers on the normalized prompt text (NFKC, whitespace collapsed, stripped, casefolded), or on
``--id_column``. The output has ``prompt_id, prompt, teacher, response`` and each input's other columns; the prompt
text is the first input's. An input's own ``teacher`` or ``prompt_id`` column is replaced.

Prompts some teachers did not answer are listed; they are kept, unless ``--require_all`` keeps only the prompts
every teacher answered (a fair comparison of teachers). Several rows of one teacher for one prompt (samples) are
all kept.

Example:
    python dataset_scripts/join_teachers.py --input gpt4o=runs/gpt4o.jsonl --input claude=runs/claude.parquet \
        pool.jsonl --require_all
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
    normalize_prompt,
    note_replaced,
    prompt_hash,
    save_long,
    text_cell,
)


def join_teachers(
    inputs: dict[str, list[dict]],
    prompt_column: str = "prompt",
    response_column: str = "response",
    id_column: str | None = None,
    require_all: bool = False,
    sources: dict[str, str] | None = None,
) -> tuple[list[dict], dict[str, list[str]]]:
    """Join teachers' rows on the normalized prompt (or ``id_column``); also return the prompts each teacher lacks.

    Rows come out grouped by prompt (in order of first appearance), teachers in the order of ``inputs``. The second
    value maps each teacher to the prompt ids it did not answer (before ``require_all`` drops them).

    Example:
        >>> rows, missing = join_teachers({"a": [{"prompt": "2+2?", "response": "4"}],
        ...                                "b": [{"prompt": " 2+2? ", "response": "four"}, {"prompt": "1+1?",
        ...                                       "response": "2"}]})
        >>> [(r["prompt"], r["teacher"], r["response"]) for r in rows]
        [('2+2?', 'a', '4'), ('2+2?', 'b', 'four'), ('1+1?', 'b', '2')]
        >>> missing
        {'a': ['cfe29f43bcc21dd4'], 'b': []}
    """
    sources = sources or {}
    used = {prompt_column, response_column, *([id_column] if id_column else [])}
    prompts: dict[str, tuple] = {}  # join key -> (prompt_id, prompt text), first appearance wins
    by_key: dict[str, dict[str, list[dict]]] = {}
    for teacher, rows in inputs.items():
        source = sources.get(teacher, teacher)
        for index, row in enumerate(rows):
            where = f"{source} row {index}"
            prompt = text_cell(
                row.get(prompt_column), f"{where}, column {prompt_column!r}", "Fix the row or pick --prompt_column."
            )
            response = text_cell(
                row.get(response_column),
                f"{where}, column {response_column!r}",
                "Fix the row or pick --response_column.",
                allow_none=True,
                numbers=True,
            )
            if response is None:
                continue  # an empty cell: this teacher has no answer here
            if id_column:
                if row.get(id_column) is None:
                    fail(f"{where}, column {id_column!r}: empty id. Fill it in, or drop --id_column to join on text.")
                key = str(row[id_column])  # 7 and "7" from a CSV and a JSON file are the same prompt
                prompt_id = row[id_column]
            else:
                key = normalize_prompt(prompt)
                prompt_id = prompt_hash(prompt)
            prompts.setdefault(key, (prompt_id, prompt))
            long_row = {"prompt_id": None, "prompt": None, "teacher": teacher, "response": response}
            long_row.update(extra_columns(row, used))
            by_key.setdefault(key, {}).setdefault(teacher, []).append(long_row)

    missing: dict[str, list[str]] = {teacher: [] for teacher in inputs}
    joined = []
    for key, answers in by_key.items():
        prompt_id, prompt = prompts[key]
        lacking = [teacher for teacher in inputs if teacher not in answers]
        for teacher in lacking:
            missing[teacher].append(prompt_id)
        if lacking and require_all:
            continue
        for teacher in inputs:
            for long_row in answers.get(teacher, []):
                long_row.update(prompt_id=prompt_id, prompt=prompt)
                joined.append(long_row)
    return joined, missing


def parse_inputs(specs: list[str]) -> dict[str, str]:
    """``["gpt4o=a.jsonl", ...]`` -> ``{"gpt4o": "a.jsonl", ...}``; a malformed or repeated name exits.

    Example:
        >>> parse_inputs(["gpt4o=runs/a.jsonl", "claude=runs/b.parquet"])
        {'gpt4o': 'runs/a.jsonl', 'claude': 'runs/b.parquet'}
    """
    inputs: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            fail(f"--input {spec!r}: expected NAME=PATH, e.g. --input gpt4o=runs/gpt4o.jsonl.")
        if name.strip() in inputs:
            fail(f"--input: teacher {name.strip()!r} is given twice. Use one --input per teacher.")
        inputs[name.strip()] = path.strip()
    return inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="One teacher's responses (.jsonl, .json, .parquet, .csv or a folder); repeat for each teacher.",
    )
    parser.add_argument("output", help="Where to write the joined rows (.jsonl, .json, .parquet, .csv or a folder).")
    parser.add_argument(
        "--prompt_column", "--prompt-column", default="prompt", help="Column holding the prompt in every input."
    )
    parser.add_argument(
        "--response_column", "--response-column", default="response", help="Column holding the response in every input."
    )
    parser.add_argument(
        "--id_column", "--id-column", default=None, help="Join on this id column instead of the prompt text."
    )
    parser.add_argument(
        "--require_all", "--require-all",
        action="store_true", help="Keep only the prompts every teacher answered (others dropped)."
    )
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    paths = parse_inputs(args.input)
    check_output(args.output, paths.values(), args.overwrite)
    required = [args.prompt_column, args.response_column] + [c for c in (args.id_column, args.reference_column) if c]
    inputs = {}
    for teacher, path in paths.items():
        inputs[teacher] = load_long(path, required=required, needed=[args.prompt_column, args.response_column])
        note_replaced(inputs[teacher][0] if inputs[teacher] else [], required, path)
    if len(paths) < 2:
        print("note: only one --input given; nothing to join, converting it alone.", file=sys.stderr)
    joined, missing = join_teachers(
        inputs, args.prompt_column, args.response_column, args.id_column, args.require_all, sources=paths
    )
    lacking = {prompt_id for ids in missing.values() for prompt_id in ids}
    if lacking:
        per_teacher = ", ".join(f"{teacher} lacks {len(ids)}" for teacher, ids in missing.items() if ids)
        example = next(prompt_id for ids in missing.values() for prompt_id in ids)
        action = "dropped (--require_all)" if args.require_all else "kept (pass --require_all to drop them)"
        print(
            f"note: {len(lacking)} prompts are missing in some teachers ({per_teacher}; "
            f"e.g. prompt_id {example!r}): {action}.",
            file=sys.stderr,
        )
    add_correctness(joined, args.reference_column)
    save_long(joined, args.output, overwrite=args.overwrite, inputs=paths.values())
    prompts = len({row["prompt_id"] for row in joined})
    print(f"wrote {len(joined)} rows: {prompts} prompts, {len(paths)} teachers -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
