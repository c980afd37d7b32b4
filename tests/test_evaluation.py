"""``evaluate``: plumbing on the tiny random student, grading on scripted generations, real benchmark columns."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED, read_jsonl

import hf_localnat.evaluation as evaluation
from hf_localnat.answers import is_correct, reference_answer
from hf_localnat.errors import LocalnatError
from hf_localnat.evaluation import (
    EvaluateArguments,
    detect_columns,
    evaluate_student,
    load_benchmark,
    run_evaluate,
    wilson_interval,
)
from hf_localnat.student import StudentArguments

BENCHMARKS = SHARED / "benchmarks"
METRIC_KEYS = {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "num_problems"}
RECORD_KEYS = {
    "index", "problem", "reference", "generation", "extracted_answer", "answer_source", "correct", "truncated"
}  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def tiny_benchmark(tmp_path) -> Path:
    rows = [{"question": f"What is {i} + {i}?", "answer": f"Add them.\n#### {2 * i}", "idx": i} for i in range(5)]
    return write_jsonl(tmp_path / "bench.jsonl", rows)


def test_run_evaluate_plumbing_on_the_tiny_student(tiny_student_dir, tiny_benchmark, tmp_path, capsys):
    out = tmp_path / "eval" / "records.jsonl"
    args = EvaluateArguments(benchmark=str(tiny_benchmark), max_new_tokens=6, limit=3, output=str(out), batch_size=2)
    metrics = run_evaluate(args, StudentArguments(str(tiny_student_dir)))
    assert METRIC_KEYS <= set(metrics) and metrics["num_problems"] == 3  # --limit respected
    assert 0.0 <= metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"] <= 1.0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all(set(record) == RECORD_KEYS for record in records)
    assert [record["problem"] for record in records] == [f"What is {i} + {i}?" for i in range(3)]
    assert [record["reference"] for record in records] == ["0", "2", "4"]
    assert all(isinstance(record["generation"], str) and record["correct"] in (True, False, None) for record in records)
    printed = capsys.readouterr().out
    assert "bench: accuracy" in printed and "95% CI" in printed and str(out) in printed
    printed_dicts = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    assert printed_dicts == [metrics]  # the evaluate-style dict, printed as one JSON line


@pytest.mark.parametrize(
    ("rows", "overrides", "message"),
    [
        ([{"text": "x", "answer": "1"}], {}, "Pass --problem_column NAME"),
        ([{"problem": "x", "label": "1"}], {}, "Pass --answer_column NAME"),
        ([{"problem": "x", "answer": "1"}], {"answer_column": "gold"}, "column 'gold' not found"),
        ([{"problem": "x", "answer": None}, {"problem": "y", "answer": None}], {}, "no reference answer"),
        (None, {}, "not found. Check the path"),
        ([{"problem": "x", "answer": "1"}], {"max_new_tokens": 0}, "--max_new_tokens 0: use a whole number >= 1"),
        ([{"problem": "x", "answer": "1"}], {"output": "records.txt"}, "use a .jsonl"),
    ],
)
def test_bad_benchmark_raises_one_line(tmp_path, rows, overrides, message):
    path = tmp_path / "bench.jsonl"
    if rows is not None:
        write_jsonl(path, rows)
    # student is never loaded: every mistake is caught before (the student path does not exist).
    args = EvaluateArguments(benchmark=str(path), **overrides)
    with pytest.raises(LocalnatError, match=message) as err:
        run_evaluate(args, StudentArguments(str(tmp_path / "no-student")))
    assert "\n" not in str(err.value)


def test_malformed_benchmark_line(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text('{"problem": "x", "answer": "1"}\n{"problem": \n')
    with pytest.raises(LocalnatError, match="line 2: malformed JSON"):
        load_benchmark(str(path))


def test_grading_with_scripted_generations(monkeypatch, tiny_model, tiny_tokenizer):
    problems = ["What is 1/2 as a decimal?", "GSM: 600 + 634?", "What is 3 + 4?", "Name a prime.", "What is 9 - 1?"]
    problems.append("What is 5 + 5?")
    answers = ["0.5", "Sum.\n#### 1,234", 7.0, "2", "8", "10"]
    scripted = {
        problems[0]: r"Half is \boxed{\frac{1}{2}}",  # equal, though written differently
        problems[1]: "600 + 634 = 1234. The answer is 1,234.",
        problems[2]: r"\boxed{8}",  # wrong
        problems[3]: "I do not know.",  # no answer -> None, counted wrong
        problems[4]: "Final Answer: 8",
        problems[5]: "Five and five make 10 in all",  # no marker: math-verify's last value, flagged "unmarked"
    }
    seen_batches = []

    def fake_generate(model, prompts, max_new_tokens, pad_id, eos_ids, max_positions=None):
        seen_batches.append(len(prompts))
        results = []
        for ids in prompts:
            text = tiny_tokenizer.decode(ids)
            problem = next(p for p in problems if p in text)
            assert text.startswith("<|user|>") and "\\boxed{}" in text  # the chat template and the instruction
            results.append((tiny_tokenizer(scripted[problem], add_special_tokens=False)["input_ids"], False))
        return results

    monkeypatch.setattr(evaluation, "_generate", fake_generate)
    records, metrics = evaluate_student(tiny_model, tiny_tokenizer, problems, answers, batch_size=2, progress=False)
    assert seen_batches == [2, 2, 2]
    assert [record["correct"] for record in records] == [True, True, False, None, True, True]
    assert [record["extracted_answer"] for record in records] == [r"\frac{1}{2}", "1234", "8", None, "8", "10"]
    sources = [record["answer_source"] for record in records]
    assert sources == ["marked", "marked", "marked", "unmarked", "marked", "unmarked"]
    assert [record["generation"] for record in records] == [scripted[p] for p in problems]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["num_correct"] == 4 and metrics["num_no_answer"] == 1 and metrics["num_problems"] == 6
    assert metrics["num_unmarked_answer"] == 1 and metrics["num_correct_unmarked"] == 1  # "I do not know." has none
    low, high = wilson_interval(4, 6)
    assert (metrics["accuracy_ci_low"], metrics["accuracy_ci_high"]) == (low, high)


def test_real_generation_is_greedy_and_deterministic(tiny_model, tiny_tokenizer):
    problems, answers = ["What is 2 + 2?", "Compute 10 / 5, please, and explain."], ["4", "2"]
    first, _ = evaluate_student(tiny_model, tiny_tokenizer, problems, answers, 5, batch_size=2, progress=False)
    # Batched (left-padded) and one-at-a-time generations agree: the padding is masked.
    alone, _ = evaluate_student(tiny_model, tiny_tokenizer, problems, answers, 5, batch_size=1, progress=False)
    assert [r["generation"] for r in first] == [r["generation"] for r in alone]


def test_generate_flags_truncation_and_stops_at_eos(tiny_model, tiny_tokenizer):
    prompts = [tiny_tokenizer("What is 2 + 2?")["input_ids"], tiny_tokenizer("Hi")["input_ids"]]
    free = evaluation._generate(tiny_model, prompts, 4, pad_id=0, eos_ids=[])
    assert [(len(tokens), truncated) for tokens, truncated in free] == [(4, True), (4, True)]
    # Make the first prompt's second greedy token the end of sequence: it stops there and is not cut off.
    eos = free[0][0][1]
    stopped = evaluation._generate(tiny_model, prompts[:1], 4, pad_id=0, eos_ids=[eos])
    assert stopped[0][1] is False and stopped[0][0] == free[0][0][: free[0][0].index(eos)]


def test_wilson_interval():
    assert wilson_interval(0, 10)[0] == 0.0 and 0.0 < wilson_interval(0, 10)[1] < 0.35
    assert wilson_interval(10, 10)[1] == 1.0 and 0.65 < wilson_interval(10, 10)[0] < 1.0
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


EXPECTED_COLUMNS = {
    "math500": ("problem", "answer"),
    "gsm8k": ("question", "answer"),
    "aime24": ("problem", "answer"),
    "aime25": ("problem", "answer"),
    "amc23": ("problem", "answer"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_COLUMNS))
def test_real_benchmark_columns_are_detected(name):
    path = BENCHMARKS / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not available")
    rows = read_jsonl(path, limit=3)
    problem, answer = detect_columns(list(rows[0]), source=str(path))
    assert (problem, answer) == EXPECTED_COLUMNS[name]
    for row in rows:
        assert isinstance(row[problem], str) and row[problem].strip()
        # The reference reads as an answer, and a response boxing that answer is graded correct.
        gold = reference_answer(row[answer])
        assert gold and "####" not in gold
        assert is_correct(row[answer], f"So the result is \\boxed{{{gold}}}.") is True


# ---------------------------------------------------------------------------------------------------------
# The math_verify_accuracy evaluate module
# ---------------------------------------------------------------------------------------------------------

# (prediction, reference, correct, where the answer was read), each decided by hand.
HAND_GRADED = [
    (r"We add them: \boxed{42}", "42", True, "marked"),
    ("6 * 7 = 42\n#### 42", "The product is 42.\n#### 42", True, "marked"),
    (r"Half of it: \boxed{\frac{1}{2}}", "0.5", True, "marked"),  # a fraction against a decimal
    (r"So \boxed{41}", "42", False, "marked"),
    ("0.5", r"\frac{1}{2}", True, "bare"),
    ("She has 17 apples and buys 25 more, 42 in all", "42", True, "unmarked"),  # the last number, unmarked
    ("Adding 12 and then 31 more gives 43 apples", "42", False, "unmarked"),
    ("I do not know.", "7", None, None),
    ("", "3", None, None),
]
OLD_METRIC_KEYS = {
    "accuracy", "accuracy_ci_low", "accuracy_ci_high", "num_problems", "num_correct", "num_no_answer",
    "num_truncated", "num_unmarked_answer", "num_correct_unmarked",
}  # fmt: skip


def slow_summary(cases: list[tuple]) -> dict:
    """The expected output, computed apart: counts by hand labels, the Wilson bounds as roots of a quadratic."""
    from scipy.stats import norm

    n = len(cases)
    k = sum(correct is True for _, _, correct, _ in cases)
    z = norm.ppf(0.975)
    # The Wilson bounds are the p with (k/n - p)^2 = z^2 p (1 - p) / n: (n + z^2) p^2 - (2k + z^2) p + k^2/n = 0.
    a, b, c = n + z * z, -(2 * k + z * z), k * k / n
    root = math.sqrt(b * b - 4 * a * c)
    counts = {
        f"num_{source}_answer": sum(s == source and correct is not None for _, _, correct, s in cases)
        for source in ("marked", "bare", "unmarked")
    }
    return {
        "accuracy": k / n,
        "accuracy_ci_low": (-b - root) / (2 * a),
        "accuracy_ci_high": (-b + root) / (2 * a),
        "num_problems": n,
        "num_correct": k,
        "num_no_answer": sum(correct is None for _, _, correct, _ in cases),
        **counts,
        "num_correct_unmarked": sum(s == "unmarked" and correct is True for _, _, correct, s in cases),
    }


def test_metric_loads_by_path_offline_and_matches_a_slow_reference(tmp_path):
    """evaluate.load(path) in a fresh process with the Hub switched off and unreachable, a fresh modules cache."""
    script = (
        "import json, sys, evaluate\n"
        "from hf_localnat.evaluation import math_verify_accuracy_path\n"
        "cases = json.loads(sys.argv[1])\n"
        "metric = evaluate.load(math_verify_accuracy_path())\n"
        "metric.add_batch(predictions=[c[0] for c in cases[:4]], references=[c[1] for c in cases[:4]])\n"
        "result = metric.compute(predictions=[c[0] for c in cases[4:]], references=[c[1] for c in cases[4:]])\n"
        "print(json.dumps([metric.name, result]))\n"
    )
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf-home"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(HAND_GRADED)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    name, result = json.loads(done.stdout.strip().splitlines()[-1])
    assert name == "math_verify_accuracy"
    assert list((tmp_path / "modules").rglob("math_verify_accuracy.py"))  # imported from the shipped folder
    want = slow_summary(HAND_GRADED)
    assert result.keys() == want.keys()
    for key, value in want.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key
    assert result["num_problems"] == 9 and result["num_correct"] == 5 and result["num_no_answer"] == 2


def test_metric_agrees_with_each_graded_answer():
    from hf_localnat.answers import grade_response
    from hf_localnat.evaluation import load_math_verify_accuracy

    for prediction, reference, correct, source in HAND_GRADED:
        graded = grade_response(reference, prediction)
        assert (graded.correct, graded.source if correct is not None else None) == (correct, source), prediction
    metric = load_math_verify_accuracy(keep_in_memory=True)
    assert metric.compute(predictions=[], references=[])["num_problems"] == 0


def test_evaluate_student_computes_through_the_module(monkeypatch, tiny_model, tiny_tokenizer):
    problems = [f"Problem {i}?" for i in range(len(HAND_GRADED))]
    answers = [reference for _, reference, _, _ in HAND_GRADED]
    answers[0] = 42.0  # a number: the module is given "42"
    scripted = dict(zip(problems, [prediction for prediction, _, _, _ in HAND_GRADED], strict=True))

    def fake_generate(model, prompts, max_new_tokens, pad_id, eos_ids, max_positions=None):
        texts = [tiny_tokenizer.decode(ids) for ids in prompts]
        found = [next(p for p in problems if p in text) for text in texts]
        return [(tiny_tokenizer(scripted[p], add_special_tokens=False)["input_ids"], False) for p in found]

    batches = []
    real_load = evaluation.load_math_verify_accuracy

    def spy_load(**kwargs):
        module = real_load(**kwargs)
        add_batch = module.add_batch

        def recorded(**batch):
            batches.append(batch)
            return add_batch(**batch)

        module.add_batch = recorded
        return module

    monkeypatch.setattr(evaluation, "_generate", fake_generate)
    monkeypatch.setattr(evaluation, "load_math_verify_accuracy", spy_load)
    records, metrics = evaluate_student(tiny_model, tiny_tokenizer, problems, answers, batch_size=4, progress=False)
    assert [len(batch["predictions"]) for batch in batches] == [4, 4, 1]
    fed = sorted(pair for batch in batches for pair in zip(batch["predictions"], batch["references"], strict=True))
    assert fed == sorted((prediction, reference) for prediction, reference, _, _ in HAND_GRADED)  # 42.0 as "42"
    assert OLD_METRIC_KEYS <= set(metrics) and metrics["num_truncated"] == 0
    want = slow_summary(HAND_GRADED)
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert [record["correct"] for record in records] == [correct for _, _, correct, _ in HAND_GRADED]


def test_mixed_type_answer_column_is_read_as_text(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "bench.jsonl",
        [
            {"problem": "1/2?", "answer": 0.5},
            {"problem": "Primes?", "answer": [2, 3]},
            {"problem": "x?", "answer": "x"},
        ],
    )
    problems, answers = load_benchmark(str(path))
    assert answers == ["0.5", "[2, 3]", "x"] and problems[0] == "1/2?"
    assert any("'answer' (float, list, str)" in record.getMessage() for record in caplog.records)
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "1/2?", "answer": "0.5"}, {"problem": 3, "answer": "3"}])
    with pytest.raises(LocalnatError, match=r"line 2 \(row 1\), column 'problem': int 3 .*--problem_column"):
        load_benchmark(str(path))
