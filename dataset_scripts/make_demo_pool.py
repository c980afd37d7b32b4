#!/usr/bin/env python3
"""Make the embedded demo pool ``hf_localnat/data/demo_pool.jsonl`` from the ZeroEval MATH level-5 outputs.

The source is ``zeroeval_math_l5.jsonl`` of the shared data (721 MATH level-5 problems, each answered by 10
teacher models; yuchenlin/ZeroEval, Apache-2.0; see ``hf_localnat/data/README.md``). Only this script reads
it; the package ships the rows it writes. The rows are chosen by a fixed rule that never looks at a score:

1. **Teachers**: rank the file's teachers by their accuracy over the whole file (the share of their rows with
   ``correct`` true; ties by name), then keep every ``--every``-th one from the top (ranks 1, 3, 5, ... with
   the default 2). With 10 teachers that is 5, spread from the most to the least accurate.
2. **Prompts**: walk the prompts in file order (the order of first appearance of ``prompt_id``) and keep the
   first ``--prompts`` whose prompt has at most ``--max_prompt_chars`` characters and whose response from
   *every* kept teacher has one row, a known ``correct`` (true or false), and a non-blank text of at most
   ``--max_response_chars`` characters. The caps keep the demo within its time budget on a laptop CPU.

The rows are written grouped by prompt (in file order), the teachers of each prompt in rank order, with the
source's columns ``prompt_id, prompt, teacher, response, model_answer, reference_answer, correct``, one JSON
object a line. The same input and options always write the same bytes; the file is written atomically and an
existing one is replaced only with ``--overwrite``.

Example:
    python dataset_scripts/make_demo_pool.py ../shared/data/multiteacher/zeroeval_math_l5.jsonl --overwrite
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import check_output, fail  # noqa: E402

from hf_localnat.data_io import atomic_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "hf_localnat" / "data" / "demo_pool.jsonl"
COLUMNS = ("prompt_id", "prompt", "teacher", "response", "model_answer", "reference_answer", "correct")
PROMPTS = 12
EVERY = 2
MAX_PROMPT_CHARS = 400
MAX_RESPONSE_CHARS = 800


def read_jsonl(path: Path) -> list[dict]:
    """Every row of a JSONL file, in order; a line that is not a JSON object with the needed columns exits.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "pool.jsonl"
        >>> _ = f.write_text(json.dumps(dict.fromkeys(COLUMNS, "x")) + "\\n\\n")
        >>> [row["teacher"] for row in read_jsonl(f)]
        ['x']
    """
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    fail(f"{path} line {number}: not JSON ({err.msg}). Give the ZeroEval multiteacher JSONL file.")
                missing = [c for c in COLUMNS if not isinstance(row, dict) or c not in row]
                if missing:
                    fail(f"{path} line {number}: no column(s) {', '.join(missing)}. Give the multiteacher JSONL file.")
                rows.append(row)
    except OSError as err:
        fail(f"cannot read {path}: {err.strerror or err}")
    if not rows:
        fail(f"{path} holds no rows.")
    return rows


def teacher_accuracy(rows: list[dict]) -> dict[str, float]:
    """Each teacher's accuracy over all its rows: the share with ``correct`` true (None counts as not correct).

    Example:
        >>> teacher_accuracy([{"teacher": "a", "correct": True}, {"teacher": "a", "correct": None},
        ...                   {"teacher": "b", "correct": False}])
        {'a': 0.5, 'b': 0.0}
    """
    right: dict[str, int] = defaultdict(int)
    seen: dict[str, int] = defaultdict(int)
    for row in rows:
        seen[row["teacher"]] += 1
        right[row["teacher"]] += row["correct"] is True
    return {teacher: right[teacher] / seen[teacher] for teacher in seen}


def choose_teachers(accuracy: dict[str, float], every: int = EVERY) -> list[str]:
    """The teachers ranked by accuracy (best first, ties by name), then every ``every``-th from the top.

    Example:
        >>> choose_teachers({"a": 0.9, "b": 0.7, "c": 0.7, "d": 0.2, "e": 0.1})
        ['a', 'c', 'e']
    """
    ranked = sorted(accuracy, key=lambda teacher: (-accuracy[teacher], teacher))
    return ranked[::every]


def _fits(row: dict | None, max_response_chars: int) -> bool:
    if row is None or row["correct"] not in (True, False):
        return False
    response = row["response"]
    return isinstance(response, str) and bool(response.strip()) and len(response) <= max_response_chars


def choose_prompts(
    rows: list[dict],
    teachers: list[str],
    prompts: int = PROMPTS,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    max_response_chars: int = MAX_RESPONSE_CHARS,
) -> list[dict]:
    """The rows of the first ``prompts`` prompts (file order) that every teacher answers within the caps.

    A prompt is kept when its text has at most ``max_prompt_chars`` characters and each of ``teachers`` has
    exactly one row for it, with ``correct`` true or false and a non-blank response of at most
    ``max_response_chars`` characters. The rows come grouped by prompt, teachers in the order given.

    Example:
        >>> rows = [{"prompt_id": p, "prompt": "Q" + p, "teacher": t, "response": r, "correct": c}
        ...         for p, t, r, c in [("1", "a", "long answer", True), ("1", "b", "ok", False),
        ...                            ("2", "a", "ok", True), ("2", "b", "ok", None),
        ...                            ("3", "b", "ok", True), ("3", "a", "ok", False)]]
        >>> [(r["prompt_id"], r["teacher"]) for r in choose_prompts(rows, ["a", "b"], 5, 10, 4)]
        [('3', 'a'), ('3', 'b')]
    """
    answers: dict[object, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        answers[row["prompt_id"]][row["teacher"]].append(row)
    kept: list[dict] = []
    taken = 0
    for prompt_id in dict.fromkeys(row["prompt_id"] for row in rows):
        if taken == prompts:
            break
        group = answers[prompt_id]
        chosen = [group[t][0] if len(group[t]) == 1 else None for t in teachers]
        if not all(_fits(row, max_response_chars) for row in chosen):
            continue
        texts = {row["prompt"] for row in chosen}
        if len(texts) != 1 or not isinstance(chosen[0]["prompt"], str) or len(chosen[0]["prompt"]) > max_prompt_chars:
            continue
        kept += chosen
        taken += 1
    return kept


def build_pool(
    rows: list[dict],
    prompts: int = PROMPTS,
    every: int = EVERY,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    max_response_chars: int = MAX_RESPONSE_CHARS,
) -> tuple[list[dict], dict[str, float]]:
    """The demo rows (the source's columns, in order) and the whole-file accuracy of the teachers they keep.

    Example:
        >>> rows = [{"prompt_id": p, "prompt": "Q", "teacher": t, "response": "ok", "model_answer": "1",
        ...          "reference_answer": "1", "correct": t == "a"} for p in "12" for t in "abc"]
        >>> pool, accuracy = build_pool(rows, prompts=1)
        >>> [(r["prompt_id"], r["teacher"], r["correct"]) for r in pool], accuracy
        ([('1', 'a', True), ('1', 'c', False)], {'a': 1.0, 'c': 0.0})
    """
    accuracy = teacher_accuracy(rows)
    teachers = choose_teachers(accuracy, every)
    kept = choose_prompts(rows, teachers, prompts, max_prompt_chars, max_response_chars)
    return [{column: row[column] for column in COLUMNS} for row in kept], {t: accuracy[t] for t in teachers}


def pool_lines(rows: list[dict]) -> str:
    """The JSONL text of the rows: one object a line, the columns in order, ASCII escapes (byte-stable).

    Example:
        >>> print(pool_lines([{"prompt_id": "p", "prompt": "π?", "teacher": "t", "response": "r", "model_answer": "3",
        ...                    "reference_answer": "3", "correct": True}])[:71])
        {"prompt_id": "p", "prompt": "\\u03c0?", "teacher": "t", "response": "r"
    """
    return "".join(json.dumps({column: row[column] for column in COLUMNS}, ensure_ascii=True) + "\n" for row in rows)


def summary(rows: list[dict], accuracy: dict[str, float], output: Path) -> str:
    """One line: what was written, and each kept teacher's whole-file and in-pool accuracy."""
    prompts = len({row["prompt_id"] for row in rows})
    parts = []
    for teacher, overall in accuracy.items():
        mine = [row["correct"] for row in rows if row["teacher"] == teacher]
        parts.append(f"{teacher} {overall:.3f} (here {sum(mine)}/{len(mine)})")
    return (
        f"wrote {len(rows)} rows ({prompts} prompts x {len(accuracy)} teachers) to {output}; "
        f"accuracy over the whole file (and in the pool): {', '.join(parts)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="The shared zeroeval_math_l5.jsonl (multiteacher format).")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="JSONL file to write (default: the shipped pool)."
    )
    parser.add_argument("--prompts", type=int, default=PROMPTS, help=f"Prompts to keep (default {PROMPTS}).")
    parser.add_argument(
        "--every", type=int, default=EVERY, help=f"Keep every N-th teacher in accuracy order (default {EVERY})."
    )
    parser.add_argument(
        "--max_prompt_chars", "--max-prompt-chars", type=int, default=MAX_PROMPT_CHARS,
        help=f"Longest prompt kept, in characters (default {MAX_PROMPT_CHARS}).",
    )  # fmt: skip
    parser.add_argument(
        "--max_response_chars", "--max-response-chars", type=int, default=MAX_RESPONSE_CHARS,
        help=f"Longest response kept, in characters, for every kept teacher (default {MAX_RESPONSE_CHARS}).",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="Replace OUTPUT if it exists (the shipped pool).")
    args = parser.parse_args(argv)
    for name in ("prompts", "every", "max_prompt_chars", "max_response_chars"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be at least 1, got {getattr(args, name)}.")
    output = check_output(args.output, [args.source], args.overwrite)
    rows, accuracy = build_pool(
        read_jsonl(args.source), args.prompts, args.every, args.max_prompt_chars, args.max_response_chars
    )
    if len({row["prompt_id"] for row in rows}) < args.prompts:
        found = len({row["prompt_id"] for row in rows})
        fail(f"only {found} prompts of {args.source} fit the caps; {args.prompts} asked. Raise the caps.")
    with atomic_file(output) as tmp:
        tmp.write_text(pool_lines(rows), encoding="utf-8", newline="\n")
    print(summary(rows, accuracy, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
