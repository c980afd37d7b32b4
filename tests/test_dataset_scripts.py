"""The dataset scripts on tiny local files: exact output rows, correctness columns, one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "dataset_scripts"
sys.path.insert(0, str(SCRIPTS))

import generations_to_long  # noqa: E402
import join_teachers  # noqa: E402
import messages_to_long  # noqa: E402
import processbench_to_long  # noqa: E402
import prompt_completion_to_long  # noqa: E402
import take_prompts  # noqa: E402
import wide_to_long  # noqa: E402
from _common import normalize_prompt, prompt_hash  # noqa: E402

Q1, Q2 = "What is 2+2?", "What is 3*5?"


@pytest.fixture(autouse=True)
def quiet_datasets():
    # Keep stderr to the scripts' own lines, so the one-line error checks read only those.
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def error_line(capsys, call) -> str:
    """Run ``call``, expect exit 2, and return its single stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


def test_prompt_ids_are_stable_under_normalization():
    assert normalize_prompt("  What\u00a0is   2+2?\n") == "what is 2+2?"
    assert prompt_hash("WHAT IS 2+2? ") == prompt_hash(Q1)
    assert prompt_hash(Q1) != prompt_hash(Q2)


def test_wide_to_long_with_prefix_and_correctness(tmp_path, capsys):
    wide = write_jsonl(
        tmp_path / "wide.jsonl",
        [
            {"question": Q1, "resp_a": r"So \boxed{4}.", "resp_b": "The answer is 5.", "ref": "4", "level": 1},
            {"question": Q2, "resp_a": "No idea.", "resp_b": None, "ref": "15", "level": 2},
        ],
    )
    out = tmp_path / "long.jsonl"
    args = [str(wide), str(out), "--prompt-column", "question", "--teacher-prefix", "resp_", "--reference-column"]
    assert wide_to_long.main([*args, "ref"]) == 0
    assert "1 empty responses skipped" in capsys.readouterr().out
    assert read_jsonl(out) == [
        {"prompt_id": prompt_hash(Q1), "prompt": Q1, "teacher": "a", "response": r"So \boxed{4}.", "ref": "4",
         "level": 1, "model_answer": "4", "correct": True},
        {"prompt_id": prompt_hash(Q1), "prompt": Q1, "teacher": "b", "response": "The answer is 5.", "ref": "4",
         "level": 1, "model_answer": "5", "correct": False},
        {"prompt_id": prompt_hash(Q2), "prompt": Q2, "teacher": "a", "response": "No idea.", "ref": "15",
         "level": 2, "model_answer": None, "correct": None},
    ]  # fmt: skip


def test_wide_to_long_teachers_and_id_column_from_csv(tmp_path):
    wide = tmp_path / "wide.csv"
    pd.DataFrame([{"id": 7, "prompt": Q1, "gpt": "4", "claude": "four", "other": "x"}]).to_csv(wide, index=False)
    out = tmp_path / "long.parquet"
    assert wide_to_long.main([str(wide), str(out), "--teachers", "gpt,claude", "--id-column", "id"]) == 0
    assert pd.read_parquet(out).to_dict("records") == [
        {"prompt_id": 7, "prompt": Q1, "teacher": "gpt", "response": "4", "other": "x"},
        {"prompt_id": 7, "prompt": Q1, "teacher": "claude", "response": "four", "other": "x"},
    ]


def test_wide_to_long_errors(tmp_path, capsys):
    wide = write_jsonl(tmp_path / "wide.jsonl", [{"prompt": Q1, "gpt": "4"}])
    out = tmp_path / "long.jsonl"
    line = error_line(capsys, lambda: wide_to_long.main([str(wide), str(out), "--teachers", "gpt,claude"]))
    assert "teacher column 'claude' not found" in line and "--teachers" in line and str(wide) in line
    argv = [str(wide), str(out), "--teachers", "gpt", "--id-column", "id"]
    line = error_line(capsys, lambda: wide_to_long.main(argv))
    assert "column 'id' not found" in line and "columns: prompt, gpt" in line
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": Q1, "gpt": ["a", "list"]}])
    line = error_line(capsys, lambda: wide_to_long.main([str(bad), str(out), "--teachers", "gpt"]))
    assert "bad.jsonl row 0, column 'gpt': expected text, got list" in line
    assert not out.exists()


def test_messages_to_long_from_filenames_with_system_prompt(tmp_path):
    conversation = chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", Q1),
                        ("assistant", r"\boxed{4}"))  # fmt: skip
    gpt = write_jsonl(tmp_path / "gpt-4o.jsonl", [{"messages": conversation, "ref": "4"}])
    claude = write_jsonl(tmp_path / "claude.jsonl", [{"messages": chat(("user", Q1), ("assistant", "5")), "ref": "4"}])
    out = tmp_path / "long.jsonl"
    argv = [str(gpt), str(claude), str(out), "--teacher-from-filename", "--reference-column", "ref"]
    assert messages_to_long.main(argv) == 0
    pid = prompt_hash(Q1)
    assert read_jsonl(out) == [
        {"prompt_id": pid, "prompt": Q1, "teacher": "gpt-4o", "response": r"\boxed{4}", "ref": "4",
         "system": "Be brief.", "model_answer": "4", "correct": True},
        {"prompt_id": pid, "prompt": Q1, "teacher": "claude", "response": "5", "ref": "4", "system": None,
         "model_answer": "5", "correct": False},
    ]  # fmt: skip
    assert messages_to_long.main([str(gpt), str(out), "--teacher", "t", "--system-in-prompt", "--overwrite"]) == 0
    (row,) = read_jsonl(out)
    assert row["prompt"] == f"Be brief.\n\n{Q1}" and "system" not in row and row["teacher"] == "t"


def test_messages_to_long_teacher_column_and_errors(tmp_path, capsys):
    rows = [{"messages": chat(("user", Q1), ("assistant", "4")), "model": "m1"},
            {"messages": chat(("user", Q2)), "model": "m2"}]  # fmt: skip
    data = write_jsonl(tmp_path / "chats.jsonl", rows)
    out = tmp_path / "long.jsonl"
    line = error_line(capsys, lambda: messages_to_long.main([str(data), str(out), "--teacher-column", "model"]))
    assert line.endswith(
        "chats.jsonl row 1, column 'messages': no assistant turn (roles: user). Drop the row or fix it."
    )
    assert not out.exists()  # nothing half-written
    write_jsonl(data, rows[:1])
    assert messages_to_long.main([str(data), str(out), "--teacher-column", "model"]) == 0
    assert read_jsonl(out) == [{"prompt_id": prompt_hash(Q1), "prompt": Q1, "teacher": "m1", "response": "4"}]
    line = error_line(capsys, lambda: messages_to_long.main([str(data), str(out), "--teacher-column", "model"]))
    assert "exists. Pass --overwrite" in line
    argv = [str(data), str(out), "--teacher-column", "who", "--overwrite"]
    line = error_line(capsys, lambda: messages_to_long.main(argv))
    assert "column 'who' not found" in line


def test_join_teachers_on_normalized_prompts(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": Q1, "response": "4", "ref": "4"},
                                           {"prompt": Q2, "response": "15", "ref": "15"}])  # fmt: skip
    b = tmp_path / "b.parquet"
    pd.DataFrame([{"prompt": "  what IS 2+2? ", "response": r"\boxed{5}", "ref": "4", "teacher": "old"}]).to_parquet(b)
    out = tmp_path / "joined.jsonl"
    argv = ["--input", f"a={a}", "--input", f"b={b}", str(out), "--reference-column", "ref"]
    assert join_teachers.main(argv) == 0
    assert "1 prompts are missing in some teachers (b lacks 1" in capsys.readouterr().err
    assert read_jsonl(out) == [
        {"prompt_id": prompt_hash(Q1), "prompt": Q1, "teacher": "a", "response": "4", "ref": "4",
         "model_answer": "4", "correct": True},
        {"prompt_id": prompt_hash(Q1), "prompt": Q1, "teacher": "b", "response": r"\boxed{5}", "ref": "4",
         "model_answer": "5", "correct": False},
        {"prompt_id": prompt_hash(Q2), "prompt": Q2, "teacher": "a", "response": "15", "ref": "15",
         "model_answer": "15", "correct": True},
    ]  # fmt: skip
    assert join_teachers.main([*argv, "--require-all", "--overwrite"]) == 0
    assert [(row["teacher"], row["prompt"]) for row in read_jsonl(out)] == [("a", Q1), ("b", Q1)]


def test_join_teachers_on_id_column_and_errors(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [{"qid": 1, "prompt": Q1, "response": "4"}])
    b = tmp_path / "b.csv"
    pd.DataFrame([{"qid": 1, "prompt": "2+2 (reworded)", "response": "four"}]).to_csv(b, index=False)
    out = tmp_path / "joined.jsonl"
    assert join_teachers.main(["--input", f"a={a}", "--input", f"b={b}", str(out), "--id-column", "qid"]) == 0
    assert read_jsonl(out) == [
        {"prompt_id": 1, "prompt": Q1, "teacher": "a", "response": "4"},
        {"prompt_id": 1, "prompt": Q1, "teacher": "b", "response": "four"},
    ]
    line = error_line(capsys, lambda: join_teachers.main(["--input", str(a), str(tmp_path / "x.jsonl")]))
    assert "expected NAME=PATH" in line
    line = error_line(capsys, lambda: join_teachers.main(["--input", f"a={tmp_path / 'nope.jsonl'}", "o.jsonl"]))
    assert "nope.jsonl" in line and "not found" in line


def test_join_teachers_mixed_reference_types_and_bad_output(tmp_path, capsys):
    # The same reference reads as text from JSONL and as a number from CSV: stored as text, not an error.
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": Q1, "response": r"\boxed{4}", "ref": "4"}])
    b = tmp_path / "b.csv"
    pd.DataFrame([{"prompt": Q1, "response": "It is 5. Final answer: 5", "ref": 4}]).to_csv(b, index=False)
    out = tmp_path / "joined.jsonl"
    assert join_teachers.main(["--input", f"a={a}", "--input", f"b={b}", str(out), "--reference-column", "ref"]) == 0
    assert "'ref' (str, int) hold values of several types; written as text" in capsys.readouterr().err
    assert [(row["teacher"], row["ref"], row["correct"]) for row in read_jsonl(out)] == [("a", "4", True),
                                                                                       ("b", "4", False)]  # fmt: skip
    before = sorted(p.name for p in tmp_path.iterdir())
    line = error_line(capsys, lambda: join_teachers.main(["--input", f"a={a}", str(tmp_path / "joined.txt")]))
    assert "joined.txt" in line and ".parquet" in line
    line = error_line(capsys, lambda: wide_to_long.main([str(a), str(tmp_path / "long.txt"), "--teachers", "ref"]))
    assert "long.txt" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_prompt_completion_text_and_conversational(tmp_path):
    rows = [
        {"prompt": Q1, "completion": "The answer is 4.", "reference_answer": "4"},
        {"prompt": chat(("system", "Think."), ("user", Q2)), "completion": chat(("assistant", r"\boxed{15}")),
         "reference_answer": "15"},
    ]  # fmt: skip
    # Mixed text/list cells cannot share one Arrow column: write two files, one per format.
    text = write_jsonl(tmp_path / "text.jsonl", rows[:1])
    conv = write_jsonl(tmp_path / "conv.jsonl", rows[1:])
    out = tmp_path / "long.jsonl"
    argv = [str(text), str(conv), str(out), "--teacher", "gpt", "--reference-column", "reference_answer"]
    assert prompt_completion_to_long.main(argv) == 0
    assert read_jsonl(out) == [
        {"prompt_id": prompt_hash(Q1), "prompt": Q1, "teacher": "gpt", "response": "The answer is 4.",
         "reference_answer": "4", "model_answer": "4", "correct": True, "system": None},
        {"prompt_id": prompt_hash(Q2), "prompt": Q2, "teacher": "gpt", "response": r"\boxed{15}",
         "reference_answer": "15", "system": "Think.", "model_answer": "15", "correct": True},
    ]  # fmt: skip


def test_prompt_completion_errors(tmp_path, capsys):
    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": Q1, "completion": chat(("user", "again?"))}])
    out = tmp_path / "long.jsonl"
    line = error_line(capsys, lambda: prompt_completion_to_long.main([str(data), str(out), "--teacher-from-filename"]))
    assert "pc.jsonl row 0, column 'completion': no assistant turn in the completion (roles: user)" in line
    line = error_line(capsys, lambda: prompt_completion_to_long.main([str(data), str(out), "--teacher", "t",
                                                                       "--reference-column", "gold"]))  # fmt: skip
    assert "column 'gold' not found" in line and "columns: prompt, completion" in line
    assert not out.exists()


def test_take_prompts(tmp_path, capsys):
    rows = [{"prompt_id": pid, "prompt": f"p{pid}", "teacher": t, "response": "r"} for t in "ab" for pid in (3, 1, 2)]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    out = tmp_path / "first.jsonl"
    assert take_prompts.main([str(pool), str(out), "--prompts", "2"]) == 0
    assert [(r["prompt_id"], r["teacher"]) for r in read_jsonl(out)] == [(3, "a"), (1, "a"), (3, "b"), (1, "b")]
    assert take_prompts.main([str(pool), str(out), "--prompts", "1", "--sort", "--overwrite"]) == 0
    assert [(r["prompt_id"], r["teacher"]) for r in read_jsonl(out)] == [(1, "a"), (1, "b")]
    line = error_line(capsys, lambda: take_prompts.main([str(pool), str(tmp_path / "x.jsonl"), "--prompts", "0"]))
    assert "--prompts must be >= 1" in line


def test_processbench_to_long_keeps_steps_recoverable(tmp_path, capsys):
    from hf_localnat.segmentation import split_steps

    records = [
        {"id": "m-0", "generator": "g1", "problem": "1+1?", "steps": ["We add.\n\nStill step one.", "1+1=3."],
         "final_answer_correct": False, "label": 1},
        {"id": "m-1", "generator": "g2", "problem": "2+2?", "steps": ["2+2=4.", "So 4."], "label": -1},
    ]
    source = tmp_path / "pb.json"
    source.write_text(json.dumps(records))
    out = tmp_path / "pb.jsonl"
    assert processbench_to_long.main([str(source), str(out)]) == 0
    rows = read_jsonl(out)
    assert [r["prompt_id"] for r in rows] == ["m-0", "m-1"] and [r["teacher"] for r in rows] == ["g1", "g2"]
    assert rows[0]["response"] == "We add.\nStill step one.\n\n1+1=3." and rows[0]["label"] == 1
    for row in rows:  # the paragraph splitter gives back exactly the labelled steps
        spans = split_steps(row["response"], "paragraph")
        assert [row["response"][a:b].strip() for a, b in spans] == row["steps"]

    records[1]["label"] = 2
    source.write_text(json.dumps(records))
    line = error_line(capsys, lambda: processbench_to_long.main([str(source), str(tmp_path / "bad.jsonl")]))
    assert "record 1 (m-1): label 2 is not -1 or a step index" in line
    assert not (tmp_path / "bad.jsonl").exists()


def test_script_help_and_error_in_a_real_process(tmp_path):
    script = str(SCRIPTS / "messages_to_long.py")
    done = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--teacher_from_filename" in done.stdout and "--reference_column" in done.stdout
    done = subprocess.run(
        [sys.executable, script, str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl"), "--teacher", "t"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("messages_to_long.py: error: input file")


# ---------------------------------------------------------------------------------------------------------
# generations_to_long: sampled generations in list columns (the OpenR1-Math layout)
# ---------------------------------------------------------------------------------------------------------

OPENR1_ROWS = [
    {"problem": Q1, "answer": "4", "generations": ["2+2=4. \\boxed{4}", "It is \\boxed{5}", None],
     "correctness_math_verify": [True, False, False], "source": "amc"},
    {"problem": Q2, "answer": "15", "generations": ["\\boxed{15}"], "correctness_math_verify": [True],
     "source": "aime"},
]  # fmt: skip


def test_generations_to_long_spreads_the_lists(tmp_path, capsys):
    from hf_localnat import select_responses

    data = tmp_path / "openr1.parquet"
    pd.DataFrame(OPENR1_ROWS).to_parquet(data)
    out = tmp_path / "pool.jsonl"
    argv = [str(data), str(out), "--teacher", "r1", "--reference_column", "answer"]
    assert generations_to_long.main(argv) == 0
    rows = read_jsonl(out)
    assert [(r["prompt"], r["sample_index"], r["response"]) for r in rows] == [
        (Q1, 0, "2+2=4. \\boxed{4}"), (Q1, 1, "It is \\boxed{5}"), (Q2, 0, "\\boxed{15}")
    ]  # fmt: skip  (the null generation is skipped, and sample_index keeps its place)
    assert [r["correctness_math_verify"] for r in rows] == [True, False, True]  # spread with its generation
    assert [r["correct"] for r in rows] == [True, False, True] and all(r["teacher"] == "r1" for r in rows)
    assert rows[0]["prompt_id"] == rows[1]["prompt_id"] == prompt_hash(Q1) and rows[0]["source"] == "amc"
    # One teacher, several samples: rejection sampling by a score within each prompt.
    ds = datasets.Dataset.from_list(rows).add_column("local_naturalness", [-1.0, -0.5, -2.0])
    best = select_responses(ds, where="correct == True", k=1)
    assert [(r["prompt"], r["sample_index"]) for r in best] == [(Q1, 0), (Q2, 0)]


def test_generations_to_long_names_a_length_mismatch(tmp_path, capsys):
    bad = [dict(OPENR1_ROWS[0]), {**OPENR1_ROWS[1], "correctness_math_verify": [True, False]}]
    data = write_jsonl(tmp_path / "bad.jsonl", bad)
    out = str(tmp_path / "o.jsonl")
    line = error_line(capsys, lambda: generations_to_long.main([str(data), out, "--teacher", "r1"]))
    assert "bad.jsonl row 1, column 'correctness_math_verify': 2 values for 1 generations" in line
    assert not (tmp_path / "o.jsonl").exists()
    line = error_line(capsys, lambda: generations_to_long.main(
        [str(data), str(tmp_path / "o.jsonl"), "--teacher_column", "nope"]))  # fmt: skip
    assert "'nope' not found" in line


def test_generations_to_long_finds_the_per_generation_columns_in_every_row(tmp_path, capsys):
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows = [
        {"problem": Q1, "generations": ["a", "b"], "ok": [True, False], "messages": conversation, "tags": ["x"],
         "id": "p1", "model": "r1"},
        {"problem": Q2, "generations": ["c", "d", "e"], "ok": None, "messages": conversation, "tags": ["y"],
         "id": "p2", "model": "qwq"},
    ]  # fmt: skip
    long_rows = generations_to_long.generations_to_long(rows, teacher_column="model", id_column="id")
    assert [(r["prompt_id"], r["teacher"], r["sample_index"], r["ok"]) for r in long_rows] == [
        ("p1", "r1", 0, True), ("p1", "r1", 1, False), ("p2", "qwq", 0, None), ("p2", "qwq", 1, None),
        ("p2", "qwq", 2, None),
    ]  # fmt: skip  (ok is spread, None where a row has none)
    assert all(r["messages"] == conversation and r["tags"] in (["x"], ["y"]) for r in long_rows)  # kept whole
    # A per-generation column with another length in the FIRST row is named too.
    bad = [{**rows[0], "ok": [True]}, {**rows[1], "ok": [True, False, True]}]
    data = write_jsonl(tmp_path / "bad.jsonl", bad)
    out = tmp_path / "o.jsonl"
    line = error_line(capsys, lambda: generations_to_long.main([str(data), str(out), "--teacher", "r1"]))
    assert "bad.jsonl row 0, column 'ok': 1 values for 2 generations" in line and "--spread" in line
    assert not out.exists()
    # One generation per row is no evidence either way: kept whole unless --spread names the column.
    single = [{"problem": q, "generations": [g], "tags": [t]} for q, g, t in [(Q1, "a", "x"), (Q2, "b", "y")]]
    data = write_jsonl(tmp_path / "single.jsonl", single)
    assert generations_to_long.main([str(data), str(out), "--teacher", "r1"]) == 0
    assert [r["tags"] for r in read_jsonl(out)] == [["x"], ["y"]]
    assert generations_to_long.main([str(data), str(out), "--teacher", "r1", "--spread", "tags", "--overwrite"]) == 0
    assert [r["tags"] for r in read_jsonl(out)] == ["x", "y"]
