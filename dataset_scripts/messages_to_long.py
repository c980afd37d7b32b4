"""Turn conversational datasets (a ``messages`` list of ``{role, content}`` per row) into hf_localnat's long format.

The response is the final assistant turn; the prompt is the last user turn before it. Earlier turns are dropped,
because scoring reads a response in the context of the question it answers. A system prompt is kept apart in a
``system`` column, so that the same question asked under different system prompts still joins as one prompt; pass
``--system_in_prompt`` to put it before the prompt instead (a blank line between). Other columns are kept.

The teacher comes from a column (``--teacher_column``), from each input file's name (``--teacher_from_filename``,
one file per teacher), or is given (``--teacher``). The prompt id comes from ``--id_column``, else from a hash of
the normalized prompt.

Example:
    python dataset_scripts/messages_to_long.py runs/gpt-4o.jsonl runs/claude.jsonl pool.jsonl \
        --teacher_from_filename --reference_column reference_answer
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
    long_row,
    split_conversation,
)


def messages_to_long(
    rows: list[dict],
    teacher: str | None = None,
    teacher_column: str | None = None,
    messages_column: str = "messages",
    id_column: str | None = None,
    system_in_prompt: bool = False,
    source: str = "input",
) -> list[dict]:
    """Long rows from conversational rows; the teacher is ``teacher``, or each row's ``teacher_column``.

    Example:
        >>> chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
        >>> messages_to_long([{"messages": chat, "id": 7}], teacher="a", id_column="id")
        [{'prompt_id': 7, 'prompt': '2+2?', 'teacher': 'a', 'response': '4'}]
    """
    used = {messages_column, *(c for c in (teacher_column, id_column) if c)}
    long_rows = []
    for index, row in enumerate(rows):
        where = f"{source} row {index}"
        system, prompt, response = split_conversation(
            row.get(messages_column), f"{where}, column {messages_column!r}", system_in_prompt
        )
        long_rows.append(
            long_row(
                row, where, prompt, response, system, teacher, teacher_column=teacher_column, id_column=id_column,
                used=used,
            )
        )
    return long_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="Conversational files (.jsonl, .json, .parquet) or folders.")
    parser.add_argument("output", help="Where to write the long rows (.jsonl, .json, .parquet, .csv or a folder).")
    add_teacher_arguments(parser)
    parser.add_argument(
        "--messages_column", "--messages-column", default="messages", help="Column holding the list of messages."
    )
    parser.add_argument(
        "--id_column", "--id-column", default=None, help="Column holding the prompt id (default: hash of prompt)."
    )
    parser.add_argument(
        "--system_in_prompt", "--system-in-prompt",
        action="store_true", help="Put the system prompt before the prompt, not in `system`."
    )
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    required = [args.messages_column] + [c for c in (args.teacher_column, args.id_column, args.reference_column) if c]
    return convert_files(
        args,
        required,
        lambda rows, teacher, path: messages_to_long(
            rows, teacher, args.teacher_column, args.messages_column, args.id_column, args.system_in_prompt, path
        ),
        needed=[args.messages_column],
    )

if __name__ == "__main__":
    raise SystemExit(main())
