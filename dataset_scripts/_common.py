"""Shared plumbing for the dataset scripts: read any supported file, write long format, fail in one line."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from datasets import Dataset

from hf_localnat.data_io import conform_rows, load_rows, require_columns, write_rows
from hf_localnat.errors import LocalnatError
from hf_localnat.outputs import check_output as check_output_path

LONG_COLUMNS = ("prompt_id", "prompt", "teacher", "response")
GRADE_COLUMNS = ("model_answer", "correct")


def fail(message: str) -> NoReturn:
    """Print ``SCRIPT: error: MESSAGE`` and exit 2, like argparse does for bad arguments."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_long(
    source: str | os.PathLike,
    required: Iterable[str] = (),
    needed: Iterable[str] | Callable[[list[str]], Iterable[str]] = (),
    split: str = "train",
) -> list[dict]:
    """Rows of a data file or folder as dicts (hf_localnat's reader); a missing file or column exits with one line.

    ``needed`` are the columns the script reads as they are (prompt, response, messages...), or a function of the
    column names that gives them: one whose values have several types exits naming the types found and the first
    row that broke it. Other such columns (an ``answer`` of floats, lists and strings) are read as text, with one
    warning (see :func:`hf_localnat.data_io.load_rows`).
    """
    try:
        ds = load_rows(source, split=split)
        names = needed(ds.column_names) if callable(needed) else needed
        require_columns(ds, [name for name in names if name in ds.column_names], str(source))
        require_columns(ds, required, str(source))
    except LocalnatError as err:
        fail(str(err))
    return ds.to_list()


def check_output(
    output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False
) -> Path:
    """Check OUTPUT before any work (hf_localnat's output rule: never an input, never replaced without
    ``--overwrite``, a writable folder); exit with one line otherwise."""
    try:
        return check_output_path(output, "rows", inputs=inputs, overwrite=overwrite, flag="OUTPUT")
    except LocalnatError as err:
        fail(str(err))


def save_long(
    rows: list[dict], output: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Write rows atomically in the format the suffix names; refuse to replace an output unless ``overwrite``."""
    path = check_output(output, inputs, overwrite)
    if not rows:
        fail("no rows to write.")
    # Every row gets every column (Dataset.from_list takes its columns from the first row), and a column whose
    # values have several types (a CSV's 4 beside a JSONL's "4", one teacher's list beside another's float) is
    # written as text, by the rule the readers use (hf_localnat.data_io.as_text).
    rows, mixed = conform_rows(rows)
    columns = list(rows[0])
    if mixed:
        names = ", ".join(column.describe() for column in mixed)
        print(f"note: column(s) {names} hold values of several types; written as text.", file=sys.stderr)
    try:
        ds = Dataset.from_list(rows)
    except (TypeError, ValueError, ArithmeticError) as err:  # pyarrow's ArrowInvalid/ArrowTypeError are these
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        fail(f"{path}: the rows cannot be stored together{_bad_column(rows, columns)} ({first}). "
             "Make each column hold one type.")  # fmt: skip
    try:
        return write_rows(ds, path, overwrite=overwrite, inputs=inputs)
    except LocalnatError as err:
        fail(str(err))


def _bad_column(rows: list[dict], columns: list[str]) -> str:
    """", column 'X'" for the first column that cannot be stored on its own, else ""."""
    for column in columns:
        try:
            Dataset.from_dict({column: [row[column] for row in rows]})
        except (TypeError, ValueError, ArithmeticError):
            return f", column {column!r}"
    return ""


def normalize_prompt(text: str) -> str:
    """The form prompts are compared in: NFKC, whitespace runs collapsed to one space, stripped, casefolded.

    Example:
        >>> normalize_prompt("  What is\\u00a02+2?\\n")
        'what is 2+2?'
    """
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def prompt_hash(text: str) -> str:
    """A stable prompt id: the first 16 hex digits of the SHA-256 of the normalized prompt.

    Example:
        >>> prompt_hash("What is 2+2?") == prompt_hash("  what is 2+2? ")
        True
    """
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()[:16]


def teacher_from_path(path: str | os.PathLike) -> str:
    """The teacher named by a file name: ``runs/gpt-4o.jsonl`` -> ``gpt-4o`` (a folder: its name)."""
    path = Path(path)
    return path.name if path.is_dir() else path.stem


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every conversion script shares: --reference_column and --overwrite."""
    parser.add_argument(
        "--reference_column", "--reference-column",
        default=None,
        help="Column holding the reference answer (a number, a bare answer, a '#### N' or \\boxed{} solution): "
        "adds model_answer (the answer read from the response) and correct (True/False, or empty when no answer "
        "can be read), checked with math-verify.",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace OUTPUT if it exists.")


def add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    """Exactly one way to name the teacher: a column, the input file names, or one name for all rows."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--teacher_column", "--teacher-column", help="Column naming the teacher of each row.")
    group.add_argument(
        "--teacher_from_filename", "--teacher-from-filename",
        action="store_true",
        help="Name the teacher after each input file (runs/gpt-4o.jsonl -> gpt-4o).",
    )
    group.add_argument("--teacher", help="One teacher name for every row.")


def text_cell(value: Any, where: str, fix: str, allow_none: bool = False, numbers: bool = False) -> str | None:
    """``value`` if it is text; else exit naming ``where`` (file, row, column) and the ``fix``.

    With ``numbers``, a number becomes its text: a CSV reader turns a response cell "4" into the integer 4.
    """
    if value is None and allow_none:
        return None
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        got = "nothing" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
        fail(f"{where}: expected text, got {got}. {fix}")
    return value


def message_text(content: Any, where: str) -> str:
    """The text of one chat message's content: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        texts = [part.get("text") for part in content if part.get("type", "text") == "text"]
        if texts and all(isinstance(text, str) for text in texts):
            return "".join(texts)
    fail(f"{where}: message content must be text or a list of text parts, got {str(content)[:60]!r}.")


def split_conversation(
    messages: Any, where: str, system_in_prompt: bool = False, need_response: bool = True
) -> tuple[str | None, str | None, str | None]:
    """``(system, prompt, response)`` of a chat: the final assistant turn and the last user turn before it.

    Earlier turns are dropped: scoring reads a response in the context of the prompt that asked for it. The system
    prompt is returned apart, or put before the prompt (a blank line between) with ``system_in_prompt``.

    Example:
        >>> split_conversation([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        ...                     {"role": "assistant", "content": "4"}], "row 0")
        ('Be brief.', '2+2?', '4')
    """
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        fail(f"{where}: expected a list of {{role, content}} messages, got {str(messages)[:60]!r}.")
    roles = [message["role"] for message in messages]
    end = len(messages)
    response = None
    if need_response:
        if "assistant" not in roles:
            fail(f"{where}: no assistant turn (roles: {', '.join(map(str, roles)) or 'none'}). Drop the row or fix it.")
        end = len(roles) - 1 - roles[::-1].index("assistant")
        response = message_text(messages[end].get("content"), f"{where}, message {end}")
    users = [i for i in range(end) if roles[i] == "user"]
    prompt = message_text(messages[users[-1]].get("content"), f"{where}, message {users[-1]}") if users else None
    if prompt is None:
        before = " before the final assistant turn" if need_response else ""
        fail(f"{where}: no user turn{before}. Drop the row or fix it.")
    systems = [
        message_text(messages[i].get("content"), f"{where}, message {i}") for i in range(end) if roles[i] == "system"
    ]
    system = "\n\n".join(systems) if systems else None
    if system_in_prompt and system is not None:
        return None, (f"{system}\n\n{prompt}" if prompt is not None else system), response
    return system, prompt, response


def extra_columns(row: dict, used: Iterable[str], reserved: Iterable[str] = LONG_COLUMNS) -> dict:
    """The row's other columns, kept as they are; those named like an output column (``reserved``) are replaced."""
    skip = set(used) | set(reserved)
    return {key: value for key, value in row.items() if key not in skip}


def note_replaced(
    columns: Iterable[str], used: Iterable[str], source: str, reserved: Iterable[str] = LONG_COLUMNS
) -> None:
    """Say on stderr which input columns the output's own columns replace (an old ``prompt_id``, say)."""
    replaced = [column for column in columns if column in set(reserved) and column not in set(used)]
    if replaced:
        print(
            f"note: {source}: input column(s) {', '.join(replaced)} replaced by the long format's own "
            "(pass them as --id_column/--prompt_column/... to use them instead).",
            file=sys.stderr,
        )


def add_correctness(rows: list[dict], reference_column: str | None) -> None:
    """Add ``model_answer`` and ``correct`` to every row (in place) by checking ``response`` against the reference."""
    if not reference_column:
        return
    from hf_localnat.answers import grade

    for row in rows:
        row["model_answer"], row["correct"] = grade(row.get(reference_column), row.get("response"))


def teacher_and_id(
    row: dict, where: str, prompt: str, teacher: str | None, teacher_column: str | None, id_column: str | None
) -> tuple[Any, str | None]:
    """A row's prompt id (from ``id_column``, else a hash of the prompt) and teacher (from ``teacher_column``,
    else ``teacher``); an empty one is an error naming ``where``."""
    name = teacher
    if teacher_column:
        name = text_cell(row.get(teacher_column), f"{where}, column {teacher_column!r}", "Name the teacher.")
    prompt_id = row.get(id_column) if id_column else prompt_hash(prompt)
    if prompt_id is None:
        fail(f"{where}, column {id_column!r}: empty id. Fill it in, or drop --id_column to hash the prompt.")
    return prompt_id, name


def long_row(
    row: dict,
    where: str,
    prompt: str,
    response: str,
    system: str | None,
    teacher: str | None,
    *,
    teacher_column: str | None,
    id_column: str | None,
    used: set[str],
) -> dict:
    """One long-format row from a parsed conversation: teacher from the column (else ``teacher``), id from the
    column (else a hash of the prompt), the input's other columns kept, and the conversation's system prompt."""
    prompt_id, name = teacher_and_id(row, where, prompt, teacher, teacher_column, id_column)
    out = {"prompt_id": prompt_id, "prompt": prompt, "teacher": name, "response": response}
    out.update(extra_columns(row, used))
    if system is not None:
        out["system"] = system  # the conversation's own system prompt wins over a `system` column
    return out


def convert_files(
    args: Any,
    required: list[str],
    convert: Callable[[list[dict], str | None, str], list[dict]],
    needed: Iterable[str] = (),
) -> int:
    """The shared ``main`` of the per-file converters: read each of ``args.inputs`` (``needed``: as for
    :func:`load_long`), convert its rows with ``convert(rows, teacher, path)`` (teacher from the file name or
    ``--teacher``), add ``correct``, write once."""
    check_output(args.output, args.inputs, args.overwrite)
    long_rows: list[dict] = []
    for path in args.inputs:
        rows = load_long(path, required=required, needed=needed)
        note_replaced(rows[0] if rows else [], required, path)
        teacher = teacher_from_path(path) if args.teacher_from_filename else args.teacher
        long_rows += convert(rows, teacher, path)
    add_correctness(long_rows, args.reference_column)
    save_long(long_rows, args.output, overwrite=args.overwrite, inputs=args.inputs)
    teachers = len({row["teacher"] for row in long_rows})
    print(f"wrote {len(long_rows)} rows from {len(args.inputs)} files ({teachers} teachers) -> {args.output}")
    return 0
