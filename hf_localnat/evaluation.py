"""``hf-localnat evaluate``: how often a student solves a math benchmark, greedy decoding, checked by math-verify.

Each problem is sent as one user turn through the student's chat template (the problem, then an instruction to
box the final answer), generated greedily, and graded with :func:`hf_localnat.answers.grade_response`. The summary
is computed by the ``math_verify_accuracy`` :mod:`evaluate` module shipped in the package
(:func:`load_math_verify_accuracy`): accuracy with a 95% Wilson interval, returned like
``evaluate.load("accuracy").compute(...)`` so it can be logged next to a TRL run.

Example:
    hf-localnat evaluate --benchmark ../shared/data/benchmarks/gsm8k.jsonl --limit 100 --output gsm8k_eval.jsonl
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .answers import grade_response, reference_answer
from .errors import LocalnatError
from .metrics import ScoringConfig, with_fields_of
from .student import StudentArguments, context_length

if TYPE_CHECKING:
    import evaluate

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# First match wins: MATH-500/AIME/AMC name the problem "problem", GSM8K "question"; "answer" beats "solution"
# (AIME 2024 has both, and the solution is a long text whose last boxed value is not always the answer).
PROBLEM_COLUMNS = ("problem", "question", "prompt", "input", "query", "instruction")
ANSWER_COLUMNS = ("answer", "final_answer", "expected_answer", "gold", "target", "solution", "output")
Z_95 = 1.959963984540054


@dataclass
@with_fields_of(ScoringConfig, only=("chat_template_kwargs",))
class EvaluateArguments:
    """``hf-localnat evaluate --benchmark FILE``: greedy accuracy of a student on a math benchmark."""

    MIN_VALUES = {"max_new_tokens": 1, "limit": 1, "batch_size": 1}  # checked by the CLI before anything loads

    benchmark: str = field(
        default="",
        metadata={"help": "Benchmark rows with a problem and an answer: .jsonl, .json, .parquet, .csv or a folder."},
    )
    max_new_tokens: int = field(default=512, metadata={"help": "Most tokens generated per problem."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N problems."})
    output: str | None = field(
        default=None,
        metadata={
            "help": "Write one JSON line per problem (problem, reference, generation, extracted_answer, correct) "
            "here. Default: only print the summary."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Problems generated together (left-padded)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --output file."})
    problem_column: str | None = field(
        default=None,
        metadata={"help": f"Column holding the problem. Default: the first of {', '.join(PROBLEM_COLUMNS)}."},
    )
    answer_column: str | None = field(
        default=None,
        metadata={
            "help": f"Column holding the reference answer (a GSM8K '#### N' solution works). Default: the first of "
            f"{', '.join(ANSWER_COLUMNS)}."
        },
    )
    instruction: str = field(
        default=DEFAULT_INSTRUCTION, metadata={"help": "Text appended to each problem (after a blank line)."}
    )


def detect_columns(
    columns: Sequence[str],
    problem_column: str | None = None,
    answer_column: str | None = None,
    source: str = "benchmark",
) -> tuple[str, str]:
    """The problem and answer columns: the ones given, else the first known name present.

    Example:
        >>> detect_columns(["question", "answer", "idx"])
        ('question', 'answer')
    """
    chosen = []
    for given, candidates, flag in (
        (problem_column, PROBLEM_COLUMNS, "--problem_column"),
        (answer_column, ANSWER_COLUMNS, "--answer_column"),
    ):
        if given is not None:
            if given not in columns:
                present = ", ".join(columns)
                raise LocalnatError(f"{source}: column {given!r} not found (columns: {present}). Fix {flag}.")
            chosen.append(given)
            continue
        found = next((name for name in candidates if name in columns), None)
        if found is None:
            raise LocalnatError(
                f"{source}: none of the columns {', '.join(columns)} looks like a {flag[2:].replace('_column', '')} "
                f"(tried {', '.join(candidates)}). Pass {flag} NAME."
            )
        chosen.append(found)
    return chosen[0], chosen[1]


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); ``(0.0, 1.0)`` when ``total`` is 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n.

    Example:
        >>> [round(x, 4) for x in wilson_interval(8, 10)]
        [0.4902, 0.9433]
    """
    if total <= 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z * z / total
    center = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # Exact at the ends (0/n has lower bound 0, n/n upper bound 1), where rounding would leave 5e-17 or 1 - 1e-16.
    low = 0.0 if successes <= 0 else min(p, center - half)
    high = 1.0 if successes >= total else max(p, center + half)
    return low, high


def math_verify_accuracy_path() -> str:
    """The folder of the ``math_verify_accuracy`` :mod:`evaluate` module shipped in hf_localnat, for ``evaluate.load``.

    Loading it by this path reads the module from the package, with nothing fetched from the Hub (it works offline).

    Example:
        >>> import evaluate
        >>> metric = evaluate.load(math_verify_accuracy_path())
        >>> metric.compute(predictions=["#### 42", r"\\boxed{41}"], references=["42", "42"])["accuracy"]
        0.5
    """
    folder = files("hf_localnat") / "evaluate_metrics" / "math_verify_accuracy"
    if not (folder / "math_verify_accuracy.py").is_file():
        raise LocalnatError(
            f"the math_verify_accuracy module is missing from the installed package ({folder}). Reinstall hf_localnat."
        )
    return str(folder)


def load_math_verify_accuracy(**kwargs: Any) -> evaluate.EvaluationModule:
    """``evaluate.load`` of the shipped ``math_verify_accuracy`` module (``kwargs`` go to ``evaluate.load``).

    Inputs: ``predictions`` (generated texts) and ``references`` (gold answers), as strings. Outputs: ``accuracy``,
    ``accuracy_ci_low``/``accuracy_ci_high`` (95% Wilson), ``num_problems``, ``num_correct``, ``num_no_answer``,
    ``num_marked_answer``, ``num_bare_answer``, ``num_unmarked_answer`` and ``num_correct_unmarked``.

    Example:
        >>> metric = load_math_verify_accuracy(keep_in_memory=True)
        >>> metric.add_batch(predictions=["The answer is 0.5"], references=[r"\\frac{1}{2}"])
        >>> metric.compute()["num_correct"]
        1
    """
    import evaluate

    return evaluate.load(math_verify_accuracy_path(), **kwargs)


def reference_text(reference: Any) -> str:
    """A benchmark's reference as the text the metric takes: text as it is, a number as its answer (27.0 -> "27"),
    and "" (no answer, graded None) for a missing one.

    Example:
        >>> reference_text(27.0), reference_text("Sum.\\n#### 18"), reference_text(None)
        ('27', 'Sum.\\n#### 18', '')
    """
    return reference if isinstance(reference, str) else (reference_answer(reference) or "")


def _render(
    tokenizer: PreTrainedTokenizerBase, problem: str, instruction: str, template_kwargs: dict[str, Any] | None = None
) -> tuple[str, bool]:
    """The prompt text, and whether the tokenizer should add its special tokens (only without a chat template)."""
    content = f"{problem}\n\n{instruction}" if instruction else problem
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": content}]
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **(template_kwargs or {})
        )
        return text, False
    return content + "\n", True


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


def _generate(
    model: PreTrainedModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    pad_id: int,
    eos_ids: list[int],
    max_positions: int | None = None,
) -> list[tuple[list[int], bool]]:
    """Greedy continuations of a batch of token-id prompts, left-padded; each with whether it was cut off.

    With ``max_positions`` (the student's context), generation stops where the longest prompt would pass it: no
    token is generated at a position the student was not built for.
    """
    width = max(len(ids) for ids in prompts)
    if max_positions is not None:
        max_new_tokens = min(max_new_tokens, max_positions - width)
        if max_new_tokens < 1:  # the prompt alone fills the context
            return [([], True) for _ in prompts]
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=model.device)
    config = copy.deepcopy(model.generation_config)
    # Greedy: clear the sampling knobs a chat model's generation_config may carry (else transformers warns).
    config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
    config.num_beams, config.max_new_tokens, config.max_length = 1, max_new_tokens, None
    config.pad_token_id, config.eos_token_id = pad_id, (eos_ids or None)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    results = []
    for row in output[:, width:].tolist():
        stop = next((i for i, token in enumerate(row) if token in eos_ids), None)
        results.append((row if stop is None else row[:stop], stop is None and len(row) >= max_new_tokens))
    return results


def evaluate_student(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[str],
    answers: Sequence[Any],
    max_new_tokens: int = 512,
    batch_size: int = 8,
    progress: bool = True,
    *,
    instruction: str = DEFAULT_INSTRUCTION,
    template_kwargs: dict[str, Any] | None = None,
) -> tuple[list[dict], dict]:
    """Generate greedily for each problem and grade it; return per-problem records and accuracy metrics.

    ``template_kwargs`` go to the chat template (``{"enable_thinking": False}``), as in scoring and training.

    Records (in problem order) hold ``index, problem, reference, generation, extracted_answer, answer_source,
    correct`` and ``truncated`` (stopped by ``max_new_tokens`` or the student's context). ``correct`` is None when
    no answer could be read; it counts as wrong. ``answer_source`` is "marked" (``\\boxed{}``, "final answer",
    ``#### N``), "bare" or "unmarked": free text read by math-verify's last readable value, which can match by chance.
    Metrics, computed by the ``math_verify_accuracy`` :mod:`evaluate` module (:func:`load_math_verify_accuracy`)
    from the generations and references: ``accuracy, accuracy_ci_low, accuracy_ci_high`` (95% Wilson),
    ``num_problems, num_correct, num_no_answer``, ``num_marked_answer, num_bare_answer, num_unmarked_answer,
    num_correct_unmarked`` (so ``(num_correct - num_correct_unmarked) / num_problems`` is the accuracy on marked and
    bare answers only), and ``num_truncated``.

    Example:
        >>> records, metrics = evaluate_student(model, tokenizer, ["What is 2+3?"], ["5"])  # doctest: +SKIP
        >>> metrics["accuracy"], records[0]["extracted_answer"]  # doctest: +SKIP
        (1.0, '5')
    """
    if len(problems) != len(answers):
        raise ValueError(f"{len(problems)} problems but {len(answers)} answers: give one answer per problem.")
    eos_ids = _eos_ids(model, tokenizer)
    positions = context_length(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("The student's tokenizer has no chat template: problems are given as plain text.")
    encoded = []
    for problem in problems:
        text, special = _render(tokenizer, problem, instruction, template_kwargs)
        encoded.append(tokenizer(text, add_special_tokens=special)["input_ids"])
    # Longest first: batches of similar lengths waste less padding, and an out-of-memory shows up at once.
    order = sorted(range(len(problems)), key=lambda i: -len(encoded[i]))
    records: list[dict | None] = [None] * len(problems)
    metric = load_math_verify_accuracy(keep_in_memory=True)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(problems), desc="Evaluate", unit="problem", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            prompts = [encoded[i] for i in batch]
            outputs = _generate(model, prompts, max_new_tokens, pad_id, eos_ids, max_positions=positions)
            generations = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens, _ in outputs]
            metric.add_batch(predictions=generations, references=[reference_text(answers[i]) for i in batch])
            for i, (_, truncated), generation in zip(batch, outputs, generations, strict=True):
                graded = grade_response(answers[i], generation)
                records[i] = {
                    "index": i,
                    "problem": problems[i],
                    "reference": reference_answer(answers[i]),
                    "generation": generation,
                    "extracted_answer": graded.answer,
                    "answer_source": graded.source,
                    "correct": graded.correct,
                    "truncated": truncated,
                }
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    done = [record for record in records if record is not None]
    # compute() with nothing added has no inputs to read: give it the empty lists.
    metrics = metric.compute() if done else metric.compute(predictions=[], references=[])
    metrics["num_truncated"] = sum(record["truncated"] for record in done)
    return done, metrics


def load_benchmark(
    path: str, problem_column: str | None = None, answer_column: str | None = None, limit: int | None = None
) -> tuple[list[str], list[Any]]:
    """Problems and reference answers of a benchmark file, columns autodetected; mistakes raise LocalnatError.

    Example:
        >>> problems, answers = load_benchmark("../shared/data/benchmarks/gsm8k.jsonl", limit=2)  # doctest: +SKIP
        >>> answers[0][-5:]  # doctest: +SKIP
        '#### 18'
    """
    from .data_io import load_rows, require_columns, require_text

    ds = load_rows(path)
    if len(ds) == 0:
        raise LocalnatError(f"{path}: no rows. Give a benchmark with one problem per row.")
    problem, answer = detect_columns(ds.column_names, problem_column, answer_column, path)
    # The problems must be read as they are; other columns whose values have several types are read as text (the
    # reference answers included: they are graded from text), with one warning.
    require_columns(ds, [problem], path, {problem: "--problem_column"})
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    require_text(ds, problem, path, allow_none=False)
    answers = ds[answer]
    for row, value in enumerate(answers):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise LocalnatError(
                f"{path} row {row}, column {answer!r}: no reference answer. Fill it in or drop the row."
            )
    return list(ds[problem]), list(answers)


def _write_records(records: list[dict], output: Path, overwrite: bool = False) -> None:
    from .data_io import FILE_FORMATS, atomic_file, check_output, write_rows

    if output.suffix.lower() == ".jsonl":
        check_output(output, "file", overwrite=overwrite)
        with atomic_file(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif output.suffix.lower() in FILE_FORMATS:
        from datasets import Dataset

        write_rows(Dataset.from_list(records), output, overwrite=overwrite)
    else:
        raise LocalnatError(f"--output {str(output)!r}: use a .jsonl (or .json, .parquet, .csv) file name.")


def run_evaluate(args: EvaluateArguments, student: StudentArguments | None = None) -> dict:
    """Evaluate ``student`` on ``args.benchmark``: print a summary, write the records, return the metrics.

    The returned dict is shaped like ``evaluate.load("accuracy").compute(...)``'s, plus the 95% interval and counts.

    Example:
        >>> run_evaluate(EvaluateArguments(benchmark="gsm8k.jsonl", limit=50))  # doctest: +SKIP
        {'accuracy': 0.3, 'accuracy_ci_low': 0.19, 'accuracy_ci_high': 0.44, 'num_problems': 50, ...}
    """
    from .student import load_student

    if not args.benchmark:
        raise LocalnatError("evaluate needs --benchmark FILE (a .jsonl, .json, .parquet or .csv file, or a folder).")
    for name in ("max_new_tokens", "batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LocalnatError(f"--{name} {value}: use a whole number >= 1.")
    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() not in (".jsonl", ".json", ".parquet", ".csv"):
        raise LocalnatError(f"--output {args.output!r}: use a .jsonl (or .json, .parquet, .csv) file name.")
    if output is not None:
        from .outputs import check_output

        check_output(output, "file", inputs=[args.benchmark], overwrite=args.overwrite)
    template_kwargs = ScoringConfig(chat_template_kwargs=args.chat_template_kwargs).template_kwargs  # checks the JSON
    problems, answers = load_benchmark(args.benchmark, args.problem_column, args.answer_column, args.limit)
    student = student or StudentArguments()
    model, tokenizer = load_student(student.student)
    records, metrics = evaluate_student(
        model,
        tokenizer,
        problems,
        answers,
        args.max_new_tokens,
        args.batch_size,
        instruction=args.instruction,
        template_kwargs=template_kwargs,
    )
    if output is not None:
        _write_records(records, output, args.overwrite)
    source = getattr(model, "hf_localnat_source", None)
    name = source.student if source is not None else (student.student or "embedded")
    print(
        f"{Path(args.benchmark).stem}: accuracy {metrics['accuracy']:.1%} ({metrics['num_correct']}/"
        f"{metrics['num_problems']}, 95% CI {metrics['accuracy_ci_low']:.1%}-{metrics['accuracy_ci_high']:.1%}) "
        f"for {name}; {metrics['num_no_answer']} without a readable answer, {metrics['num_truncated']} cut off "
        f"at --max_new_tokens {args.max_new_tokens} or the student's context; "
        f"{metrics['num_unmarked_answer']} answers read from unmarked text (no \\boxed{{}} or final answer), "
        f"{metrics['num_correct_unmarked']} of them counted correct."
    )
    # The dict itself, on one line, so a script can log it next to a TRL run (e.g. trainer.log(metrics)).
    print(json.dumps(metrics))
    if output is not None:
        print(f"Wrote {len(records)} records -> {output}")
    return metrics
