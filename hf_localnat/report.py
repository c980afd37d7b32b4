"""An HTML report on scored rows: what each metric says about teachers, length, steps and selection.

:func:`build_report` writes ``report.html``, its PNG figures and ``report.json`` (every number the HTML
shows) into a new folder, atomically. Five sections, each present only when the columns it needs exist
(otherwise the HTML and the JSON say it was skipped, and why):

1. ``ranking``: teachers ranked by each metric (bootstrap 95% CIs; rsr by the RSR authors' mean rank / mean
   surprisal when the scorer wrote its parts), every teacher's P(top) under each metric (the bootstrap
   probability that it ranks first), Kendall tau-b between the rankings and against teacher accuracy
   (``correct``), each with a bootstrap CI over prompts.
2. ``accuracy``: with ``correct``, each metric's row-level Kendall tau-b with correctness (bootstrap CI over
   prompts) and its selection accuracy: the accuracy of its one-per-prompt pick against a random pick and
   the oracle (:func:`hf_localnat.selection.selection_accuracy`).
3. ``length_bias``: Spearman correlation of each metric with ``num_response_tokens`` and ``num_steps``,
   over all rows and within prompts.
4. ``step_profile``: per-step local log-probs (``step_logprobs``) of a few rows; optionally their text
   coloured by step score (``step_spans``).
5. ``step_labels``: with a ProcessBench-style ``label`` (index of the first wrong step, -1 = all correct),
   mean step scores before/at/after the first error and the AUROC of the negated step score.
6. ``selection``: one response per prompt by each metric: teacher shares, accuracy, winner changes.

The metrics compared are every column of :data:`hf_localnat.metrics.METRIC_COLUMNS` present and every
``local_naturalness@<k>`` column (:func:`~hf_localnat.metrics.present_metric_columns`); their directions come from
:func:`hf_localnat.selection.is_higher_better`.

Each section builder returns its entry of ``report.json`` and the names of its figures; the page is that JSON
rendered by one Jinja template, ``model_cards/report.html.jinja``. The statistics live in
:mod:`hf_localnat.statistics` (``scipy.stats``) and are re-exported here. :class:`ReportArguments` and
:func:`run_report` drive it from the CLI.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from itertools import combinations
from pathlib import Path
from typing import Any

import datasets
import jinja2
import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter
from tqdm.auto import tqdm

from . import __version__
from .data_io import FILE_FORMATS, atomic_dir, load_rows
from .errors import LocalnatError
from .metrics import METRIC_COLUMNS, ScoringConfig, present_metric_columns, with_fields_of
from .outputs import check_output
from .selection import (
    RSR_RANK_COLUMN,
    RSR_SURPRISAL_COLUMN,
    RankingConfig,
    SelectionConfig,
    TeacherPromptTable,
    correct_values,
    is_higher_better,
    rank_teachers,
    select_responses,
    selection_accuracy,
    teacher_prompt_means,
)

# The statistics moved to hf_localnat.statistics; `from hf_localnat.report import spearman` keeps working.
from .statistics import (
    MIN_ROWS_PER_GROUP,
    auroc,
    binary_kendall_tau_b_ci,
    bootstrap_counts,
    kendall_tau_b,
    kendall_tau_b_rows,
    percentile_ci,
    resampled_means,
    spearman,
    within_group_spearman,
)
from .statistics import average_ranks as average_ranks

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
REPORT_TEMPLATE = "report.html.jinja"  # in the model_cards package, beside the card templates
SECTIONS = {
    "ranking": "Teacher ranking",
    "accuracy": "Metrics against correctness",
    "length_bias": "Length bias",
    "step_profile": "Step profile",
    "step_labels": "Step labels",
    "selection": "Selection summary",
}
RELATIVE_POSITIONS = tuple(range(-3, 4))  # steps around the first error shown in the step-labels figure
LENGTH_COLUMNS = {"num_response_tokens": "tokens", "num_steps": "steps"}
MIN_ROWS_PER_PROMPT = MIN_ROWS_PER_GROUP  # within-prompt Spearman needs at least this many rows in a prompt
_ROW_COLUMN = "__report_row__"
CONFIDENCE = 0.95  # of every bootstrap CI in the report
_SCORE_HINT = "score it with hf-localnat score INPUT --metrics global,local,rsr --return_steps --output SCORED"

SectionData = tuple[dict[str, Any], list[str]]  # what a builder returns: its report.json entry, its figure files


# ----------------------------------------------------------------------------------------------------------
# Column access
# ----------------------------------------------------------------------------------------------------------


def _floats(values: Sequence[Any]) -> np.ndarray:
    """Numbers as float64; None, NaN, text and anything else not a number -> NaN."""
    out = np.full(len(values), np.nan, dtype=np.float64)
    for i, value in enumerate(values):
        if isinstance(value, bool | int | float | np.integer | np.floating):
            out[i] = float(value)
    return out


def _as_int(value: Any) -> int | None:
    """A step label as an int (ProcessBench ships them as text), or None when it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if math.isfinite(value) and float(value).is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


class _Skip(Exception):
    """Raised inside a section to skip it; the message says why, ``data`` is what report.json keeps of it."""

    def __init__(self, reason: str, data: dict[str, Any] | None = None):
        super().__init__(reason)
        self.data = data or {}


@dataclass
class _Section:
    key: str
    status: str = "ok"
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return SECTIONS[self.key]

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "status": self.status, "reason": self.reason, "figures": self.figures, **self.data}


class _Context:
    """The dataset and options, with column values read once."""

    def __init__(
        self,
        scored: datasets.Dataset,
        folder: Path,
        group_by: str,
        teacher_column: str,
        response_column: str,
        rows: list[int] | None,
        html_steps: bool,
        n_boot: int,
        seed: int,
        rsr_aggregate: str = RankingConfig.rsr_aggregate,
    ):
        self.ds = scored.with_format(None)
        self.folder = folder
        self.group_by = group_by
        self.teacher_column = teacher_column
        self.response_column = response_column
        self.rows = rows
        self.html_steps = html_steps
        self.n_boot = n_boot
        self.seed = seed
        self.rsr_aggregate = rsr_aggregate
        self.columns = set(scored.column_names)
        self.n = len(scored)
        self.metrics = present_metric_columns(scored.column_names)
        self.primary = "local_naturalness" if "local_naturalness" in self.metrics else (self.metrics or [None])[0]
        self._cache: dict[str, list] = {}
        self.saved: list[str] = []  # figure files written so far, so a skipped section's can be removed
        self.has_groups = group_by in self.columns
        self.has_teachers = teacher_column in self.columns
        if self.has_groups:
            keys = self.column(group_by)
            mapping: dict = {}
            self.group_codes = np.array([mapping.setdefault(k, len(mapping)) for k in keys], dtype=np.int64)
            self.group_keys = list(mapping)
        if self.has_teachers:
            self.teachers = [str(t) for t in self.column(teacher_column)]
            self.teacher_order = list(dict.fromkeys(self.teachers))  # first appearance
        self.correct = correct_values(self.column("correct")) if "correct" in self.columns else None

    def column(self, name: str) -> list:
        if name not in self._cache:
            self._cache[name] = list(self.ds[name][:])
        return self._cache[name]

    def floats(self, name: str) -> np.ndarray:
        return _floats(self.column(name))

    def slim(self) -> datasets.Dataset:
        """Only the columns ranking and selection read, plus the original row index."""
        extra = (RSR_RANK_COLUMN, RSR_SURPRISAL_COLUMN, "correct")  # rsr's parts for its ratio aggregate
        keep = [c for c in (self.group_by, self.teacher_column, *self.metrics, *extra) if c in self.columns]
        keep = list(dict.fromkeys(keep))
        return self.ds.select_columns(keep).add_column(_ROW_COLUMN, np.arange(self.n, dtype=np.int64))

    def save(self, figure: Figure, name: str) -> str:
        figure.savefig(self.folder / name, dpi=100, bbox_inches="tight")
        self.saved.append(name)
        return name


def _direction(metric: str) -> str:
    return "higher is better" if is_higher_better(metric) else "lower is better"


def _goodness(metric: str, value: float) -> float:
    """A metric value turned so that larger is better (rsr is negated)."""
    return value if is_higher_better(metric) else -value


# ----------------------------------------------------------------------------------------------------------
# Number formats of the page (Jinja filters)
# ----------------------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


# ----------------------------------------------------------------------------------------------------------
# 1. Teacher ranking
# ----------------------------------------------------------------------------------------------------------


def _teacher_accuracy(ctx: _Context) -> dict[str, dict[str, float | int | None]]:
    """Per teacher: mean of ``correct`` over its rows with a known value, and how many such rows."""
    out: dict[str, dict[str, float | int | None]] = {}
    teachers = np.array(ctx.teachers, dtype=object)
    for teacher in ctx.teacher_order:
        values = ctx.correct[teachers == teacher]
        known = values[np.isfinite(values)]
        out[teacher] = {"accuracy": float(known.mean()) if known.size else None, "num_known": int(known.size)}
    return out


def _section_ranking(ctx: _Context) -> SectionData:
    _need_groups_and_teachers(ctx)
    if not ctx.metrics:
        raise _Skip(f"no metric column ({', '.join(METRIC_COLUMNS.values())}); {_SCORE_HINT}.")
    slim = ctx.slim()
    tables: dict[str, pd.DataFrame] = {}
    failed: dict[str, str] = {}
    for metric in ctx.metrics:
        try:
            tables[metric] = rank_teachers(
                slim,
                by=metric,
                teacher_column=ctx.teacher_column,
                group_by=ctx.group_by,
                n_bootstrap=ctx.n_boot,
                seed=ctx.seed,
                rsr_aggregate=ctx.rsr_aggregate,
            )
        except LocalnatError as err:
            failed[metric] = str(err)
    if not tables:
        raise _Skip("no metric has a valid score in any row.")
    primary = ctx.primary if ctx.primary in tables else next(iter(tables))
    order = [str(t) for t in tables[primary]["teacher"]]
    for table in tables.values():
        order += [str(t) for t in table["teacher"] if str(t) not in order]

    records: dict[str, dict[str, Any]] = {}
    for metric, table in tables.items():
        rows = []
        for _, row in table.iterrows():
            rows.append(
                {
                    "rank": int(row["rank"]),
                    "teacher": str(row["teacher"]),
                    "mean": float(row["mean"]),
                    "ci_low": float(row["ci_low"]),
                    "ci_high": float(row["ci_high"]),
                    "num_prompts": int(row["num_prompts"]),
                    "win_rate": None if pd.isna(row["win_rate"]) else float(row["win_rate"]),
                    "num_common_prompts": int(row["num_common_prompts"]),
                    "p_top": float(row["p_top"]),
                }
            )
        records[metric] = {
            "higher_is_better": is_higher_better(metric),
            "aggregate": table.attrs["aggregate"],
            "teachers": rows,
        }
    p_top = {
        teacher: {
            m: next((r["p_top"] for r in records[m]["teachers"] if r["teacher"] == teacher), None) for m in records
        }
        for teacher in order
    }
    accuracy = _teacher_accuracy(ctx) if ctx.correct is not None else None

    # Kendall tau-b on "goodness" (rsr negated), so every ranking reads best first.
    good = {m: {r["teacher"]: _goodness(m, r["mean"]) for r in records[m]["teachers"]} for m in records}
    if accuracy is not None:
        good["accuracy"] = {t: a["accuracy"] for t, a in accuracy.items() if a["accuracy"] is not None}
    aggregates = {m: records[m]["aggregate"] for m in records}
    intervals = _teacher_tau_cis(ctx, slim, aggregates, with_accuracy=accuracy is not None)
    taus = []
    for a, b in combinations(list(good), 2):
        common = [t for t in order if t in good[a] and t in good[b]]
        tau = kendall_tau_b([good[a][t] for t in common], [good[b][t] for t in common])
        low, high = intervals[(a, b)] if tau is not None else (None, None)
        taus.append({"a": a, "b": b, "tau_b": tau, "ci_low": low, "ci_high": high, "num_teachers": len(common)})
    data = {
        "order": order,
        "num_shared_prompts": _num_shared_prompts(ctx),
        "primary_metric": primary,
        "metrics": records,
        "p_top": p_top,
        "failed_metrics": failed,
        "accuracy": accuracy,
        "kendall_tau": taus,
        "n_boot": ctx.n_boot,
        "seed": ctx.seed,
        "confidence": CONFIDENCE,
    }
    return data, [_ranking_figure(ctx, records, order)]


def _teacher_tau_cis(
    ctx: _Context, slim: datasets.Dataset, aggregates: dict[str, str], with_accuracy: bool
) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """Bootstrap CIs of the teacher-level Kendall tau-b of every pair of rankings (and teacher accuracy).

    One paired resample of the report's prompts (:func:`~hf_localnat.statistics.bootstrap_counts` with the
    report's seed) is shared by every metric and by accuracy; in each, every teacher's score is recomputed
    from its teacher-prompt means over the resampled prompts (for rsr with its aggregate: mean rank / mean
    surprisal), its accuracy is the mean of ``correct`` over its rows in them, and tau-b is taken over the
    teachers both rankings have.
    """
    teacher_index = {t: i for i, t in enumerate(ctx.teacher_order)}
    prompt_index = {key: i for i, key in enumerate(ctx.group_keys)}
    shape = (len(ctx.group_keys), len(ctx.teacher_order))
    sources: dict[str, tuple[np.ndarray, np.ndarray | None, bool]] = {}
    for metric, aggregate in aggregates.items():
        rsr_aggregate = aggregate if aggregate != "mean" else ctx.rsr_aggregate  # rank_teachers' choice: no 2nd warning
        means: TeacherPromptTable = teacher_prompt_means(
            slim, metric, ctx.teacher_column, ctx.group_by, rsr_aggregate=rsr_aggregate
        )
        # A prompt key that does not look itself up (a NaN) has no valid row in the table: it stays NaN.
        found = [i for i, key in enumerate(means.prompts) if key in prompt_index]
        rows = [prompt_index[means.prompts[i]] for i in found]
        columns = [teacher_index[str(t)] for t in means.teachers]
        aligned = []
        for part in (means.numerator, means.denominator):
            if part is None:
                aligned.append(None)
                continue
            full = np.full(shape, np.nan)
            full[np.ix_(rows, columns)] = part[found]
            aligned.append(full)
        sources[metric] = (aligned[0], aligned[1], is_higher_better(metric))
    if with_accuracy:
        teacher_codes = np.array([teacher_index[t] for t in ctx.teachers], dtype=np.int64)
        cell = ctx.group_codes * shape[1] + teacher_codes
        known = np.isfinite(ctx.correct)
        size = shape[0] * shape[1]
        right = np.bincount(cell[known], weights=ctx.correct[known], minlength=size).reshape(shape)
        rows_known = np.bincount(cell[known], minlength=size).reshape(shape).astype(np.float64)
        right[rows_known == 0] = np.nan
        rows_known[rows_known == 0] = np.nan
        sources["accuracy"] = (right, rows_known, True)
    resampled: dict[str, list[np.ndarray]] = {name: [] for name in sources}
    for counts in bootstrap_counts(shape[0], ctx.n_boot, ctx.seed):
        for name, (numerator, denominator, higher) in sources.items():
            stats = resampled_means(counts, numerator, denominator)
            resampled[name].append(stats if higher else -stats)
    stacked = {name: np.concatenate(parts) for name, parts in resampled.items()}
    return {
        (a, b): percentile_ci(kendall_tau_b_rows(stacked[a], stacked[b]), CONFIDENCE)
        for a, b in combinations(list(sources), 2)
    }


def _panels(count: int, width: float, height: float, sharey: bool = False) -> tuple[Figure, list]:
    """A figure with ``count`` panels, at most 4 a row (a report may compare a dozen metrics)."""
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(width * columns + 1.2, height * rows))
    axes = list(fig.subplots(rows, columns, sharey=sharey, squeeze=False).ravel())
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _metric_ticks(ax: Any, metrics: list[str]) -> None:
    """Metric names under bars, slanted when there are many of them."""
    slanted = len(metrics) > 4
    ax.set_xticklabels(metrics, rotation=30 if slanted else 0, ha="right" if slanted else "center")


def _ranking_figure(ctx: _Context, records: dict[str, dict], order: list[str]) -> str:
    fig, axes = _panels(len(records), 3.6, 0.42 * len(order) + 1.6, sharey=True)
    y_of = {t: len(order) - 1 - i for i, t in enumerate(order)}  # best at the top
    for ax, (metric, record) in zip(axes, records.items(), strict=True):
        rows = record["teachers"]
        y = np.array([y_of[r["teacher"]] for r in rows])
        mean = np.array([r["mean"] for r in rows])
        err = np.array([[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]])
        ax.errorbar(mean, y, xerr=np.clip(err, 0, None), fmt="o", capsize=3, color="#1f77b4")
        higher = record["higher_is_better"]
        if not higher:
            ax.invert_xaxis()  # better is to the right in every panel
        ax.set_title(
            f"{metric}\n({'higher' if higher else 'lower'} is better" + ("" if higher else ", axis reversed") + ")",
            fontsize=10,
        )
        ax.grid(axis="x", alpha=0.3)
        ratio = record.get("aggregate") == "ratio_of_means"
        ax.set_xlabel("mean rank / mean surprisal (95% CI)" if ratio else "mean over prompts (95% CI)")
    axes[0].set_yticks(range(len(order)))
    axes[0].set_yticklabels(list(reversed(order)))
    fig.tight_layout()
    return ctx.save(fig, "ranking.png")


# ----------------------------------------------------------------------------------------------------------
# 2. Metrics against correctness
# ----------------------------------------------------------------------------------------------------------


def _section_accuracy(ctx: _Context) -> SectionData:
    if ctx.correct is None:
        raise _Skip("no correct column (true/false per row): nothing to hold the metrics against.")
    if not ctx.metrics:
        raise _Skip(f"no metric column ({', '.join(METRIC_COLUMNS.values())}); {_SCORE_HINT}.")
    if not np.isfinite(ctx.correct).any():
        raise _Skip("the correct column has no known (true/false) value.")
    groups = ctx.group_codes if ctx.has_groups else None
    row_tau: dict[str, dict[str, Any]] = {}
    for metric in ctx.metrics:
        score = ctx.floats(metric)
        good = score if is_higher_better(metric) else -score
        valid = np.isfinite(good) & np.isfinite(ctx.correct)
        tau = kendall_tau_b(good[valid], ctx.correct[valid])
        low, high = (None, None)
        if tau is not None:
            low, high = binary_kendall_tau_b_ci(good, ctx.correct, groups, ctx.n_boot, CONFIDENCE, ctx.seed)
        row_tau[metric] = {
            "higher_is_better": is_higher_better(metric),
            "tau_b": tau,
            "ci_low": low,
            "ci_high": high,
            "num_rows": int(valid.sum()),
            "num_prompts": int(np.unique(groups[valid]).size) if groups is not None else None,
        }
    chosen: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    if ctx.has_groups:
        slim = ctx.slim()
        for metric in ctx.metrics:
            try:
                chosen[metric] = selection_accuracy(
                    slim,
                    by=metric,
                    correct_column="correct",
                    group_by=ctx.group_by,
                    n_bootstrap=ctx.n_boot,
                    confidence=CONFIDENCE,
                    seed=ctx.seed,
                )
            except LocalnatError as err:
                failed[metric] = str(err)
    data = {
        "row_tau": row_tau,
        "selection_accuracy": chosen,
        "failed_metrics": failed,
        "grouped": ctx.has_groups,
        "n_boot": ctx.n_boot,
        "seed": ctx.seed,
        "confidence": CONFIDENCE,
    }
    return data, [_accuracy_figure(ctx, row_tau, chosen)]


def _accuracy_figure(ctx: _Context, row_tau: dict[str, dict], chosen: dict[str, dict]) -> str:
    metrics = list(row_tau)
    fig = Figure(figsize=(11.0 if chosen else 5.5, 0.38 * len(metrics) + 1.6))
    axes = fig.subplots(1, 2 if chosen else 1, squeeze=False, sharey=True)[0]
    y = np.arange(len(metrics))[::-1]

    def bars(ax: Any, entries: list[dict], key: str, colour: str, label: str | None = None) -> None:
        point = np.array([np.nan if e.get(key) is None else e[key] for e in entries], dtype=np.float64)
        low = np.array([np.nan if e.get("ci_low") is None else e["ci_low"] for e in entries], dtype=np.float64)
        high = np.array([np.nan if e.get("ci_high") is None else e["ci_high"] for e in entries], dtype=np.float64)
        err = np.nan_to_num(np.clip(np.vstack([point - low, high - point]), 0, None))
        ax.errorbar(point, y, xerr=err, fmt="o", capsize=3, color=colour, label=label)

    bars(axes[0], [row_tau[m] for m in metrics], "tau_b", "#1f77b4")
    axes[0].axvline(0, color="black", linewidth=0.8)
    axes[0].set_xlabel("Kendall \u03c4-b with correct, rows (95% CI)")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(metrics)
    axes[0].grid(axis="x", alpha=0.3)
    if chosen:
        ax = axes[1]
        entries = [chosen.get(m, {}) for m in metrics]
        bars(ax, entries, "accuracy", "#2ca02c", "pick by the metric (95% CI)")
        for key, marker, colour in (("random", "x", "#7f7f7f"), ("oracle", "|", "#d62728")):
            values = [np.nan if e.get(key) is None else e[key] for e in entries]
            ax.scatter(values, y, marker=marker, s=60, color=colour, label=f"{key} pick", zorder=3)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("accuracy of one pick per prompt")
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return ctx.save(fig, "accuracy.png")


def _need_groups_and_teachers(ctx: _Context) -> None:
    if not ctx.has_teachers:
        raise _Skip(f"no teacher column {ctx.teacher_column!r} (pass teacher_column / --teacher_column).")
    if not ctx.has_groups:
        raise _Skip(f"no prompt column {ctx.group_by!r} (pass group_by / --group_by).")


def _num_shared_prompts(ctx: _Context) -> int:
    """How many prompts more than one teacher answered: the only ones where teachers meet head to head."""
    teachers_of: dict[int, set[str]] = {}
    for code, teacher in zip(ctx.group_codes.tolist(), ctx.teachers, strict=True):
        teachers_of.setdefault(code, set()).add(teacher)
    return sum(len(names) > 1 for names in teachers_of.values())


# ----------------------------------------------------------------------------------------------------------
# 3. Length bias
# ----------------------------------------------------------------------------------------------------------


def _section_length_bias(ctx: _Context) -> SectionData:
    lengths = [c for c in LENGTH_COLUMNS if c in ctx.columns]
    if not ctx.metrics:
        raise _Skip(f"no metric column ({', '.join(METRIC_COLUMNS.values())}); {_SCORE_HINT}.")
    if not lengths:
        raise _Skip("no num_response_tokens or num_steps column (the scorer writes both).")
    length_values = {c: ctx.floats(c) for c in lengths}
    correlations: dict[str, dict[str, Any]] = {}
    for metric in ctx.metrics:
        score = ctx.floats(metric)
        correlations[metric] = {"higher_is_better": is_higher_better(metric)}
        for column in lengths:
            valid = np.isfinite(score) & np.isfinite(length_values[column])
            entry: dict[str, Any] = {
                "spearman_all": spearman(score[valid], length_values[column][valid]),
                "num_rows": int(valid.sum()),
                "spearman_within_prompts": None,
                "num_prompts": 0,
            }
            if ctx.has_groups:
                rho, count = within_group_spearman(
                    ctx.group_codes[valid], score[valid], length_values[column][valid], MIN_ROWS_PER_PROMPT
                )
                entry.update(spearman_within_prompts=rho, num_prompts=count)
            correlations[metric][column] = entry
    data = {
        "lengths": lengths,
        "correlations": correlations,
        "min_rows_per_prompt": MIN_ROWS_PER_PROMPT,
        "within_prompts": ctx.has_groups,
    }
    figures = [_length_scatter(ctx, lengths, length_values), _length_bars(ctx, lengths, correlations)]
    return data, figures


def _length_scatter(ctx: _Context, lengths: list[str], values: dict[str, np.ndarray]) -> str:
    column = lengths[0]  # tokens when present
    fig, axes = _panels(len(ctx.metrics), 3.8, 3.4)
    x_all = values[column]
    for ax, metric in zip(axes, ctx.metrics, strict=True):
        y = ctx.floats(metric)
        keep = np.isfinite(x_all) & np.isfinite(y) & (x_all > 0)
        ax.scatter(x_all[keep], y[keep], s=10, alpha=0.55, color="#1f77b4", edgecolors="none")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{column} (log scale)")
        ax.set_ylabel(metric)
        rho = spearman(y[keep], x_all[keep])
        ax.set_title(f"{metric}: \u03c1 = {_num(rho, 2, signed=True)}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return ctx.save(fig, "length_scatter.png")


def _length_bars(ctx: _Context, lengths: list[str], correlations: dict) -> str:
    series = [(c, "spearman_all", f"{LENGTH_COLUMNS[c]}, all rows") for c in lengths]
    if ctx.has_groups:
        series += [(c, "spearman_within_prompts", f"{LENGTH_COLUMNS[c]}, within prompts") for c in lengths]
    metrics = list(correlations)
    width = 0.8 / len(series)
    fig = Figure(figsize=(1.6 * len(metrics) + 3.5, 3.4))
    ax = fig.subplots()
    for i, (column, key, label) in enumerate(series):
        heights = [correlations[m][column][key] for m in metrics]
        x = np.arange(len(metrics)) + (i - (len(series) - 1) / 2) * width
        ax.bar(x, [np.nan if h is None else h for h in heights], width=width, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(metrics)))
    _metric_ticks(ax, metrics)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman \u03c1 with length")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return ctx.save(fig, "length_correlations.png")


# ----------------------------------------------------------------------------------------------------------
# 4. Step profile
# ----------------------------------------------------------------------------------------------------------


def _row_score(ctx: _Context, steps: list) -> np.ndarray:
    """Per row: local_naturalness when present, else the mean of its step scores (NaN without any)."""
    score = ctx.floats("local_naturalness") if "local_naturalness" in ctx.columns else np.full(ctx.n, np.nan)
    for i, values in enumerate(steps):
        if not np.isfinite(score[i]) and values:
            mean = _mean(_floats(values))
            score[i] = np.nan if mean is None else mean
    return score


def _auto_rows(ctx: _Context, steps: list) -> tuple[list[int], str]:
    """The best and the worst row (by local score) of the prompt where they differ most."""
    score = _row_score(ctx, steps)
    has_steps = np.array([bool(v) and np.isfinite(_floats(v)).any() for v in steps], dtype=bool)
    candidates = np.flatnonzero(has_steps & np.isfinite(score))
    if candidates.size == 0:
        return [], "no row has step scores"
    if ctx.has_groups:
        frame = pd.DataFrame({"g": ctx.group_codes[candidates], "row": candidates, "s": score[candidates]})
        spread = frame.groupby("g", sort=True)["s"].agg(lambda s: s.max() - s.min())
        sizes = frame.groupby("g", sort=True)["s"].size()
        spread = spread[sizes >= 2]
        if len(spread):
            group = int(spread.index[int(np.argmax(spread.to_numpy()))])  # first of the largest spreads
            rows = frame.loc[frame["g"] == group, "row"].to_numpy()
            best, worst = rows[np.argmax(score[rows])], rows[np.argmin(score[rows])]
            return [int(best), int(worst)], (
                f"the best and worst row by local score of {ctx.group_by} {ctx.group_keys[group]!r}, "
                "the prompt where they differ most"
            )
    best, worst = candidates[np.argmax(score[candidates])], candidates[np.argmin(score[candidates])]
    chosen = [int(best)] if best == worst else [int(best), int(worst)]
    return chosen, "the best and worst row by local score over all rows"


def _section_step_profile(ctx: _Context) -> SectionData:
    if "step_logprobs" not in ctx.columns:
        raise _Skip("no step_logprobs column; score with --metrics local --return_steps.")
    steps = ctx.column("step_logprobs")
    if ctx.rows is None:
        chosen, how = _auto_rows(ctx, steps)
        if not chosen:
            raise _Skip("no row has step scores (step_logprobs is empty or None everywhere).")
    else:
        chosen, how = list(ctx.rows), "the rows asked for"
    local = ctx.floats("local_naturalness") if "local_naturalness" in ctx.columns else None
    shown = []
    for row in chosen:
        values = _floats(steps[row] or [])
        shown.append(
            {
                "row": row,
                "teacher": ctx.teachers[row] if ctx.has_teachers else None,
                "prompt": str(ctx.column(ctx.group_by)[row]) if ctx.has_groups else None,
                "local_naturalness": None if local is None or not np.isfinite(local[row]) else float(local[row]),
                "num_steps": int(values.size),
                "step_logprobs": [None if not np.isfinite(v) else float(v) for v in values],
            }
        )
    data: dict[str, Any] = {"chosen_by": how, "rows": shown}
    if not any(r["num_steps"] for r in shown):
        raise _Skip(f"the chosen rows ({', '.join(map(str, chosen))}) have no step scores.", data)

    fig = Figure(figsize=(7.5, 3.6))
    ax = fig.subplots()
    for r in shown:
        if not r["num_steps"]:
            continue
        y = np.array([np.nan if v is None else v for v in r["step_logprobs"]], dtype=np.float64)
        ax.plot(np.arange(y.size), y, marker="o", markersize=3, label=_row_label(r))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step index (0 = first step)")
    ax.set_ylabel("step mean local log-prob")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    data["html_steps"] = ctx.html_steps
    return data, [ctx.save(fig, "step_profile.png")]


def _row_label(r: dict) -> str:
    parts = [f"row {r['row']}"]
    if r["teacher"] is not None:
        parts.append(str(r["teacher"]))
    if r["local_naturalness"] is not None:
        parts.append(f"local {r['local_naturalness']:+.3f}")
    return ", ".join(parts)


def _coloured_steps(ctx: _Context, shown: list[dict]) -> dict[str, Any]:
    """The chosen responses cut into pieces, each step's with a background colour by its score (red low).

    Page-only material (the response text is not in report.json); the template escapes every piece.
    """
    missing = [c for c in ("step_spans", ctx.response_column) if c not in ctx.columns]
    if missing:
        return {"skipped": f"no column {missing[0]}"}
    values = [v for r in shown for v in r["step_logprobs"] if v is not None]
    if not values:
        return {"skipped": "no step scores"}
    low, high = min(values), max(values)
    cmap = matplotlib.colormaps["RdYlGn"]

    def colour(value: float | None) -> str:
        if value is None:
            return "transparent"
        t = 0.5 if high == low else (value - low) / (high - low)
        red, green, blue, _ = cmap(t)
        return f"rgba({red * 255:.0f},{green * 255:.0f},{blue * 255:.0f},0.55)"

    spans_column, texts = ctx.column("step_spans"), ctx.column(ctx.response_column)
    responses = []
    for r in shown:
        text = texts[r["row"]] or ""
        spans = spans_column[r["row"]] or []
        pieces: list[dict[str, Any]] = []  # {"text"} between steps, {"text", "step", "value", "colour"} a step
        cursor = 0
        for j, (span, value) in enumerate(zip(spans, r["step_logprobs"], strict=False)):
            start, end = int(span[0]), int(span[1])
            if start > cursor:
                pieces.append({"text": text[cursor:start]})
            pieces.append({"text": text[start:end], "step": j, "value": value, "colour": colour(value)})
            cursor = max(cursor, end)
        pieces.append({"text": text[cursor:]})
        responses.append(
            {"label": _row_label(r), "num_spans": len(spans), "num_steps": r["num_steps"], "pieces": pieces}
        )
    return {
        "low": low,
        "high": high,
        "stops": ", ".join(colour(low + (high - low) * i / 6) for i in range(7)),
        "responses": responses,
    }


# ----------------------------------------------------------------------------------------------------------
# 5. Step labels (ProcessBench)
# ----------------------------------------------------------------------------------------------------------


def step_label_stats(
    step_scores: Sequence[Sequence[float | None] | None],
    labels: Sequence[Any],
    num_steps: Sequence[Any] | None = None,
    steps: Sequence[Sequence | None] | None = None,
) -> dict[str, Any]:
    """Step scores against ProcessBench labels (``label`` = index of the first wrong step, -1 = all correct).

    A row is used when its label is an int >= -1, it has step scores, its label is below its number of
    step scores, and, when ``steps`` is given, its step count (``num_steps``, else the number of step scores)
    equals ``len(steps)``; the others are counted by reason. ``before``/``at``/``after``: the mean step score
    over all steps (pooled; None scores skipped) before, at and after the first error, over rows with
    label >= 0. AUROC of the negated step score (low log-prob flags an error): positives are the first wrong
    step of each row with label >= 0; negatives are the steps before it in those rows plus every step of the
    rows with label -1; steps after the first error are left out (their correctness is not labelled).

    Example:
        >>> stats = step_label_stats([[-1.0, -3.0, -2.0], [-1.0, -2.0]], [1, -1])
        >>> stats["at"]["mean"], stats["auroc"], stats["num_positives"], stats["num_negatives"]
        (-3.0, 1.0, 1, 3)
    """
    excluded = Counter()
    before: list[float] = []
    at: list[float] = []
    after: list[float] = []
    positives: list[float] = []
    negatives: list[float] = []
    relative: dict[int, list[float]] = {d: [] for d in RELATIVE_POSITIONS}
    rows_error = rows_correct = 0
    for i, (scores, raw_label) in enumerate(zip(step_scores, labels, strict=True)):
        label = _as_int(raw_label)
        if label is None or label < -1:
            excluded["bad_label"] += 1
            continue
        values = _floats(scores or [])
        if values.size == 0 or not np.isfinite(values).any():
            excluded["no_step_scores"] += 1
            continue
        if steps is not None:
            count = _as_int(num_steps[i]) if num_steps is not None else values.size
            listed = _step_list(steps[i])
            if listed is None or count != len(listed):
                excluded["step_count_mismatch"] += 1
                continue
        if label >= values.size:
            excluded["label_out_of_range"] += 1
            continue
        if label == -1:
            rows_correct += 1
            negatives.extend(values.tolist())
            continue
        rows_error += 1
        before.extend(values[:label].tolist())
        at.append(float(values[label]))
        after.extend(values[label + 1 :].tolist())
        positives.append(float(values[label]))
        negatives.extend(values[:label].tolist())
        for d in RELATIVE_POSITIONS:
            if 0 <= label + d < values.size:
                relative[d].append(float(values[label + d]))

    def summary(pooled: list[float]) -> dict[str, Any]:
        array = np.asarray(pooled, dtype=np.float64)
        return {"mean": _mean(array), "num_steps": int(np.isfinite(array).sum())}

    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    return {
        "num_rows": len(labels),
        "num_rows_used": rows_error + rows_correct,
        "num_rows_with_error": rows_error,
        "num_rows_all_correct": rows_correct,
        "excluded": {
            key: int(excluded[key])
            for key in ("bad_label", "no_step_scores", "step_count_mismatch", "label_out_of_range")
        },
        "before": summary(before),
        "at": summary(at),
        "after": summary(after),
        "auroc": auroc(-pos, -neg),
        "num_positives": int(np.isfinite(pos).sum()),
        "num_negatives": int(np.isfinite(neg).sum()),
        "relative": [{"offset": d, **summary(relative[d])} for d in RELATIVE_POSITIONS],
    }


def _step_list(value: Any) -> list | None:
    """A row's ``steps``: a list, or a JSON list written as text (CSV); None otherwise."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return list(value) if isinstance(value, list | tuple | np.ndarray) else None


def _section_step_labels(ctx: _Context) -> SectionData:
    if "label" not in ctx.columns:
        raise _Skip("no label column (ProcessBench-style: the index of the first wrong step, -1 = all correct).")
    if "step_logprobs" not in ctx.columns:
        raise _Skip("no step_logprobs column; score with --metrics local --return_steps.")
    has_steps = "steps" in ctx.columns
    stats = step_label_stats(
        ctx.column("step_logprobs"),
        ctx.column("label"),
        num_steps=ctx.column("num_steps") if "num_steps" in ctx.columns else None,
        steps=ctx.column("steps") if has_steps else None,
    )
    stats["checked_step_count"] = has_steps
    if not stats["num_rows_used"]:
        raise _Skip(f"no usable labelled row (excluded: {stats['excluded']}).", stats)

    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    points = [(r["offset"], r["mean"], r["num_steps"]) for r in stats["relative"] if r["mean"] is not None]
    if points:
        xs, ys, ns = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", color="#d62728")
        for x, y, n in points:
            ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.axvline(0, color="gray", linestyle="--", linewidth=0.8)
    ax.margins(y=0.2)
    ax.set_xticks(list(RELATIVE_POSITIONS))
    ax.set_xlabel("step position relative to the first wrong step")
    ax.set_ylabel("mean step local log-prob")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return stats, [ctx.save(fig, "step_labels.png")]


# ----------------------------------------------------------------------------------------------------------
# 6. Selection summary
# ----------------------------------------------------------------------------------------------------------


def _section_selection(ctx: _Context) -> SectionData:
    _need_groups_and_teachers(ctx)
    if not ctx.metrics:
        raise _Skip(f"no metric column ({', '.join(METRIC_COLUMNS.values())}); {_SCORE_HINT}.")
    if int(np.bincount(ctx.group_codes).max(initial=0)) < 2:
        raise _Skip("every prompt has one response: there is nothing to select between.")
    slim = ctx.slim()
    winners: dict[str, dict[int, int]] = {}
    per_metric: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for metric in ctx.metrics:
        try:
            selected = select_responses(slim, by=metric, group_by=ctx.group_by, k=1)
        except LocalnatError as err:
            failed[metric] = str(err)
            continue
        chosen = np.asarray(selected[_ROW_COLUMN][:], dtype=np.int64)
        winners[metric] = {int(ctx.group_codes[r]): int(r) for r in chosen}
        counts = Counter(ctx.teachers[r] for r in chosen)
        entry: dict[str, Any] = {
            "num_selected": int(chosen.size),
            "teacher_counts": {t: int(counts.get(t, 0)) for t in ctx.teacher_order},
            "teacher_shares": {t: (counts.get(t, 0) / chosen.size if chosen.size else None) for t in ctx.teacher_order},
        }
        if ctx.correct is not None:
            known = ctx.correct[chosen][np.isfinite(ctx.correct[chosen])]
            entry.update(accuracy=float(known.mean()) if known.size else None, num_known_correct=int(known.size))
        per_metric[metric] = entry
    if not per_metric:
        raise _Skip("no metric could select: " + "; ".join(f"{m}: {r}" for m, r in failed.items()))
    changes = []
    for a, b in combinations(list(per_metric), 2):
        common = winners[a].keys() & winners[b].keys()
        changed = sum(winners[a][p] != winners[b][p] for p in common)
        changes.append({"a": a, "b": b, "num_changed": int(changed), "num_common_prompts": len(common)})
    pool = None
    if ctx.correct is not None:
        pool = {"accuracy": _mean(ctx.correct), "num_known_correct": int(np.isfinite(ctx.correct).sum())}
    data = {
        "metrics": per_metric,
        "winner_changes": changes,
        "pool": pool,
        "num_prompts": len(ctx.group_keys),
        "failed_metrics": failed,
    }

    fig = Figure(figsize=(1.3 * len(per_metric) + 4.0, 3.6))
    ax = fig.subplots()
    bottom = np.zeros(len(per_metric))
    colours = matplotlib.colormaps["tab10" if len(ctx.teacher_order) <= 10 else "tab20"]
    for i, teacher in enumerate(ctx.teacher_order):
        share = np.array([per_metric[m]["teacher_shares"][teacher] or 0.0 for m in per_metric])
        ax.bar(range(len(per_metric)), share, bottom=bottom, label=teacher, color=colours(i % colours.N))
        bottom += share
    ax.set_xticks(range(len(per_metric)))
    _metric_ticks(ax, list(per_metric))
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the selected responses")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return data, [ctx.save(fig, "selection_shares.png")]


# ----------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------

_SECTION_BUILDERS = {
    "ranking": _section_ranking,
    "accuracy": _section_accuracy,
    "length_bias": _section_length_bias,
    "step_profile": _section_step_profile,
    "step_labels": _section_step_labels,
    "selection": _section_selection,
}


# Suffixes that mean a file, not the report folder (`--output rep/report.html` is a common slip).
_FILE_SUFFIXES = (*FILE_FORMATS, ".html", ".htm", ".png", ".pdf", ".txt", ".md")


def check_output_dir(
    output_dir: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str | os.PathLike | None] = ()
) -> Path:
    """Refuse an output folder that would lose data; return it as a Path.

    The rule of :func:`hf_localnat.outputs.check_output`: a missing or empty folder is fine; a non-empty one
    needs ``overwrite=True`` and must hold only what a report holds, so a mistyped path never replaces
    unrelated files.

    Example:
        >>> check_output_dir("new-report-folder")
        PosixPath('new-report-folder')
    """
    output = Path(output_dir)
    if output.suffix.lower() in _FILE_SUFFIXES and not output.is_dir():
        raise LocalnatError(
            f"--output {str(output)!r} looks like a file; it is the folder that gets report.html and the figures. "
            f"Pass a folder name such as {str(output.with_suffix(''))!r}."
        )
    return check_output(output, "report", inputs=inputs, overwrite=overwrite)


def _validate_rows(rows: Sequence[int] | None, n: int) -> list[int] | None:
    if rows is None:
        return None
    out = []
    for row in rows:
        if isinstance(row, bool) or not isinstance(row, int | np.integer) or not 0 <= int(row) < n:
            raise LocalnatError(f"rows: {row!r} is not a row index of this dataset (0..{n - 1}). Pick rows in range.")
        out.append(int(row))
    if not out:
        raise LocalnatError("rows: empty list. Pass row indices such as 0,5,12, or leave it out to choose rows.")
    return out


def _header_info(ctx: _Context, source: str | None, provenance: dict | None) -> dict[str, Any]:
    return {
        "input": source,
        "num_rows": ctx.n,
        "num_prompts": len(ctx.group_keys) if ctx.has_groups else None,
        "num_teachers": len(ctx.teacher_order) if ctx.has_teachers else None,
        "group_by": ctx.group_by,
        "teacher_column": ctx.teacher_column,
        "response_column": ctx.response_column,
        "metrics": ctx.metrics,
        "step_columns": [c for c in ("step_spans", "step_logprobs", "label", "steps") if c in ctx.columns],
        "has_correct": ctx.correct is not None,
        "provenance": provenance,
    }


@cache
def _page_template() -> jinja2.Template:
    """The page template, shipped in model_cards/ like the card templates, autoescaping every value."""
    resource = importlib.resources.files("model_cards").joinpath(REPORT_TEMPLATE)
    if not resource.is_file():
        raise LocalnatError(f"report template {resource} is missing; reinstall hf_localnat.")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, pct=_pct, direction=_direction)
    return env.from_string(resource.read_text(encoding="utf-8"))


def _render_page(ctx: _Context, report: dict[str, Any], source: str | None, provenance: dict | None) -> str:
    """``report.html``: the report (report.json's content) rendered by the template."""
    sections = []
    for number, (key, entry) in enumerate(report["sections"].items(), start=1):
        section = {**entry, "key": key, "number": number}
        if key == "step_profile" and entry["status"] == "ok" and ctx.html_steps:
            section["coloured"] = _coloured_steps(ctx, entry["rows"])
        sections.append(section)
    return _page_template().render(
        report=report,
        sections=sections,
        source=source,
        provenance=provenance,
        # As the header always showed it: the scorer's own config, keys sorted.
        scorer_json=json.dumps((provenance or {}).get("scorer"), indent=1, sort_keys=True),
        report_json=REPORT_JSON,
        length_labels=LENGTH_COLUMNS,
        section_titles=SECTIONS,
    )


def _jsonable(value: Any) -> Any:
    """Numpy scalars to Python, NaN/inf to None, tuples to lists, keys to str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_report(
    scored: datasets.Dataset,
    output_dir: str | os.PathLike,
    *,
    group_by: str = SelectionConfig.group_by,
    teacher_column: str = "teacher",
    response_column: str = ScoringConfig.response_column,
    rows: Sequence[int] | None = None,
    html_steps: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    rsr_aggregate: str = RankingConfig.rsr_aggregate,
    progress: bool = True,
    overwrite: bool = False,
    source: str | None = None,
) -> Path:
    """Write ``report.html``, its PNG figures and ``report.json`` into a new folder ``output_dir``.

    The folder is built as a temporary sibling and renamed into place. A non-empty ``output_dir`` is refused
    unless ``overwrite=True`` and it holds an earlier report (:func:`check_output_dir`). Sections whose
    columns are missing are skipped, with the reason in the HTML and in ``report.json``.

    Args:
        scored: rows scored by :func:`hf_localnat.scorer.score_dataset` (any subset of the metric columns).
        output_dir: the report folder.
        group_by: column naming the prompt.
        teacher_column: column naming the teacher.
        response_column: column holding the response text (only read for ``html_steps``).
        rows: row indices for the step profile; default: the best and worst row by local score of the prompt
            where they differ most.
        html_steps: also show those responses with each step coloured by its score.
        n_boot: bootstrap resamples of prompts, for every CI and P(top).
        seed: seed of the bootstrap.
        rsr_aggregate: a teacher's rsr, ``ratio_of_means`` (the RSR authors' mean rank / mean surprisal) or
            ``mean_of_ratios`` (see :func:`hf_localnat.selection.rank_teachers`).
        progress: show a progress bar over the sections.
        overwrite: replace an earlier report in ``output_dir``.
        source: where ``scored`` came from, shown in the header.

    Returns:
        The path of ``report.html``.

    Example:
        >>> path = build_report(scored, "report", html_steps=True)  # doctest: +SKIP
        >>> report = json.loads((path.parent / "report.json").read_text())  # doctest: +SKIP
        >>> report["sections"]["ranking"]["kendall_tau"]  # doctest: +SKIP
    """
    from .scorer import scoring_provenance

    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise LocalnatError(f"n_boot={n_boot!r}: use a whole number of bootstrap resamples >= 1 (e.g. 1000).")
    RankingConfig(rsr_aggregate=rsr_aggregate)  # a wrong aggregate fails before any work
    output = check_output_dir(output_dir, overwrite)
    chosen_rows = _validate_rows(rows, len(scored))
    with atomic_dir(output) as tmp:
        ctx = _Context(
            scored, tmp, group_by, teacher_column, response_column, chosen_rows, html_steps, n_boot, seed, rsr_aggregate
        )
        sections: list[_Section] = []
        bar = tqdm(SECTIONS, desc="Report", unit="section", disable=not progress)
        for key in bar:
            bar.set_postfix_str(key, refresh=False)
            section = _Section(key)
            saved_before = len(ctx.saved)
            try:
                section.data, section.figures = _SECTION_BUILDERS[key](ctx)
            except _Skip as skip:
                section.status, section.reason, section.data = "skipped", str(skip), skip.data
                for name in ctx.saved[saved_before:]:
                    (tmp / name).unlink(missing_ok=True)
            sections.append(section)
        bar.close()
        provenance = scoring_provenance(scored)
        report = _jsonable(
            {
                "hf_localnat_version": __version__,
                "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                **_header_info(ctx, source, provenance),
                "sections": {s.key: s.to_json() for s in sections},
            }
        )
        (tmp / REPORT_JSON).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
        (tmp / REPORT_HTML).write_text(_render_page(ctx, report, source, provenance), encoding="utf-8")
    return output / REPORT_HTML


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


@dataclass
@with_fields_of(SelectionConfig, only=("group_by",))
@with_fields_of(ScoringConfig, only=("response_column",))
@with_fields_of(RankingConfig, only=("rsr_aggregate",))
class ReportArguments:
    """``hf-localnat report SCORED --output DIR``: an HTML report on scored rows, with figures and a JSON."""

    MIN_VALUES = {"n_boot": 1}  # checked by the CLI before anything loads

    scored: str = field(
        default="", metadata={"help": "Scored rows (positional): a data file, a save_to_disk folder or a Hub id."}
    )
    output: str = field(default="", metadata={"help": "Report folder to create (report.html, *.png, report.json)."})
    teacher_column: str = field(default="teacher", metadata={"help": "Column naming the teacher."})
    rows: str | None = field(
        default=None,
        metadata={"help": "Rows for the step profile, comma-separated indices (default: best and worst of a prompt)."},
    )
    html_steps: bool = field(default=False, metadata={"help": "Also show those responses coloured by step score."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples of prompts, for every CI and P(top)."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an earlier report in the output folder."})


def parse_rows(text: str | Sequence[int] | None) -> list[int] | None:
    """``"0, 5,12"`` -> ``[0, 5, 12]``; None or empty -> None (rows chosen automatically).

    Example:
        >>> parse_rows("0, 5,12"), parse_rows(None)
        ([0, 5, 12], None)
    """
    if text is None:
        return None
    if not isinstance(text, str):
        return [int(v) for v in text]
    if not text.strip():
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise LocalnatError(f"--rows {text!r}: use comma-separated row indices such as 0,5,12.") from None


def _validate_columns(ds: datasets.Dataset, source: str, args: ReportArguments, rows: list[int] | None) -> None:
    columns = ", ".join(ds.column_names)
    if not present_metric_columns(ds.column_names):
        raise LocalnatError(
            f"{source}: no metric column ({', '.join(METRIC_COLUMNS.values())}) found (columns: {columns}). "
            f"Score it first: hf-localnat score {source} --metrics global,local,rsr --return_steps --output SCORED."
        )
    defaults = ReportArguments()
    for name, flag in (("group_by", "--group_by"), ("teacher_column", "--teacher_column")):
        value = getattr(args, name)
        if value != getattr(defaults, name) and value not in ds.column_names:
            raise LocalnatError(f"{source}: column {value!r} not found (columns: {columns}). Pass {flag} NAME.")
    needs = []
    if rows is not None or args.html_steps:
        needs.append(("step_logprobs", "--rows/--html_steps"))
    if args.html_steps:
        needs.append(("step_spans", "--html_steps"))
    for column, flag in needs:
        if column not in ds.column_names:
            raise LocalnatError(
                f"{source}: column {column!r} not found, and {flag} needs it. Score it with --metrics local "
                "--return_steps."
            )
    if args.html_steps and args.response_column not in ds.column_names:
        raise LocalnatError(
            f"{source}: column {args.response_column!r} not found (columns: {columns}); --html_steps colours the "
            "response text. Pass --response_column NAME."
        )


def run_report(args: ReportArguments, scored_path: str | None = None) -> Path:
    """Load the scored rows, check their columns, write the report and print where it went.

    ``scored_path`` (the CLI's positional argument) overrides ``args.scored``. Returns the ``report.html`` path.

    Example:
        >>> run_report(ReportArguments(scored="scored.parquet", output="report"))  # doctest: +SKIP
        Wrote the report (5 sections) to report/report.html in 3.2 s.
        PosixPath('report/report.html')
    """
    started = time.perf_counter()
    source = scored_path or args.scored
    if not source:
        raise LocalnatError("report needs the scored rows: hf-localnat report SCORED --output DIR.")
    if not args.output:
        raise LocalnatError("report needs --output DIR (a new folder for report.html, its figures and report.json).")
    rows = parse_rows(args.rows)
    RankingConfig(rsr_aggregate=args.rsr_aggregate)
    check_output_dir(args.output, args.overwrite, inputs=[args.scored])  # before loading: fail fast
    ds = load_rows(source)
    _validate_columns(ds, str(source), args, rows)
    if rows is not None:
        _validate_rows(rows, len(ds))
    path = build_report(
        ds,
        args.output,
        group_by=args.group_by,
        teacher_column=args.teacher_column,
        response_column=args.response_column,
        rows=rows,
        html_steps=args.html_steps,
        n_boot=args.n_boot,
        seed=args.seed,
        rsr_aggregate=args.rsr_aggregate,
        overwrite=args.overwrite,
        source=str(source),
    )
    summary = json.loads((path.parent / REPORT_JSON).read_text())["sections"]
    skipped = [key for key, s in summary.items() if s["status"] != "ok"]
    reasons = [f"{key} ({summary[key]['reason']})" for key in skipped]
    note = f"; skipped: {', '.join(reasons)}" if skipped else ""
    print(
        f"Wrote the report ({len(summary) - len(skipped)} of {len(summary)} sections{note}) to {path} "
        f"in {time.perf_counter() - started:.1f} s."
    )
    return path
