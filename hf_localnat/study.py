"""``hf-localnat study``: which selection makes the better student, in one command.

One scored pool, several selection rules (the *arms*), one student: every arm selects ``k`` responses per prompt
from the same pool under the same ``where`` filter, trains the same student from the same weights with the same
``SFTConfig`` (TRL's ``SFTTrainer`` on conversational prompt-completion rows, loss on the completion only; a
``METRIC+reselect`` arm trains with :class:`~hf_localnat.trainer.ReselectingSFTTrainer`), and is evaluated with
``hf-localnat evaluate``'s code on one benchmark with one decoding. The untrained student is evaluated too.

- **Arms.** A metric column of the pool (top ``k`` per prompt by :func:`~hf_localnat.selection.top_k_per_group`,
  the direction from :func:`~hf_localnat.selection.is_higher_better`); ``random`` (``k`` seeded random candidates
  per prompt); ``best_teacher`` (the responses of the teacher :func:`~hf_localnat.selection.rank_teachers` ranks
  first under ``best_teacher_by``; where its response fails the filter, the best-ranked teacher whose response
  passes, counted as a fallback); ``oracle`` (``k`` seeded random correct candidates, topped up with seeded
  random incorrect ones where a prompt has fewer, counted); ``METRIC+reselect``.
  A candidate is a row with a prompt id and a non-empty response that passes ``where``.
- **Equal sizes.** Only the prompts where every arm has its ``k`` picks are trained on, so every arm has
  ``k x prompts`` examples; the prompts the filter left without candidates or short are counted in
  ``results.json`` and ``results.md``.
- **Contamination guard.** A benchmark problem whose normalised text (:func:`normalise_text`) equals a pool
  prompt stops the study, naming how many matched, unless ``allow_overlap`` (then the results say so).
- **Statistics.** Each arm's accuracy with its 95% Wilson interval, and the paired difference against the
  baseline arm with a percentile bootstrap CI over benchmark problems (:func:`paired_differences`).
- **Resume.** Each arm's stages land whole (a temporary renamed into place) and a marker ``done.json`` is written
  last; a rerun skips what is done and refuses to mix in an arm made with other settings (``overwrite`` redoes it).

Example:
    hf-localnat study --pool scored.parquet --benchmark bench.jsonl --arms local_naturalness,rsr,random \\
        --where "correct == True" --output_dir study --max_steps 200
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import re
import shutil
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .data_io import split_field
from .errors import LocalnatError
from .evaluation import EvaluateArguments, wilson_interval
from .metrics import ScoringConfig, with_fields_of
from .selection import (
    RankingConfig,
    SelectionConfig,
    correct_values,
    group_codes,
    is_higher_better,
    is_missing,
    rank_teachers,
    top_k_per_group,
    where_mask,
)
from .statistics import bootstrap_counts, percentile_ci
from .student import StudentArguments

logger = logging.getLogger(__name__)

RANDOM, BEST_TEACHER, ORACLE = "random", "best_teacher", "oracle"
SPECIAL_ARMS = (RANDOM, BEST_TEACHER, ORACLE)
RESELECT_SUFFIX = "+reselect"
UNTRAINED = "untrained"  # the student before training: a row of the table, and a possible baseline
STUDY_FILE = "study.json"  # marks a study folder; rewritten each run with the plan
DONE_FILE = "done.json"  # an arm's marker, written last
RESULTS_JSON, RESULTS_MD, FIGURE = "results.json", "results.md", "accuracy.png"
EVAL_RECORDS, EVAL_INFO, SELECTION_INFO = "eval.jsonl", "eval.json", "selection.json"
KEY_FILE = "study_arm.json"  # in an arm's scratch training folder: which settings its checkpoints belong to
EVALUATION_FIELDS = (
    "benchmark", "max_new_tokens", "limit", "batch_size", "problem_column", "answer_column", "instruction",
)  # fmt: skip
# Training arguments that change where files go or what is logged, not what is learned: left out of an arm's key.
UNKEYED_TRAINING_ARGS = {
    "output_dir", "logging_dir", "run_name", "report_to", "disable_tqdm", "logging_steps", "logging_strategy",
    "logging_first_step", "logging_nan_inf_filter", "save_strategy", "save_steps", "save_total_limit",
    "save_only_model", "save_safetensors", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token",
    "hub_private_repo", "hub_always_push", "hub_revision", "resume_from_checkpoint", "overwrite_output_dir",
    "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_persistent_workers", "local_rank",
    "selection_repo", "by", "log_level", "log_level_replica", "log_on_each_node", "eval_strategy", "eval_steps",
    "eval_delay", "eval_on_start", "per_device_eval_batch_size", "eval_accumulation_steps", "save_on_each_node",
    "ddp_timeout", "dataloader_pin_memory", "include_num_input_tokens_seen", "max_tokens_per_batch",
}  # fmt: skip
_MAX_LISTED = 5
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")  # with config.json: what identifies a local student


@dataclass
@with_fields_of(EvaluateArguments, only=EVALUATION_FIELDS)
class StudyArguments:
    """``hf-localnat study --pool SCORED --benchmark FILE --arms A,B,...``: one SFT run per selection rule.

    The selection options (``where``, ``k``, ``group_by``), the scoring options of a reselect arm and every
    ``SFTConfig`` field come from :class:`~hf_localnat.trainer.ReselectConfig`; the decoding options from
    :class:`~hf_localnat.evaluation.EvaluateArguments`. ``seed`` (SFTConfig's) also seeds the ``random`` and
    ``oracle`` picks and the bootstrap.

    Example:
        >>> args = StudyArguments(pool="scored.parquet", benchmark="bench.jsonl", arms="rsr,random")
        >>> args.baseline, args.max_new_tokens, args.batch_size
        ('random', 512, 8)
    """

    MIN_VALUES = {"max_new_tokens": 1, "limit": 1, "batch_size": 1, "n_bootstrap": 1}

    pool: str = field(
        default="",
        metadata={"help": "The scored pool (the output of score): a data file, save_to_disk folder or Hub id."},
    )
    arms: str = field(
        default="local_naturalness,global_naturalness,rsr,random,best_teacher",
        metadata={
            "help": "Comma-separated selection rules, one trained student each: a metric column of the pool, "
            "random, best_teacher, oracle, or METRIC+reselect (ReselectingSFTTrainer, needs --reselect_every_steps)."
        },
    )
    baseline: str = field(
        default=RANDOM, metadata={"help": "The arm every other is compared with (paired), or 'untrained'."}
    )
    best_teacher_by: str = field(
        default=SelectionConfig.by, metadata={"help": "The metric column that ranks teachers for best_teacher."}
    )
    correct_column: str = field(
        default="correct", metadata={"help": "Pool column saying a response is correct (oracle)."}
    )
    allow_overlap: bool = field(
        default=False,
        metadata={"help": "Run even when benchmark problems match pool prompts (the results then say how many)."},
    )
    n_bootstrap: int = field(default=1000, metadata={"help": "Paired bootstrap resamples of the benchmark problems."})
    hub_prefix: str | None = field(
        default=None,
        metadata={
            "help": "NAMESPACE/PREFIX the arms' selections will be pushed to (as NAMESPACE/PREFIX-ARM); each model "
            "folder's card links that id. Default: the local selection folder."
        },
    )
    split: str = split_field()
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Redo the arms (or evaluations) an earlier run of this --output_dir made with other settings. "
            "Arms made with the same settings are always reused."
        },
    )


# ---------------------------------------------------------------------------------------------------------- arms


@dataclass(frozen=True)
class Arm:
    """One selection rule: ``kind`` is ``metric``, ``reselect``, ``random``, ``best_teacher`` or ``oracle``.

    Example:
        >>> Arm("rsr+reselect", "reselect", "rsr").folder, Arm("a/b", "metric", "a/b").folder
        ('rsr+reselect', 'a_b')
    """

    name: str
    kind: str
    metric: str | None = None
    higher: bool | None = None  # a metric arm's direction: from its name, else --higher_is_better

    @property
    def folder(self) -> str:
        """The arm's folder name under ``arms/``: its name with anything but ``[A-Za-z0-9_.@+-]`` as ``_``."""
        return re.sub(r"[^A-Za-z0-9_.@+-]", "_", self.name).lstrip(".") or "_"


def parse_arms(text: str | Sequence[str], columns: Sequence[str], higher_is_better: bool | None = None) -> list[Arm]:
    """The arms of ``--arms``, checked against the pool's columns.

    A metric arm takes its direction from its name (:func:`~hf_localnat.selection.is_higher_better`);
    ``higher_is_better`` gives it to the metric arms whose name does not say it (a ``reward`` column, say).

    Example:
        >>> [(a.name, a.kind) for a in parse_arms("rsr, random,rsr+reselect", ["rsr", "prompt_id"])]
        [('rsr', 'metric'), ('random', 'random'), ('rsr+reselect', 'reselect')]
        >>> parse_arms("lalp", ["rsr"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hf_localnat.errors.LocalnatError: --arms: 'lalp' is not one of random, best_teacher, oracle nor a column ...
    """
    names = [name.strip() for name in (text.split(",") if isinstance(text, str) else text) if name.strip()]
    if not names:
        raise LocalnatError("--arms is empty. Name at least one arm, e.g. --arms local_naturalness,random.")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise LocalnatError(f"--arms names {', '.join(repeated)} more than once. Name each arm once.")
    arms = []
    for name in names:
        if name == UNTRAINED:
            raise LocalnatError(f"--arms: {UNTRAINED!r} is always evaluated; leave it out of --arms.")
        if name in SPECIAL_ARMS:
            arms.append(Arm(name, name))
            continue
        metric, reselect = (name[: -len(RESELECT_SUFFIX)], True) if name.endswith(RESELECT_SUFFIX) else (name, False)
        if metric not in columns:
            raise LocalnatError(
                f"--arms: {metric!r} is not one of {', '.join(SPECIAL_ARMS)} nor a column of the pool (columns: "
                f"{', '.join(columns)}). Score the pool with that metric, or fix the name."
            )
        try:
            higher = is_higher_better(metric)
        except LocalnatError:
            if higher_is_better is None:
                raise LocalnatError(
                    f"--arms {name}: the better direction of {metric!r} is not known from its name. Pass "
                    "--higher_is_better true|false (it applies to the metric arms whose name does not say it)."
                ) from None
            higher = higher_is_better
        arms.append(Arm(name, "reselect" if reselect else "metric", metric, higher))
    folders = Counter(arm.folder for arm in arms)
    clash = [arm.name for arm in arms if folders[arm.folder] > 1]
    if clash:
        raise LocalnatError(f"--arms: {', '.join(clash)} would share a folder name. Rename the columns.")
    return arms


# ------------------------------------------------------------------------------------------------- contamination

def normalise_text(text: str) -> str:
    """Text as the contamination guard compares it: NFKC, lower case, punctuation removed, each symbol (``+``,
    ``−``, ``$``, ...) a word of its own, whitespace collapsed. Symbols stay: ``1/2 + 1/3`` is not ``1/2 − 1/3``.

    Example:
        >>> normalise_text("Janet’s  ducks lay 16 eggs\\nper day.")
        'janet s ducks lay 16 eggs per day'
        >>> normalise_text("What is 2+2?") == normalise_text("what is 2 + 2"), normalise_text("1/2+1/3")
        (True, '1 2 + 1 3')
    """
    folded = unicodedata.normalize("NFKC", str(text)).lower()
    out = []
    for char in folded:
        kind = unicodedata.category(char)
        out.append(" " if kind.startswith("P") else f" {char} " if kind.startswith("S") else char)
    return " ".join("".join(out).split())


def overlapping_problems(problems: Sequence[str], prompts: Sequence[str]) -> list[int]:
    """Indices of the benchmark problems whose normalised text equals a pool prompt's.

    Example:
        >>> overlapping_problems(["What is 2+2?", "Name a prime."], ["what is 2 + 2", "Other"])
        [0]
    """
    seen = {normalise_text(prompt) for prompt in prompts if isinstance(prompt, str)}
    return [i for i, problem in enumerate(problems) if normalise_text(problem) in seen]


def check_overlap(problems: Sequence[str], prompts: Sequence[str], benchmark: str, pool: str, allow: bool) -> list[int]:
    """The overlapping problems (see :func:`overlapping_problems`); raise unless ``allow``.

    Example:
        >>> check_overlap(["2+2?", "3+3?"], ["2 + 2?"], "bench.jsonl", "pool.jsonl", allow=True)
        [0]
        >>> check_overlap(["2+2?"], ["2 + 2?"], "bench.jsonl", "pool.jsonl", allow=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hf_localnat.errors.LocalnatError: --benchmark bench.jsonl: 1 of 1 problems (rows 0) match a prompt of ...
    """
    matched = overlapping_problems(problems, prompts)
    if matched and not allow:
        shown = ", ".join(map(str, matched[:_MAX_LISTED])) + (", ..." if len(matched) > _MAX_LISTED else "")
        raise LocalnatError(
            f"--benchmark {benchmark}: {len(matched)} of {len(problems)} problems (rows {shown}) match a prompt of "
            f"--pool {pool} once normalised (lower case, punctuation and extra whitespace removed). Evaluate on "
            "held-out problems, or pass --allow_overlap to run anyway (the results will say so)."
        )
    return matched


# ----------------------------------------------------------------------------------------------------- selection


@dataclass
class StudyPlan:
    """Every arm's training rows, restricted to the prompts where every arm has its ``k`` picks.

    ``rows[arm]`` / ``ranks[arm]``: pool row indices and 1-based ranks, grouped by prompt (in order of first
    appearance), best first; the same length for every arm. ``prompts`` counts the pool's prompts: ``in_pool``,
    ``used``, ``without_candidates`` (the filter left none), ``short`` (candidates, but some arm has fewer than
    ``k`` picks) and ``per_arm`` (each arm's prompts with ``k``, fewer, and no picks). ``notes`` holds what an
    arm needs said (best_teacher's ranking and fallbacks).
    """

    rows: dict[str, np.ndarray]
    ranks: dict[str, np.ndarray]
    prompts: dict[str, Any]
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)


def _score_column(pool: datasets.Dataset, column: str) -> np.ndarray:
    feature = pool.features[column]
    if not isinstance(feature, datasets.Value) or not str(feature.dtype).startswith(("int", "uint", "float", "double")):
        raise LocalnatError(f"--arms {column}: the pool column holds {feature}, not scores. Name a metric column.")
    return np.array([np.nan if is_missing(v) else float(v) for v in pool[column]], dtype=np.float64)


def arm_picks(
    pool: datasets.Dataset,
    arm: Arm,
    selection: SelectionConfig,
    *,
    seed: int = 0,
    best_teacher_by: str = StudyArguments.best_teacher_by,
    teacher_column: str = RankingConfig.teacher_column,
    response_column: str = ScoringConfig.response_column,
    correct_column: str = StudyArguments.correct_column,
    candidates: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One arm's picks from the whole pool: row indices and ranks (grouped by prompt, best first), and notes.

    Every arm chooses among the same candidates: rows with a ``group_by`` key and a non-empty response that pass
    ``selection.where`` (``candidates``, that mask, when already computed); each keeps up to ``selection.k`` per
    prompt through
    :func:`~hf_localnat.selection.top_k_per_group`. A metric arm ranks by the column (unscored rows never picked),
    ``random`` by ``numpy.random.default_rng(seed).random``, ``oracle`` the same draws with every correct
    candidate ahead of every incorrect one (a prompt with fewer than ``k`` correct is topped up, counted in
    ``notes["incorrect_prompts"]``, rather than dropped from every arm; correctness from ``correct_column``),
    ``best_teacher`` by the teacher's rank under ``best_teacher_by``
    (:func:`~hf_localnat.selection.rank_teachers` over the whole pool): where the first teacher's response fails
    the filter, the next-ranked teacher with a passing response, counted in ``notes["fallback_prompts"]``.

    Example:
        >>> pool = datasets.Dataset.from_dict({"prompt_id": ["p", "p", "q", "q"], "teacher": ["a", "b", "a", "b"],
        ...     "response": ["x", "y", "z", "w"], "rsr": [2.0, 1.0, 1.0, 3.0], "correct": [True, True, False, True]})
        >>> rows, ranks, _ = arm_picks(pool, Arm("rsr", "metric", "rsr"), SelectionConfig(where="correct == True"))
        >>> rows.tolist()  # p: b (rsr 1.0 is better); q: only b passes the filter
        [1, 3]
        >>> best = Arm("best_teacher", "best_teacher")
        >>> rows, _, notes = arm_picks(pool, best, SelectionConfig(where="correct == True"), best_teacher_by="rsr")
        >>> rows.tolist(), notes["top_teacher"], notes["fallback_prompts"]  # a: mean rsr 1.5; its q answer fails
        ([0, 3], 'a', 1)
    """
    codes, _ = group_codes(list(pool.with_format(None)[selection.group_by]), selection.group_by)
    # The candidates are the same for every arm: plan_study reads the pool's responses for them once.
    eligible = candidate_mask(pool, selection, response_column) if candidates is None else candidates
    notes: dict[str, Any] = {}
    if arm.kind in ("metric", "reselect"):
        scores = _score_column(pool, arm.metric)
        higher = arm.higher if arm.higher is not None else is_higher_better(arm.metric)
    elif arm.kind in (RANDOM, ORACLE):
        scores, higher = np.random.default_rng(seed).random(len(pool)), True
        if arm.kind == ORACLE:  # draws lie in [0, 1): +1 puts every correct candidate first
            correct = correct_values(list(pool.with_format(None)[correct_column])) == 1.0
            scores = scores + correct
    elif arm.kind == BEST_TEACHER:
        table = rank_teachers(pool, by=best_teacher_by, teacher_column=teacher_column, group_by=selection.group_by)
        rank_of = dict(zip(table["teacher"], table["rank"], strict=True))
        teachers = list(pool.with_format(None)[teacher_column])
        scores = np.array([-rank_of[t] if t in rank_of else np.nan for t in teachers], dtype=np.float64)
        higher = True
        notes.update(
            by=best_teacher_by, ranking=[str(t) for t in table["teacher"]], top_teacher=str(table["teacher"][0])
        )
    else:  # pragma: no cover - parse_arms makes only these kinds
        raise AssertionError(arm.kind)
    rows, ranks = top_k_per_group(scores, codes, eligible, selection.k, higher)
    if arm.kind == BEST_TEACHER:
        notes["fallback_prompts"] = _fallbacks(rows, codes, teachers, notes["top_teacher"])
    if arm.kind == ORACLE:
        notes["incorrect_prompts"] = _incorrect_prompts(rows, codes, correct)
    return rows, ranks, notes


def arm_rule(arm: Arm, selection: SelectionConfig, notes: dict[str, Any], seed: int) -> str | None:
    """How an arm that ranks no score column chose its rows, for its selection card (None for a metric arm).

    Example:
        >>> arm_rule(Arm("random", "random"), SelectionConfig(k=2, where="correct == True"), {}, seed=0)[:70]
        '2 seeded random candidates per prompt_id (numpy.random.default_rng(0))'
        >>> arm_rule(Arm("rsr", "metric", "rsr"), SelectionConfig(), {}, seed=0) is None
        True
    """
    passing = f" among the rows passing `{selection.where}`" if selection.where else ""
    tail = f"{passing}, picked by hf-localnat study on the prompts where every arm has its picks"
    draws = f"per {selection.group_by} (numpy.random.default_rng({seed}))"
    if arm.kind == RANDOM:
        return f"{selection.k} seeded random candidates {draws}{tail}"
    if arm.kind == ORACLE:
        return f"{selection.k} seeded random correct candidates {draws}{tail}"
    if arm.kind == BEST_TEACHER:
        return (
            f"the responses of {notes.get('top_teacher')}, the teacher ranked first by {notes.get('by')} over the "
            "pool, or the best-ranked teacher's passing response where its own fails the filter "
            f"({notes.get('fallback_prompts', 0)} prompts){tail}"
        )
    return None


def candidate_mask(
    pool: datasets.Dataset, selection: SelectionConfig, response_column: str = ScoringConfig.response_column
) -> np.ndarray:
    """The rows every arm chooses among: a ``group_by`` key, a non-empty response, and ``where`` passed.

    Example:
        >>> pool = datasets.Dataset.from_dict({"prompt_id": ["p", None, "q"], "response": ["x", "y", " "],
        ...                                    "correct": [True, True, True]})
        >>> candidate_mask(pool, SelectionConfig(where="correct == True")).tolist()
        [True, False, False]
    """
    keys = list(pool.with_format(None)[selection.group_by])
    passed = where_mask(pool, selection.where)
    mask = np.ones(len(pool), dtype=bool) if passed is None else passed
    mask &= np.fromiter((not is_missing(key) for key in keys), dtype=bool, count=len(keys))
    responses = pool.with_format(None)[response_column]
    mask &= np.fromiter((isinstance(r, str) and bool(r.strip()) for r in responses), dtype=bool, count=len(pool))
    return mask


def _incorrect_prompts(rows: np.ndarray, codes: np.ndarray, correct: np.ndarray) -> int:
    """Prompts among ``rows`` with an incorrect pick (an oracle prompt with fewer than ``k`` correct)."""
    return len({int(codes[row]) for row in rows if not correct[int(row)]})


def _fallbacks(rows: np.ndarray, codes: np.ndarray, teachers: Sequence[Any], top: str) -> int:
    """Prompts among ``rows`` none of whose picks is the top teacher's."""
    from_top = {int(codes[row]) for row in rows if str(teachers[int(row)]) == top}
    return len({int(codes[row]) for row in rows} - from_top)


def plan_study(
    pool: datasets.Dataset,
    arms: Sequence[Arm],
    selection: SelectionConfig,
    **options: Any,
) -> StudyPlan:
    """Every arm's picks (:func:`arm_picks`, ``options`` passed on), kept on the prompts where all have ``k``.

    Example:
        >>> pool = datasets.Dataset.from_dict({"prompt_id": ["p", "p", "q", "q"], "teacher": ["a", "b", "a", "b"],
        ...     "response": ["x", "y", "z", "w"], "rsr": [2.0, 1.0, 1.0, 3.0], "correct": [True, True, False, True]})
        >>> plan = plan_study(pool, parse_arms("rsr,oracle", pool.column_names), SelectionConfig(k=2))
        >>> plan.rows["rsr"].tolist(), plan.prompts["used"], plan.notes["oracle"]["incorrect_prompts"]
        ([1, 0, 2, 3], 2, 1)
    """
    keys = list(pool.with_format(None)[selection.group_by])
    codes, group_keys = group_codes(keys, selection.group_by)
    real = np.array([not is_missing(key) for key in group_keys], dtype=bool)
    candidates = candidate_mask(pool, selection, options.get("response_column", ScoringConfig.response_column))
    picks = {arm.name: arm_picks(pool, arm, selection, candidates=candidates, **options) for arm in arms}
    counts = {name: np.bincount(codes[rows], minlength=len(group_keys)) for name, (rows, _, _) in picks.items()}
    full = np.logical_and.reduce([count == selection.k for count in counts.values()]) & real
    has_candidates = np.bincount(codes[candidates], minlength=len(group_keys)) > 0
    prompts = {
        "in_pool": int(real.sum()),
        "used": int(full.sum()),
        "without_candidates": int((real & ~has_candidates).sum()),
        "short": int((real & has_candidates & ~full).sum()),
        "per_arm": {
            name: {
                "with_k": int(((count == selection.k) & real).sum()),
                "fewer": int(((count > 0) & (count < selection.k) & real).sum()),
                "none": int(((count == 0) & real).sum()),
            }
            for name, count in counts.items()
        },
    }
    rows, ranks, notes = {}, {}, {}
    for name, (arm_rows, arm_ranks, arm_notes) in picks.items():
        keep = full[codes[arm_rows]]
        rows[name], ranks[name] = arm_rows[keep], arm_ranks[keep]
        if "incorrect_prompts" in arm_notes:  # counted again on the prompts trained on
            column = options.get("correct_column", StudyArguments.correct_column)
            correct = correct_values(list(pool.with_format(None)[column])) == 1.0
            arm_notes = {**arm_notes, "incorrect_prompts": _incorrect_prompts(rows[name], codes, correct),
                         "incorrect_prompts_in_pool": arm_notes["incorrect_prompts"]}  # fmt: skip
        if "fallback_prompts" in arm_notes:  # counted again on the prompts trained on
            teachers = pool.with_format(None)[options.get("teacher_column", RankingConfig.teacher_column)]
            fallbacks = _fallbacks(rows[name], codes, teachers, arm_notes["top_teacher"])
            arm_notes = {
                **arm_notes,
                "fallback_prompts": fallbacks,
                "fallback_prompts_in_pool": arm_notes["fallback_prompts"],
            }
        notes[name] = arm_notes
    sizes = {len(r) for r in rows.values()}
    if len(sizes) > 1:  # pragma: no cover - each arm has exactly k rows on each prompt kept
        raise AssertionError(f"arms differ in size: { {n: len(r) for n, r in rows.items()} }")
    return StudyPlan(rows=rows, ranks=ranks, prompts=prompts, notes=notes)


# ---------------------------------------------------------------------------------------------------- statistics


def paired_differences(
    correct: np.ndarray, baseline: int, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95
) -> list[dict[str, float | int | None]]:
    """Each column's accuracy minus the baseline column's, with a paired percentile bootstrap CI over problems.

    ``correct`` is problems x arms (1 right, 0 wrong). One resample of problem indices is shared by every arm
    (:func:`~hf_localnat.statistics.bootstrap_counts`, the draws of ``numpy.random.default_rng(seed)``), the
    difference of means is taken in each, and the interval is its ``numpy.percentile``
    (:func:`~hf_localnat.statistics.percentile_ci`). Also: ``wins`` (problems the arm gets right and the
    baseline wrong), ``losses`` (the reverse) and ``share_above_zero`` (resamples where the arm is ahead).

    Example:
        >>> table = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=float)
        >>> out = paired_differences(table, baseline=1, n_bootstrap=2000, seed=0)
        >>> out[0]["difference"], out[0]["wins"], out[0]["losses"], out[1]["difference"]
        (0.5, 2, 0, 0.0)
    """
    table = np.asarray(correct, dtype=np.float64)
    n, arms = table.shape
    if n == 0:
        raise LocalnatError("no benchmark problems were evaluated; nothing to compare.")
    deltas = np.empty((n_bootstrap, arms), dtype=np.float64)
    start = 0
    for counts in bootstrap_counts(n, n_bootstrap, seed):
        means = counts @ table / n
        deltas[start : start + len(counts)] = means - means[:, [baseline]]
        start += len(counts)
    out = []
    for column in range(arms):
        low, high = percentile_ci(deltas[:, column], confidence)
        out.append(
            {
                "difference": float(table[:, column].mean() - table[:, baseline].mean()),
                "ci_low": low,
                "ci_high": high,
                "wins": int(((table[:, column] == 1) & (table[:, baseline] == 0)).sum()),
                "losses": int(((table[:, column] == 0) & (table[:, baseline] == 1)).sum()),
                "share_above_zero": float((deltas[:, column] > 0).mean()),
            }
        )
    return out


def accuracy_row(correct: Sequence[float]) -> dict[str, float | int]:
    """Accuracy with its 95% Wilson interval (:func:`~hf_localnat.evaluation.wilson_interval`).

    Example:
        >>> row = accuracy_row([1, 0, 0, 0])
        >>> row["accuracy"], row["num_correct"], round(row["ci_low"], 4), round(row["ci_high"], 4)
        (0.25, 1, 0.0456, 0.6994)
    """
    values = np.asarray(correct, dtype=np.float64)
    right, total = int(values.sum()), int(values.size)
    low, high = wilson_interval(right, total)
    return {"accuracy": right / total if total else 0.0, "num_correct": right, "num_problems": total,
            "ci_low": low, "ci_high": high}  # fmt: skip


# -------------------------------------------------------------------------------------------------- the folders


def _key(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: Any) -> None:
    from .data_io import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The settings that differ, by dotted name (at most five shown).

    Example:
        >>> _differences({"training": {"learning_rate": 0.001, "seed": 1}}, {"training": {"learning_rate": 0.002}})
        'training.learning_rate (0.001 -> 0.002), training.seed (1 -> None)'
    """
    old, new = _flatten(old), _flatten(new)
    names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = ", ".join(f"{name} ({old.get(name)!r} -> {new.get(name)!r})" for name in names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "") or "the data"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _rows_digest(pool: datasets.Dataset, rows: np.ndarray, prompt_column: str, response_column: str) -> str:
    digest = hashlib.sha256()
    subset = pool.with_format(None).select_columns([prompt_column, response_column]).select(rows.tolist())
    for prompt, response in zip(subset[prompt_column], subset[response_column], strict=True):
        digest.update(json.dumps([prompt, response]).encode())
    return digest.hexdigest()[:16]


def _student_identity(student: StudentArguments) -> str:
    from .student import EMBEDDED_STUDENT, embedded_revision

    if student.student in (None, "", "embedded", EMBEDDED_STUDENT):
        return f"{EMBEDDED_STUDENT}@{embedded_revision()}"
    path = Path(student.student).expanduser()
    if not path.exists():
        return student.student
    files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json") if (
        path.is_dir()
    ) else [path]
    stamp = _key([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])  # new weights, new student
    return f"{path.resolve()}@{stamp}"


def training_settings(config: Any) -> dict[str, Any]:
    """A training config's fields that change what is learned (not where files go): an arm's key.

    Example:
        >>> settings = training_settings({"output_dir": "a", "learning_rate": 1e-4, "report_to": []})
        >>> settings
        {'learning_rate': 0.0001}
    """
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in values.items() if k not in UNKEYED_TRAINING_ARGS and not k.startswith("_")}


def sft_config(config: Any, output_dir: str | Path, run_name: str | None = None) -> Any:
    """The plain ``SFTConfig`` of a non-reselect arm: the ``SFTConfig`` fields of the study's ReselectConfig.

    ReselectConfig serves its pool through a transform (``remove_unused_columns`` off, the dataset not prepared);
    an SFT arm gives TRL ordinary prompt-completion rows, so those two go back to TRL's defaults.

    Example:
        >>> from hf_localnat.trainer import ReselectConfig
        >>> args = sft_config(ReselectConfig(output_dir="study", max_steps=3, report_to="none"), "study/arms/x")
        >>> type(args).__name__, args.max_steps, args.output_dir, args.remove_unused_columns
        ('SFTConfig', 3, 'study/arms/x', True)
    """
    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig) if f.init}
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init and f.name in names}
    kwargs = {k: v for k, v in (values.get("dataset_kwargs") or {}).items() if k != "skip_prepare_dataset"}
    values.update(output_dir=str(output_dir), remove_unused_columns=True, dataset_kwargs=kwargs or None)
    if run_name is not None:
        values["run_name"] = run_name
    return SFTConfig(**values)


def _conversations(
    pool: datasets.Dataset, rows: np.ndarray, prompt_column: str, response_column: str, template_kwargs: dict
) -> datasets.Dataset:
    subset = pool.with_format(None).select(rows.tolist())
    data: dict[str, list] = {
        "prompt": [[{"role": "user", "content": p}] for p in subset[prompt_column]],
        "completion": [[{"role": "assistant", "content": r}] for r in subset[response_column]],
    }
    if template_kwargs:
        data["chat_template_kwargs"] = [dict(template_kwargs) for _ in range(len(subset))]
    return datasets.Dataset.from_dict(data)


# ----------------------------------------------------------------------------------------------------- the study


@dataclass
class _ArmState:
    arm: Arm
    folder: Path
    train_key: str
    train_settings: dict[str, Any]
    num_rows: int
    selection_repo: str


def _check_study_folder(output_dir: Path, inputs: Sequence[str | None]) -> None:
    from .outputs import check_location

    check_location(output_dir, inputs, flag="--output_dir")
    if output_dir.is_file():
        raise LocalnatError(f"--output_dir {str(output_dir)!r} is a file. Pick a folder name.")
    entries = [entry for entry in output_dir.iterdir() if entry.name != "lock"] if output_dir.is_dir() else []
    if entries and not (output_dir / STUDY_FILE).is_file():
        raise LocalnatError(
            f"--output_dir {str(output_dir)!r} exists and is not a study folder (no {STUDY_FILE}). Pick a new folder."
        )


def _refuse_changed(what: str, old: dict[str, Any], new: dict[str, Any], overwrite: bool) -> None:
    if not overwrite:
        raise LocalnatError(
            f"{what} was made with other settings: {_differences(old, new)}. Pass --overwrite to redo it, or pick a "
            "new --output_dir."
        )


def _prepare(
    args: StudyArguments, student: StudentArguments, config: Any, output_dir: Path, num_processes: int
) -> dict[str, Any]:
    """On the main process: checks, the contamination guard, the plan, the selection folders. Returns the plan."""
    from .data_io import load_rows, require_columns, require_text
    from .evaluation import load_benchmark
    from .hub import push_selection

    if not args.pool:
        raise LocalnatError("study needs --pool SCORED (the output of hf-localnat score).")
    if not args.benchmark:
        raise LocalnatError("study needs --benchmark FILE (problems with reference answers, e.g. gsm8k.jsonl).")
    if config.by != SelectionConfig.by:
        raise LocalnatError("--by: study selects by each of --arms; name a reselect arm METRIC+reselect instead.")
    if config.selection_repo:
        raise LocalnatError(
            "--selection_repo: study names each arm's selection itself; use --hub_prefix NAMESPACE/PREFIX."
        )
    _check_study_folder(output_dir, [args.pool, args.benchmark, student.student])

    pool = load_rows(args.pool, split=args.split)
    selection = SelectionConfig(group_by=config.group_by, k=config.k, where=config.where)
    arms = parse_arms(args.arms, pool.column_names, config.higher_is_better)
    names = [arm.name for arm in arms]
    if args.baseline not in (*names, UNTRAINED):
        raise LocalnatError(f"--baseline {args.baseline}: not one of --arms ({', '.join(names)}) or {UNTRAINED}.")
    flags = {config.prompt_column: "--prompt_column", config.response_column: "--response_column",
             config.group_by: "--group_by"}  # fmt: skip
    needed = [config.prompt_column, config.response_column, config.group_by]
    if any(arm.kind == BEST_TEACHER for arm in arms):
        needed += [config.teacher_column, args.best_teacher_by]
        flags.update({config.teacher_column: "--teacher_column", args.best_teacher_by: "--best_teacher_by"})
    if any(arm.kind == ORACLE for arm in arms):
        needed.append(args.correct_column)
        flags[args.correct_column] = "--correct_column"
    require_columns(pool, needed, args.pool, flags)
    require_text(pool, config.prompt_column, args.pool, allow_none=False, flags=flags)
    require_text(pool, config.response_column, args.pool, flags=flags)
    if (
        any(arm.kind == "reselect" for arm in arms)
        and config.reselect_every_steps is None
        and (config.reselect_every != "epoch")
    ):
        raise LocalnatError("a METRIC+reselect arm needs --reselect_every_steps N (or --reselect_every epoch).")

    problems, answers = load_benchmark(args.benchmark, args.problem_column, args.answer_column, args.limit)
    overlap = check_overlap(problems, pool[config.prompt_column], args.benchmark, args.pool, args.allow_overlap)
    if overlap:
        logger.warning("%d of %d benchmark problems match pool prompts; running anyway (--allow_overlap).",
                       len(overlap), len(problems))  # fmt: skip

    plan = plan_study(
        pool, arms, selection, seed=config.seed, best_teacher_by=args.best_teacher_by,
        teacher_column=config.teacher_column, response_column=config.response_column,
        correct_column=args.correct_column,
    )  # fmt: skip
    if plan.prompts["used"] == 0:
        worst = min(plan.prompts["per_arm"], key=lambda name: plan.prompts["per_arm"][name]["with_k"])
        raise LocalnatError(
            f"no prompt of {args.pool} has {selection.k} picks in every arm ({plan.prompts['without_candidates']} have "
            f"no candidate under --where; {worst} has {selection.k} on only "
            f"{plan.prompts['per_arm'][worst]['with_k']}). Lower --k, loosen --where, or drop {worst}."
        )

    student_id = _student_identity(student)
    benchmark_digest = _key([problems, [str(a) for a in answers]])
    template_kwargs = ScoringConfig(chat_template_kwargs=config.chat_template_kwargs).template_kwargs
    eval_settings = {
        **{name: getattr(args, name) for name in EVALUATION_FIELDS if name != "benchmark"},
        "benchmark": benchmark_digest, "num_problems": len(problems), "chat_template_kwargs": template_kwargs,
    }  # fmt: skip
    common = {
        "student": student_id, "selection": selection.to_dict(), "seed": config.seed, "num_processes": num_processes,
        "prompt_column": config.prompt_column, "response_column": config.response_column,
        "chat_template_kwargs": template_kwargs,  # it shapes every training row (and SFTConfig does not hold it)
    }  # fmt: skip
    sft_settings = training_settings(sft_config(config, output_dir / "arms"))
    reselect_settings = training_settings(config)
    states = []
    for arm in arms:
        folder = output_dir / "arms" / arm.folder
        rows = plan.rows[arm.name]
        if arm.kind == "reselect":  # its candidates: every row of the prompts trained on
            settings = {**common, "arm": arm.name,
                        "training": {**reselect_settings, "by": arm.metric, "higher_is_better": arm.higher},
                        "candidates": _rows_digest(pool, _prompt_rows(pool, plan, config.group_by),
                                                   config.prompt_column, config.response_column),
                        "initial": _rows_digest(pool, rows, config.prompt_column, config.response_column)}  # fmt: skip
        else:
            settings = {**common, "arm": arm.name, "training": sft_settings,
                        "rows": _rows_digest(pool, rows, config.prompt_column, config.response_column)}  # fmt: skip
        hub_name = re.sub(r"[^A-Za-z0-9_.-]", "-", arm.name)
        repo = f"{args.hub_prefix}-{hub_name}" if args.hub_prefix else str((folder / "selection").resolve())
        settings = json.loads(json.dumps(settings, default=str))  # as it reads back from selection.json
        states.append(_ArmState(arm, folder, _key(settings), settings, len(rows), repo))
    for state in states:  # every refusal before anything is replaced
        _check_arm(state, args.overwrite)
    if not (output_dir / STUDY_FILE).is_file():  # marks the folder as a study's before the first arm lands
        _write_json(output_dir / STUDY_FILE, {"version": __version__, "state": "preparing"})
    for state in states:
        _write_selection(state, pool, plan, selection, config, args, push_selection)
    study = {
        "version": __version__, "pool": args.pool, "benchmark": args.benchmark, "student": student_id,
        "arms": names, "baseline": args.baseline, "selection": selection.to_dict(), "prompts": plan.prompts,
        "num_problems": len(problems), "overlap": {"allowed": args.allow_overlap, "num_matched": len(overlap),
                                                    "rows": overlap},
        "eval_settings": eval_settings, "eval_key": _key({"eval": eval_settings, "student": student_id}),
        "arm_states": [
            {"arm": s.arm.name, "kind": s.arm.kind, "metric": s.arm.metric, "higher": s.arm.higher,
             "folder": str(s.folder), "train_key": s.train_key, "num_rows": s.num_rows,
             "selection_repo": s.selection_repo, "notes": plan.notes.get(s.arm.name, {})}
            for s in states
        ],
    }  # fmt: skip
    _write_json(output_dir / STUDY_FILE, study)
    return study


def _prompt_rows(pool: datasets.Dataset, plan: StudyPlan, group_by: str) -> np.ndarray:
    """Every pool row of the prompts the plan trains on (a reselect arm's candidates)."""
    keys = list(pool.with_format(None)[group_by])
    first = next(iter(plan.rows.values()))
    used = {keys[int(r)] for r in first}
    return np.array([i for i, key in enumerate(keys) if not is_missing(key) and key in used], dtype=np.int64)


def _check_arm(state: _ArmState, overwrite: bool) -> None:
    """Refuse to replace a trained arm that was made with other settings (unless ``overwrite``)."""
    info = _read_json(state.folder / SELECTION_INFO)
    if info is not None and info.get("train_key") != state.train_key:
        if any((state.folder / name).exists() for name in ("model", EVAL_RECORDS)):
            what = f"{state.folder} (arm {state.arm.name})"
            _refuse_changed(what, info.get("train_settings", {}), state.train_settings, overwrite)


def _write_selection(state: _ArmState, pool, plan: StudyPlan, selection, config, args, push_selection) -> None:
    """The arm's selection folder (push_selection's, with its card) and ``selection.json``, unless already there
    (:func:`_check_arm` has already refused a trained arm of other settings)."""
    info_path = state.folder / SELECTION_INFO
    info = _read_json(info_path)
    if info is not None and info.get("train_key") != state.train_key:
        for name in (DONE_FILE, "model", EVAL_RECORDS, EVAL_INFO, "train", "selection", SELECTION_INFO):
            _remove(state.folder / name)
        info = None
    if info is not None and (state.folder / "selection").is_dir():
        return
    state.folder.mkdir(parents=True, exist_ok=True)
    rows, ranks = plan.rows[state.arm.name], plan.ranks[state.arm.name]
    from .selection import RANK_COLUMN

    selected = pool.select(rows.tolist())
    if RANK_COLUMN in selected.column_names:
        selected = selected.remove_columns(RANK_COLUMN)
    selected = selected.add_column(RANK_COLUMN, ranks.astype(np.int64).tolist())
    by = state.arm.metric or state.arm.name
    card_config = dataclasses.replace(selection, by=by, higher_is_better=state.arm.higher if state.arm.metric else True)
    push_selection(
        selected, to_dir=state.folder / "selection", scored=pool, selection_config=card_config,
        source_dataset=args.pool, overwrite=True, teacher_column=config.teacher_column,
        response_column=config.response_column, rule=arm_rule(state.arm, selection, plan.notes.get(state.arm.name, {}),
                                                              seed=config.seed),
    )  # fmt: skip
    _write_json(info_path, {"arm": state.arm.name, "kind": state.arm.kind, "train_key": state.train_key,
                            "train_settings": state.train_settings, "num_rows": state.num_rows,
                            "notes": plan.notes.get(state.arm.name, {})})  # fmt: skip


def _train_arm(entry: dict[str, Any], pool: datasets.Dataset, config: Any, student: StudentArguments, state) -> dict:
    """Train one arm into ``arms/ARM/train``, save it as ``arms/ARM/model`` (main process). Every process runs it."""
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    from .distributed import main_decides
    from .hub import HISTORY_FILE, student_base_model, training_args_summary
    from .student import load_student
    from .trainer import ReselectingSFTTrainer

    folder = Path(entry["folder"])
    train_dir = folder / "train"

    def start() -> bool:  # a checkpoint of the same settings is resumed; anything else in train/ is swept
        record = _read_json(train_dir / KEY_FILE)
        if record is None or record.get("train_key") != entry["train_key"]:
            _remove(train_dir)
            train_dir.mkdir(parents=True)
            _write_json(train_dir / KEY_FILE, {"train_key": entry["train_key"]})
            return False
        return get_last_checkpoint(str(train_dir)) is not None

    resume = main_decides(state, start)
    shards = sorted(str(path) for path in (folder / "selection" / "data").glob("*.parquet"))
    with state.main_process_first() if state is not None else contextlib.nullcontext():  # one fills the cache
        selected = datasets.Dataset.from_parquet(shards)
    model, tokenizer = load_student(student.student, device="cpu", dtype="float32")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    template_kwargs = ScoringConfig(chat_template_kwargs=config.chat_template_kwargs).template_kwargs
    if entry["kind"] == "reselect":
        args = dataclasses.replace(config, output_dir=str(train_dir), by=entry["metric"],
                                   higher_is_better=entry["higher"], selection_repo=entry["selection_repo"],
                                   run_name=_run_name(config, entry))  # fmt: skip
        used = set(selected[config.group_by])
        candidates = pool.filter(lambda key: key in used, input_columns=config.group_by)
        trainer = ReselectingSFTTrainer(
            model=model, args=args, candidate_dataset=candidates, processing_class=tokenizer
        )
    else:
        args = sft_config(config, train_dir, run_name=_run_name(config, entry))
        rows = np.arange(len(selected))
        train = _conversations(selected, rows, config.prompt_column, config.response_column, template_kwargs)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    final = train_dir / "final"
    trainer.save_model(str(final))
    summary = {"global_step": int(trainer.state.global_step), "train_loss": float(result.training_loss)}

    def finish() -> dict[str, Any]:
        tokenizer.save_pretrained(str(final))
        history = list(getattr(trainer, "selection_history", []) or [])
        (final / HISTORY_FILE).write_text("".join(json.dumps(record) + "\n" for record in history))
        saved = {
            "base_model": student_base_model(model),
            "training_args": training_args_summary(trainer.args),
            "selection_repo": entry["selection_repo"],
            "study_arm": {"arm": entry["arm"], "train_key": entry["train_key"], **summary},
        }
        _save_model_card(final, saved, history)
        for name in (DONE_FILE, EVAL_INFO, EVAL_RECORDS, "model"):  # evaluations of an earlier model are stale
            _remove(folder / name)
        final.rename(folder / "model")  # the model folder appears whole
        _remove(train_dir)  # its checkpoints are not needed once the model is saved
        return summary

    summary = main_decides(state, finish)
    trainer = model = None  # the weights go before the next arm's load
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
    return summary


def _relink(entry: dict[str, Any]) -> None:
    """Point a trained arm's model card at the arm's selection id of this run (``--hub_prefix`` may have been
    added or changed since it was trained), so ``push-student`` links the right dataset."""
    from .hub import TRAINING_ARGS_FILE, read_history

    model = Path(entry["folder"]) / "model"
    saved = _read_json(model / TRAINING_ARGS_FILE)
    if saved is None or saved.get("selection_repo") == entry["selection_repo"]:
        return
    _save_model_card(model, {**saved, "selection_repo": entry["selection_repo"]}, read_history(model))


def _save_model_card(folder: Path, saved: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """An arm's model folder's record of how it was trained (``push-student`` reads it) and its card."""
    from .hub import TRAINING_ARGS_FILE, student_card

    _write_json(folder / TRAINING_ARGS_FILE, saved)
    card = student_card(base_model=saved.get("base_model"), selection_repo=saved["selection_repo"],
                        training_args=saved.get("training_args"), history=history)  # fmt: skip
    card.save(str(folder / "README.md"))


def _run_name(config: Any, entry: dict[str, Any]) -> str | None:
    """The arm's run name for trackers: the study's with the arm's folder name, so arms do not share a run."""
    return f"{config.run_name}-{Path(entry['folder']).name}" if config.run_name else None


def _model_done(entry: dict[str, Any]) -> bool:
    from .hub import TRAINING_ARGS_FILE

    saved = _read_json(Path(entry["folder"]) / "model" / TRAINING_ARGS_FILE)
    return saved is not None and (saved.get("study_arm") or {}).get("train_key") == entry["train_key"]


def _evaluate(
    folder: Path, model_path: str | None, args: StudyArguments, config: Any, study: dict, overwrite: bool, what: str
) -> dict[str, Any]:
    """``run_evaluate`` of one student into ``folder/eval.jsonl`` (skipped when done with the same settings)."""
    from .evaluation import run_evaluate

    info = _read_json(folder / EVAL_INFO)
    records = folder / EVAL_RECORDS
    key = study["eval_key"]
    if info is not None and info.get("eval_key") == key and records.is_file():
        return info["metrics"]
    if info is not None and records.is_file():
        _refuse_changed(f"{records} ({what})", info.get("eval_settings", {}), study["eval_settings"], overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    options = {name: getattr(args, name) for name in EVALUATION_FIELDS}
    evaluate_args = EvaluateArguments(**options, output=str(records), overwrite=True,
                                      chat_template_kwargs=config.chat_template_kwargs)  # fmt: skip
    metrics = run_evaluate(evaluate_args, StudentArguments(student=model_path))
    _write_json(folder / EVAL_INFO, {"eval_key": key, "eval_settings": study["eval_settings"], "metrics": metrics})
    return metrics


def _correct_vector(path: Path, num_problems: int) -> np.ndarray:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    values = np.zeros(num_problems, dtype=np.float64)
    if len(records) != num_problems:
        raise LocalnatError(f"{path}: {len(records)} records for {num_problems} problems. Pass --overwrite to redo it.")
    for record in records:
        values[int(record["index"])] = 1.0 if record.get("correct") is True else 0.0
    return values


def study_arguments() -> tuple[type, ...]:
    """The dataclasses ``hf-localnat study`` parses, in the order :func:`run_study` takes them.

    Example:
        >>> [cls.__name__ for cls in study_arguments()]
        ['StudyArguments', 'StudentArguments', 'ReselectConfig']
    """
    from .trainer import ReselectConfig

    return StudyArguments, StudentArguments, ReselectConfig


def run_study(args: StudyArguments, student: StudentArguments, config: Any) -> dict[str, Any] | None:
    """Run (or resume) a study; return the results (None on the processes that only train).

    ``config`` is a :class:`~hf_localnat.trainer.ReselectConfig`: its ``output_dir`` is the study folder, its
    ``SFTConfig`` fields train every arm, its selection fields (``where``, ``k``, ``group_by``) are the arms'
    filter and size, its scoring and reselection fields serve ``METRIC+reselect`` arms.

    Example:
        >>> from hf_localnat.trainer import ReselectConfig
        >>> run_study(StudyArguments(pool="scored.parquet", benchmark="held_out.jsonl", arms="rsr,random"),
        ...           StudentArguments(), ReselectConfig(output_dir="study", max_steps=50))  # doctest: +SKIP
        {'arms': [{'arm': 'untrained', 'accuracy': 0.01, ...}, ...], ...}
    """
    from .cli import launch_state
    from .data_io import load_rows
    from .distributed import main_decides
    from .outputs import RunLock

    output_dir = Path(config.output_dir)
    state = launch_state()
    main = state is None or state.is_main_process
    lock = RunLock(output_dir, output_dir)
    main_decides(state, lambda: _check_study_folder(output_dir, [args.pool, args.benchmark, student.student]))
    main_decides(state, lambda: lock.acquire() and None)  # held by the main process for the whole run
    try:
        study = main_decides(
            state, lambda: _prepare(args, student, config, output_dir, state.num_processes if state else 1)
        )
        pool = None
        if any(entry["kind"] == "reselect" for entry in study["arm_states"]):  # their candidates: the whole pool
            with state.main_process_first() if state is not None else contextlib.nullcontext():
                pool = load_rows(args.pool, split=args.split)
        todo = [entry for entry in study["arm_states"] if not main_decides(state, lambda e=entry: _model_done(e))]
        bar = tqdm(total=len(todo), desc="Study: training arms", unit="arm", disable=not main or not todo)
        for entry in todo:
            bar.set_postfix_str(entry["arm"])
            _train_arm(entry, pool, config, student, state)
            bar.update(1)
        bar.close()
        if not main:
            return None
        for entry in study["arm_states"]:
            _relink(entry)
        results = _evaluate_and_report(args, student, config, study, output_dir)
    finally:
        if main:
            lock.release()
    return results


def _evaluate_and_report(
    args: StudyArguments, student: StudentArguments, config: Any, study: dict, output_dir: Path
) -> dict[str, Any]:
    from .hub import TRAINING_ARGS_FILE

    entries = study["arm_states"]
    bar = tqdm(total=len(entries) + 1, desc="Study: evaluating", unit="student")
    metrics = {UNTRAINED: _evaluate(output_dir / UNTRAINED, student.student, args, config, study, args.overwrite,
                                    "the untrained student")}  # fmt: skip
    _write_json(output_dir / UNTRAINED / DONE_FILE, {"eval_key": study["eval_key"]})
    bar.update(1)
    for entry in entries:
        folder = Path(entry["folder"])
        done = _read_json(folder / DONE_FILE)
        if done and done.get("train_key") == entry["train_key"] and done.get("eval_key") == study["eval_key"]:
            metrics[entry["arm"]] = done["metrics"]
        else:
            metrics[entry["arm"]] = _evaluate(folder, str(folder / "model"), args, config, study, args.overwrite,
                                              f"arm {entry['arm']}")  # fmt: skip
            saved = _read_json(folder / "model" / TRAINING_ARGS_FILE) or {}
            _write_json(folder / DONE_FILE, {"arm": entry["arm"], "train_key": entry["train_key"],
                                             "eval_key": study["eval_key"], "metrics": metrics[entry["arm"]],
                                             "training": saved.get("study_arm", {}),
                                             "train_settings": (_read_json(folder / SELECTION_INFO) or {}).get(
                                                 "train_settings")})  # fmt: skip
        bar.update(1)
    bar.close()
    results = build_results(study, output_dir, n_bootstrap=args.n_bootstrap, seed=config.seed)
    write_results(results, output_dir)
    print(format_table(results))
    print(f"Wrote {RESULTS_JSON}, {RESULTS_MD} and {FIGURE} -> {output_dir}")
    return results


def build_results(study: dict[str, Any], output_dir: Path, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``results.json``'s content from a finished study folder: every arm's accuracy and paired difference."""
    n = study["num_problems"]
    names = [UNTRAINED] + [entry["arm"] for entry in study["arm_states"]]
    folders = [output_dir / UNTRAINED] + [Path(entry["folder"]) for entry in study["arm_states"]]
    table = np.stack([_correct_vector(folder / EVAL_RECORDS, n) for folder in folders], axis=1)
    baseline = names.index(study["baseline"])
    paired = paired_differences(table, baseline, n_bootstrap=n_bootstrap, seed=seed)
    by_name = {entry["arm"]: entry for entry in study["arm_states"]}
    arms = []
    for column, (name, folder) in enumerate(zip(names, folders, strict=True)):
        info = _read_json(folder / EVAL_INFO) or {}
        done = _read_json(folder / DONE_FILE) or {}
        entry = by_name.get(name, {})
        metrics = info.get("metrics", {})
        arms.append({
            "arm": name, "kind": entry.get("kind", UNTRAINED), **accuracy_row(table[:, column]),
            "num_train_rows": entry.get("num_rows", 0),
            "global_step": (done.get("training") or {}).get("global_step", 0),
            "train_loss": (done.get("training") or {}).get("train_loss"),
            "difference": paired[column]["difference"], "difference_ci_low": paired[column]["ci_low"],
            "difference_ci_high": paired[column]["ci_high"], "wins": paired[column]["wins"],
            "losses": paired[column]["losses"], "share_above_zero": paired[column]["share_above_zero"],
            "num_no_answer": metrics.get("num_no_answer"), "num_truncated": metrics.get("num_truncated"),
            "num_correct_unmarked": metrics.get("num_correct_unmarked"), "notes": entry.get("notes", {}),
            "selection_dir": str(folder / "selection") if entry else None,
            "model_dir": str(folder / "model") if entry else None, "eval_records": str(folder / EVAL_RECORDS),
            "selection_repo": entry.get("selection_repo"),
        })  # fmt: skip
    return {
        "version": study["version"], "pool": study["pool"], "benchmark": study["benchmark"],
        "student": study["student"], "baseline": study["baseline"], "num_problems": n,
        "selection": study["selection"], "prompts": study["prompts"], "overlap": study["overlap"],
        "eval_settings": study["eval_settings"], "n_bootstrap": n_bootstrap, "bootstrap_seed": seed, "arms": arms,
    }  # fmt: skip


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def format_table(results: dict[str, Any]) -> str:
    """The markdown table of ``results.md``: accuracy with its Wilson CI and the paired difference per arm.

    Example:
        >>> results = {"baseline": "random", "num_problems": 4, "arms": [
        ...     {"arm": "random", "num_train_rows": 2, "global_step": 1, "num_correct": 1, "num_problems": 4,
        ...      "accuracy": 0.25, "ci_low": 0.05, "ci_high": 0.7, "difference": 0.0, "difference_ci_low": 0.0,
        ...      "difference_ci_high": 0.0, "wins": 0, "losses": 0}]}
        >>> print(format_table(results).splitlines()[2])
        | random | 2 | 1 | 1/4 | 25.0% | 5.0%-70.0% | +0.0 (baseline) | 0.0 to 0.0 | 0/0 |
    """
    lines = [
        f"| arm | training rows | steps | correct | accuracy | 95% Wilson CI | vs {results['baseline']} (points) | "
        "95% paired bootstrap CI | wins/losses |",
        "|---|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    for row in results["arms"]:
        low, high = row["difference_ci_low"], row["difference_ci_high"]
        interval = "n/a" if low is None else f"{100 * low:.1f} to {100 * high:.1f}"
        base = " (baseline)" if row["arm"] == results["baseline"] else ""
        lines.append(
            f"| {row['arm']} | {row['num_train_rows']} | {row['global_step']} | {row['num_correct']}/"
            f"{row['num_problems']} | {_pct(row['accuracy'])} | {_pct(row['ci_low'])}-{_pct(row['ci_high'])} | "
            f"{_signed(row['difference'])}{base} | {interval} | {row['wins']}/{row['losses']} |"
        )
    return "\n".join(lines)


def _markdown(results: dict[str, Any]) -> str:
    prompts, overlap = results["prompts"], results["overlap"]
    selection = results["selection"]
    lines = [
        "# hf-localnat study",
        "",
        f"Pool `{results['pool']}`, benchmark `{results['benchmark']}` ({results['num_problems']} problems), "
        f"student `{results['student']}`. Selection: k={selection['k']} per `{selection['group_by']}`, "
        f"where `{selection['where']}`.",
        "",
        f"Prompts: {prompts['in_pool']} in the pool, {prompts['used']} trained on (every arm has its k picks there); "
        f"{prompts['without_candidates']} left without a candidate by the filter, {prompts['short']} short in some "
        "arm, both left out of every arm.",
        "",
    ]
    if overlap["num_matched"]:
        lines += [f"**Overlap:** {overlap['num_matched']} benchmark problems match pool prompts (run with "
                  "--allow_overlap); these numbers are contaminated.", ""]  # fmt: skip
    else:
        lines += ["No benchmark problem matches a pool prompt (normalised text).", ""]
    lines += [format_table(results), ""]
    lines.append(
        f"Paired differences: arm accuracy minus {results['baseline']}'s, in percentage points; the CI is a "
        f"percentile bootstrap over benchmark problems ({results['n_bootstrap']} resamples, seed "
        f"{results['bootstrap_seed']}), one resample shared by every arm. Wins/losses: problems the arm gets right "
        "and the baseline wrong, and the reverse."
    )
    steps = {row["arm"]: row["global_step"] for row in results["arms"] if row["arm"] != UNTRAINED}
    if len(set(steps.values())) > 1:
        lines.append(
            "\n**The arms trained for different numbers of steps** ("
            + ", ".join(f"{arm} {n}" for arm, n in steps.items())
            + "), so their comparison is not like for like (with num_train_epochs, packing or reselection can "
            "change the count); set --max_steps."
        )
    for row in results["arms"]:
        notes = row.get("notes") or {}
        if "incorrect_prompts" in notes:
            lines.append(
                f"\n{row['arm']}: {notes['incorrect_prompts']} prompts have fewer than k correct responses and are "
                "topped up with seeded random incorrect ones."
            )
        if "top_teacher" in notes:
            lines.append(
                f"\n{row['arm']}: teachers ranked by {notes['by']}; the first, {notes['top_teacher']}, answers every "
                f"prompt except {notes['fallback_prompts']}, where its response fails the filter and the best-ranked "
                "teacher with a passing response is used."
            )
    return "\n".join(lines) + "\n"


def _figure(results: dict[str, Any], path: Path) -> None:  # pragma: no cover - drawing only; tests check the PNG
    from matplotlib.figure import Figure

    rows = results["arms"]
    fig = Figure(figsize=(max(4.0, 1.1 * len(rows)), 3.6), dpi=100)
    ax = fig.add_subplot()
    heights = [100 * r["accuracy"] for r in rows]
    errors = [[100 * (r["accuracy"] - r["ci_low"]) for r in rows], [100 * (r["ci_high"] - r["accuracy"]) for r in rows]]
    colours = ["#999999" if r["arm"] == UNTRAINED else "#d62728" if r["arm"] == results["baseline"] else "#1f77b4"
               for r in rows]  # fmt: skip
    ax.bar(range(len(rows)), heights, yerr=errors, capsize=4, color=colours)
    ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("accuracy (%), 95% Wilson CI")
    ax.set_title(f"{Path(results['benchmark']).stem}: {results['num_problems']} problems")
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_results(results: dict[str, Any], output_dir: Path) -> None:
    """``results.json``, ``results.md`` and the bar plot, each written whole."""
    from .data_io import atomic_file

    _write_json(output_dir / RESULTS_JSON, results)
    with atomic_file(output_dir / RESULTS_MD) as tmp:
        tmp.write_text(_markdown(results))
    with atomic_file(output_dir / FIGURE) as tmp:
        _figure(results, tmp)
