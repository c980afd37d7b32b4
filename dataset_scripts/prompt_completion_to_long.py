"""Turn TRL prompt-completion datasets into hf_localnat's long format.

``prompt`` and ``completion`` may be strings (standard format) or lists of ``{role, content}`` messages
(conversational format). From a conversational prompt the last user turn is the prompt and a system turn goes to a
``system`` column (or before the prompt with ``--system_in_prompt``); from a conversational completion the final
assistant turn is the response. Other columns are kept.

The teacher comes from a column (``--teacher_column``), from each input file's name (``--teacher_from_filename``),
or is given (``--teacher``). The prompt id comes from ``--id_column``, else from a hash of the normalized prompt.

Example:
    python dataset_scripts/prompt_completion_to_long.py distill_gpt4o.jsonl pool.jsonl --teacher gpt4o \
        --reference_column reference_answer
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    add_output_arguments,
    add_teacher_arguments,
    convert_files,
    fail,
    long_row,
    message_text,
    split_conversation,
    text_cell,
)


def _completion_text(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a CSV reader turns a completion "4" into the integer 4
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value):
        turns = [i for i, message in enumerate(value) if message["role"] == "assistant"]
        if not turns:
            roles = ", ".join(str(message["role"]) for message in value) or "none"
            fail(f"{where}: no assistant turn in the completion (roles: {roles}). Drop the row or fix it.")
        return message_text(value[turns[-1]].get("content"), f"{where}, message {turns[-1]}")
    fail(f"{where}: expected text or a list of {{role, content}} messages, got {str(value)[:60]!r}.")


def prompt_completion_to_long(
    rows: list[dict],
    teacher: str | None = None,
    teacher_column: str | None = None,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    id_column: str | None = None,
    system_in_prompt: bool = False,
    source: str = "input",
) -> list[dict]:
    """Long rows from prompt-completion rows (text or conversational); the teacher is ``teacher`` or a column.

    Example:
        >>> prompt_completion_to_long([{"prompt": [{"role": "user", "content": "2+2?"}],
        ...                             "completion": [{"role": "assistant", "content": "4"}]}], teacher="a")
        [{'prompt_id': '30ad205245cd2523', 'prompt': '2+2?', 'teacher': 'a', 'response': '4'}]
    """
    used = {prompt_column, completion_column, *(c for c in (teacher_column, id_column) if c)}
    long_rows = []
    for index, row in enumerate(rows):
        where = f"{source} row {index}"
        value = row.get(prompt_column)
        system = None
        if isinstance(value, list):
            system, prompt, _ = split_conversation(
                value, f"{where}, column {prompt_column!r}", system_in_prompt, need_response=False
            )
        else:
            prompt = text_cell(value, f"{where}, column {prompt_column!r}", "Fix the row or pick --prompt_column.")
        response = _completion_text(row.get(completion_column), f"{where}, column {completion_column!r}")
        long_rows.append(
            long_row(
                row, where, prompt, response, system, teacher, teacher_column=teacher_column, id_column=id_column,
                used=used,
            )
        )
    return long_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="Prompt-completion files (.jsonl, .json, .parquet, .csv) or folders.")
    parser.add_argument("output", help="Where to write the long rows (.jsonl, .json, .parquet, .csv or a folder).")
    add_teacher_arguments(parser)
    parser.add_argument(
        "--prompt_column", "--prompt-column", default="prompt", help="Column holding the prompt (text or messages)."
    )
    parser.add_argument(
        "--completion_column", "--completion-column",
        default="completion", help="Column holding the completion (text or messages)."
    )
    parser.add_argument(
        "--id_column", "--id-column", default=None, help="Column holding the prompt id (default: hash of prompt)."
    )
    parser.add_argument(
        "--system_in_prompt", "--system-in-prompt",
        action="store_true", help="Put a system turn before the prompt, not in `system`."
    )
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    optional = (args.teacher_column, args.id_column, args.reference_column)
    required = [args.prompt_column, args.completion_column] + [c for c in optional if c]
    return convert_files(
        args,
        required,
        lambda rows, teacher, path: prompt_completion_to_long(
            rows,
            teacher,
            args.teacher_column,
            args.prompt_column,
            args.completion_column,
            args.id_column,
            args.system_in_prompt,
            path,
        ),
        needed=[args.prompt_column, args.completion_column],
    )

if __name__ == "__main__":
    raise SystemExit(main())
