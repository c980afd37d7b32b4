"""``hf-localnat demo``: the whole job on embedded defaults, on real teachers, in a few minutes on a laptop CPU.

Scores the embedded pool (MATH level-5 problems answered by 5 real teacher models, from the Apache-2.0
ZeroEval outputs; ``hf_localnat/data/README.md`` says which rows and why) with the embedded SmolLM2 student,
then prints:

- the teacher ranking under each metric (mean over prompts, bootstrap 95% CI, P(top)) beside each teacher's
  accuracy on these prompts;
- each metric's one-per-prompt selection: its accuracy against a random pick from the pool and against the
  best possible pick (:func:`hf_localnat.selection.selection_accuracy`);
- how many prompts change winner between each pair of metrics, and one prompt where local and global
  disagree: both picks' first lines and their step-score profiles.

It writes, under ``--output_dir`` (default ``localnat-demo/``): ``report/`` (the HTML report,
:func:`hf_localnat.report.build_report`), ``selection/`` (one response per prompt by local naturalness, a
Hub-ready dataset folder, :func:`hf_localnat.hub.push_selection`) and ``scored.parquet`` (every scored row).
A rerun replaces the demo's own earlier output, never an unrelated folder.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import time
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import pandas as pd

from .data_io import atomic_dir, load_rows, write_rows
from .errors import LocalnatError
from .outputs import check_location, foreign_entries, is_marked

if TYPE_CHECKING:
    from .cli import DemoArguments
    from .metrics import ScoringConfig
    from .student import StudentArguments

DEMO_POOL = "demo_pool.jsonl"
DEMO_SOURCE = f"hf_localnat/data/{DEMO_POOL}"  # the selection card's source: how a rerun knows its own output
REPORT_DIR = "report"
SELECTION_DIR = "selection"
SCORED_FILE = "scored.parquet"
LAYOUT = {REPORT_DIR: "report", SELECTION_DIR: "selection", SCORED_FILE: None}  # entry -> folder kind (None: file)
SELECT_BY = "local_naturalness"  # the metric of the published selection
SPARKS = "▁▂▃▄▅▆▇█"


def demo_pool_path() -> Path:
    """Path of the embedded multi-teacher demo pool shipped inside the package.

    Example:
        >>> demo_pool_path().name, demo_pool_path().is_file()
        ('demo_pool.jsonl', True)
    """
    return Path(str(importlib.resources.files("hf_localnat") / "data" / DEMO_POOL))


# ------------------------------------------------------------------------------------------------ output folder


def _card_is_the_demos(readme: Path) -> bool:
    """Whether ``readme`` is a selection card the demo wrote (its hf_localnat block names the embedded pool)."""
    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8", errors="replace")
    return "hf_localnat:" in text and DEMO_SOURCE in text


def _what_is_there(folder: Path) -> tuple[str, list[str]]:
    """``(state, foreign)``: ``new`` (absent or empty), ``ours`` (an earlier demo's output, this layout or the
    older one with the selection at the top), ``hf_localnat`` (only what the demo writes, but no demo card) or
    ``foreign``, with the entries that the demo does not write."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return "new", []
    if not folder.is_dir():
        return "foreign", [folder.name]
    if not foreign_entries(folder, "selection") and is_marked(folder, "selection"):  # the layout before report/
        return ("ours" if _card_is_the_demos(folder / "README.md") else "hf_localnat"), []
    foreign = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        kind = LAYOUT.get(entry.name, "missing")
        if kind is None:
            ok = entry.is_file() and not entry.is_symlink()
        elif kind == "missing":
            ok = False
        else:
            ok = entry.is_dir() and not entry.is_symlink() and not foreign_entries(entry, kind)
            ok = ok and is_marked(entry, kind)
        if not ok:
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    if foreign:
        return "foreign", foreign
    return ("ours" if _card_is_the_demos(folder / SELECTION_DIR / "README.md") else "hf_localnat"), []


def check_demo_output(output_dir: str | Path, overwrite: bool = False) -> Path:
    """Check ``--output_dir`` before any work; return it. The demo replaces its own earlier output.

    A folder is replaced when it is absent or empty, when an earlier demo wrote it (its ``selection/README.md``,
    or the older layout's top ``README.md``, is a card naming the embedded pool), or, with ``overwrite``, when
    it holds only what the demo writes (``report/``, ``selection/``, ``scored.parquet``, or a selection folder).
    Anything else in it is refused, even with ``overwrite``. It may not be the working folder or above it.

    Example:
        >>> check_demo_output("a-new-demo-folder")
        PosixPath('a-new-demo-folder')
    """
    folder = Path(output_dir)
    check_location(folder, (), "--output_dir")
    state, foreign = _what_is_there(folder)
    shown = str(output_dir)
    if state == "foreign":
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise LocalnatError(
            f"--output_dir {shown!r} holds {', '.join(foreign[:3])}{more}, which the demo does not write (it "
            f"writes {REPORT_DIR}/, {SELECTION_DIR}/ and {SCORED_FILE}); refusing to replace it even with "
            "--overwrite. Pick a new folder."
        )
    if state == "hf_localnat" and not overwrite:
        raise LocalnatError(
            f"--output_dir {shown!r} exists and no earlier demo wrote it. Pass --overwrite to replace it, or pick "
            "a new name."
        )
    return folder


# ------------------------------------------------------------------------------------------------ text helpers


def _percent(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0%}"


def _points(share: float | None) -> str:
    """A difference of two shares in percentage points, signed: 0.1 -> '+10'."""
    return "n/a" if share is None or (isinstance(share, float) and math.isnan(share)) else f"{share * 100:+.0f}"


def side_by_side(
    tables: dict[str, pd.DataFrame], accuracy: dict[str, tuple[int, int]] | None = None, order_by: str | None = None
) -> str:
    """One row per teacher (in ``order_by``'s order, default local naturalness), one block per metric:
    ``rank  mean [95% CI]  P(top)``; ``accuracy`` maps a teacher to (correct, answered).

    Example:
        >>> t = pd.DataFrame({"rank": [1, 2], "teacher": ["a", "b"], "mean": [-0.5, -0.75],
        ...                   "ci_low": [-0.6, -0.9], "ci_high": [-0.4, -0.6], "p_top": [0.875, 0.125]})
        >>> print(side_by_side({"local_naturalness": t}, {"a": (3, 4), "b": (1, 4)}))
        teacher  accuracy    local_naturalness
        -----------------------------------------------------
        a        3/4  75%     1  -0.500 [-0.600,-0.400]   88%
        b        1/4  25%     2  -0.750 [-0.900,-0.600]   12%
    """
    names = list(tables)
    key = order_by if order_by in tables else ("local_naturalness" if "local_naturalness" in tables else names[0])
    order = list(tables[key]["teacher"])
    width = max(len(str(t)) for t in [*order, "teacher"]) + 2
    block = 36
    acc_width = 12
    header = f"{'teacher':<{width}}" + (f"{'accuracy':<{acc_width}}" if accuracy else "")
    header += "".join(f"{n:<{block}}" for n in names)
    lines = []
    indexed = {name: table.set_index("teacher") for name, table in tables.items()}
    for teacher in order:
        cells = []
        for name in names:
            if teacher not in indexed[name].index:
                cells.append("-".ljust(block))
                continue
            row = indexed[name].loc[teacher]
            top = f"{row['p_top']:>5.0%}" if "p_top" in row.index else ""
            cells.append(
                f"{int(row['rank']):>2}  {row['mean']:+.3f} [{row['ci_low']:+.3f},{row['ci_high']:+.3f}] {top}".ljust(
                    block
                )
            )
        acc = ""
        if accuracy:
            right, total = accuracy.get(teacher, (0, 0))
            acc = f"{right}/{total} {_percent(right / total if total else None):>4}".ljust(acc_width)
        lines.append((f"{str(teacher):<{width}}{acc}" + "".join(cells)).rstrip())
    return "\n".join([header.rstrip(), "-" * max(len(line) for line in [header.rstrip(), *lines]), *lines])


def winner_changes(winners: dict[str, dict[Any, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    """For each pair of metrics: (prompts whose picked response differs, prompts both picked for).

    Example:
        >>> winner_changes({"global": {"p1": "a", "p2": "b"}, "local": {"p1": "a", "p2": "c"}})
        {('global', 'local'): (1, 2)}
    """
    out = {}
    for a, b in combinations(winners, 2):
        common = winners[a].keys() & winners[b].keys()
        out[(a, b)] = (sum(winners[a][p] != winners[b][p] for p in common), len(common))
    return out


def sparkline(values: Sequence[float | None], low: float, high: float) -> str:
    """One block character per value, from ``low`` (▁) to ``high`` (█); ``·`` for a missing value.

    Example:
        >>> sparkline([-3.0, -2.0, None, -1.0], -3.0, -1.0)
        '▁▅·█'
    """
    span = high - low
    out = []
    for value in values:
        if value is None or not math.isfinite(value):
            out.append("·")
        else:
            level = 0 if span <= 0 else round((value - low) / span * (len(SPARKS) - 1))
            out.append(SPARKS[min(max(level, 0), len(SPARKS) - 1)])
    return "".join(out)


def first_line(text: str, limit: int = 100) -> str:
    """The first non-blank line of ``text``, cut to ``limit`` characters.

    Example:
        >>> first_line("\\n  To find $x$, we solve the equation step by step.\\nThen ...", limit=30)
        'To find $x$, we solve the equ…'
    """
    line = next((piece.strip() for piece in text.splitlines() if piece.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _steps(value: Any) -> list[float | None]:
    if value is None:
        return []
    return [None if v is None or not math.isfinite(float(v)) else float(v) for v in value]


def _profile(values: list[float | None], low: float, high: float) -> str:
    numbers = " ".join("  n/a" if v is None else f"{v:+.2f}" for v in values)
    return f"{sparkline(values, low, high)}  {numbers}"


# ------------------------------------------------------------------------------------------------ the demo


def _example(
    scored: datasets.Dataset, picks: dict[str, dict[Any, int]], prompts: list[Any]
) -> tuple[list[str], list[int]]:
    """Lines about the first prompt (pool order) where local and global pick different rows, and those rows."""
    glob, loc = picks["global_naturalness"], picks["local_naturalness"]
    prompt = next((p for p in prompts if p in glob and p in loc and glob[p] != loc[p]), None)
    if prompt is None:
        return ["\nLocal and global pick the same response for every prompt; no example to show."], []
    rows = [glob[prompt], loc[prompt]]
    steps = {i: _steps(scored[i]["step_logprobs"]) if "step_logprobs" in scored.column_names else [] for i in rows}
    known = [v for i in rows for v in steps[i] if v is not None]
    low, high = (min(known), max(known)) if known else (0.0, 0.0)
    lines = [
        f"\nExample: {prompt}, the first prompt (pool order) where local and global pick different responses.",
        f"  Prompt: {first_line(scored[rows[0]]['prompt'], 110)}",
    ]
    for by, i in zip(("global", "local"), rows, strict=True):
        row = scored[i]
        lines.append(
            f"  {by} picks {row['teacher']} (correct: {row['correct']}; global {row['global_naturalness']:+.3f}, "
            f"local {row['local_naturalness']:+.3f}, {row['num_response_tokens']} tokens)"
        )
        lines.append(f"    first line: {first_line(row['response'], 100)}")
        if steps[i]:
            scale = f"▁ {low:+.2f} .. █ {high:+.2f}"
            lines.append(f"    {len(steps[i])} steps, each one's mean log-prob in its local context ({scale}):")
            lines.append(f"      {_profile(steps[i], low, high)}")
    return lines, rows


def run_demo(args: DemoArguments, student: StudentArguments, scoring: ScoringConfig) -> Path:
    """Run the demo: score the embedded pool, print rankings, selections and an example, write the folder.

    Returns the folder written (``report/``, ``selection/``, ``scored.parquet``).

    Example:
        >>> from hf_localnat.cli import DemoArguments
        >>> from hf_localnat.metrics import ScoringConfig
        >>> from hf_localnat.student import StudentArguments
        >>> run_demo(DemoArguments(), StudentArguments(), ScoringConfig(metrics="global,local,rsr"))  # doctest: +SKIP
        PosixPath('localnat-demo')
    """
    started = time.perf_counter()
    folder = check_demo_output(args.output_dir, args.overwrite)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the demo's own bar (scoring) stays; datasets' per-step bars are noise here
    try:
        return _run(args, student, scoring, folder, started)
    finally:
        if bars:
            datasets.enable_progress_bars()


def _run(
    args: DemoArguments, student: StudentArguments, scoring: ScoringConfig, folder: Path, started: float
) -> Path:
    from .cli import build_scorer
    from .hub import push_selection
    from .report import build_report
    from .scorer import score_dataset
    from .selection import SelectionConfig, rank_teachers, select_responses, selection_accuracy

    scoring = dataclasses.replace(scoring, return_steps=True)  # the example and the report show step scores
    pool = load_rows(demo_pool_path())
    if args.limit_prompts is not None:
        keep = set(list(dict.fromkeys(pool["prompt_id"]))[: args.limit_prompts])
        pool = pool.filter(lambda row: row["prompt_id"] in keep)
    prompts = list(dict.fromkeys(pool["prompt_id"]))
    teachers = list(dict.fromkeys(pool["teacher"]))
    print(
        f"Demo pool: {len(pool)} responses to {len(prompts)} MATH level-5 problems from {len(teachers)} teachers "
        f"(ZeroEval outputs, Apache-2.0; {DEMO_SOURCE}, see the README beside it)."
    )
    scorer = build_scorer(student, scoring)
    print(
        f"Student: {scorer.source.student if scorer.source else 'in-memory'}; "
        f"metrics {', '.join(scorer.metrics)}; window {scoring.window}; splitter {scoring.splitter}"
    )
    scored = score_dataset(pool, scorer, chunk_rows=16)
    frame = scored.to_pandas()
    accuracy = {t: (int(g["correct"].sum()), len(g)) for t, g in frame.groupby("teacher", sort=False)}

    metrics = [c for c in ("global_naturalness", "local_naturalness", "rsr") if c in scored.column_names]
    metrics += [c for c in scored.column_names if c.startswith("local_naturalness@")]
    tables = {by: rank_teachers(scored, by=by) for by in metrics}
    print(
        f"\nTeacher ranking, best first by {SELECT_BY if SELECT_BY in tables else metrics[0]}: accuracy on these "
        f"{len(prompts)} prompts, then for each metric\nthe rank, the mean over prompts [bootstrap 95% CI] and P(top), "
        "the share of bootstrap resamples of the prompts in which the teacher ranks first (rsr: lower is better)."
    )
    print(side_by_side(tables, accuracy, SELECT_BY))

    index = {key: i for i, key in enumerate(zip(frame["prompt_id"], frame["teacher"], strict=True))}
    chosen = {by: select_responses(scored, by=by) for by in tables}  # one per prompt (the default k, group_by)
    picks = {  # metric -> prompt -> the scored row it picks
        by: {p: index[(p, t)] for p, t in zip(rows["prompt_id"], rows["teacher"], strict=True)}
        for by, rows in chosen.items()
    }
    print(
        f"\nOne response per prompt, picked by each metric: its accuracy [bootstrap 95% CI] over the {len(prompts)} "
        "prompts,\nthat of a random pick from the pool (expected), and that of the best possible pick (the prompts "
        "with a correct response)."
    )
    width = max(len(by) for by in tables)
    for by in tables:
        acc = selection_accuracy(scored, by=by)
        print(
            f"  {by:<{width}}  {_percent(acc['accuracy']):>4} [{_percent(acc['ci_low'])}, {_percent(acc['ci_high'])}]"
            f"   random {_percent(acc['random'])}   best possible {_percent(acc['oracle'])}"
            f"   vs random {_points(acc['accuracy'] - acc['random'])} points"
            f" [{_points(acc['gain_ci_low'])}, {_points(acc['gain_ci_high'])}]"
        )
    for by, rows in chosen.items():
        shares = Counter(rows["teacher"]).most_common()
        print(f"  {by:<{width}}  picks " + ", ".join(f"{t} {n}" for t, n in shares))

    changes = winner_changes(picks)
    if changes:
        print("\nPrompts whose pick changes between two metrics:")
        for (a, b), (changed, common) in changes.items():
            print(f"  {a} vs {b}: {changed} of {common}")
    example_rows: list[int] = []
    if "global_naturalness" in picks and "local_naturalness" in picks:
        lines, example_rows = _example(scored, picks, prompts)
        print("\n".join(lines))

    by = SELECT_BY if SELECT_BY in chosen else next(iter(chosen))
    with atomic_dir(folder) as tmp:
        write_rows(scored, tmp / SCORED_FILE)
        page = build_report(
            scored,
            tmp / REPORT_DIR,
            rows=example_rows or None,
            html_steps=bool(example_rows),
            progress=False,
            source=DEMO_SOURCE,
        )
        push_selection(
            chosen[by],
            to_dir=tmp / SELECTION_DIR,
            scored=scored,
            selection_config=SelectionConfig(by=by),
            source_dataset=DEMO_SOURCE,
        )
    print(
        f"\nWrote {folder}/: {REPORT_DIR}/{page.name} (the HTML report), {SELECTION_DIR}/ (one response per prompt "
        f"by {by}, {len(chosen[by])} rows, Hub-ready: datasets.load_dataset({str(folder / SELECTION_DIR)!r}), or "
        f"huggingface_hub.upload_folder(repo_id='USER/NAME', folder_path={str(folder / SELECTION_DIR)!r}, "
        f"repo_type='dataset')) and {SCORED_FILE} (all "
        f"{len(scored)} scored rows)."
    )
    print(f"Done in {time.perf_counter() - started:.0f} s.")
    return folder
