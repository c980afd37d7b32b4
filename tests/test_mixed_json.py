"""Real evaluation files: columns whose values have several types, the three JSON layouts, unknown suffixes.

Evaluation outputs often keep an ``answer`` or ``prediction`` column of floats, ints, bools, lists and strings;
Arrow cannot hold those in one column. Every reader (``load_rows``, which the CLI uses, and the dataset scripts,
which use it too) keeps such a column as text with one warning, unless the command needs it as it is.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub.constants
import pandas as pd
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_localnat import NaturalnessScorer
from hf_localnat.cli import main
from hf_localnat.data_io import conform_rows, load_rows, require_columns, require_text
from hf_localnat.errors import LocalnatError

REPO = Path(__file__).resolve().parents[1]
JOIN = REPO / "dataset_scripts" / "join_teachers.py"
sys.path.insert(0, str(JOIN.parent))

import join_teachers  # noqa: E402

PROMPTS = ["What is 6 times 7?", "Halve 1.", "Simplify x^2/x.", "List the primes between 1 and 4.", "Is 2 even?"]
GOLD = [42, 0.5, "x", [2, 3], True]  # one benchmark's answer column: int, float, str, list, bool
TEACHERS = {
    "alpha": [r"6 * 7 = 42. \boxed{42}", "Half of 1 is 0.5.", r"x^2/x = x. \boxed{x}", "2 and 3.", "Yes."],
    "beta": ["It is 42.", r"\boxed{\frac{1}{2}}", "x", "The primes are 2, 3.", "Final answer: yes"],
    "gamma": ["42", "0.25", r"\boxed{x^2}", "2, 3", "True."],
}
# What each teacher's run predicted: a different mix of types again.
PREDICTIONS = {
    "alpha": [42, "0.5", "x", [2, 3], None],
    "beta": [42.0, {"num": 1, "den": 2}, "x", "2, 3", True],
    "gamma": ["42", 0.25, ["x^2"], [2, 3], "True"],
}


def as_text(value):
    """The text a mixed column keeps (written here, independently of hf_localnat)."""
    return value if value is None or isinstance(value, str) else json.dumps(value)


def teacher_rows(teacher: str) -> list[dict]:
    rows = []
    for i, prompt in enumerate(PROMPTS):
        answer = GOLD[i] if teacher != "gamma" else i  # gamma's file: ints only, which Arrow reads as they are
        rows.append(
            {"prompt": prompt, "response": TEACHERS[teacher][i], "answer": answer,
             "prediction": PREDICTIONS[teacher][i], "idx": i}
        )  # fmt: skip
    return rows


def write(path: Path, rows: list[dict], layout: str | None = None) -> Path:
    """``layout``: "lines" (one object per line, for .jsonl or .json) or "array" (an indented JSON array)."""
    layout = layout or ("array" if path.suffix == ".json" else "lines")
    if layout == "array":
        path.write_text(json.dumps(rows, indent=2))
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(autouse=True)
def private_caches(tmp_path, monkeypatch):
    """In-process loads and CLI calls get a private datasets cache, offline mode and no progress bars."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_LOCALNAT_CACHE", str(tmp_path / "localnat-cache"))
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def run_join(capsys, *argv) -> tuple[int, str]:
    """join_teachers.py in this process: its exit code and stderr."""
    capsys.readouterr()
    try:
        code = join_teachers.main([str(arg) for arg in argv])
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def text_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "several types" in r.getMessage()
    ]


# ---------------------------------------------------------------------------------------------------------
# Joined and scored: three teachers' files, three layouts, mixed answer/prediction columns
# ---------------------------------------------------------------------------------------------------------


def test_mixed_type_teacher_files_join_and_score(tmp_path, tiny_student_dir, capsys, caplog):
    files = {
        "alpha": write(tmp_path / "alpha.jsonl", teacher_rows("alpha")),
        "beta": write(tmp_path / "beta.json", teacher_rows("beta"), "array"),
        "gamma": write(tmp_path / "gamma.json", teacher_rows("gamma"), "lines"),
    }
    pool = tmp_path / "pool.jsonl"
    args = [sys.executable, str(JOIN), *[f"--input={name}={path}" for name, path in files.items()], str(pool)]
    done = subprocess.run(
        [*args, "--reference_column", "answer", "--require_all"],
        capture_output=True, text=True, timeout=300, env=_offline_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "hf-datasets-cache" / "hf_localnat_text_columns").iterdir()) == []  # scratch removed
    warnings = [line for line in done.stderr.splitlines() if "several types" in line]
    # One warning per file that has such columns, naming them all; gamma's int answers are read as they are.
    assert [w.split(":")[0] for w in warnings[:3]] == [str(files["alpha"]), str(files["beta"]), str(files["gamma"])]
    assert "'answer' (int, float, str, list, bool), 'prediction' (int, str, list)" in warnings[0]
    assert "'answer' (int, float, str, list, bool), 'prediction' (float, dict, str, bool)" in warnings[1]
    assert "'prediction' (str, float, list)" in warnings[2] and "'answer'" not in warnings[2]
    # Joined, gamma's ints meet the others' text: written as text too, said once.
    assert "note: column(s) 'answer' (str, int) hold values of several types; written as text." in done.stderr
    joined = [json.loads(line) for line in pool.read_text().splitlines()]
    assert len(joined) == 15 and {row["teacher"] for row in joined} == set(TEACHERS)
    for row in joined:
        teacher, i = row["teacher"], row["idx"]
        assert row["prompt"] == PROMPTS[i] and row["response"] == TEACHERS[teacher][i]
        want = GOLD[i] if teacher != "gamma" else i
        assert row["answer"] == as_text(want)  # values kept exactly, as text: [2, 3] -> "[2, 3]", True -> "true"
        assert row["prediction"] == as_text(PREDICTIONS[teacher][i])
    graded = {(row["teacher"], row["idx"]): row["correct"] for row in joined}
    assert graded[("alpha", 0)] is True and graded[("beta", 1)] is True and graded[("gamma", 1)] is False

    scored = tmp_path / "scored.jsonl"
    caplog.clear()
    argv = ["score", str(pool), "--student", str(tiny_student_dir), "--metrics", "global,local", "--window", "2"]
    assert main([*argv, "--output", str(scored)]) == 0
    assert text_warnings(caplog) == []  # the joined pool has one type per column
    out = [json.loads(line) for line in scored.read_text().splitlines()]
    assert [(r["teacher"], r["answer"], r["prediction"]) for r in out] == [
        (r["teacher"], r["answer"], r["prediction"]) for r in joined
    ]
    want = _scores(tiny_student_dir, [r["prompt"] for r in joined], [r["response"] for r in joined])
    for got, expected in zip(out, want, strict=True):
        assert got["global_naturalness"] == pytest.approx(expected["global_naturalness"], abs=1e-6)
        assert got["local_naturalness"] == pytest.approx(expected["local_naturalness"], abs=1e-6)


def test_cli_scores_a_mixed_type_file_directly(tmp_path, tiny_student_dir, caplog):
    source = write(tmp_path / "alpha.jsonl", teacher_rows("alpha"))
    scored = tmp_path / "scored.parquet"
    caplog.set_level(logging.WARNING)
    argv = ["score", str(source), "--student", str(tiny_student_dir), "--metrics", "global", "--output", str(scored)]
    assert main(argv) == 0
    assert text_warnings(caplog) == [
        f"{source}: column(s) 'answer' (int, float, str, list, bool), 'prediction' (int, str, list) hold values of "
        "several types; read as text (strings as they are, other values as JSON)."
    ]
    got = pq.read_table(scored).to_pydict()
    assert got["answer"] == [as_text(value) for value in GOLD]
    assert got["prediction"] == [as_text(value) for value in PREDICTIONS["alpha"]]
    assert got["idx"] == list(range(5)) and all(isinstance(x, float) for x in got["global_naturalness"])


def _offline_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets-cache")}


def _scores(student: Path, prompts: list[str], responses: list[str]) -> list[dict]:
    model = AutoModelForCausalLM.from_pretrained(student)
    tokenizer = AutoTokenizer.from_pretrained(student)
    columns = NaturalnessScorer(model, tokenizer, metrics="global,local", window=2).score(prompts, responses)
    return [{name: columns[name][i] for name in columns} for i in range(len(prompts))]


# ---------------------------------------------------------------------------------------------------------
# A needed column that cannot be read
# ---------------------------------------------------------------------------------------------------------


def test_needed_column_of_mixed_types_is_a_one_line_error(tmp_path, tiny_student_dir, capsys):
    rows = teacher_rows("alpha")
    rows[3]["response"] = {"text": "2 and 3."}  # line 4, row 3
    source = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(LocalnatError) as err:
        load_rows(source, needed=["prompt", "response"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{source} line 4 (row 3), column 'response': dict {{'text': '2 and 3.'}}")
    assert "where earlier rows hold str" in message and "types found: str, dict" in message

    # The CLI (which names the columns it needs when it checks them): the same one line, the flag to pick another.
    capsys.readouterr()
    argv = ["score", str(source), "--student", str(tiny_student_dir), "--output", str(tmp_path / "out.jsonl")]
    assert main(argv) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1, err_lines
    assert err_lines[0].startswith(f"hf-localnat: error: {source} line 4 (row 3), column 'response': dict")
    assert "types found: str, dict" in err_lines[0] and "--response_column" in err_lines[0]
    assert not (tmp_path / "out.jsonl").exists()

    # A script: the prompt column holds a number in a JSON array; the line is where that object starts.
    rows = teacher_rows("beta")
    rows[2]["prompt"] = 7
    array = write(tmp_path / "beta.json", rows, "array")
    line = next(n for n, text in enumerate(array.read_text().splitlines(), 1) if '"prompt": 7' in text) - 1
    good = write(tmp_path / "alpha.jsonl", teacher_rows("alpha"))
    code, err = run_join(capsys, f"--input=a={good}", f"--input=b={array}", tmp_path / "pool.jsonl")
    assert code == 2 and len(err.strip().splitlines()) == 1  # (alpha's warning goes to the log)
    assert f"error: {array} line {line} (row 2), column 'prompt': int 7 where earlier rows hold str" in err
    assert "types found: str, int" in err
    assert not (tmp_path / "pool.jsonl").exists()


def test_require_checks_settle_a_load_without_needed(tmp_path, caplog):
    rows = teacher_rows("alpha")
    rows[1]["response"] = 3
    source = write(tmp_path / "run.jsonl", rows)
    ds = load_rows(source)
    assert text_warnings(caplog) == []  # the first column check decides
    with pytest.raises(LocalnatError, match=r"line 2 \(row 1\), column 'response': int 3 where earlier rows hold str"):
        require_columns(ds, ["prompt", "response"], str(source))
    ds = load_rows(source)
    require_columns(ds, ["prompt"], str(source))  # the response is not needed here: read as text, with the warning
    assert len(text_warnings(caplog)) == 1 and "'response' (str, int)" in text_warnings(caplog)[0]
    assert ds["response"][1] == "3"
    with pytest.raises(LocalnatError, match="column 'response': int 3"):
        require_text(ds, "response", str(source))  # text is needed: it was not text in the file


# ---------------------------------------------------------------------------------------------------------
# The JSON layouts, and the other formats as before
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixed", [False, True])
def test_three_json_layouts_read_the_same(tmp_path, mixed):
    rows = teacher_rows("alpha")
    if not mixed:
        for row in rows:
            row["answer"], row["prediction"] = str(row["answer"]), str(row["prediction"])
    want = [{**row, "answer": as_text(row["answer"]), "prediction": as_text(row["prediction"])} for row in rows]
    for path, layout in [("a.jsonl", "lines"), ("b.json", "array"), ("c.json", "lines")]:
        loaded = load_rows(write(tmp_path / path, rows, layout), needed=["prompt", "response"])
        assert loaded.to_list() == want, path
    compact = tmp_path / "d.json"
    compact.write_text(json.dumps(rows))  # an array on one line
    assert load_rows(compact, needed=["prompt"]).to_list() == want


def test_other_formats_still_load(tmp_path):
    rows = [
        {"prompt": p, "response": r, "n": i} for i, (p, r) in enumerate(zip(PROMPTS, TEACHERS["alpha"], strict=True))
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet", index=False)
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "folder"))
    for name in ("a.parquet", "a.csv", "folder"):
        assert load_rows(tmp_path / name, needed=["prompt", "response"]).to_list() == rows, name


def test_fallback_evens_out_what_arrow_would_reject(tmp_path):
    """Beside a mixed column: ints then floats, dicts with different keys, and a column only some rows have."""
    rows = [
        {"q": "a", "answer": 1, "score": 1, "meta": {"k": 1}},
        {"q": "b", "answer": "two", "score": 2.5, "meta": {"j": "x"}, "late": [1, 2]},
    ]
    loaded = load_rows(write(tmp_path / "r.jsonl", rows), needed=["q", "score", "meta"]).to_list()
    assert loaded == [
        {"q": "a", "answer": "1", "score": 1.0, "meta": {"k": 1, "j": None}, "late": None},
        {"q": "b", "answer": "two", "score": 2.5, "meta": {"k": None, "j": "x"}, "late": [1, 2]},
    ]
    nested = [{"q": "a", "steps": [1, 2]}, {"q": "b", "steps": [1, "two"]}]  # a list that mixes types inside
    assert list(load_rows(write(tmp_path / "n.jsonl", nested), needed=["q"])["steps"]) == ["[1, 2]", '[1, "two"]']
    with pytest.raises(LocalnatError, match=r"n.jsonl line 2 \(row 1\), column 'steps': list \[1, 'two'\] whose"):
        load_rows(tmp_path / "n.jsonl", needed=["steps"])


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('[{"a": 1},\n {"a": "x"},\n 5\n]', ["line 3: expected a JSON object per array item, got int"]),
        ('[{"a": 1},\n {"a": "x"}\n {"a": 2}]', ["line 3: malformed JSON (expected ',' or ']' after a row)"]),
        ('{"a": 1}\n{"a": "x"}\n{"a": \n', ["line 3: malformed JSON"]),
        ('{\n  "data": [{"a": 1}, {"a": "x"}]\n}\n', ["one JSON object, not rows", "the list under 'data'"]),
        ("", ["no rows"]),
    ],
)
def test_broken_json_names_the_line(tmp_path, text, fragments):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(LocalnatError) as err:
        load_rows(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize("name", ["runs.tsv", "runs.jsonl.gz", "runs"])
def test_unknown_suffix_lists_the_formats(tmp_path, name, capsys):
    path = tmp_path / name
    path.write_text("prompt\tresponse\n")
    with pytest.raises(LocalnatError) as err:
        load_rows(path)
    message = str(err.value)
    for fmt in (".jsonl", ".json", ".parquet", ".csv", "folder"):
        assert fmt in message
    assert message.startswith(f"{path}: cannot read")
    code, err = run_join(capsys, f"--input=a={path}", tmp_path / "pool.jsonl")
    assert code == 2 and err.strip().endswith(f": error: {message}") and len(err.strip().splitlines()) == 1


def test_conform_rows_keeps_text_and_json():
    rows, mixed = conform_rows([{"ref": "4", "x": 1}, {"ref": 4}, {"ref": [4], "x": 2.5}, {"ref": None}])
    assert [row["ref"] for row in rows] == ["4", "4", "[4]", None]
    assert [row["x"] for row in rows] == [1.0, None, 2.5, None]
    assert [column.describe() for column in mixed] == ["'ref' (str, int, list)"]
