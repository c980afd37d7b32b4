"""The embedded demo pool: shape, columns, correctness labels, teacher styles, and byte-exact regeneration."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path
from statistics import mean

import pytest

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "hf_localnat" / "data" / "demo_pool.jsonl"
SCRIPT = REPO / "dataset_scripts" / "make_demo_pool.py"
COLUMNS = ["prompt_id", "prompt", "teacher", "response", "model_answer", "reference_answer", "correct"]
TEACHERS = ["concise-tutor", "verbose-explainer", "latex-formal", "list-stepper"]

ENDINGS = {
    "concise-tutor": re.compile(r"The answer is (\d+)\.$"),
    "verbose-explainer": re.compile(r"The answer is (\d+)\.$"),
    "latex-formal": re.compile(r"\n\\boxed\{(\d+)\}$"),
    "list-stepper": re.compile(r"\nFinal answer: (\d+)$"),
}

# Every computation a response writes out, in any teacher's notation: "a <op> b = r" or
# "a <op> b, which gives r" (never starting at a LaTeX subscript such as the 2 of "s_2").
_GIVES = r"(?:\s*=\s*|, which gives\s+)"
_OPS = {"times": "*", "\\times": "*", "*": "*", "plus": "+", "+": "+", "minus": "-", "-": "-",
        "divided by": "/", "\\div": "/", "/": "/"}
_EQUATION = re.compile(
    r"(?<![\d_])(\d+)\s*(divided by|times|plus|minus|\\times|\\div|[*/+-])\s*(\d+)" + _GIVES + r"(\d+)"
)
_PERCENT_OF = re.compile(r"(?<![\d_])(\d+)% of (\d+)" + _GIVES + r"(\d+)")  # pct, base
_TIMES_PERCENT = re.compile(r"(?<![\d_])(\d+) \\times (\d+)\\% = (\d+)")  # base, pct


def equations(text: str) -> list[tuple[int, int, int, int]]:
    """``(left, right, claimed, true)`` for each computation, in order; ``pct`` operands are (base, pct)."""
    found = []
    for m in _EQUATION.finditer(text):
        a, op, b, r = int(m[1]), _OPS[m[2]], int(m[3]), int(m[4])
        true = {"*": a * b, "+": a + b, "-": a - b, "/": Fraction(a, b)}[op]
        found.append((m.start(), a, b, r, true))
    for m in _PERCENT_OF.finditer(text):
        found.append((m.start(), int(m[2]), int(m[1]), int(m[3]), Fraction(int(m[1]) * int(m[2]), 100)))
    for m in _TIMES_PERCENT.finditer(text):
        found.append((m.start(), int(m[1]), int(m[2]), int(m[3]), Fraction(int(m[1]) * int(m[2]), 100)))
    return [e[1:] for e in sorted(found)]


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line, object_pairs_hook=lambda pairs: pairs) for line in f]


@pytest.fixture(scope="module")
def raw_rows() -> list[list[tuple[str, object]]]:
    return read_rows(POOL)


@pytest.fixture(scope="module")
def rows(raw_rows) -> list[dict]:
    return [dict(pairs) for pairs in raw_rows]


def test_shape_and_columns(raw_rows, rows):
    assert len(rows) == 192
    assert all([k for k, _ in pairs] == COLUMNS for pairs in raw_rows)
    ids = [r["prompt_id"] for r in rows]
    assert ids == [f"demo-{i:03d}" for i in range(48) for _ in range(4)]  # grouped by prompt
    assert all([r["teacher"] for r in rows[i:i + 4]] == TEACHERS for i in range(0, 192, 4))
    for i in range(0, 192, 4):
        group = rows[i:i + 4]
        assert len({r["prompt"] for r in group}) == 1
        assert len({r["reference_answer"] for r in group}) == 1
    assert len({r["prompt"] for r in rows}) == 48


def test_types_and_correct_flag(rows):
    for r in rows:
        assert all(isinstance(r[c], str) for c in COLUMNS[:-1])
        assert isinstance(r["correct"], bool)
        assert r["model_answer"].isdigit() and r["reference_answer"].isdigit()
        assert r["correct"] == (r["model_answer"] == r["reference_answer"])
        assert r["prompt"].isascii() and r["response"].isascii()


def test_responses_end_with_their_answer(rows):
    for r in rows:
        m = ENDINGS[r["teacher"]].search(r["response"])
        assert m, (r["teacher"], r["response"][-40:])
        assert m[1] == r["model_answer"]


def test_accuracy_per_teacher(rows):
    acc = {t: mean(r["correct"] for r in rows if r["teacher"] == t) for t in TEACHERS}
    assert all(0.5 < a < 1.0 for a in acc.values()), acc
    assert len(set(acc.values())) > 1, acc


def test_lengths_and_styles(rows):
    assert max(len(r["response"]) for r in rows) <= 900
    chars = {t: mean(len(r["response"]) for r in rows if r["teacher"] == t) for t in TEACHERS}
    assert chars["verbose-explainer"] > 1.8 * chars["concise-tutor"], chars
    assert 200 <= mean(len(r["response"]) for r in rows) <= 450
    for r in rows:
        text, teacher = r["response"], r["teacher"]
        sentences = len(re.findall(r"[.!?](?=\s|$)", text))
        if teacher == "concise-tutor":
            assert 3 <= sentences <= 5 and "\n" not in text
        elif teacher == "verbose-explainer":
            assert 8 <= sentences <= 12 and "\n" not in text
        elif teacher == "latex-formal":
            assert text.startswith("Let $x$ be ") and "$$" in text
        else:
            steps = re.findall(r"^Step (\d+): ", text, flags=re.M)
            assert steps == [str(i) for i in range(1, len(steps) + 1)] and len(steps) >= 2


def test_arithmetic_matches_the_correct_flag(rows):
    """Correct rows compute every step right from the prompt's numbers; wrong rows slip on one step."""
    for r in rows:
        eqs = equations(r["response"])
        assert eqs, r["response"]
        known = {int(n) for n in re.findall(r"\d+", r["prompt"])} | {1, 2}
        for left, right, claimed, _ in eqs:
            assert left in known and right in known, (left, right, r["prompt"], r["response"])
            known.add(claimed)
        assert str(eqs[-1][2]) == r["model_answer"]
        slips = sum(claimed != true for _, _, claimed, true in eqs)
        assert slips == (0 if r["correct"] else 1), r["response"]
    steps = defaultdict(set)
    for r in rows:
        steps[r["prompt_id"]].add(len(equations(r["response"])))
    assert all(len(v) == 1 for v in steps.values())  # the four styles write out the same steps


SOLVERS = [  # independent recomputation of the reference from the prompt text, for some templates
    (r"travels at (\d+) km per hour for (\d+) hours, then at (\d+) km per hour for (\d+) hours",
     lambda v, t1, w, t2: v * t1 + w * t2),
    (r"buys (\d+) notebooks that cost (\d+) dollars each and (\d+) pens that cost (\d+) dollars each\. "
     r"\w+ pays with a (\d+)-dollar bill", lambda n1, p1, n2, p2, bill: bill - n1 * p1 - n2 * p2),
    (r"is (\d+) times as old as \w+\. \w+ is (\d+) years old\. How old will \w+ be in (\d+) years",
     lambda k, b, y: k * b + y),
    (r"costs (\d+) dollars\. The store gives a (\d+)% discount", lambda p, pct: p - p * pct // 100),
    (r"garden is (\d+) meters long and (\d+) meters wide\. A square patio with sides of (\d+) meters",
     lambda a, b, s: a * b - s * s),
    (r"field is (\d+) meters long and (\d+) meters wide\. A fence costs (\d+) dollars per meter",
     lambda a, b, c: 2 * (a + b) * c),
    (r"shows (\d+) movies that are each (\d+) minutes long, with a (\d+)-minute break",
     lambda n, m, p: n * m + (n - 1) * p),
    (r"uses (\d+) cups of flour for every (\d+) cookies\. How many cups of flour are needed to bake (\d+)",
     lambda c, b, n: c * n // b),
]


def test_reference_answers_recomputed_from_prompts(rows):
    checked = Counter()
    for r in rows[::4]:
        for i, (pattern, solve) in enumerate(SOLVERS):
            m = re.search(pattern, r["prompt"])
            if m:
                assert str(solve(*map(int, m.groups()))) == r["reference_answer"], r["prompt"]
                checked[i] += 1
    assert len(checked) == len(SOLVERS) and sum(checked.values()) >= 24, checked


def test_script_reproduces_the_shipped_file(tmp_path):
    out = tmp_path / "pool.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPT), "--output", str(out)], check=True,
                          capture_output=True, text=True)
    assert out.read_bytes() == POOL.read_bytes()
    assert "192 rows" in done.stdout and len(done.stdout.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["pool.jsonl"]  # no temp file left behind
    assert out.stat().st_mode & 0o444 == 0o444  # readable by all, like any package data file


def test_script_other_seed_and_size(tmp_path):
    out = tmp_path / "small.jsonl"
    subprocess.run([sys.executable, str(SCRIPT), "--output", str(out), "--num-prompts", "6", "--seed", "3"],
                   check=True, capture_output=True)
    small = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(small) == 24 and small[-1]["prompt_id"] == "demo-005"
    assert all(r["correct"] == (r["model_answer"] == r["reference_answer"]) for r in small)
