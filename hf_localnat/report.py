"""An HTML report on scored rows: what each metric says about teachers, length, steps and selection.

:func:`build_report` writes ``report.html``, its PNG figures and ``report.json`` (every number the HTML
shows) into a new folder, atomically. Five sections, each present only when the columns it needs exist
(otherwise the HTML and the JSON say it was skipped, and why):

1. ``ranking``: teachers ranked by each metric (bootstrap 95% CIs), Kendall tau-b between the rankings
   and against teacher accuracy (``correct``).
2. ``length_bias``: Spearman correlation of each metric with ``num_response_tokens`` and ``num_steps``,
   over all rows and within prompts.
3. ``step_profile``: per-step local log-probs (``step_logprobs``) of a few rows; optionally their text
   coloured by step score (``step_spans``).
4. ``step_labels``: with a ProcessBench-style ``label`` (index of the first wrong step, -1 = all correct),
   mean step scores before/at/after the first error and the AUROC of the negated step score.
5. ``selection``: one response per prompt by each metric: teacher shares, accuracy, winner changes.

The statistics (:func:`kendall_tau_b`, :func:`spearman`, :func:`within_group_spearman`, :func:`auroc`)
are plain numpy and handle ties. :class:`ReportArguments` and :func:`run_report` drive it from the CLI.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any

import datasets
import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter
from tqdm.auto import tqdm

from . import __version__
from .data_io import FILE_FORMATS, atomic_dir, load_rows
from .errors import LocalnatError
from .metrics import METRIC_COLUMNS, ScoringConfig, with_fields_of
from .outputs import check_output
from .selection import SelectionConfig, is_higher_better, rank_teachers, select_responses

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
SECTIONS = {
    "ranking": "Teacher ranking",
    "length_bias": "Length bias",
    "step_profile": "Step profile",
    "step_labels": "Step labels",
    "selection": "Selection summary",
}
RELATIVE_POSITIONS = tuple(range(-3, 4))  # steps around the first error shown in the step-labels figure
LENGTH_COLUMNS = {"num_response_tokens": "tokens", "num_steps": "steps"}
MIN_ROWS_PER_PROMPT = 3  # within-prompt Spearman needs at least this many rows in a prompt
_ROW_COLUMN = "__report_row__"
_SCORE_HINT = "score it with hf-localnat score INPUT --metrics global,local,rsr --return_steps --output SCORED"


# ----------------------------------------------------------------------------------------------------------
# Statistics (numpy only)
# ----------------------------------------------------------------------------------------------------------


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing the mean of the ranks they span.

    Example:
        >>> average_ranks([10.0, 30.0, 20.0, 30.0]).tolist()
        [1.0, 3.5, 2.0, 3.5]
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return np.empty(0, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, x.size])
    mean_rank = first + (counts + 1) / 2.0  # positions first+1 .. first+count, averaged
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = mean_rank[np.cumsum(starts) - 1]
    return ranks


def _finite_pairs(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"x and y differ in length ({a.size} != {b.size}).")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def kendall_tau_b(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Kendall's tau-b of two paired samples (ties in either corrected for); None when undefined.

    Pairs with a NaN are dropped. Undefined with fewer than 2 pairs or when ``x`` or ``y`` is constant.
    O(n^2) memory: meant for rankings of teachers, not for rows.

    Example:
        >>> kendall_tau_b([1, 2, 3], [1, 2, 3]), kendall_tau_b([1, 2, 3], [3, 2, 1])
        (1.0, -1.0)
        >>> round(kendall_tau_b([1, 2, 3], [1, 1, 2]), 4)  # 2 concordant, 1 tie in y: 2 / sqrt(3 * 2)
        0.8165
    """
    a, b = _finite_pairs(x, y)
    n = a.size
    if n < 2:
        return None
    upper = np.triu_indices(n, k=1)
    da = np.sign(a[:, None] - a[None, :])[upper]
    db = np.sign(b[:, None] - b[None, :])[upper]
    pairs = n * (n - 1) / 2.0
    denominator = math.sqrt((pairs - np.count_nonzero(da == 0)) * (pairs - np.count_nonzero(db == 0)))
    if denominator == 0:
        return None
    return float(np.sum(da * db) / denominator)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rank correlation (Pearson's r of average ranks); None when undefined.

    Pairs with a NaN are dropped. Undefined with fewer than 2 pairs or when ``x`` or ``y`` is constant.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3], [3, 1, 2])
        (1.0, -0.5)
    """
    a, b = _finite_pairs(x, y)
    if a.size < 2:
        return None
    ra = average_ranks(a) - (a.size + 1) / 2.0
    rb = average_ranks(b) - (b.size + 1) / 2.0
    denominator = math.sqrt(float(np.sum(ra * ra)) * float(np.sum(rb * rb)))
    if denominator == 0:
        return None
    return float(np.clip(np.sum(ra * rb) / denominator, -1.0, 1.0))


def within_group_spearman(
    groups: Sequence | np.ndarray,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    min_rows: int = MIN_ROWS_PER_PROMPT,
) -> tuple[float | None, int]:
    """Mean over groups of the Spearman correlation within each group, and how many groups it averages.

    Rows with a NaN are dropped first. A group counts when it has at least ``min_rows`` rows and neither
    ``x`` nor ``y`` is constant within it. Returns ``(None, 0)`` when no group counts.

    Example:
        >>> within_group_spearman(["a"] * 3 + ["b"] * 3 + ["c"] * 2, [1, 2, 3, 1, 2, 3, 1, 2],
        ...                       [1, 2, 3, 3, 1, 2, 5, 6])
        (0.25, 2)
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    frame = pd.DataFrame({"g": pd.Series(list(groups))[keep].to_numpy(), "x": a[keep], "y": b[keep]})
    frame = frame[frame.groupby("g")["x"].transform("size") >= min_rows]
    if frame.empty:
        return None, 0
    by_group = frame.groupby("g")
    rx, ry = by_group["x"].rank(method="average"), by_group["y"].rank(method="average")
    dx = rx - rx.groupby(frame["g"]).transform("mean")
    dy = ry - ry.groupby(frame["g"]).transform("mean")
    sums = pd.DataFrame({"g": frame["g"], "xy": dx * dy, "xx": dx * dx, "yy": dy * dy}).groupby("g").sum()
    counted = (sums["xx"] > 0) & (sums["yy"] > 0)
    if not counted.any():
        return None, 0
    rho = sums.loc[counted, "xy"] / np.sqrt(sums.loc[counted, "xx"] * sums.loc[counted, "yy"])
    return float(np.clip(rho, -1.0, 1.0).mean()), int(counted.sum())


def auroc(positives: Sequence[float] | np.ndarray, negatives: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve of a score that should be higher for positives (Mann-Whitney U / n+ n-).

    The probability that a random positive outscores a random negative, a tie counting 1/2. NaNs are
    dropped; None when either side is empty.

    Example:
        >>> auroc([3.0, 2.0], [1.0, 2.0])  # pairs: 3>1, 3>2, 2>1, 2=2 -> (3 + 0.5) / 4
        0.875
    """
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if pos.size == 0 or neg.size == 0:
        return None
    ranks = average_ranks(np.concatenate([pos, neg]))
    u = float(ranks[: pos.size].sum()) - pos.size * (pos.size + 1) / 2.0
    return u / (pos.size * neg.size)


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


def _correct_values(values: Sequence[Any]) -> np.ndarray:
    """``correct`` as 1.0 / 0.0 / NaN (None or unreadable); accepts bools, 0/1 and "true"/"false" text."""
    text = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}
    out = np.full(len(values), np.nan, dtype=np.float64)
    for i, value in enumerate(values):
        if isinstance(value, str):
            out[i] = text.get(value.strip().lower(), np.nan)
        elif isinstance(value, bool | int | float | np.integer | np.floating) and value in (0, 1):
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
    """Raised inside a section to skip it; the message says why."""


@dataclass
class _Section:
    key: str
    status: str = "ok"
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    body: str = ""

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
        self.columns = set(scored.column_names)
        self.n = len(scored)
        self.metrics = [c for c in METRIC_COLUMNS.values() if c in self.columns]
        self.primary = "local_naturalness" if "local_naturalness" in self.metrics else (self.metrics or [None])[0]
        self._cache: dict[str, list] = {}
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
        self.correct = _correct_values(self.column("correct")) if "correct" in self.columns else None

    def column(self, name: str) -> list:
        if name not in self._cache:
            self._cache[name] = list(self.ds[name][:])
        return self._cache[name]

    def floats(self, name: str) -> np.ndarray:
        return _floats(self.column(name))

    def slim(self) -> datasets.Dataset:
        """Only the columns ranking and selection read, plus the original row index."""
        keep = [c for c in (self.group_by, self.teacher_column, *self.metrics) if c in self.columns]
        return self.ds.select_columns(keep).add_column(_ROW_COLUMN, np.arange(self.n, dtype=np.int64))

    def save(self, figure: Figure, name: str, section: _Section) -> str:
        figure.savefig(self.folder / name, dpi=100, bbox_inches="tight")
        section.figures.append(name)
        return name


def _direction(metric: str) -> str:
    return "higher is better" if is_higher_better(metric) else "lower is better"


def _goodness(metric: str, value: float) -> float:
    """A metric value turned so that larger is better (rsr is negated)."""
    return value if is_higher_better(metric) else -value


# ----------------------------------------------------------------------------------------------------------
# HTML helpers
# ----------------------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1, head: str = "") -> str:
    """An HTML table; cells are already HTML. Columns from ``numeric_from`` on are right-aligned.

    ``head``: header rows as HTML, used instead of the single row made from ``header``.
    """
    out = ["<table>", "<thead>", head or "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    out.append("</thead><tbody>")
    for row in rows:
        cells = (f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(row))
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _img(name: str, alt: str) -> str:
    return f'<figure><img src="{_e(name)}" alt="{_e(alt)}"></figure>'


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
.skipped { color: #666; font-style: italic; } .note { color: #555; font-size: 0.92em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.steps { white-space: pre-wrap; border: 1px solid #ddd; padding: 0.6em; font-size: 0.92em; }
.steps span { border-radius: 3px; }
.legend { display: flex; align-items: center; gap: 0.5em; font-size: 0.9em; margin: 0.5em 0; }
.legend .bar { width: 240px; height: 14px; border: 1px solid #aaa; }
"""


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


def _section_ranking(ctx: _Context, section: _Section) -> None:
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
                }
            )
        records[metric] = {"higher_is_better": is_higher_better(metric), "teachers": rows}
    accuracy = _teacher_accuracy(ctx) if ctx.correct is not None else None

    # Kendall tau-b on "goodness" (rsr negated), so every ranking reads best first.
    good = {m: {r["teacher"]: _goodness(m, r["mean"]) for r in records[m]["teachers"]} for m in records}
    if accuracy is not None:
        good["accuracy"] = {t: a["accuracy"] for t, a in accuracy.items() if a["accuracy"] is not None}
    taus = []
    for a, b in combinations(list(good), 2):
        common = [t for t in order if t in good[a] and t in good[b]]
        tau = kendall_tau_b([good[a][t] for t in common], [good[b][t] for t in common])
        taus.append({"a": a, "b": b, "tau_b": tau, "num_teachers": len(common)})
    shared = _num_shared_prompts(ctx)
    section.data.update(
        order=order,
        num_shared_prompts=shared,
        primary_metric=primary,
        metrics=records,
        failed_metrics=failed,
        accuracy=accuracy,
        kendall_tau=taus,
        n_boot=ctx.n_boot,
        seed=ctx.seed,
    )
    name = _ranking_figure(ctx, section, records, order)

    # HTML: one row per teacher, one block per metric.
    metrics = list(records)
    head = '<tr><th rowspan="2">teacher</th>' + ('<th rowspan="2">accuracy</th>' if accuracy else "")
    head += "".join(f'<th colspan="4">{_e(m)} ({_direction(m)})</th>' for m in metrics) + "</tr>"
    head += "<tr>" + "<th>rank</th><th>mean</th><th>95% CI</th><th>win rate</th>" * len(metrics) + "</tr>"
    by_teacher = {m: {r["teacher"]: r for r in records[m]["teachers"]} for m in metrics}
    rows_html = []
    for teacher in order:
        cells = [_e(teacher)]
        if accuracy:
            acc = accuracy.get(teacher, {})
            cells.append(f"{_pct(acc.get('accuracy'))} <span class='note'>(n={acc.get('num_known', 0)})</span>")
        for m in metrics:
            r = by_teacher[m].get(teacher)
            if r is None:
                cells += ["n/a"] * 4
                continue
            ci = f"[{_num(r['ci_low'], signed=True)}, {_num(r['ci_high'], signed=True)}]"
            cells += [str(r["rank"]), _num(r["mean"], signed=True), ci, _pct(r["win_rate"])]
        rows_html.append(cells)
    tau_rows = [[_e(t["a"]), _e(t["b"]), _num(t["tau_b"], signed=True), str(t["num_teachers"])] for t in taus]
    body = [
        f"<p>Teachers ranked by each metric (mean over prompts of the teacher-prompt mean score; percentile "
        f"bootstrap 95% CI from {ctx.n_boot} resamples of prompts, seed {ctx.seed}). Rows follow the "
        f"{_e(primary)} ranking, best first. Win rate: share of the prompts answered by every teacher where the "
        "teacher scores best.</p>",
        _table([], rows_html, head=head),
        _img(name, "teacher ranking by metric"),
    ]
    if shared == 0:
        body.append(
            "<p class='skipped'>No prompt was answered by more than one teacher: each mean is over different "
            "prompts, so this ranking mixes the teachers with their prompts' difficulty, and there are no win "
            "rates.</p>"
        )
    body += [
        "<h3>Agreement between rankings (Kendall &tau;-b)</h3>",
        "<p>Each ranking is oriented best first (rsr is lower-is-better, so it is negated); "
        "&tau;-b = +1 means the same order, &minus;1 the reverse; ties are corrected for. "
        + ("Accuracy: mean of <code>correct</code> per teacher, ignoring missing values." if accuracy else "")
        + "</p>",
        _table(["ranking", "vs", "&tau;-b", "teachers"], tau_rows, numeric_from=2),
    ]
    if failed:
        body.append(
            "<p class='skipped'>Not ranked: " + "; ".join(f"{_e(m)}: {_e(r)}" for m, r in failed.items()) + "</p>"
        )
    section.body = "\n".join(body)


def _ranking_figure(ctx: _Context, section: _Section, records: dict[str, dict], order: list[str]) -> str:
    k = len(records)
    fig = Figure(figsize=(3.6 * k + 1.2, 0.42 * len(order) + 1.6))
    axes = fig.subplots(1, k, sharey=True, squeeze=False)[0]
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
        ax.set_xlabel("mean over prompts (95% CI)")
    axes[0].set_yticks(range(len(order)))
    axes[0].set_yticklabels(list(reversed(order)))
    fig.tight_layout()
    return ctx.save(fig, "ranking.png", section)


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
# 2. Length bias
# ----------------------------------------------------------------------------------------------------------


def _section_length_bias(ctx: _Context, section: _Section) -> None:
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
                rho, count = within_group_spearman(ctx.group_codes[valid], score[valid], length_values[column][valid])
                entry.update(spearman_within_prompts=rho, num_prompts=count)
            correlations[metric][column] = entry
    section.data.update(
        lengths=lengths,
        correlations=correlations,
        min_rows_per_prompt=MIN_ROWS_PER_PROMPT,
        within_prompts=ctx.has_groups,
    )
    scatter = _length_scatter(ctx, section, lengths, length_values)
    bars = _length_bars(ctx, section, lengths, correlations)

    header = ["metric", "direction"]
    for column in lengths:
        header += [
            f"&rho; vs {LENGTH_COLUMNS[column]} (all rows)",
            "rows",
            f"&rho; vs {LENGTH_COLUMNS[column]} (within prompts, mean)",
            "prompts",
        ]
    rows = []
    for metric, entry in correlations.items():
        cells = [_e(metric), _direction(metric)]
        for column in lengths:
            c = entry[column]
            cells += [
                _num(c["spearman_all"], signed=True),
                str(c["num_rows"]),
                _num(c["spearman_within_prompts"], signed=True),
                str(c["num_prompts"]),
            ]
        rows.append(cells)
    within = (
        f"Within prompts: Spearman's &rho; computed inside each prompt with at least {MIN_ROWS_PER_PROMPT} rows "
        "where neither the metric nor the length is constant, then averaged over those prompts."
        if ctx.has_groups
        else f"Within-prompt correlations skipped: no prompt column {_e(ctx.group_by)!s}."
    )
    section.body = "\n".join(
        [
            "<p>Spearman rank correlation of each metric with response length. A positive &rho; means longer "
            "responses get higher values; for rsr (lower is better) that means longer responses look <em>worse"
            f"</em>. {within}</p>",
            _table(header, rows, numeric_from=2),
            _img(scatter, "metric against response length"),
            _img(bars, "length correlations"),
        ]
    )


def _length_scatter(ctx: _Context, section: _Section, lengths: list[str], values: dict[str, np.ndarray]) -> str:
    column = lengths[0]  # tokens when present
    k = len(ctx.metrics)
    fig = Figure(figsize=(3.8 * k + 0.6, 3.4))
    axes = fig.subplots(1, k, squeeze=False)[0]
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
    return ctx.save(fig, "length_scatter.png", section)


def _length_bars(ctx: _Context, section: _Section, lengths: list[str], correlations: dict) -> str:
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
    ax.set_xticklabels(metrics)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman \u03c1 with length")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return ctx.save(fig, "length_correlations.png", section)


# ----------------------------------------------------------------------------------------------------------
# 3. Step profile
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


def _section_step_profile(ctx: _Context, section: _Section) -> None:
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
    section.data.update(chosen_by=how, rows=shown)
    if not any(r["num_steps"] for r in shown):
        raise _Skip(f"the chosen rows ({', '.join(map(str, chosen))}) have no step scores.")

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
    name = ctx.save(fig, "step_profile.png", section)

    rows_html = [
        [
            str(r["row"]),
            _e(r["teacher"] or ""),
            _e(r["prompt"] or ""),
            _num(r["local_naturalness"], signed=True),
            str(r["num_steps"]),
        ]
        for r in shown
    ]
    body = [
        f"<p>Per-step local log-probs (the mean log-prob of each step's tokens with only the previous steps of its "
        f"window as context) along the response. Rows shown: {_e(how)}.</p>",
        _table(["row", "teacher", "prompt", "local_naturalness", "steps"], rows_html, numeric_from=3),
        _img(name, "per-step local log-probs"),
    ]
    if ctx.html_steps:
        body.append(_coloured_steps(ctx, shown))
    section.data["html_steps"] = ctx.html_steps
    section.body = "\n".join(body)


def _row_label(r: dict) -> str:
    parts = [f"row {r['row']}"]
    if r["teacher"] is not None:
        parts.append(str(r["teacher"]))
    if r["local_naturalness"] is not None:
        parts.append(f"local {r['local_naturalness']:+.3f}")
    return ", ".join(parts)


def _coloured_steps(ctx: _Context, shown: list[dict]) -> str:
    """The responses as HTML, each step's background coloured by its score (red low, green high)."""
    missing = [c for c in ("step_spans", ctx.response_column) if c not in ctx.columns]
    if missing:
        return f"<p class='skipped'>Coloured text skipped: no column {_e(missing[0])!s}.</p>"
    values = [v for r in shown for v in r["step_logprobs"] if v is not None]
    if not values:
        return "<p class='skipped'>Coloured text skipped: no step scores.</p>"
    low, high = min(values), max(values)
    cmap = matplotlib.colormaps["RdYlGn"]

    def colour(value: float | None) -> str:
        if value is None:
            return "transparent"
        t = 0.5 if high == low else (value - low) / (high - low)
        red, green, blue, _ = cmap(t)
        return f"rgba({red * 255:.0f},{green * 255:.0f},{blue * 255:.0f},0.55)"

    stops = ", ".join(colour(low + (high - low) * i / 6) for i in range(7))
    out = [
        "<h3>Responses coloured by step score</h3>",
        f'<div class="legend"><span>{_num(low, signed=True)}</span><div class="bar" '
        f'style="background: linear-gradient(to right, {stops})"></div><span>{_num(high, signed=True)}</span>'
        "<span class='note'>step mean local log-prob (red: less natural, green: more natural); hover a step for its "
        "score</span></div>",
    ]
    spans_column, texts = ctx.column("step_spans"), ctx.column(ctx.response_column)
    for r in shown:
        text = texts[r["row"]] or ""
        spans = spans_column[r["row"]] or []
        pieces, cursor = [], 0
        for j, (span, value) in enumerate(zip(spans, r["step_logprobs"], strict=False)):
            start, end = int(span[0]), int(span[1])
            if start > cursor:
                pieces.append(_e(text[cursor:start]))
            title = f"step {j}: {_num(value, signed=True)}"
            pieces.append(f'<span style="background:{colour(value)}" title="{_e(title)}">{_e(text[start:end])}</span>')
            cursor = max(cursor, end)
        pieces.append(_e(text[cursor:]))
        note = (
            ""
            if len(spans) == r["num_steps"]
            else (f" <span class='note'>({len(spans)} spans for {r['num_steps']} step scores)</span>")
        )
        out.append(f"<h4>{_e(_row_label(r))}{note}</h4><div class='steps'>{''.join(pieces)}</div>")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------
# 4. Step labels (ProcessBench)
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


def _section_step_labels(ctx: _Context, section: _Section) -> None:
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
    section.data.update(stats)
    if not stats["num_rows_used"]:
        raise _Skip(f"no usable labelled row (excluded: {stats['excluded']}).")

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
    name = ctx.save(fig, "step_labels.png", section)

    ex = stats["excluded"]
    check = (
        "Rows whose step count (num_steps) differs from the length of their <code>steps</code> list are excluded."
        if has_steps
        else "No <code>steps</code> column, so step counts could not be checked against the labels."
    )
    rows = [
        [name_, _num(stats[key]["mean"], signed=True), str(stats[key]["num_steps"])]
        for name_, key in (
            ("before the first error", "before"),
            ("at the first error", "at"),
            ("after the first error", "after"),
        )
    ]
    section.body = "\n".join(
        [
            f"<p>{stats['num_rows_used']} of {stats['num_rows']} labelled rows used: {stats['num_rows_with_error']} "
            f"with a first wrong step, {stats['num_rows_all_correct']} all correct. Excluded: {ex['bad_label']} "
            f"without a readable label, {ex['no_step_scores']} without step scores, {ex['step_count_mismatch']} "
            f"with a step-count mismatch, {ex['label_out_of_range']} with the label beyond their scored steps. "
            f"{check}</p>",
            "<p>Mean step score (pooled over steps of rows with a wrong step):</p>",
            _table(["steps", "mean local log-prob", "steps counted"], rows),
            f"<p><strong>AUROC = {_num(stats['auroc'])}</strong> for flagging the first wrong step by a low step "
            f"score (score = &minus;step log-prob; ties count 1/2). Positives ({stats['num_positives']}): the first "
            f"wrong step of each row with label &ge; 0. Negatives ({stats['num_negatives']}): the steps before it in "
            "those rows, plus every step of the rows with label &minus;1. Steps after the first error are left "
            "out.</p>",
            _img(name, "mean step score around the first error"),
        ]
    )


# ----------------------------------------------------------------------------------------------------------
# 5. Selection summary
# ----------------------------------------------------------------------------------------------------------


def _share_cell(entry: dict[str, Any], teacher: str) -> str:
    return f"{entry['teacher_counts'][teacher]} ({_pct(entry['teacher_shares'][teacher])})"


def _section_selection(ctx: _Context, section: _Section) -> None:
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
    section.data.update(
        metrics=per_metric, winner_changes=changes, pool=pool, num_prompts=len(ctx.group_keys), failed_metrics=failed
    )

    fig = Figure(figsize=(1.3 * len(per_metric) + 4.0, 3.6))
    ax = fig.subplots()
    bottom = np.zeros(len(per_metric))
    colours = matplotlib.colormaps["tab10" if len(ctx.teacher_order) <= 10 else "tab20"]
    for i, teacher in enumerate(ctx.teacher_order):
        share = np.array([per_metric[m]["teacher_shares"][teacher] or 0.0 for m in per_metric])
        ax.bar(range(len(per_metric)), share, bottom=bottom, label=teacher, color=colours(i % colours.N))
        bottom += share
    ax.set_xticks(range(len(per_metric)))
    ax.set_xticklabels(list(per_metric))
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the selected responses")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    name = ctx.save(fig, "selection_shares.png", section)

    metrics = list(per_metric)
    rows = [[_e(t)] + [_share_cell(per_metric[m], t) for m in metrics] for t in ctx.teacher_order]
    rows.append(["<strong>selected</strong>"] + [str(per_metric[m]["num_selected"]) for m in metrics])
    if ctx.correct is not None:
        rows.append(
            ["<strong>accuracy</strong>"]
            + [f"{_pct(per_metric[m]['accuracy'])} (n={per_metric[m]['num_known_correct']})" for m in metrics]
        )
    change_rows = [[_e(c["a"]), _e(c["b"]), str(c["num_changed"]), str(c["num_common_prompts"])] for c in changes]
    pool_line = (
        f" Accuracy of the whole pool: {_pct(pool['accuracy'])} (n={pool['num_known_correct']}); accuracy counts "
        "only rows with a known <code>correct</code>."
        if pool
        else ""
    )
    section.body = "\n".join(
        [
            f"<p>One response per prompt selected by each metric (best score; rsr lowest).{pool_line}</p>",
            _table(["teacher"] + [f"by {_e(m)}" for m in metrics], rows),
            _img(name, "teacher shares of the selected responses"),
            "<p>Prompts whose selected response differs between two metrics (over the prompts both select for):</p>",
            _table(["metric", "vs", "prompts changed", "prompts compared"], change_rows, numeric_from=2)
            if change_rows
            else "<p class='note'>Only one metric: nothing to compare.</p>",
        ]
    )
    if failed:
        section.body += (
            "\n<p class='skipped'>Not selected by: "
            + "; ".join(f"{_e(m)} ({_e(r)})" for m, r in failed.items())
            + "</p>"
        )


# ----------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------

_SECTION_BUILDERS = {
    "ranking": _section_ranking,
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


def _header(ctx: _Context, source: str | None, provenance: dict | None, sections: list[_Section]) -> tuple[str, dict]:
    info = {
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
    counts = [f"{ctx.n} rows"]
    counts.append(
        f"{info['num_prompts']} prompts ({_e(ctx.group_by)})"
        if ctx.has_groups
        else f"no prompt column {_e(ctx.group_by)}"
    )
    counts.append(
        f"{info['num_teachers']} teachers ({_e(ctx.teacher_column)})"
        if ctx.has_teachers
        else f"no teacher column {_e(ctx.teacher_column)}"
    )
    items = [
        f"<li>Input: <code>{_e(source or 'in-memory dataset')}</code></li>",
        f"<li>{', '.join(counts)}</li>",
        f"<li>Metrics: {', '.join(f'{_e(m)} ({_direction(m)})' for m in ctx.metrics) or 'none'}</li>",
        f"<li>Step columns: {', '.join(info['step_columns']) or 'none'}"
        + ("; <code>correct</code> present" if ctx.correct is not None else "")
        + "</li>",
    ]
    if provenance:
        student = provenance.get("student")
        revision = provenance.get("revision")
        items.append(
            f"<li>Scored by student <code>{_e(student)}</code>"
            + (f" at {_e(revision)}" if revision else "")
            + f"; scorer config:<pre>{_e(json.dumps(provenance.get('scorer'), indent=1, sort_keys=True))}</pre></li>"
        )
    else:
        items.append("<li>Scorer provenance: not recorded in this dataset.</li>")
    contents = "".join(
        f'<li><a href="#{s.key}">{_e(s.title)}</a>'
        + ("" if s.status == "ok" else f" <span class='skipped'>(skipped: {_e(s.reason)})</span>")
        + "</li>"
        for s in sections
    )
    return f"<ul>{''.join(items)}</ul>\n<h3>Contents</h3><ol>{contents}</ol>", info


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
        n_boot: bootstrap resamples for the teacher CIs.
        seed: seed of the bootstrap.
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
    output = check_output_dir(output_dir, overwrite)
    chosen_rows = _validate_rows(rows, len(scored))
    with atomic_dir(output) as tmp:
        ctx = _Context(scored, tmp, group_by, teacher_column, response_column, chosen_rows, html_steps, n_boot, seed)
        sections: list[_Section] = []
        bar = tqdm(SECTIONS, desc="Report", unit="section", disable=not progress)
        for key in bar:
            bar.set_postfix_str(key, refresh=False)
            section = _Section(key)
            try:
                _SECTION_BUILDERS[key](ctx, section)
            except _Skip as skip:
                section.status, section.reason, section.body = "skipped", str(skip), ""
                for name in section.figures:
                    (tmp / name).unlink(missing_ok=True)
                section.figures = []
            sections.append(section)
        bar.close()
        provenance = scoring_provenance(scored)
        header, info = _header(ctx, source, provenance, sections)
        generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        report = {
            "hf_localnat_version": __version__,
            "generated": generated,
            **info,
            "sections": {s.key: s.to_json() for s in sections},
        }
        (tmp / REPORT_JSON).write_text(json.dumps(_jsonable(report), indent=1, allow_nan=False) + "\n")
        parts = []
        for number, s in enumerate(sections, start=1):
            content = s.body if s.status == "ok" else f"<p class='skipped'>Skipped: {_e(s.reason)}</p>"
            parts.append(f'<section id="{s.key}">\n<h2>{number}. {_e(s.title)}</h2>\n{content}\n</section>')
        page = (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>hf_localnat report{_e(' - ' + source) if source else ''}</title><style>{_CSS}</style></head>\n"
            f"<body>\n<h1>Naturalness report</h1>\n<p class='note'>hf_localnat {__version__}, {generated}. "
            f"Every number here is also in <a href='{REPORT_JSON}'>{REPORT_JSON}</a>.</p>\n{header}\n"
            + "\n".join(parts)
            + "\n</body></html>\n"
        )
        (tmp / REPORT_HTML).write_text(page, encoding="utf-8")
    return output / REPORT_HTML


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


@dataclass
@with_fields_of(SelectionConfig, only=("group_by",))
@with_fields_of(ScoringConfig, only=("response_column",))
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
    n_boot: int = field(
        default=1000, metadata={"help": "Bootstrap resamples for the teachers' confidence intervals."}
    )
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
    if not any(c in ds.column_names for c in METRIC_COLUMNS.values()):
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
