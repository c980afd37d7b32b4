"""End-to-end tests of the ``hf-localnat`` CLI on the tiny student: formats, selection, one-line errors, resume.

Most commands run in-process through ``hf_localnat.cli.main`` (fast); a real process is used for the
``--help``/``score`` smoke test and for the kill-and-resume test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import datasets
import huggingface_hub.constants
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import MATH_L5, read_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_localnat.scorer as scorer_module
from hf_localnat import NaturalnessScorer
from hf_localnat.cli import COMMANDS, main
from hf_localnat.errors import LocalnatError

INPUT_COLUMNS = ["prompt_id", "prompt", "teacher", "response", "correct"]
FLOAT_COLUMNS = ["global_naturalness", "local_naturalness", "rsr", "rsr_mean_rank", "rsr_mean_surprisal"]
SCORE_COLUMNS = [*FLOAT_COLUMNS, "num_response_tokens", "num_steps", "step_spans", "step_logprobs"]
SCORE_ARGS = ["--metrics", "global,local,rsr", "--window", "2", "--return-steps"]
TOL = 1e-6
UMASK = os.umask(0o022)
os.umask(UMASK)

PROMPTS = [
    "What is 12 times 7?",
    "Simplify (x^2 - 1)/(x - 1).",
    "How many primes are below 20?",
    "Find the sum of the first 10 positive integers.",
]
TEACHERS = ["alpha", "beta", "gamma"]
RESPONSES = [
    # Several sentences each, so the local windows (window 2) differ from the full context.
    "We multiply 12 by 7. That is 70 plus 14. So the product is 84. The answer is 84.",
    "Step 1: 12 * 7 = 84.\nStep 2: Check: 84 / 7 = 12.\n\nFinal answer: 84",
    "Let me think. 12 times 7 is 12 + 12 + 12 + 12 + 12 + 12 + 12. That gives 82. \\boxed{82}",
    "Factor the numerator: x^2 - 1 = (x - 1)(x + 1). Cancel x - 1. We get x + 1. The answer is x + 1.",
    "Divide term by term. Really? Yes! The result is $x + 1$ for x != 1.",
    "The fraction equals x - 1. Final answer: x - 1",
    "The primes are 2, 3, 5, 7, 11, 13, 17 and 19. That is 8 primes. The answer is 8.",
    "Count them: 2, 3, 5, 7. Then 11, 13. Then 17, 19. So there are 8.\n\nFinal answer: 8",
    "Primes below 20: 2, 3, 5, 7, 11, 13, 17. There are 7 of them. \\boxed{7}",
    "Use n(n+1)/2 with n = 10. That is 10 * 11 / 2 = 55. The answer is 55.",
    "Add 1 + 2 + ... + 10. Pair them up: 5 pairs of 11. The sum is 55.",
    "The sum is 10 * 10 = 100. Final answer: 100",
]
# The last prompt has no correct answer at all, so `--where "correct == True"` drops its group.
CORRECT = [True, True, False, True, True, False, True, True, False, False, False, False]


def make_rows() -> list[dict]:
    return [
        {
            "prompt_id": f"p{i // 3}",
            "prompt": PROMPTS[i // 3],
            "teacher": TEACHERS[i % 3],
            "response": RESPONSES[i],
            "correct": CORRECT[i],
        }
        for i in range(12)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_input(path: Path, rows: list[dict]) -> Path:
    """Write rows as .jsonl, .json (one array), .parquet, .csv, or a save_to_disk folder, without data_io."""
    if path.suffix == ".jsonl":
        return write_jsonl(path, rows)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path, index=False)
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def read_output(path: Path) -> tuple[list[str], list[dict]]:
    """(column names in order, rows) of an output file or folder, read without data_io."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".json":
        rows = json.loads(path.read_text())
    elif path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    elif path.suffix == ".csv":
        frame = pd.read_csv(path, keep_default_na=False)
        rows = frame.astype(object).to_dict(orient="records")
        for row in rows:  # CSV has no list type: nested columns are JSON text
            for column in ("step_spans", "step_logprobs"):
                if column in row:
                    row[column] = json.loads(row[column])
        return list(frame.columns), rows
    else:
        ds = datasets.load_from_disk(str(path))
        return ds.column_names, ds.to_list()
    return (list(rows[0]) if rows else []), rows


def close(a, b, tol: float = TOL) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= tol


def assert_same_scores(got: dict, want: dict, where: str) -> None:
    for column in FLOAT_COLUMNS:
        assert close(got[column], want[column]), f"{where} {column}: {got[column]} != {want[column]}"
    for column in ("num_response_tokens", "num_steps"):
        assert int(got[column]) == want[column], f"{where} {column}"
    if "step_spans" in want:
        assert [list(span) for span in got["step_spans"]] == want["step_spans"], f"{where} step_spans"
        assert len(got["step_logprobs"]) == len(want["step_logprobs"]), f"{where} step_logprobs"
        assert all(close(a, b) for a, b in zip(got["step_logprobs"], want["step_logprobs"], strict=True)), where


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli-caches")
    return {"HF_DATASETS_CACHE": str(root / "datasets"), "HF_LOCALNAT_CACHE": str(root / "localnat")}


@pytest.fixture(scope="module")
def cli_env(caches) -> dict[str, str]:
    """The environment of a CLI subprocess: private caches, no network."""
    return dict(os.environ, HF_HUB_OFFLINE="1", **caches)


@pytest.fixture(scope="module", autouse=True)
def in_process_env(caches):
    """Give in-process CLI calls the same private caches, offline mode and no progress bars."""
    import transformers

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", caches["HF_DATASETS_CACHE"])
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setenv("HF_LOCALNAT_CACHE", caches["HF_LOCALNAT_CACHE"])
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        try:
            yield
        finally:
            datasets.enable_progress_bars()
            transformers.utils.logging.enable_progress_bar()


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return make_rows()


@pytest.fixture(scope="module")
def expected(tiny_student_dir, rows) -> list[dict]:
    """The score columns of each row, from NaturalnessScorer called directly on the student folder."""
    model = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_student_dir)
    scorer = NaturalnessScorer(model, tokenizer, metrics="global,local,rsr", window=2, return_steps=True)
    columns = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    assert list(columns) == SCORE_COLUMNS
    return [{c: columns[c][i] for c in SCORE_COLUMNS} for i in range(len(rows))]


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


def score_cli(student: Path, source: Path, output: Path, *extra) -> int:
    return run_cli("score", source, "--student", student, *SCORE_ARGS, *extra, "--output", output)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_student_dir, rows) -> Path:
    """The 12 rows scored once, as parquet, for select and rank-teachers."""
    folder = tmp_path_factory.mktemp("scored")
    out = folder / "scored.parquet"
    assert score_cli(tiny_student_dir, write_jsonl(folder / "in.jsonl", rows), out) == 0
    return out


# ---------------------------------------------------------------------------------------------------------
# score: output and input formats
# ---------------------------------------------------------------------------------------------------------


def check_scored_output(out: Path, rows: list[dict], expected: list[dict]) -> None:
    columns, got = read_output(out)
    assert columns == INPUT_COLUMNS + SCORE_COLUMNS
    assert len(got) == len(rows)
    for i, (row, want_in, want_scores) in enumerate(zip(got, rows, expected, strict=True)):
        for column in INPUT_COLUMNS:  # every input column, in the input's row order
            assert row[column] == want_in[column], f"row {i} {column}"
        assert_same_scores(row, want_scores, f"row {i}")


@pytest.mark.parametrize("name", ["out.jsonl", "out.json", "out.parquet", "out.csv", "out_folder"])
def test_score_output_formats(tmp_path, tiny_student_dir, rows, expected, capsys, name):
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "sub" / name  # a missing parent folder is created
    assert score_cli(tiny_student_dir, source, out) == 0
    assert f"Scored 12 rows -> {out}" in capsys.readouterr().out
    check_scored_output(out, rows, expected)
    # Nothing left behind but the output: no temporary file, no .partial folder of chunks.
    assert listing(tmp_path / "sub") == {name} | ({f"{name}/{p}" for p in listing(out)} if out.is_dir() else set())
    # The output gets the usual permissions (not mkstemp's private 0600 / mkdtemp's 0700).
    mode = stat.S_IMODE(out.stat().st_mode)
    assert mode == (0o777 if out.is_dir() else 0o666) & ~UMASK


@pytest.mark.parametrize("name", ["in.json", "in.parquet", "in.csv", "in_folder"])
def test_score_input_formats(tmp_path, tiny_student_dir, rows, expected, name):
    source = write_input(tmp_path / name, rows)
    out = tmp_path / "out.parquet"
    assert score_cli(tiny_student_dir, source, out) == 0
    check_scored_output(out, rows, expected)


def test_score_replaces_earlier_score_columns_and_limit(tmp_path, tiny_student_dir, rows, expected, scored):
    """Scoring scored rows again replaces the score columns instead of duplicating them; --limit keeps a prefix."""
    out = tmp_path / "rescored.jsonl"
    assert score_cli(tiny_student_dir, scored, out, "--limit", 5) == 0
    check_scored_output(out, rows[:5], expected[:5])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: hf-localnat {command}" in capsys.readouterr().out


def test_subprocess_help_and_score(tmp_path, tiny_student_dir, cli_env, rows, expected):
    """The real entry point: `python -m hf_localnat --help`, and one `score` run."""
    help_run = subprocess.run(
        [sys.executable, "-m", "hf_localnat", "--help"], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert help_run.returncode == 0, help_run.stderr
    for command in COMMANDS:
        assert command in help_run.stdout

    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "hf_localnat", "score", str(source), "--student", str(tiny_student_dir)]
    run = subprocess.run(
        [*command, *SCORE_ARGS, "--output", str(out)], env=cli_env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert f"Scored 12 rows -> {out}" in run.stdout
    check_scored_output(out, rows, expected)
    assert listing(tmp_path) == {"in.jsonl", "out.jsonl"}

    # A user error in a real process, offline through the environment: one error line, no traceback, no retries.
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "hf_localnat", "score", str(source), "--student", "some-org/not-cached-model"]
        + ["--output", str(tmp_path / "never.jsonl")],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("hf-localnat: error: ")]
    assert len(errors) == 1 and "'some-org/not-cached-model'" in errors[0], run.stderr
    assert run.stderr.rstrip().endswith(errors[0])
    assert time.monotonic() - started < 60  # no network retries
    assert listing(tmp_path) == {"in.jsonl", "out.jsonl"}


# ---------------------------------------------------------------------------------------------------------
# select and rank-teachers
# ---------------------------------------------------------------------------------------------------------


def test_select_best_correct_per_prompt(tmp_path, scored, capsys):
    out = tmp_path / "selected.jsonl"
    argv = ["select", scored, "--by", "local_naturalness", "--group-by", "prompt_id", "--k", "1"]
    assert run_cli(*argv, "--where", "correct == True", "--output", out) == 0
    stdout = capsys.readouterr().out
    assert f"Selected 3 rows -> {out}" in stdout
    assert "6 of 12 rows passed where" in stdout

    frame = pq.read_table(scored).to_pandas()
    correct = frame[frame["correct"]]
    best = correct.loc[correct.groupby("prompt_id", sort=False)["local_naturalness"].idxmax()]
    columns, got = read_output(out)
    assert columns == list(frame.columns) + ["selection_rank"]
    assert [(r["prompt_id"], r["teacher"]) for r in got] == list(zip(best["prompt_id"], best["teacher"], strict=True))
    assert [r["prompt_id"] for r in got] == ["p0", "p1", "p2"]  # p3 has no correct row; order of first appearance
    assert all(r["correct"] and r["selection_rank"] == 1 for r in got)


def test_rank_teachers_stdout_and_files(tmp_path, scored, capsys):
    frame = pq.read_table(scored).to_pandas()
    means = frame.groupby("teacher")["local_naturalness"].mean().sort_values(ascending=False)

    assert run_cli("rank-teachers", scored, "--by", "local_naturalness") == 0
    stdout = capsys.readouterr().out
    assert "local_naturalness" in stdout
    for teacher in TEACHERS:
        assert teacher in stdout

    for name in ("ranking.csv", "ranking.json"):
        out = tmp_path / name
        assert run_cli("rank-teachers", scored, "--by", "local_naturalness", "--output", out) == 0
        assert f"Wrote the ranking of 3 teachers -> {out}" in capsys.readouterr().out
        table = pd.read_csv(out) if name.endswith(".csv") else pd.DataFrame(json.loads(out.read_text()))
        assert table["teacher"].tolist() == means.index.tolist()
        assert table["rank"].tolist() == [1, 2, 3]
        assert table["mean"].tolist() == pytest.approx(means.tolist(), abs=TOL)
        assert table["num_prompts"].tolist() == [4, 4, 4]
    assert listing(tmp_path) == {"ranking.csv", "ranking.json"}


def test_json_output_of_many_rows(tmp_path, capsys):
    """A .json output is one JSON array, also past datasets' 1000-row write batch."""
    n = 2500
    data = {
        "prompt_id": [f"p{i // 2}" for i in range(n)],
        "teacher": ["a", "b"] * (n // 2),
        "local_naturalness": [-(i % 7) / 3 for i in range(n)],
    }
    source = tmp_path / "scored.parquet"
    pd.DataFrame(data).to_parquet(source, index=False)
    out = tmp_path / "selected.json"
    assert run_cli("select", source, "--by", "local_naturalness", "--output", out) == 0
    got = json.loads(out.read_text())
    assert len(got) == n // 2
    assert [r["prompt_id"] for r in got] == [f"p{i}" for i in range(n // 2)]


# ---------------------------------------------------------------------------------------------------------
# One-line errors
# ---------------------------------------------------------------------------------------------------------


def bad_json_lines(rows: list[dict]) -> str:
    lines = [json.dumps(row) for row in rows]
    lines[2] = '{"prompt_id": "p0", "prompt": "What", "response": '  # line 3
    return "\n".join(lines) + "\n"


def non_string_rows(rows: list[dict]) -> list[dict]:
    changed = [dict(row) for row in rows]
    changed[2]["response"] = 42
    return changed


ERROR_CASES = {
    # name: (argv after the command word with {in}/{out}/{student}/{scored} filled in, fragments of the message)
    "missing-input": (["score", "{dir}/missing.jsonl", "--output", "{out}"], ["missing.jsonl", "not found"]),
    "missing-column": (
        ["score", "{in}", "--response-column", "nope", "--output", "{out}"],
        ["in.jsonl", "'nope'", "--response_column"],
    ),
    "malformed-json": (["score", "{dir}/bad.jsonl", "--output", "{out}"], ["bad.jsonl", "line 3", "malformed JSON"]),
    "non-string-response": (
        ["score", "{dir}/nonstr.jsonl", "--output", "{out}"],
        ["nonstr.jsonl", "row 2", "'response'", "int", "42"],
    ),
    "window-0": (["score", "{in}", "--window", "0", "--output", "{out}"], ["window=0", ">= 1"]),
    "window-abc": (["score", "{in}", "--window", "abc", "--output", "{out}"], ["--window 'abc'", "not a number"]),
    "unknown-metric": (["score", "{in}", "--metrics", "global,foo", "--output", "{out}"], ["'foo'", "global, local"]),
    "student-folder-missing": (
        ["score", "{in}", "--student", "/nonexistent/dir", "--output", "{out}"],
        ["student '/nonexistent/dir'"],
    ),
    "student-not-cached": (
        ["score", "{in}", "--student", "some-org/not-cached-model", "--output", "{out}"],
        ["student 'some-org/not-cached-model'", "local cache"],
    ),
    "no-output": (["score", "{in}"], ["--output"]),
    "select-bad-where": (
        ["select", "{scored}", "--where", "correct ==", "--output", "{out}"],
        ["--where 'correct =='"],
    ),
    "select-where-call": (
        ["select", "{scored}", "--where", "__import__('os').system('echo hi')", "--output", "{out}"],
        ["--where"],
    ),
    "select-where-unknown-column": (
        ["select", "{scored}", "--where", "nope == True", "--output", "{out}"],
        ["'nope'"],
    ),
    "select-missing-by": (
        ["select", "{scored}", "--by", "nope", "--output", "{out}"],
        ["scored.parquet", "'nope'", "--by"],
    ),
    "score-output-txt": (["score", "{in}", "--output", "{dir}/scored.txt"], ["--output", "scored.txt", ".parquet"]),
    "select-output-txt": (["select", "{scored}", "--output", "{dir}/sel.txt"], ["--output", "sel.txt", ".jsonl"]),
    "input-txt": (["score", "{dir}/notes.txt", "--output", "{out}"], ["notes.txt", "cannot read .txt", ".jsonl"]),
    "rank-teachers-txt": (
        ["rank-teachers", "{scored}", "--output", "{dir}/x.txt"],
        ["--output", "x.txt", ".csv or .json"],
    ),
}


def test_verbose_shows_the_exception(tmp_path):
    """-v is for debugging: the error propagates with its traceback instead of the one-line message."""
    with pytest.raises(LocalnatError, match="not found"):
        main(["-v", "score", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "out.jsonl")])


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_one_line_errors(tmp_path, tiny_student_dir, rows, scored, capsys, case):
    template, fragments = ERROR_CASES[case]
    write_jsonl(tmp_path / "in.jsonl", rows)
    (tmp_path / "bad.jsonl").write_text(bad_json_lines(rows))
    write_jsonl(tmp_path / "nonstr.jsonl", non_string_rows(rows))
    (tmp_path / "notes.txt").write_text("prompt,response\n")
    scored_copy = tmp_path / "scored.parquet"
    shutil.copy(scored, scored_copy)
    fill = {"dir": tmp_path, "in": tmp_path / "in.jsonl", "out": tmp_path / "out.jsonl", "scored": scored_copy}
    argv = [part.format(**fill) for part in template]
    if argv[0] == "score" and "--student" not in argv:
        argv[2:2] = ["--student", str(tiny_student_dir)]
    before = listing(tmp_path)
    capsys.readouterr()

    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("hf-localnat: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert listing(tmp_path) == before  # no output, no temporary file, no .partial folder


# ---------------------------------------------------------------------------------------------------------
# Resume after a kill
# ---------------------------------------------------------------------------------------------------------

RESUME_ROWS = 400
CHUNK_ROWS = 8
NUM_CHUNKS = RESUME_ROWS // CHUNK_ROWS


def resume_argv(source: Path, student: Path, output: Path, window: int = 2) -> list[str]:
    return [
        "score", str(source), "--student", str(student), "--metrics", "global,local,rsr",
        "--window", str(window), "--chunk-rows", str(CHUNK_ROWS), "--output", str(output),
    ]  # fmt: skip


def chunk_files(partial: Path) -> dict[str, tuple[int, int]]:
    """Finished chunk files of a .partial folder: name -> (inode, mtime_ns)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(partial.glob("chunk-*.parquet"))}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, tiny_student_dir, cli_env):
    """A real `score` process SIGKILLed after at least 2 of its 50 chunks were saved."""
    if not MATH_L5.exists():
        pytest.skip(f"{MATH_L5} is missing")
    folder = tmp_path_factory.mktemp("resume")
    # Real prompts and responses; responses cut short so that the 400 rows take seconds, not minutes, on a CPU.
    source = write_jsonl(
        folder / "math.jsonl",
        [
            {k: row[k] for k in ("prompt_id", "prompt", "teacher", "correct")} | {"response": row["response"][:240]}
            for row in read_jsonl(MATH_L5, RESUME_ROWS)
        ],
    )
    out = folder / "out" / "scored.parquet"
    partial = out.with_name(".scored.parquet.partial")
    log = folder / "killed.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hf_localnat", *resume_argv(source, tiny_student_dir, out)],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        deadline = time.monotonic() + 240
        try:
            while not partial.exists() or len(chunk_files(partial)) < 2:
                if proc.poll() is not None:
                    pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed:\n{log.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no 2 chunks after 240 s:\n{log.read_text()}")
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    chunks = chunk_files(partial)
    assert 2 <= len(chunks) < NUM_CHUNKS
    # A pristine copy of the killed run's folder, for the test that changes --window.
    pristine = folder / "pristine.partial"
    shutil.copytree(partial, pristine)
    return {"source": source, "out": out, "partial": partial, "chunks": chunks, "pristine": pristine}


class ScoringSpy:
    """Counts the rows each run scores, and records the chunk files just before the final cleanup."""

    def __init__(self, monkeypatch):
        self.rows_scored = 0
        self.chunks_before_cleanup: dict[str, tuple[int, int]] = {}
        real_score, real_score_dataset = NaturalnessScorer.score, scorer_module.score_dataset

        def score(scorer, prompts, responses, on_tokens=None):
            self.rows_scored += len(prompts)
            return real_score(scorer, prompts, responses, on_tokens=on_tokens)

        def score_dataset(ds, scorer, **kwargs):
            result = real_score_dataset(ds, scorer, **kwargs)
            self.chunks_before_cleanup = chunk_files(Path(kwargs["work_dir"]))
            return result

        monkeypatch.setattr(NaturalnessScorer, "score", score)
        monkeypatch.setattr(scorer_module, "score_dataset", score_dataset)


def test_resume_after_kill(killed_run, tiny_student_dir, tmp_path, caplog, monkeypatch):
    out, partial, done = killed_run["out"], killed_run["partial"], killed_run["chunks"]
    # The killed run left nothing half-written: no output, no temporary output file, only whole chunks.
    assert listing(out.parent) == {partial.name} | {f"{partial.name}/{p}" for p in listing(partial)}
    assert not out.exists()

    spy = ScoringSpy(monkeypatch)
    assert main(resume_argv(killed_run["source"], tiny_student_dir, out)) == 0
    assert f"Resuming: {len(done)} of {NUM_CHUNKS} chunks already scored" in caplog.text
    assert "starting over" not in caplog.text
    assert spy.rows_scored == RESUME_ROWS - CHUNK_ROWS * len(done)  # the finished chunks were not scored again
    assert len(spy.chunks_before_cleanup) == NUM_CHUNKS
    for name, identity in done.items():  # ... nor rewritten
        assert spy.chunks_before_cleanup[name] == identity, name
    assert not partial.exists()
    assert listing(out.parent) == {out.name}

    # Row for row the same as a clean, uninterrupted run.
    caplog.clear()
    clean = tmp_path / "scored.parquet"
    assert main(resume_argv(killed_run["source"], tiny_student_dir, clean)) == 0
    assert "Resuming" not in caplog.text
    resumed, expected = pq.read_table(out).to_pylist(), pq.read_table(clean).to_pylist()
    assert len(resumed) == RESUME_ROWS
    assert [r["prompt_id"] for r in resumed] == [r["prompt_id"] for r in read_jsonl(killed_run["source"])]
    for i, (got, want) in enumerate(zip(resumed, expected, strict=True)):
        for column in ["prompt_id", "prompt", "teacher", "response", "correct"]:
            assert got[column] == want[column], f"row {i} {column}"
        assert_same_scores(got, want, f"row {i}")


def test_changed_window_starts_over(killed_run, tiny_student_dir, tmp_path, caplog, monkeypatch):
    out = tmp_path / "scored.parquet"
    partial = out.with_name(".scored.parquet.partial")
    shutil.copytree(killed_run["pristine"], partial)  # the killed window-2 run's chunks, next to this output
    killed_first = pq.read_table(partial / "chunk-000000000.parquet").to_pylist()

    spy = ScoringSpy(monkeypatch)
    assert main(resume_argv(killed_run["source"], tiny_student_dir, out, window=1)) == 0
    assert "starting over" in caplog.text
    assert "Resuming" not in caplog.text
    assert spy.rows_scored == RESUME_ROWS  # every row scored again: no window-2 chunk was mixed in
    assert not partial.exists()

    # The first chunk holds window-1 scores, not the killed run's window-2 scores.
    got = pq.read_table(out).to_pylist()[:CHUNK_ROWS]
    model = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_student_dir)
    scorer = NaturalnessScorer(model, tokenizer, metrics="global,local,rsr", window=1)
    want = scorer.score([r["prompt"] for r in got], [r["response"] for r in got])
    for i, row in enumerate(got):
        assert_same_scores(row, {c: want[c][i] for c in want}, f"row {i}")
    pairs = zip(got, killed_first, strict=True)
    changed = [not close(a["local_naturalness"], b["local_naturalness"]) for a, b in pairs]
    assert any(changed)
