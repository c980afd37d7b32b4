"""Print the markdown tables of docs/findings.md from the report.json files `hf-localnat report` wrote.

.venv/bin/python docs/findings_tables.py docs/math_l5_200/report.json docs/processbench_math_200/report.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(value: float | None, digits: int = 3, sign: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def ranking_tables(report: dict) -> str:
    section = report["sections"]["ranking"]
    metrics = section["metrics"]
    accuracy = section.get("accuracy") or {}
    by_teacher: dict[str, dict[str, tuple[int, float]]] = {}
    for metric, table in metrics.items():
        for row in table["teachers"]:
            by_teacher.setdefault(row["teacher"], {})[metric] = (row["rank"], row["mean"])
    order = sorted(by_teacher, key=lambda t: -(accuracy.get(t) or {}).get("accuracy", 0.0))
    head = "| teacher | accuracy | " + " | ".join(f"{m} rank (mean)" for m in metrics) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(metrics)]
    for teacher in order:
        acc = (accuracy.get(teacher) or {}).get("accuracy")
        cells = [f"{by_teacher[teacher][m][0]} ({by_teacher[teacher][m][1]:.3f})" for m in metrics]
        lines.append(
            f"| {teacher} | {_f(acc, 1, False) if acc is None else f'{100 * acc:.1f}%'} | " + " | ".join(cells) + " |"
        )
    tau = ["", "| ranking | vs | Kendall tau-b | teachers |", "|---|---|---:|---:|"]
    tau += [f"| {r['a']} | {r['b']} | {_f(r['tau_b'])} | {r['num_teachers']} |" for r in section["kendall_tau"]]
    return "\n".join(lines + tau)


def length_table(report: dict) -> str:
    section = report["sections"]["length_bias"]
    lines = [
        "| metric | rho vs tokens, all rows | rho vs tokens, within prompts | rho vs steps, all rows | "
        "rho vs steps, within prompts |",
        "|---|---:|---:|---:|---:|",
    ]
    for metric, values in section["correlations"].items():
        tok, steps = values["num_response_tokens"], values["num_steps"]
        lines.append(
            f"| {metric} | {_f(tok['spearman_all'])} (n={tok['num_rows']}) | {_f(tok['spearman_within_prompts'])} "
            f"({tok['num_prompts']} prompts) | {_f(steps['spearman_all'])} | {_f(steps['spearman_within_prompts'])} |"
        )
    return "\n".join(lines)


def selection_table(report: dict) -> str:
    section = report["sections"]["selection"]
    lines = ["| selected by | accuracy of selection | top teachers (share) |", "|---|---:|---|"]
    for metric, values in section["metrics"].items():
        shares = sorted(values["teacher_shares"].items(), key=lambda kv: -kv[1])[:3]
        acc = values.get("accuracy")
        lines.append(
            f"| {metric} | {'n/a' if acc is None else f'{100 * acc:.1f}%'} | "
            + ", ".join(f"{t} {100 * s:.0f}%" for t, s in shares)
            + " |"
        )
    pool = (section.get("pool") or {}).get("accuracy")
    if pool is not None:
        lines.append(f"| (whole pool) | {100 * pool:.1f}% | |")
    lines += ["", "| metrics | prompts whose winner changes |", "|---|---:|"]
    lines += [
        f"| {r['a']} vs {r['b']} | {r['num_changed']} of {r['num_common_prompts']} |" for r in section["winner_changes"]
    ]
    return "\n".join(lines)


def step_label_table(report: dict) -> str:
    section = report["sections"]["step_labels"]
    if section["status"] != "ok":
        return f"(skipped: {section['reason']})"
    lines = ["| steps | mean local log-prob | steps counted |", "|---|---:|---:|"]
    for key in ("before", "at", "after"):
        lines.append(f"| {key} the first error | {_f(section[key]['mean'])} | {section[key]['num_steps']} |")
    lines += [
        "",
        f"AUROC of the negated step score for the first wrong step: **{section['auroc']:.3f}** "
        f"({section['num_positives']} first-error steps vs {section['num_negatives']} correct steps; "
        f"{section['num_rows_used']} of {section['num_rows']} solutions used).",
    ]
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    for path in paths:
        report = json.loads(Path(path).read_text())
        print(
            f"## {report['input']} ({report['num_rows']} rows, {report['num_prompts']} prompts, "
            f"{report['num_teachers']} teachers)\n"
        )
        # Teachers compete only where they answer the same prompts (not in ProcessBench: one solution a problem).
        if report["sections"]["ranking"]["status"] == "ok" and report["num_rows"] > report["num_prompts"]:
            print(ranking_tables(report) + "\n")
            print(selection_table(report) + "\n")
        if report["sections"]["length_bias"]["status"] == "ok":
            print(length_table(report) + "\n")
        if "step_labels" in report["sections"]:
            print(step_label_table(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
