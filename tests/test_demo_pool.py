"""The embedded demo pool: real ZeroEval teachers chosen by a fixed rule, its licence, and byte-exact regeneration.

The checks that read the shared ZeroEval file (``../shared/data/multiteacher``) are skipped where it is absent;
the product never reads it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "hf_localnat" / "data" / "demo_pool.jsonl"
DATA_README = REPO / "hf_localnat" / "data" / "README.md"
SCRIPT = REPO / "dataset_scripts" / "make_demo_pool.py"
SOURCE = REPO.parent / "shared" / "data" / "multiteacher" / "zeroeval_math_l5.jsonl"
COLUMNS = ["prompt_id", "prompt", "teacher", "response", "model_answer", "reference_answer", "correct"]
needs_source = pytest.mark.skipif(not SOURCE.exists(), reason=f"{SOURCE} is not here")


def _script_module():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("make_demo_pool", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_demo_pool = _script_module()


def read_rows(path: Path) -> list[list[tuple[str, object]]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line, object_pairs_hook=lambda pairs: pairs) for line in f]


@pytest.fixture(scope="module")
def raw_rows() -> list[list[tuple[str, object]]]:
    return read_rows(POOL)


@pytest.fixture(scope="module")
def rows(raw_rows) -> list[dict]:
    return [dict(pairs) for pairs in raw_rows]


def test_shape_columns_and_grouping(raw_rows, rows):
    assert all([k for k, _ in pairs] == COLUMNS for pairs in raw_rows)
    prompts = list(dict.fromkeys(r["prompt_id"] for r in rows))
    teachers = list(dict.fromkeys(r["teacher"] for r in rows))
    assert len(prompts) == make_demo_pool.PROMPTS and len(teachers) >= 5
    assert len(rows) == len(prompts) * len(teachers)
    for i, prompt_id in enumerate(prompts):  # grouped by prompt, the teachers in one order
        group = rows[i * len(teachers) : (i + 1) * len(teachers)]
        assert [r["prompt_id"] for r in group] == [prompt_id] * len(teachers)
        assert [r["teacher"] for r in group] == teachers
        assert len({r["prompt"] for r in group}) == 1 and len({r["reference_answer"] for r in group}) == 1


def test_types_and_the_length_caps(rows):
    for r in rows:
        assert all(isinstance(r[c], str) for c in COLUMNS[:-1]), r
        assert isinstance(r["correct"], bool)
        assert r["response"].strip() and len(r["response"]) <= make_demo_pool.MAX_RESPONSE_CHARS
        assert len(r["prompt"]) <= make_demo_pool.MAX_PROMPT_CHARS


def test_teachers_differ_clearly_in_accuracy(rows):
    right, seen = defaultdict(int), defaultdict(int)
    for r in rows:
        right[r["teacher"]] += r["correct"]
        seen[r["teacher"]] += 1
    accuracy = [right[t] / seen[t] for t in dict.fromkeys(r["teacher"] for r in rows)]
    assert max(accuracy) - min(accuracy) >= 0.25, accuracy
    assert len(set(accuracy)) >= 4, accuracy
    assert any(not r["correct"] for r in rows) and any(r["correct"] for r in rows)


def test_licence_attribution_and_packaging():
    text = DATA_README.read_text(encoding="utf-8")
    for needed in (
        "yuchenlin/ZeroEval",
        "570c6269a2e4930ee06a17e713fece1ba52cf1dd",
        "Apache-2.0",
        "Apache License",
        "python dataset_scripts/make_demo_pool.py ../shared/data/multiteacher/zeroeval_math_l5.jsonl",
        "every other",
        "MATH",
    ):
        assert needed in text, needed
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"data/*.jsonl", "data/*.md"} <= set(package_data["hf_localnat"])


def test_the_rule_on_made_up_rows():
    rows = []
    for p in range(6):
        for i, t in enumerate(["t1", "t2", "t3", "t4", "t5"], start=1):  # t1 right on 5 prompts ... t5 on 1
            rows.append(
                {
                    "prompt_id": f"p{p}",
                    "prompt": "short" if p != 1 else "x" * 50,
                    "teacher": t,
                    "response": "a" * (30 if (p, t) == (2, "t3") else 5),
                    "model_answer": "1",
                    "reference_answer": "1",
                    "correct": None if (p, t) == (3, "t5") else p < 6 - i,
                }
            )
    pool, kept = make_demo_pool.build_pool(rows, prompts=2, max_prompt_chars=20, max_response_chars=10)
    assert list(kept) == ["t1", "t3", "t5"]  # every other teacher in accuracy order
    # p1's prompt is too long, p2's t3 response too long, p3's t5 has no known correctness: p0 and p4
    assert [(r["prompt_id"], r["teacher"]) for r in pool] == [(p, t) for p in ("p0", "p4") for t in kept]
    assert all(list(r) == COLUMNS for r in pool)


@needs_source
def test_the_shipped_pool_follows_the_rule_on_the_shared_file(rows):
    """An independent reading of the rule: teachers by whole-file accuracy, then the first prompts that fit."""
    source = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    right, seen = defaultdict(int), defaultdict(int)
    for r in source:
        right[r["teacher"]] += r["correct"] is True
        seen[r["teacher"]] += 1
    ranked = sorted(seen, key=lambda t: (-right[t] / seen[t], t))
    teachers = ranked[0::2]
    assert list(dict.fromkeys(r["teacher"] for r in rows)) == teachers
    by_prompt = defaultdict(dict)
    for r in source:
        by_prompt[r["prompt_id"]].setdefault(r["teacher"], []).append(r)
    fitting = []
    for prompt_id in dict.fromkeys(r["prompt_id"] for r in source):
        answers = [by_prompt[prompt_id].get(t, []) for t in teachers]
        if all(
            len(a) == 1
            and a[0]["correct"] in (True, False)
            and a[0]["response"].strip()
            and len(a[0]["response"]) <= make_demo_pool.MAX_RESPONSE_CHARS
            and len(a[0]["prompt"]) <= make_demo_pool.MAX_PROMPT_CHARS
            for a in answers
        ):
            fitting.append(prompt_id)
    assert list(dict.fromkeys(r["prompt_id"] for r in rows)) == fitting[: make_demo_pool.PROMPTS]
    originals = {(r["prompt_id"], r["teacher"]): r for r in source}
    for r in rows:
        assert r == {c: originals[(r["prompt_id"], r["teacher"])][c] for c in COLUMNS}  # rows copied as they are


@needs_source
def test_script_reproduces_the_shipped_file_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "pool.jsonl"
    command = [sys.executable, str(SCRIPT), str(SOURCE), "--output", str(out)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    assert out.read_bytes() == POOL.read_bytes()
    assert f"{len(read_rows(POOL))} rows" in done.stdout and len(done.stdout.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["pool.jsonl"]  # no temp file left behind
    assert out.stat().st_mode & 0o444 == 0o444  # readable by all, like any package data file

    out.write_text("mine\n")
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr and out.read_text() == "mine\n"
    subprocess.run([*command, "--overwrite"], check=True, capture_output=True)
    assert out.read_bytes() == POOL.read_bytes()


@needs_source
def test_script_options_change_the_pool(tmp_path, capsys):
    out = tmp_path / "small.jsonl"
    assert make_demo_pool.main([str(SOURCE), "--output", str(out), "--prompts", "3", "--every", "3"]) == 0
    small = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["prompt_id"] for r in small}) == 3 and len({r["teacher"] for r in small}) == 4  # ranks 1,4,7,10
    assert "wrote 12 rows (3 prompts x 4 teachers)" in capsys.readouterr().out


def _error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        make_demo_pool.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_script_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert "nope.jsonl" in _error([str(tmp_path / "nope.jsonl"), "--output", str(out)], capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_id": "p"}\n')
    assert "no column(s) prompt, teacher" in _error([str(bad), "--output", str(out)], capsys)
    assert "--prompts must be at least 1" in _error([str(bad), "--output", str(out), "--prompts", "0"], capsys)
    few = tmp_path / "few.jsonl"
    few.write_text(json.dumps(dict.fromkeys(COLUMNS, "x") | {"correct": True}) + "\n")
    assert "only 1 prompts" in _error([str(few), "--output", str(out), "--prompts", "2"], capsys)
    assert not out.exists()
