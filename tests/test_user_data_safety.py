"""A user's data is never destroyed or corrupted: the output rule, output = input, concurrent runs, numeric
bounds, one-line errors, and kills at random points. Each case checks the one-line error, exit code 2, and that
the user's files are intact byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from test_cli import (  # noqa: F401 - fixtures
    assert_same_scores,
    caches,
    cli_env,
    in_process_env,
    make_rows,
    rows,
    scored,
    write_jsonl,
)

import hf_localnat.student
from hf_localnat import NaturalnessScorer
from hf_localnat.cli import main
from hf_localnat.outputs import RunLock
from hf_localnat.scorer import score_dataset
from hf_localnat.selection import select_responses

# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders): what must not change."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def one_line_error(capsys, argv: list, *fragments: str) -> str:
    """Run the CLI in-process: exit 2, one ``hf-localnat: error:`` line holding every fragment, no traceback."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("hf-localnat: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command loads a student: its errors must come before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("the student was loaded before the bad input was refused")

    monkeypatch.setattr(hf_localnat.student, "load_student", refuse)


@pytest.fixture
def precious(tmp_path) -> Path:
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work\n")
    return folder


# ---------------------------------------------------------------------------------------------------------
# 1. An existing output is never replaced unless --overwrite, and a foreign folder never
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_the_users_is_never_replaced(tmp_path, precious, scored, tiny_student_dir, capsys, no_model,
                                                  overwrite):  # fmt: skip
    shutil.copy(scored, tmp_path / "scored.parquet")
    write_jsonl(tmp_path / "in.jsonl", make_rows())
    before = snapshot(tmp_path)
    flag = ["--overwrite"] if overwrite else []
    why = "holds thesis.txt, which hf-localnat does not write" if overwrite else "exists. Pass --overwrite"
    one_line_error(capsys, ["select", tmp_path / "scored.parquet", "--output", precious, *flag], why)
    one_line_error(capsys, ["score", tmp_path / "in.jsonl", "--student", tiny_student_dir, "--output", precious,
                            *flag], why)  # fmt: skip
    one_line_error(capsys, ["report", tmp_path / "scored.parquet", "--output", precious, *flag], why)
    one_line_error(capsys, ["push-selection", tmp_path / "scored.parquet", "--to_dir", precious, *flag],
                   "--to_dir", why)  # fmt: skip
    assert snapshot(tmp_path) == before


def test_an_existing_file_without_suffix_is_never_turned_into_a_folder(tmp_path, scored, capsys):
    plain = tmp_path / "notes"
    plain.write_text("my notes\n")
    before = snapshot(tmp_path)
    for flag in ([], ["--overwrite"]):
        one_line_error(capsys, ["select", scored, "--output", plain, *flag], "'" + str(plain), "is a file")
    assert snapshot(tmp_path) == before  # no .notes.old-PID either


def test_overwrite_replaces_only_our_own_outputs(tmp_path, scored, capsys):
    for out in (tmp_path / "sel.parquet", tmp_path / "sel_folder"):
        assert main(["select", str(scored), "--output", str(out)]) == 0
        first = snapshot(tmp_path)
        one_line_error(capsys, ["select", scored, "--output", out, "--k", "2"], "exists. Pass --overwrite")
        assert snapshot(tmp_path) == first
        assert main(["select", str(scored), "--output", str(out), "--k", "2", "--overwrite"]) == 0
        loaded = pq.read_table(out) if out.suffix else datasets.load_from_disk(str(out)).data.table
        assert loaded.num_rows == 8  # 4 prompts x 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sel.parquet", "sel_folder"]  # no temporaries left


def test_dataset_scripts_follow_the_same_rule(tmp_path, precious, capsys):
    sys.path.insert(0, str(REPO / "dataset_scripts"))
    try:
        import take_prompts
    finally:
        sys.path.pop(0)
    pool = write_jsonl(tmp_path / "pool.jsonl", make_rows())
    before = snapshot(tmp_path)
    cases = [
        ([str(pool), str(pool), "--prompts", "2", "--overwrite"], "is the input"),
        ([str(pool), str(precious), "--prompts", "2", "--overwrite"], "holds thesis.txt"),
        ([str(pool), str(precious), "--prompts", "2"], "exists. Pass --overwrite"),
    ]
    for argv, why in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            take_prompts.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and why in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------
# 2. The output is never the input
# ---------------------------------------------------------------------------------------------------------


def test_output_equal_to_input_is_refused(tmp_path, scored, tiny_student_dir, capsys, no_model):
    pool = write_jsonl(tmp_path / "p.jsonl", make_rows())
    shutil.copy(scored, tmp_path / "sc.parquet")
    folder = tmp_path / "saved"
    datasets.Dataset.from_parquet(str(scored)).save_to_disk(str(folder))
    before = snapshot(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        one_line_error(capsys, ["score", pool, "--student", tiny_student_dir, "--limit", "3", "--output", pool,
                                *overwrite], "is the input")  # fmt: skip
        same = tmp_path / "sub" / ".." / "sc.parquet"  # the same file by another name
        one_line_error(capsys, ["select", tmp_path / "sc.parquet", "--output", same, *overwrite], "is the input")
        one_line_error(capsys, ["select", folder, "--output", folder / "best.parquet", *overwrite],
                       "inside the input folder")  # fmt: skip
        one_line_error(capsys, ["select", tmp_path / "sc.parquet", "--output", tmp_path, *overwrite], "holds the input")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------
# 3. Two runs on one output
# ---------------------------------------------------------------------------------------------------------


def score_command(source: Path, student: Path, out: Path, window: int = 2, chunk_rows: int = 8) -> list[str]:
    options = ["--metrics", "global,local,rsr", "--window", str(window), "--chunk_rows", str(chunk_rows)]
    return [sys.executable, "-m", "hf_localnat", "score", str(source), "--student", str(student), *options,
            "--output", str(out)]  # fmt: skip


def many_rows(n: int) -> list[dict]:
    """``n`` rows: make_rows() repeated under new prompt ids, with a counter so every response differs."""
    out = []
    for copy in range(-(-n // 12)):
        for row in make_rows():
            out.append({**row, "prompt_id": f"{row['prompt_id']}-{copy}", "response": f"{row['response']} ({copy})"})
    return out[:n]


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (rc {proc.returncode}) before {what}: {proc.stderr.read() if proc.stderr else ''}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def lock_holder(partial: Path) -> dict:
    try:
        text = (partial / "lock").read_text()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def chunks(partial: Path) -> list[Path]:
    return sorted(partial.glob("chunk-*.parquet"))


def test_a_second_run_on_the_same_output_fails_at_once(tmp_path, tiny_student_dir, cli_env):
    source = write_jsonl(tmp_path / "pool.jsonl", many_rows(80))
    out = tmp_path / "scored.parquet"
    partial = tmp_path / ".scored.parquet.partial"
    first = subprocess.Popen(score_command(source, tiny_student_dir, out), env=cli_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: len(chunks(partial)) >= 1, first, "its first chunk")
        first.send_signal(signal.SIGSTOP)  # holds the lock, and cannot finish while the second run tries
        assert lock_holder(partial)["pid"] == first.pid
        # Other settings, and a student that does not exist: the lock is refused before anything loads.
        second = subprocess.run(score_command(source, tmp_path / "no-such-student", out, window=1), env=cli_env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "another run is writing" in lines[0] and f"pid {first.pid}" in lines[0], lines
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # The first run's output is whole and has the first run's window-2 scores, untouched by the second.
    model, tokenizer = hf_localnat.student.load_student(str(tiny_student_dir))
    scorer = NaturalnessScorer(model, tokenizer, metrics="global,local,rsr", window=2)
    got = pq.read_table(out).to_pylist()
    assert len(got) == 80
    want = scorer.score([r["prompt"] for r in got[-8:]], [r["response"] for r in got[-8:]])
    for i, row in enumerate(got[-8:]):
        assert_same_scores(row, {c: want[c][i] for c in want}, f"row {72 + i}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl", "scored.parquet"]


def test_a_killed_runs_lock_is_taken_over(tmp_path, tiny_student_dir, cli_env):
    source = write_jsonl(tmp_path / "pool.jsonl", many_rows(40))
    out = tmp_path / "scored.parquet"
    partial = tmp_path / ".scored.parquet.partial"
    killed = subprocess.Popen(score_command(source, tiny_student_dir, out), env=cli_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: len(chunks(partial)) >= 1, killed, "its first chunk")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert lock_holder(partial)["pid"] == killed.pid  # the dead run's lock file is still there
    done = subprocess.run(score_command(source, tiny_student_dir, out), env=cli_env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Taking over" in done.stderr and f"pid {killed.pid}" in done.stderr
    assert "Resuming" in done.stderr
    assert not partial.exists() and pq.read_table(out).num_rows == 40


def test_resume_ignores_chunks_scored_with_other_settings(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    """Even under a manifest that matches, a chunk whose own record names other settings is scored again."""
    ds = datasets.Dataset.from_list(many_rows(24))
    work = tmp_path / "work"

    def stop_after(calls: int):
        seen = {"n": 0}
        real = NaturalnessScorer.score

        def score(self, *args, **kwargs):
            seen["n"] += 1
            if seen["n"] > calls:
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)

        monkeypatch.setattr(NaturalnessScorer, "score", score)

    window2 = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="global,local,rsr", window=2)
    window1 = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="global,local,rsr", window=1)
    stop_after(2)
    with pytest.raises(KeyboardInterrupt):
        score_dataset(ds, window2, work_dir=work, chunk_rows=8, progress=False)
    assert len(chunks(work)) == 2
    other = tmp_path / "other"
    stop_after(0)
    with pytest.raises(KeyboardInterrupt):
        score_dataset(ds, window1, work_dir=other, chunk_rows=8, progress=False)
    shutil.copy(other / "manifest.json", work / "manifest.json")  # as if a window-1 run had taken the folder
    monkeypatch.undo()

    calls = []
    real = NaturalnessScorer.score
    monkeypatch.setattr(NaturalnessScorer, "score", lambda self, p, r, **kw: calls.append(len(p)) or real(self, p, r))
    scored_rows = score_dataset(ds, window1, work_dir=work, chunk_rows=8, progress=False).to_list()
    assert sum(calls) == 24  # nothing of the window-2 chunks was reused
    want = window1.score(ds["prompt"], ds["response"])
    for i, row in enumerate(scored_rows):
        assert_same_scores(row, {c: want[c][i] for c in want}, f"row {i}")


def test_run_lock_is_exclusive_and_reentrant(tmp_path):
    folder = tmp_path / ".out.partial"
    with RunLock(folder, "out"):
        with RunLock(folder, "out"):  # the same process may take it again
            pass
        assert (folder / "lock").exists()
        code = "import sys; from hf_localnat.outputs import RunLock; RunLock(sys.argv[1]).acquire()"
        other = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and "another run is writing" in other.stderr
    assert not folder.exists()  # nothing was saved in it: no folder left behind
    with RunLock(tmp_path / "new" / "sub" / ".out.partial"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nor the folders it made above it


# ---------------------------------------------------------------------------------------------------------
# Kills at random points, then resume: the same output as an uninterrupted run
# ---------------------------------------------------------------------------------------------------------


def test_kill_at_random_points_and_resume(tmp_path, tiny_student_dir, cli_env):
    source = write_jsonl(tmp_path / "pool.jsonl", many_rows(96))
    num_chunks = 24
    clean = tmp_path / "clean" / "scored.parquet"
    subprocess.run(score_command(source, tiny_student_dir, clean, chunk_rows=4), env=cli_env, check=True,
                   capture_output=True, timeout=300)  # fmt: skip

    out_dir = tmp_path / "killed"
    out_dir.mkdir()
    out = out_dir / "scored.parquet"
    partial = out_dir / ".scored.parquet.partial"
    rng = random.Random(14)
    moments = []  # (where the kill was aimed, chunks on disk when it came)
    for _attempt in range(8):  # bounded: at most 8 kills, then a last run goes to the end
        proc = subprocess.Popen(score_command(source, tiny_student_dir, out, chunk_rows=4), env=cli_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        # A random moment: while it starts up, after a random number of chunks, or once all are saved (while the
        # output is assembled, written and the folder cleaned up).
        aim = rng.choice(["startup", "chunks", "chunks", "end"])
        wanted = {"startup": 0, "chunks": rng.randint(1, num_chunks - 1), "end": num_chunks}[aim]
        deadline = time.monotonic() + (rng.uniform(0.1, 3.0) if aim == "startup" else 240)
        while proc.poll() is None and time.monotonic() < deadline:
            if aim != "startup" and partial.exists() and len(chunks(partial)) >= wanted:
                time.sleep(rng.uniform(0.0, 0.3 if aim == "end" else 0.05))
                break
            time.sleep(0.005)
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        moments.append((aim, len(chunks(partial)) if partial.exists() else 0))
        # Whatever the moment, nothing half-written lies beside the output: only the resumable folder, or the
        # finished output with what its cleanup had left (the folder, or its renamed leftover, swept next time).
        left = {p.name for p in out_dir.iterdir()} - {partial.name, out.name}
        assert all(name.startswith(".scored.parquet.") and name.endswith(".trash") for name in left), moments
        assert not left or out.exists(), moments
        if out.exists():
            assert pq.read_table(out).num_rows == 96
            break
    done = subprocess.run(score_command(source, tiny_student_dir, out, chunk_rows=4), env=cli_env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if out.exists() and not partial.exists() and done.returncode == 2:
        assert "exists. Pass --overwrite" in done.stderr  # it had finished: nothing to resume
    else:
        assert done.returncode == 0, done.stderr
    print(f"kills (aimed at, chunks on disk): {moments}")
    assert len(moments) >= 3 and any(0 < n < num_chunks for _, n in moments), moments
    assert sorted(p.name for p in out_dir.iterdir()) == [out.name]
    got, want = pq.read_table(out).to_pylist(), pq.read_table(clean).to_pylist()
    assert len(got) == len(want) == 96
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        keys = ("prompt_id", "teacher", "response")
        assert [a[k] for k in keys] == [b[k] for k in keys], f"row {i}"
        assert_same_scores(a, b, f"row {i}")


def test_a_run_stopped_after_delivering_its_output_is_finished_by_the_rerun(tmp_path, tiny_student_dir, capsys,
                                                                              monkeypatch):  # fmt: skip
    """The last step of score is removing .OUT.partial; a run stopped right before it has delivered OUT already."""
    import hf_localnat.cli

    source = write_jsonl(tmp_path / "pool.jsonl", make_rows())
    out = tmp_path / "scored.parquet"
    partial = tmp_path / ".scored.parquet.partial"
    argv = ["score", str(source), "--student", str(tiny_student_dir), "--window", "2", "--output", str(out)]

    def stop_before_cleanup(work_dir, output):
        raise KeyboardInterrupt

    for rerun, expected in ((argv, 0), ([*argv[:-2], "--window", "1", *argv[-2:]], 2)):
        with monkeypatch.context() as patch:
            patch.setattr(hf_localnat.cli, "_remove_work_dir", stop_before_cleanup)
            assert main(argv) == 130
        assert out.exists() and (partial / "delivered.json").exists()
        delivered = out.read_bytes()
        capsys.readouterr()
        assert main(rerun) == expected
        captured = capsys.readouterr()
        if expected == 0:  # the same command: nothing left to do
            assert "is complete" in captured.out
        else:  # another command: the usual rule for an existing output
            assert "exists. Pass --overwrite" in captured.err
        assert not partial.exists() and out.read_bytes() == delivered
        out.unlink()


# ---------------------------------------------------------------------------------------------------------
# 4. Length guard: bounded memory on a 100k-token response
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform != "linux", reason="reads ru_maxrss in KiB, as Linux reports it")
def test_a_100k_token_response_is_scored_in_bounded_memory(tmp_path, cli_env):
    bench = REPO / "bench" / "length_guard_memory.py"
    done = subprocess.run([sys.executable, str(bench), "--tokens", "110000"], env=cli_env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["global"], result["local"] = result["global_naturalness"], result["local_naturalness"]
    assert result["tokens"] >= 100_000
    assert result["global"] is None and result["local"] is not None
    # Each pass reads at most 4,096 tokens (the batch budget and the context): +205 to +247 MiB when measured.
    # With the guard switched off (`bench/length_guard_memory.py --compare`) the same row grew it by 3,037 MiB.
    assert result["grew_mib"] < 600, result


# ---------------------------------------------------------------------------------------------------------
# 5. Numeric arguments that make no sense, refused before anything loads
# ---------------------------------------------------------------------------------------------------------

NUMERIC_CASES = {
    "chunk-rows-negative": (["score", "{in}", "--chunk_rows", "-1", "--output", "{out}"], "--chunk_rows -1"),
    "chunk-rows-zero": (["score", "{in}", "--chunk_rows", "0", "--output", "{out}"], "--chunk_rows 0"),
    "limit-negative": (["score", "{in}", "--limit", "-1", "--output", "{out}"], "--limit -1"),
    "max-response-tokens-zero": (
        ["score", "{in}", "--max_response_tokens", "0", "--output", "{out}"], "max_response_tokens=0"
    ),
    "batch-tokens-zero": (
        ["score", "{in}", "--max_tokens_per_batch", "0", "--output", "{out}"], "max_tokens_per_batch=0"
    ),
    "select-k-zero": (["select", "{scored}", "--k", "0", "--output", "{out}"], "k=0"),
    "rank-bootstrap-zero": (["rank-teachers", "{scored}", "--n_bootstrap", "0"], "--n_bootstrap 0"),
    "report-n-boot-zero": (["report", "{scored}", "--n_boot", "0", "--output", "{dir}/rep"], "--n_boot 0"),
    "train-k-zero": (["train", "--pool", "{in}", "--output_dir", "{dir}/run", "--k", "0"], "k=0"),
    "train-window-zero": (["train", "--pool", "{in}", "--output_dir", "{dir}/run", "--window", "0"], "window=0 is"),
    "train-bad-splitter": (
        ["train", "--pool", "{in}", "--output_dir", "{dir}/run", "--splitter", "regex:("],
        "regex",
    ),  # fmt: skip
    "evaluate-batch-zero": (["evaluate", "--benchmark", "{in}", "--batch_size", "0"], "--batch_size 0"),
    "demo-limit-zero": (["demo", "--limit_prompts", "0", "--output_dir", "{dir}/demo"], "--limit_prompts 0"),
}


@pytest.mark.parametrize("case", list(NUMERIC_CASES))
def test_numbers_that_make_no_sense_are_refused_first(tmp_path, scored, capsys, no_model, case):
    template, fragment = NUMERIC_CASES[case]
    write_jsonl(tmp_path / "in.jsonl", make_rows())
    shutil.copy(scored, tmp_path / "scored.parquet")
    fill = {
        "dir": tmp_path,
        "in": tmp_path / "in.jsonl",
        "out": tmp_path / "out.jsonl",
        "scored": tmp_path / "scored.parquet",
    }
    argv = [part.format(**fill) for part in template]
    before = snapshot(tmp_path)
    message = one_line_error(capsys, argv, fragment)
    assert "0.0" not in message
    assert snapshot(tmp_path) == before  # no output, no .partial folder, no empty training folder


# ---------------------------------------------------------------------------------------------------------
# 6. One line where a traceback used to be
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def as_nobody():
    """Drop to an unprivileged effective user (root ignores file modes), and back."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_read_only_output_folder(tiny_student_dir, capsys, no_model):
    shared = Path(tempfile.mkdtemp(prefix="localnat-ro-"))  # outside pytest's private tmp, so nobody can reach it
    try:
        shared.chmod(0o755)
        (shared / "ro").mkdir(mode=0o555)
        write_jsonl(shared / "in.jsonl", make_rows())
        before = snapshot(shared)
        with as_nobody():
            one_line_error(capsys, ["score", shared / "in.jsonl", "--student", tiny_student_dir, "--output",
                                    shared / "ro" / "out.parquet"], "cannot write in", "ro")  # fmt: skip
        assert snapshot(shared) == before
    finally:
        (shared / "ro").chmod(0o755)
        shutil.rmtree(shared)


def test_unusable_output_names(tmp_path, scored, tiny_student_dir, capsys, monkeypatch, no_model):
    write_jsonl(tmp_path / "in.jsonl", make_rows())
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    score = ["score", "in.jsonl", "--student", tiny_student_dir, "--output"]
    one_line_error(capsys, [*score, "afile/out.parquet"], "is a file, so no folder can be made there")
    one_line_error(capsys, [*score, "."], "working folder")
    one_line_error(capsys, [*score, ".."], "working folder")
    one_line_error(capsys, ["select", scored, "--output", ".", "--overwrite"], "working folder")
    assert snapshot(tmp_path) == before


def test_latin1_jsonl_names_the_byte(tmp_path, capsys, no_model):
    good = json.dumps({"prompt": "q", "response": "fine"}).encode() + b"\n"
    bad = json.dumps({"prompt": "q", "response": "caf\u00e9"}, ensure_ascii=False).encode("latin-1") + b"\n"
    (tmp_path / "latin.jsonl").write_bytes(good * 3 + bad)
    offset = len(good) * 3 + bad.index(b"\xe9")
    one_line_error(capsys, ["score", tmp_path / "latin.jsonl", "--output", tmp_path / "out.parquet"],
                   "latin.jsonl", f"not UTF-8 text at byte {offset} (line 4)")  # fmt: skip
    csv = b"prompt,response\nq,caf\xe9\n"
    (tmp_path / "latin.csv").write_bytes(csv)
    one_line_error(capsys, ["score", tmp_path / "latin.csv", "--output", tmp_path / "out.parquet"],
                   "latin.csv", f"not UTF-8 text at byte {csv.index(bytes([0xE9]))} (line 2)")  # fmt: skip


def test_deeply_nested_where(tmp_path, scored, capsys):
    for where in ("not " * 5000 + "correct", "(" * 1000 + "correct" + ")" * 1000, "not " * 200 + "correct"):
        message = one_line_error(capsys, ["select", scored, "--where", where, "--output", tmp_path / "o.jsonl"],
                                 "--where")  # fmt: skip
        assert len(message) < 400
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------
# 7. Smaller defects
# ---------------------------------------------------------------------------------------------------------


def test_rank_teachers_takes_the_flag_its_error_names(tmp_path, capsys):
    pool = datasets.Dataset.from_dict({"prompt_id": ["p1", "p1", "p2", "p2"], "teacher": ["a", "b"] * 2,
                                       "my_score": [1.0, 2.0, 1.5, 0.5]})  # fmt: skip
    pool.to_parquet(str(tmp_path / "pool.parquet"))
    line = one_line_error(
        capsys, ["rank-teachers", tmp_path / "pool.parquet", "--by", "my_score"], "--higher_is_better"
    )
    assert "direction is unknown" in line
    capsys.readouterr()
    assert (
        main(["rank-teachers", str(tmp_path / "pool.parquet"), "--by", "my_score", "--higher_is_better", "false"]) == 0
    )
    assert "lower is better" in capsys.readouterr().out


def test_rows_without_a_prompt_id_are_left_out_with_a_warning(caplog):
    pool = datasets.Dataset.from_dict({"prompt_id": ["p1", None, None, "p1"], "teacher": ["a", "b", "c", "d"],
                                       "local_naturalness": [-2.0, -0.1, -0.2, -1.0]})  # fmt: skip
    best, report = select_responses(pool, k=1, return_report=True)
    assert best["teacher"] == ["d"] and report.num_groups == 1  # not a pooled "None" group
    assert "2 row(s) have no 'prompt_id'" in caplog.text


def test_teacher_names_are_escaped_in_the_card(tmp_path):
    from huggingface_hub import DatasetCard

    from hf_localnat import push_selection

    pool = datasets.Dataset.from_dict({"prompt_id": ["p1", "p1"], "teacher": ["a|b", "<img src=x>*c*"],
                                       "response": ["r1", "r2"], "local_naturalness": [-1.0, -2.0]})  # fmt: skip
    push_selection(select_responses(pool), to_dir=tmp_path / "sel", scored=pool)
    text = DatasetCard.load(tmp_path / "sel" / "README.md").text
    assert "| a\\|b |" in text and "\\<img src=x\\>\\*c\\*" in text
    assert "<img" not in text.replace("\\<img", "")


def test_training_leaves_no_folder_when_setup_fails(tmp_path, capsys, tiny_student_dir):
    """A bad option found only once the student is loaded (a token splitter needs its tokenizer)."""
    write_jsonl(tmp_path / "in.jsonl", make_rows())
    before = snapshot(tmp_path)
    one_line_error(capsys, ["train", "--pool", tmp_path / "in.jsonl", "--student", tiny_student_dir, "--output_dir",
                            tmp_path / "run", "--splitter", "tokens:0", "--report_to", "none"], "tokens")  # fmt: skip
    assert snapshot(tmp_path) == before


def test_training_folder_rule(tmp_path, precious, capsys, no_model):
    write_jsonl(tmp_path / "in.jsonl", make_rows())
    before = snapshot(tmp_path)
    one_line_error(capsys, ["train", "--pool", tmp_path / "in.jsonl", "--output_dir", precious],
                   "--resume_from_checkpoint", "--overwrite")  # fmt: skip
    one_line_error(capsys, ["train", "--pool", tmp_path / "in.jsonl", "--output_dir", precious, "--overwrite"],
                   "holds thesis.txt")  # fmt: skip
    assert snapshot(tmp_path) == before


def test_folder_kinds_match_by_path_segment_and_need_their_mark(tmp_path, capsys):
    """A folder of pictures is not a report, and a thesis inside a checkpoint is not a checkpoint file."""
    from hf_localnat.errors import LocalnatError
    from hf_localnat.outputs import check_output

    pictures = tmp_path / "Pictures"
    (pictures / "2020").mkdir(parents=True)
    (pictures / "2020" / "beach.png").write_bytes(b"png")
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "plot.png").write_bytes(b"png")
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "checkpoint-1" / "optimizer.pt").write_bytes(b"x")
    (run / "checkpoint-1" / "trainer_state.json").write_text("{}")
    before = snapshot(tmp_path)
    with pytest.raises(LocalnatError, match="holds 2020/beach.png"):
        check_output(pictures, "report", overwrite=True)
    with pytest.raises(LocalnatError, match="is not a report folder .it has no report.json"):
        check_output(tmp_path / "top", "report", overwrite=True)
    with pytest.raises(LocalnatError, match="is not a published selection folder"):
        check_output(tmp_path / "top", "selection", overwrite=True)
    check_output(run, "training", overwrite=True)  # a real checkpoint is ours
    (run / "checkpoint-1" / "mythesis.docx").write_text("mine")
    with pytest.raises(LocalnatError, match="holds checkpoint-1/mythesis.docx"):
        check_output(run, "training", overwrite=True)
    (run / "checkpoint-1" / "mythesis.docx").unlink()
    assert snapshot(tmp_path) == before


def test_an_output_that_is_a_link_to_the_input_is_refused(tmp_path, tiny_student_dir, capsys, no_model):
    pool = write_jsonl(tmp_path / "p.jsonl", make_rows())
    (tmp_path / "link.jsonl").symlink_to(pool)
    (tmp_path / "dir_link").symlink_to(tmp_path, target_is_directory=True)
    before = snapshot(tmp_path)
    for output in (tmp_path / "link.jsonl", tmp_path / "dir_link" / "p.jsonl"):
        one_line_error(capsys, ["score", pool, "--student", tiny_student_dir, "--output", output, "--overwrite"],
                       "is the input")  # fmt: skip
    assert snapshot(tmp_path) == before


def test_training_resume_and_overwrite(tmp_path, tiny_student_dir, capsys, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    pool = write_jsonl(tmp_path / "in.jsonl", many_rows(24))
    out = tmp_path / "run"
    base = ["train", "--pool", str(pool), "--student", str(tiny_student_dir), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--report_to", "none", "--window", "2", "--disable_tqdm", "true",
            "--reselect_every_steps", "2", "--save_steps", "2"]  # fmt: skip
    assert main([*base, "--max_steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir()
    (out / "train.log").write_text("my notes\n")  # a user's file in the run folder
    one_line_error(capsys, [*base, "--max_steps", "4"], "--resume_from_checkpoint", "--overwrite")
    # Continuing deletes nothing, so the user's file may stay; the run goes on from step 2.
    assert main([*base, "--max_steps", "4", "--resume_from_checkpoint", "true"]) == 0
    assert (out / "checkpoint-4").is_dir() and (out / "train.log").read_text() == "my notes\n"
    # Training anew would delete the folder's files: refused while it holds one that is not ours.
    one_line_error(capsys, [*base, "--max_steps", "2", "--overwrite"], "holds train.log")
    (out / "train.log").unlink()
    assert main([*base, "--max_steps", "1", "--save_steps", "100", "--overwrite"]) == 0
    assert not (out / "checkpoint-2").exists() and not (out / "checkpoint-4").exists()  # the old run is gone
    assert (out / "config.json").is_file()


def test_a_launch_on_a_locked_output_stops_every_process(tmp_path, tiny_student_dir):
    """Under accelerate, the main process is refused the lock: every process stops with the same line."""
    from conftest import run_accelerate

    source = write_jsonl(tmp_path / "pool.jsonl", make_rows())
    out = tmp_path / "scored.parquet"
    command = ["-m", "hf_localnat", "score", str(source), "--student", str(tiny_student_dir), "--output", str(out)]
    with RunLock(tmp_path / ".scored.parquet.partial", out):
        started = time.monotonic()
        done = run_accelerate(command, tmp_path)
        assert time.monotonic() - started < 240  # no process was left waiting at a barrier
    assert done.returncode != 0
    assert done.stderr.count("another run is writing") >= 2, done.stderr[-2000:]  # both processes said it
    assert not out.exists()


def test_run_lock_without_fcntl_warns_and_runs(tmp_path, monkeypatch, caplog):
    from hf_localnat import outputs

    monkeypatch.setitem(sys.modules, "fcntl", None)  # as on Windows: `import fcntl` raises ImportError
    monkeypatch.delattr(outputs._flock, "warned", raising=False)
    folder = tmp_path / ".out.partial"
    with caplog.at_level("WARNING", logger="hf_localnat.outputs"), outputs.RunLock(folder, "out"):
        assert (folder / "lock").exists()
    assert "not locked" in caplog.text and not folder.exists()
