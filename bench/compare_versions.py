"""Scores before and after a change: score the same rows with two checkouts of hf_localnat and compare them.

A refactor must leave the scores alone. This scores a fixed set of rows (the first 80 non-empty MATH-L5
responses under 2,500 characters, or synthetic text where ../shared is absent) with the tiny random Llama of the
tests, under three option sets, and prints the largest difference per column.

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old .venv/bin/python bench/compare_versions.py score /tmp/old.json
    .venv/bin/python bench/compare_versions.py score /tmp/new.json
    .venv/bin/python bench/compare_versions.py compare /tmp/old.json /tmp/new.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MATH_L5 = REPO.parent / "shared" / "data" / "multiteacher" / "zeroeval_math_l5.jsonl"
OPTION_SETS = {
    "default": dict(window=4),
    "options": dict(window=2, drop_first_token=True, min_step_chars=6, splitter="paragraph"),
    "fraction": dict(window=0.5, step_aggregate="token_mean"),
}
COLUMNS = ("global_naturalness", "local_naturalness", "rsr", "num_steps", "num_response_tokens")


def load_rows(limit: int = 80) -> list[dict]:
    if MATH_L5.exists():
        with MATH_L5.open() as f:
            rows = [json.loads(line) for line in f]
        return [r for r in rows if r.get("response") and r["response"].strip() and len(r["response"]) < 2500][:limit]
    steps = ["We add the numbers.", "Then we check: 2+2=4.", "So the answer is 4."]
    return [{"prompt": f"What is {i}+{i}?", "response": "\n\n".join(steps[: 1 + i % 3])} for i in range(limit)]


def score(path: str) -> None:
    sys.path.insert(1, str(REPO / "tests"))
    from conftest import build_model, build_tokenizer

    import hf_localnat

    print(f"hf_localnat from {Path(hf_localnat.__file__).parent}")
    rows = load_rows()
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), seed=3)
    out = {}
    for name, options in OPTION_SETS.items():
        scorer = hf_localnat.NaturalnessScorer(model, tokenizer, metrics=("global", "local", "rsr"), **options)
        out[name] = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    Path(path).write_text(json.dumps(out))


def compare(old_path: str, new_path: str) -> int:
    old, new = json.loads(Path(old_path).read_text()), json.loads(Path(new_path).read_text())
    worst = 0.0
    print("| options | column | rows | None differs | max abs diff |\n|---|---|---:|---:|---:|")
    for name in OPTION_SETS:
        for column in COLUMNS:
            a, b = old[name][column], new[name][column]
            nones = sum((x is None) != (y is None) for x, y in zip(a, b, strict=True))
            diff = max((abs(x - y) for x, y in zip(a, b, strict=True) if x is not None and y is not None), default=0.0)
            worst = max(worst, diff)
            print(f"| {name} | {column} | {len(a)} | {nones} | {diff:.2e} |")
    print(f"largest difference: {worst:.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("score", help="Score the rows with the hf_localnat on the path.").add_argument("output")
    both = commands.add_parser("compare", help="Compare two score files.")
    both.add_argument("old")
    both.add_argument("new")
    args = parser.parse_args(argv)
    if args.command == "score":
        score(args.output)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    raise SystemExit(main())
