"""``hf-localnat demo``: the whole job on embedded defaults, in a few minutes on a laptop CPU.

Scores the embedded multi-teacher pool with the embedded SmolLM2 student, prints the teacher ranking
under global and local scoring side by side, selects one response per prompt by local naturalness,
and writes the selected dataset folder (``data/*.parquet`` + ``README.md``), ready to push.
"""

from __future__ import annotations

import importlib.resources
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .data_io import load_rows
from .outputs import check_output

if TYPE_CHECKING:
    from .cli import DemoArguments
    from .metrics import ScoringConfig
    from .student import StudentArguments

DEMO_POOL = "demo_pool.jsonl"


def demo_pool_path() -> Path:
    """Path of the embedded multi-teacher demo pool shipped inside the package."""
    return Path(str(importlib.resources.files("hf_localnat") / "data" / DEMO_POOL))


def side_by_side(tables: dict[str, pd.DataFrame], accuracy: dict[str, float] | None = None) -> str:
    """One row per teacher (in local-naturalness order), one ``rank  mean [95% CI]`` block per metric.

    Example:
        >>> print(side_by_side({"global_naturalness": t1, "local_naturalness": t2}))  # doctest: +SKIP
    """
    names = list(tables)
    order = list(tables["local_naturalness" if "local_naturalness" in tables else names[0]]["teacher"])
    width = max(len(str(t)) for t in order) + 2
    block = 28
    header = f"{'teacher':<{width}}" + ("accuracy  " if accuracy else "") + "".join(f"{n:<{block}}" for n in names)
    header = header.rstrip()
    lines = [header, "-" * len(header)]
    for teacher in order:
        cells = []
        for name in names:
            row = tables[name].set_index("teacher").loc[teacher]
            cells.append(
                f"{int(row['rank']):>2}  {row['mean']:+.3f} [{row['ci_low']:+.3f},{row['ci_high']:+.3f}]".ljust(block)
            )
        acc = f"{accuracy[teacher]:>7.0%}   " if accuracy else ""
        lines.append(f"{teacher:<{width}}{acc}" + "".join(cells).rstrip())
    return "\n".join(lines)


def run_demo(args: DemoArguments, student: StudentArguments, scoring: ScoringConfig) -> Path:
    """Run the demo and return the folder written."""
    from .cli import build_scorer
    from .hub import push_selection
    from .scorer import score_dataset
    from .selection import SelectionConfig, rank_teachers, select_responses

    started = time.perf_counter()
    folder = Path(args.output_dir)
    # Re-running the demo replaces its own earlier output (its card says hf_localnat), never an unrelated folder.
    readme = folder / "README.md"
    ours = readme.is_file() and "hf_localnat:" in readme.read_text(encoding="utf-8", errors="replace")
    overwrite = ours or args.overwrite
    check_output(folder, "selection", overwrite=overwrite, flag="--output_dir")
    pool = load_rows(demo_pool_path())
    if args.limit_prompts is not None:
        keep = set(list(dict.fromkeys(pool["prompt_id"]))[: args.limit_prompts])
        pool = pool.filter(lambda row: row["prompt_id"] in keep)
    print(
        f"Demo pool: {len(pool)} responses, {len(set(pool['prompt_id']))} prompts, "
        f"{len(set(pool['teacher']))} teachers ({demo_pool_path().name})"
    )
    scorer = build_scorer(student, scoring)
    print(
        f"Student: {scorer.source.student if scorer.source else 'in-memory'}; "
        f"metrics {', '.join(scorer.metrics)}; window {scoring.window}; splitter {scoring.splitter}"
    )
    scored = score_dataset(pool, scorer, chunk_rows=16)

    accuracy = (
        pool.to_pandas().groupby("teacher")["correct"].mean().to_dict() if "correct" in pool.column_names else None
    )
    tables = {
        column: rank_teachers(scored, by=column)
        for column in ("global_naturalness", "local_naturalness", "rsr")
        if column in scored.column_names
    }
    print("\nTeacher ranking, best first (mean score over prompts [bootstrap 95% CI]; rsr: lower is better):")
    print(side_by_side(tables, accuracy))

    chosen = {by: select_responses(scored, by=by) for by in tables}  # one per prompt (the default k, group_by)
    print("\nSelection (one response per prompt):")
    for by, rows in chosen.items():
        shares = Counter(rows["teacher"]).most_common()
        acc = f", {sum(rows['correct']) / len(rows):.0%} correct" if "correct" in rows.column_names else ""
        print(f"  by {by:<19} " + ", ".join(f"{t} {n}" for t, n in shares) + acc)
    if "global_naturalness" in chosen and "local_naturalness" in chosen:
        winner = {by: dict(zip(chosen[by]["prompt_id"], chosen[by]["teacher"], strict=True)) for by in chosen}
        common = winner["global_naturalness"].keys() & winner["local_naturalness"].keys()
        changed = sum(winner["global_naturalness"][p] != winner["local_naturalness"][p] for p in common)
        print(f"  {changed} of {len(common)} prompts change winner between global and local.")

    by = "local_naturalness" if "local_naturalness" in chosen else next(iter(chosen))
    push_selection(
        chosen[by],
        to_dir=folder,
        scored=scored,
        selection_config=SelectionConfig(by=by),
        source_dataset=f"hf_localnat/data/{DEMO_POOL} (embedded demo pool)",
        overwrite=overwrite,
    )
    print(
        f"\nWrote the selected dataset ({len(chosen[by])} rows) to {folder}/ "
        f"in {time.perf_counter() - started:.0f} s. Load it with datasets.load_dataset({str(folder)!r})."
    )
    return folder
