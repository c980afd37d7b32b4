#!/usr/bin/env python3
"""What each arm of an ``hf-localnat study`` folder trained on and how its answers were read.

Prints, from the folder alone: the pool teachers' accuracy on the prompts trained on, each arm's teacher shares,
how many prompts each pair of arms picks the same response for, and each evaluation's answer sources (marked,
unmarked, none) from its ``eval.json``. The figures of the study section of docs/findings.md.

Example:
    .venv/bin/python docs/study_picks.py /tmp/study60/study
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from itertools import combinations
from pathlib import Path

import datasets

from hf_localnat.data_io import load_rows
from hf_localnat.selection import correct_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="The study's --output_dir.")
    args = parser.parse_args()
    study = json.loads((args.study / "study.json").read_text())
    group_by = study["selection"]["group_by"]
    picks = {}
    for entry in study["arm_states"]:
        shards = sorted(str(p) for p in (Path(entry["folder"]) / "selection" / "data").glob("*.parquet"))
        selected = datasets.Dataset.from_parquet(shards)
        picks[entry["arm"]] = dict(zip(selected[group_by], selected["teacher"], strict=True))
        shares = Counter(selected["teacher"]).most_common()
        print(f"{entry['arm']}: " + ", ".join(f"{teacher} {n}" for teacher, n in shares))
    used = set(next(iter(picks.values())))
    pool = load_rows(study["pool"]).filter(lambda key: key in used, input_columns=group_by)
    right = correct_values(list(pool["correct"])) == 1.0
    for teacher in sorted(set(pool["teacher"])):
        mine = [bool(ok) for ok, t in zip(right, pool["teacher"], strict=True) if t == teacher]
        print(f"teacher {teacher}: {sum(mine)}/{len(mine)} correct on the {len(used)} prompts trained on")
    for a, b in combinations(picks, 2):
        same = sum(picks[a][p] == picks[b][p] for p in used)
        print(f"{a} vs {b}: same response on {same} of {len(used)} prompts")
    folders = [("untrained", args.study / "untrained")] + [(e["arm"], Path(e["folder"])) for e in study["arm_states"]]
    for name, folder in folders:
        metrics = json.loads((folder / "eval.json").read_text())["metrics"]
        print(
            f"{name}: {metrics['num_correct']}/{metrics['num_problems']} correct; answers marked "
            f"{metrics['num_marked_answer']}, bare {metrics['num_bare_answer']}, unmarked "
            f"{metrics['num_unmarked_answer']} ({metrics['num_correct_unmarked']} of them correct), none "
            f"{metrics['num_no_answer']}"
        )


if __name__ == "__main__":
    main()
