"""build_report / run_report and the report's statistics, on small hand-made scored datasets (no model)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from hf_localnat.errors import LocalnatError
from hf_localnat.report import (
    REPORT_HTML,
    REPORT_JSON,
    ReportArguments,
    auroc,
    average_ranks,
    build_report,
    kendall_tau_b,
    parse_rows,
    run_report,
    spearman,
    step_label_stats,
    within_group_spearman,
)

N_BOOT = 100
TEACHERS = ["a", "b", "c"]
# Rows = prompts p0..p5, columns = teachers a, b, c.
LOCAL = [  # higher is better; means a -0.55 > b -0.95 > c -1.2667; winners a a b a c a
    [-0.5, -1.0, -1.5],
    [-0.6, -0.9, -1.4],
    [-0.7, -0.5, -1.6],
    [-0.4, -1.1, -1.3],
    [-0.5, -1.2, -0.3],
    [-0.6, -1.0, -1.5],
]
GLOBAL = [  # higher is better; means c > b > a (the reverse of local); winners c c c a b c
    [-2.0, -1.5, -1.0],
    [-2.1, -1.4, -1.1],
    [-1.9, -1.6, -1.2],
    [-0.5, -1.5, -1.0],
    [-2.0, -1.0, -1.3],
    [-2.2, -1.5, -0.9],
]
RSR = [  # LOWER is better; means a 1.35 < b 2.033 < c 2.667: same order as local once oriented; winners a a a c a b
    [1.0, 2.0, 3.0],
    [1.2, 2.1, 3.1],
    [1.1, 1.9, 2.9],
    [1.3, 2.2, 1.0],
    [1.0, 2.0, 3.0],
    [2.5, 2.0, 3.0],
]
CORRECT = [  # a: 6/6; b: 2/4 (two unknown); c: 3/6
    [True, True, True],
    [True, False, False],
    [True, True, True],
    [True, False, False],
    [True, None, True],
    [True, None, False],
]


def local_rank(p: int, t: int) -> int:
    """0 = best local score within prompt p."""
    return sorted(LOCAL[p], reverse=True).index(LOCAL[p][t])


def pool_rows() -> list[dict]:
    rows = []
    for p in range(6):
        for t, teacher in enumerate(TEACHERS):
            rank = local_rank(p, t)
            steps = 3 if p == 5 else 2 + rank  # fewer steps for better local; p5 constant (left out within)
            pieces = [f"Step {j} of <{teacher}> & co." for j in range(steps)]
            text = " ".join(pieces)
            spans, start = [], 0
            for j, piece in enumerate(pieces):
                end = start + len(piece) + (1 if j < steps - 1 else 0)
                spans.append([start, end])
                start = end
            offsets = [0.1 * (j - (steps - 1) / 2) for j in range(steps)]
            rows.append(
                {
                    "prompt_id": f"p{p}",
                    "teacher": teacher,
                    "response": text,
                    "global_naturalness": GLOBAL[p][t],
                    "local_naturalness": LOCAL[p][t],
                    "rsr": RSR[p][t],
                    "num_response_tokens": 100 * (3 - rank) + 10 + p,  # more tokens for better local
                    "num_steps": steps,
                    "step_spans": spans,
                    "step_logprobs": [LOCAL[p][t] + o for o in offsets],
                    "correct": CORRECT[p][t],
                }
            )
    return rows


PROVENANCE = {"hf_localnat": {"scorer": {"window": 4, "metrics": ["global", "local", "rsr"]}, "student": "tiny-st"}}


@pytest.fixture(scope="module")
def pool() -> datasets.Dataset:
    info = datasets.DatasetInfo(description=json.dumps(PROVENANCE))
    return datasets.Dataset.from_list(pool_rows(), info=info)


@pytest.fixture(scope="module")
def full_report(pool, tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("full") / "report"
    path = build_report(pool, out, html_steps=True, n_boot=N_BOOT, progress=False, source="pool.jsonl")
    return out, json.loads((out / REPORT_JSON).read_text()), path.read_text()


# Step-labelled rows (ProcessBench-like): label = index of the first wrong step, -1 = all correct.
PB_ROWS = [
    {"label": 1, "step_logprobs": [-1.0, -3.0, -2.0], "steps": ["s0", "s1", "s2"], "num_steps": 3},
    {"label": -1, "step_logprobs": [-1.0, -2.0], "steps": ["s0", "s1"], "num_steps": 2},
    {"label": 0, "step_logprobs": [-2.0, -0.5, -4.0, -1.0], "steps": ["s0", "s1", "s2", "s3"], "num_steps": 4},
    {"label": 2, "step_logprobs": [-0.5, -1.5, -1.5, -0.2], "steps": ["s0", "s1", "s2", "s3"], "num_steps": 4},
    {"label": 1, "step_logprobs": [-1.0, -1.0], "steps": ["s0", "s1", "s2"], "num_steps": 2},  # count mismatch
    {"label": -1, "step_logprobs": None, "steps": ["s0"], "num_steps": 0},  # no step scores
    {"label": 5, "step_logprobs": [-1.0, -1.0], "steps": ["s0", "s1"], "num_steps": 2},  # label out of range
]


@pytest.fixture(scope="module")
def processbench_report(tmp_path_factory) -> tuple[Path, dict, str]:
    rows = [
        {
            "id": f"pb-{i}",
            "local_naturalness": None if r["step_logprobs"] is None else float(np.mean(r["step_logprobs"])),
            **r,
        }
        for i, r in enumerate(PB_ROWS)
    ]
    out = tmp_path_factory.mktemp("pb") / "report"
    path = build_report(datasets.Dataset.from_list(rows), out, n_boot=N_BOOT, progress=False)
    return out, json.loads((out / REPORT_JSON).read_text()), path.read_text()


def images_of(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def assert_images_ok(folder: Path, page: str, report: dict) -> None:
    names = images_of(page)
    for name in names:
        data = (folder / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
    listed = [f for s in report["sections"].values() for f in s["figures"]]
    assert sorted(names) == sorted(listed) == sorted(p.name for p in folder.glob("*.png"))


# ----------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------


def test_average_ranks_ties():
    assert average_ranks([10.0, 30.0, 20.0, 30.0]).tolist() == [1.0, 3.5, 2.0, 3.5]
    assert average_ranks([5, 5, 5]).tolist() == [2.0, 2.0, 2.0]
    assert average_ranks([]).tolist() == []


def test_kendall_tau_b_known_cases():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # One tie in x: 5 concordant pairs, 0 discordant, 6 pairs, 1 tied in x -> 5 / sqrt(5 * 6).
    assert kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(5 / math.sqrt(30))
    # Ties in y: 2 concordant, 1 tied in y -> 2 / sqrt(3 * 2).
    assert kendall_tau_b([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / math.sqrt(6))
    # 1 concordant, 1 discordant, 2 ties in x, 2 in y -> 0.
    assert kendall_tau_b([1, 1, 2, 2], [1, 2, 1, 2]) == pytest.approx(0.0)
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) is None  # constant
    assert kendall_tau_b([1.0], [2.0]) is None
    assert kendall_tau_b([1, 2, np.nan, 3], [1, 2, 5, 3]) == pytest.approx(1.0)  # NaN pair dropped


def test_spearman_known_cases():
    assert spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)  # 1 - 6 * 6 / (3 * 8)
    # Ties: ranks x = 1, 2.5, 2.5, 4 -> r = 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 10, 100, 1000], [-5, -4, -3, -2]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, np.nan], [2, 1, 0]) == pytest.approx(-1.0)


def test_within_group_spearman_counts_only_valid_groups():
    groups = ["a"] * 3 + ["b"] * 3 + ["c"] * 2 + ["d"] * 3
    x = [1, 2, 3, 1, 2, 3, 1, 2, 1, 2, 3]
    y = [1, 2, 3, 3, 1, 2, 5, 6, 7, 7, 7]  # a: +1, b: -0.5, c: too small, d: constant y
    rho, count = within_group_spearman(groups, x, y)
    assert (rho, count) == (pytest.approx(0.25), 2)
    assert within_group_spearman(["a", "a"], [1, 2], [1, 2]) == (None, 0)


def test_auroc_mann_whitney_with_ties():
    assert auroc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(3.5 / 4)  # 3>1, 3>2, 2>1, 2=2 (1/2)
    assert auroc([1.0, 1.0], [1.0, 1.0]) == pytest.approx(0.5)
    assert auroc([2.0], [1.0]) == 1.0 and auroc([1.0], [2.0]) == 0.0
    assert auroc([], [1.0]) is None and auroc([1.0], [np.nan]) is None


def test_step_label_stats_by_hand():
    stats = step_label_stats(
        [r["step_logprobs"] for r in PB_ROWS],
        [r["label"] for r in PB_ROWS],
        num_steps=[r["num_steps"] for r in PB_ROWS],
        steps=[r["steps"] for r in PB_ROWS],
    )
    check_step_label_numbers(stats)


def check_step_label_numbers(stats: dict) -> None:
    # Used rows: 0 (label 1), 1 (all correct), 2 (label 0), 3 (label 2).
    assert stats["num_rows"] == 7 and stats["num_rows_used"] == 4
    assert stats["num_rows_with_error"] == 3 and stats["num_rows_all_correct"] == 1
    assert stats["excluded"] == {"bad_label": 0, "no_step_scores": 1, "step_count_mismatch": 1, "label_out_of_range": 1}
    assert stats["before"]["mean"] == pytest.approx(-1.0) and stats["before"]["num_steps"] == 3  # -1, -.5, -1.5
    assert stats["at"]["mean"] == pytest.approx(-6.5 / 3) and stats["at"]["num_steps"] == 3  # -3, -2, -1.5
    assert stats["after"]["mean"] == pytest.approx(-7.7 / 5) and stats["after"]["num_steps"] == 5
    # Negated scores. Positives 3, 2, 1.5; negatives 1, .5, 1.5 (before) + 1, 2 (row 1):
    # 3 beats all 5; 2 beats 4 and ties 1; 1.5 beats 3, ties 1, loses 1 -> (5 + 4.5 + 3.5) / 15.
    assert stats["num_positives"] == 3 and stats["num_negatives"] == 5
    assert stats["auroc"] == pytest.approx(13 / 15)
    relative = {r["offset"]: (r["mean"], r["num_steps"]) for r in stats["relative"]}
    assert relative[-3] == (None, 0)
    assert relative[-2] == (pytest.approx(-0.5), 1)
    assert relative[-1] == (pytest.approx(-1.25), 2)
    assert relative[0] == (pytest.approx(-6.5 / 3), 3)
    assert relative[1] == (pytest.approx(-0.9), 3)
    assert relative[2] == (pytest.approx(-4.0), 1) and relative[3] == (pytest.approx(-1.0), 1)


def test_step_label_stats_text_labels_and_bad_labels():
    stats = step_label_stats([[-1.0, -3.0], [-1.0], [-2.0]], ["1", "x", None])  # ProcessBench ships text
    assert stats["num_rows_used"] == 1 and stats["excluded"]["bad_label"] == 2
    assert stats["at"]["mean"] == -3.0 and stats["auroc"] == 1.0


# ----------------------------------------------------------------------------------------------------------
# The full report
# ----------------------------------------------------------------------------------------------------------


def test_report_files_and_images(full_report):
    folder, report, page = full_report
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".png")) == [REPORT_HTML, REPORT_JSON]
    status = {key: s["status"] for key, s in report["sections"].items()}
    assert status == dict.fromkeys(["ranking", "accuracy", "length_bias", "step_profile", "selection"], "ok") | {
        "step_labels": "skipped"  # the pool has no step labels
    }
    assert_images_ok(folder, page, report)
    assert not list(folder.parent.glob(".report.*"))  # no temporary sibling left behind


def test_report_header(full_report):
    _, report, page = full_report
    assert (report["num_rows"], report["num_prompts"], report["num_teachers"]) == (18, 6, 3)
    assert report["metrics"] == ["global_naturalness", "local_naturalness", "rsr"]
    assert report["input"] == "pool.jsonl" and report["provenance"]["student"] == "tiny-st"
    assert "pool.jsonl" in page and "tiny-st" in page and "18 rows, 6 prompts" in page


def test_every_metric_column_present_is_compared(pool, tmp_path):
    # aslec_drop: higher is better, so a copy of local_naturalness ranks the teachers as local does.
    with_aslec = pool.add_column("aslec_drop", pool["local_naturalness"])
    out = tmp_path / "report"
    build_report(with_aslec, out, n_boot=N_BOOT, progress=False, source="pool.jsonl")
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["metrics"] == ["global_naturalness", "local_naturalness", "rsr", "aslec_drop"]
    ranking = report["sections"]["ranking"]["metrics"]["aslec_drop"]
    assert ranking["higher_is_better"] is True
    local = report["sections"]["ranking"]["metrics"]["local_naturalness"]
    assert [r["teacher"] for r in ranking["teachers"]] == [r["teacher"] for r in local["teachers"]]


def test_ranking_numbers(full_report):
    _, report, page = full_report
    ranking = report["sections"]["ranking"]
    assert ranking["order"] == ["a", "b", "c"]  # local, best first
    means = {m: {r["teacher"]: r["mean"] for r in ranking["metrics"][m]["teachers"]} for m in ranking["metrics"]}
    assert means["local_naturalness"] == pytest.approx({"a": -3.3 / 6, "b": -5.7 / 6, "c": -7.6 / 6})
    assert means["rsr"] == pytest.approx({"a": 8.1 / 6, "b": 12.2 / 6, "c": 16.0 / 6})
    assert [r["teacher"] for r in ranking["metrics"]["rsr"]["teachers"]] == ["a", "b", "c"]  # lower is better
    assert ranking["metrics"]["rsr"]["higher_is_better"] is False
    for record in ranking["metrics"]["global_naturalness"]["teachers"]:
        assert record["ci_low"] <= record["mean"] <= record["ci_high"]
    accuracy = {t: (a["accuracy"], a["num_known"]) for t, a in ranking["accuracy"].items()}
    assert accuracy == {"a": (1.0, 6), "b": (0.5, 4), "c": (0.5, 6)}
    for t in ranking["kendall_tau"]:  # every teacher-level tau has its bootstrap CI
        assert -1.0 <= t["ci_low"] <= t["ci_high"] <= 1.0
    taus = {(t["a"], t["b"]): t["tau_b"] for t in ranking["kendall_tau"]}
    tie = 2 / math.sqrt(6)  # a > b = c in accuracy: 2 concordant pairs, one tie
    assert taus == {
        ("global_naturalness", "local_naturalness"): pytest.approx(-1.0),
        ("global_naturalness", "rsr"): pytest.approx(-1.0),
        ("global_naturalness", "accuracy"): pytest.approx(-tie),
        ("local_naturalness", "rsr"): pytest.approx(1.0),  # rsr oriented: same order as local
        ("local_naturalness", "accuracy"): pytest.approx(tie),
        ("rsr", "accuracy"): pytest.approx(tie),
    }
    assert "+0.816" in page and "-0.550" in page


def ref_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b by counting pairs (None when undefined)."""
    concordant = discordant = tied_x = tied_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            tied_x += dx == 0
            tied_y += dy == 0
            concordant += dx * dy > 0
            discordant += dx * dy < 0
    total = n * (n - 1) // 2
    if n < 2 or tied_x == total or tied_y == total:
        return None
    return (concordant - discordant) / math.sqrt((total - tied_x) * (total - tied_y))


def prompt_draws(n_prompts: int, seed: int = 0) -> np.ndarray:
    """The report's resamples of its prompts (one chunk at these sizes): default_rng(seed).integers."""
    return np.random.default_rng(seed).integers(0, n_prompts, size=(N_BOOT, n_prompts))


def interval(samples: list[float]) -> tuple[float, float]:
    low, high = np.percentile(np.array(samples), [2.5, 97.5])
    return float(low), float(high)


def test_ranking_p_top_and_tau_ci_against_loops(full_report):
    _, report, page = full_report
    ranking = report["sections"]["ranking"]
    wins = dict.fromkeys(TEACHERS, 0.0)
    for drawn in prompt_draws(6):  # P(top) by local: every teacher answered every prompt
        means = {t: sum(LOCAL[p][i] for p in drawn) / 6 for i, t in enumerate(TEACHERS)}
        best = max(means.values())
        winners = [t for t, v in means.items() if abs(v - best) <= 1e-12]
        for t in winners:
            wins[t] += 1 / len(winners)
    assert {t: ranking["p_top"][t]["local_naturalness"] for t in TEACHERS} == pytest.approx(
        {t: w / N_BOOT for t, w in wins.items()}
    )
    for metric in ranking["metrics"]:
        assert sum(ranking["p_top"][t][metric] for t in TEACHERS) == pytest.approx(1.0)
        assert {r["teacher"]: r["p_top"] for r in ranking["metrics"][metric]["teachers"]} == {
            t: ranking["p_top"][t][metric] for t in TEACHERS
        }
    assert "P(top)" in page

    # Teacher-level tau of the rsr ranking (negated: lower is better) with teacher accuracy, prompts resampled.
    taus = []
    for drawn in prompt_draws(6):
        good, accuracy = [], []
        for i in range(3):
            known = [CORRECT[p][i] for p in drawn if CORRECT[p][i] is not None]
            if known:
                good.append(-sum(RSR[p][i] for p in drawn) / 6)
                accuracy.append(sum(known) / len(known))
        tau = ref_tau_b(good, accuracy)
        if tau is not None:
            taus.append(tau)
    entry = next(t for t in ranking["kendall_tau"] if (t["a"], t["b"]) == ("rsr", "accuracy"))
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(interval(taus))


def test_accuracy_section_numbers(full_report):
    _, report, page = full_report
    section = report["sections"]["accuracy"]
    scores = {"global_naturalness": GLOBAL, "local_naturalness": LOCAL, "rsr": [[-v for v in row] for row in RSR]}
    assert list(section["row_tau"]) == list(scores)
    for metric, table in scores.items():  # oriented: rsr negated
        cells = [(p, t) for p in range(6) for t in range(3) if CORRECT[p][t] is not None]
        entry = section["row_tau"][metric]
        want = ref_tau_b([table[p][t] for p, t in cells], [float(CORRECT[p][t]) for p, t in cells])
        assert entry["tau_b"] == pytest.approx(want) and (entry["num_rows"], entry["num_prompts"]) == (16, 6)
        taus = []
        for drawn in prompt_draws(6):  # every row of a drawn prompt comes along
            rows = [(p, t) for p in drawn for t in range(3) if CORRECT[p][t] is not None]
            tau = ref_tau_b([table[p][t] for p, t in rows], [float(CORRECT[p][t]) for p, t in rows])
            if tau is not None:
                taus.append(tau)
        assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(interval(taus))

        picks, shares, anys = [], [], []  # one pick per prompt among the rows with a known correct
        for p in range(6):
            known = [t for t in range(3) if CORRECT[p][t] is not None]
            best = max(known, key=lambda t: (table[p][t], -t))
            picks.append(float(CORRECT[p][best]))
            shares.append(sum(CORRECT[p][t] for t in known) / len(known))
            anys.append(float(any(CORRECT[p][t] for t in known)))
        chosen = section["selection_accuracy"][metric]
        assert (chosen["accuracy"], chosen["random"], chosen["oracle"]) == pytest.approx(
            (sum(picks) / 6, sum(shares) / 6, sum(anys) / 6)
        )
        assert (chosen["num_prompts"], chosen["num_rows"]) == (6, 16)
        draws = prompt_draws(6)
        assert (chosen["ci_low"], chosen["ci_high"]) == pytest.approx(
            interval([sum(picks[i] for i in drawn) / 6 for drawn in draws])
        )
        assert (chosen["gain_ci_low"], chosen["gain_ci_high"]) == pytest.approx(
            interval([sum(picks[i] - shares[i] for i in drawn) / 6 for drawn in draws])
        )
    assert section["selection_accuracy"]["local_naturalness"]["accuracy"] == 1.0  # local picks a correct one each time
    assert "Selection accuracy" in page and "gain over random" in page


def test_every_metric_family_is_compared(pool, tmp_path, monkeypatch):
    from hf_localnat import metrics

    if "casl" not in metrics.METRIC_COLUMNS.values():
        monkeypatch.setitem(metrics.METRIC_COLUMNS, "casl", "casl")
    rows = pool_rows()
    surprisal = {}
    for i, row in enumerate(rows):
        p, t = divmod(i, 3)
        surprisal[p, t] = 1.0 + 0.3 * ((p + 2 * t) % 4)
        row["rsr_mean_surprisal"] = surprisal[p, t]
        row["rsr_mean_rank"] = RSR[p][t] * surprisal[p, t]  # rsr = rank / surprisal per row, as the scorer writes
        row["local_naturalness@2"] = GLOBAL[p][t]
        row["local_naturalness@8"] = LOCAL[p][t] - 0.1
        row["casl"] = -RSR[p][t]  # higher is better: the same order as rsr
    out = tmp_path / "report"
    path = build_report(datasets.Dataset.from_list(rows), out, n_boot=N_BOOT, progress=False)
    report, page = json.loads((out / REPORT_JSON).read_text()), path.read_text()
    metrics_present = [
        "global_naturalness", "local_naturalness", "local_naturalness@2", "local_naturalness@8", "rsr", "casl",
    ]  # fmt: skip
    assert report["metrics"] == metrics_present
    sections = report["sections"]
    assert all(s["status"] == "ok" for k, s in sections.items() if k != "step_labels")
    ranking = sections["ranking"]
    assert list(ranking["metrics"]) == metrics_present
    assert ranking["metrics"]["casl"]["higher_is_better"] is True
    assert ranking["metrics"]["local_naturalness@2"]["higher_is_better"] is True
    # rsr: the RSR authors' teacher score, mean rank / mean surprisal, not the mean of the per-row ratios.
    assert ranking["metrics"]["rsr"]["aggregate"] == "ratio_of_means"
    want = {
        t: sum(RSR[p][i] * surprisal[p, i] for p in range(6)) / sum(surprisal[p, i] for p in range(6))
        for i, t in enumerate(TEACHERS)
    }
    assert {r["teacher"]: r["mean"] for r in ranking["metrics"]["rsr"]["teachers"]} == pytest.approx(want)
    assert want["a"] != pytest.approx(8.1 / 6)  # the mean of the ratios differs
    assert [r["teacher"] for r in ranking["metrics"]["local_naturalness@8"]["teachers"]] == ["a", "b", "c"]
    assert [r["teacher"] for r in ranking["metrics"]["casl"]["teachers"]] == ["a", "b", "c"]  # -rsr per row
    for metric in metrics_present:
        assert sum(ranking["p_top"][t][metric] for t in TEACHERS) == pytest.approx(1.0)
        assert metric in sections["accuracy"]["row_tau"] and metric in sections["accuracy"]["selection_accuracy"]
        assert metric in sections["length_bias"]["correlations"] and metric in sections["selection"]["metrics"]
    pairs = {(t["a"], t["b"]) for t in ranking["kendall_tau"]}
    assert ("local_naturalness@2", "casl") in pairs and ("casl", "accuracy") in pairs
    same = next(t for t in ranking["kendall_tau"] if (t["a"], t["b"]) == ("global_naturalness", "local_naturalness@2"))
    assert same["tau_b"] == pytest.approx(1.0) and same["ci_low"] == pytest.approx(1.0)  # the same values
    assert sections["accuracy"]["row_tau"]["local_naturalness@2"]["tau_b"] == pytest.approx(
        sections["accuracy"]["row_tau"]["global_naturalness"]["tau_b"]  # the same values
    )
    for name in ("rsr_mean_rank", "rsr_mean_surprisal"):
        assert name not in report["metrics"]
    assert "local_naturalness@2" in page and "casl" in page and "mean rank (capped at 100)" in page
    assert_images_ok(out, page, report)

    # The other aggregate, asked for: the mean over prompts of the per-row ratios.
    other = tmp_path / "other"
    build_report(datasets.Dataset.from_list(rows), other, n_boot=N_BOOT, progress=False, rsr_aggregate="mean_of_ratios")
    ranking = json.loads((other / REPORT_JSON).read_text())["sections"]["ranking"]
    assert ranking["metrics"]["rsr"]["aggregate"] == "mean_of_ratios"
    assert {r["teacher"]: r["mean"] for r in ranking["metrics"]["rsr"]["teachers"]} == pytest.approx(
        {t: sum(RSR[p][i] for p in range(6)) / 6 for i, t in enumerate(TEACHERS)}
    )
    with pytest.raises(LocalnatError, match="rsr_aggregate"):
        build_report(datasets.Dataset.from_list(rows), tmp_path / "bad", progress=False, rsr_aggregate="pooled")
    assert not (tmp_path / "bad").exists()


def test_length_bias_numbers(full_report, pool):
    _, report, _ = full_report
    bias = report["sections"]["length_bias"]["correlations"]
    frame = pool.select_columns(["global_naturalness", "local_naturalness", "rsr", "num_response_tokens", "num_steps"])
    expected = frame.to_pandas().corr(method="spearman")  # pandas ranks without scipy for DataFrame.corr
    for metric in ("global_naturalness", "local_naturalness", "rsr"):
        for length in ("num_response_tokens", "num_steps"):
            assert bias[metric][length]["spearman_all"] == pytest.approx(expected.loc[metric, length])
            assert bias[metric][length]["num_rows"] == 18
    local = bias["local_naturalness"]
    # Tokens follow local within every prompt; steps go against it, and p5 (constant steps) is left out.
    assert (local["num_response_tokens"]["spearman_within_prompts"], local["num_response_tokens"]["num_prompts"]) == (
        pytest.approx(1.0),
        6,
    )
    assert (local["num_steps"]["spearman_within_prompts"], local["num_steps"]["num_prompts"]) == (
        pytest.approx(-1.0),
        5,
    )


def test_step_profile_auto_rows_and_coloured_text(full_report):
    _, report, page = full_report
    profile = report["sections"]["step_profile"]
    # p2 has the largest local spread (-0.5 .. -1.6): rows 7 (teacher b, best) and 8 (c, worst).
    assert [r["row"] for r in profile["rows"]] == [7, 8]
    assert profile["rows"][0]["step_logprobs"] == pytest.approx([-0.55, -0.45])
    assert profile["rows"][1]["step_logprobs"] == pytest.approx([-1.75, -1.65, -1.55, -1.45])
    assert "Step 0 of &lt;b&gt; &amp; co." in page and "<c>" not in page  # escaped
    assert page.count('title="step ') == 6 and 'class="legend"' in page


def test_selection_numbers(full_report):
    _, report, _ = full_report
    selection = report["sections"]["selection"]
    counts = {m: e["teacher_counts"] for m, e in selection["metrics"].items()}
    assert counts == {
        "global_naturalness": {"a": 1, "b": 1, "c": 4},
        "local_naturalness": {"a": 4, "b": 1, "c": 1},
        "rsr": {"a": 4, "b": 1, "c": 1},
    }
    assert selection["metrics"]["local_naturalness"]["teacher_shares"]["a"] == pytest.approx(4 / 6)
    accuracy = {m: (e["accuracy"], e["num_known_correct"]) for m, e in selection["metrics"].items()}
    assert accuracy == {
        "global_naturalness": (pytest.approx(3 / 5), 5),
        "local_naturalness": (1.0, 6),
        "rsr": (pytest.approx(4 / 5), 5),
    }
    changes = {(c["a"], c["b"]): (c["num_changed"], c["num_common_prompts"]) for c in selection["winner_changes"]}
    assert changes == {
        ("global_naturalness", "local_naturalness"): (5, 6),
        ("global_naturalness", "rsr"): (6, 6),
        ("local_naturalness", "rsr"): (4, 6),
    }
    assert selection["pool"] == {"accuracy": pytest.approx(11 / 16), "num_known_correct": 16}


def test_step_labels_section(processbench_report):
    folder, report, page = processbench_report
    sections = report["sections"]
    assert sections["step_labels"]["status"] == "ok" and sections["step_labels"]["checked_step_count"] is True
    check_step_label_numbers(sections["step_labels"])
    assert "AUROC = 0.867" in page
    # No teacher / prompt_id columns: ranking and selection are skipped, saying why.
    for key in ("ranking", "selection"):
        assert sections[key]["status"] == "skipped" and "'teacher'" in sections[key]["reason"]
    assert sections["step_profile"]["status"] == "ok"
    assert [r["row"] for r in sections["step_profile"]["rows"]] == [3, 0]  # best and worst local overall
    assert_images_ok(folder, page, report)


def test_one_response_per_prompt(tmp_path, pool, full_report):
    # ProcessBench-like: each generator answered different problems, so nothing meets head to head.
    rows = [{"prompt_id": f"q{i}", "teacher": "ab"[i % 2], "local_naturalness": -1.0 - 0.1 * i} for i in range(6)]
    build_report(datasets.Dataset.from_list(rows), tmp_path / "r", n_boot=N_BOOT, progress=False)
    sections = json.loads((tmp_path / "r" / REPORT_JSON).read_text())["sections"]
    page = (tmp_path / "r" / REPORT_HTML).read_text()
    assert sections["ranking"]["status"] == "ok" and sections["ranking"]["num_shared_prompts"] == 0
    assert "No prompt was answered by more than one teacher" in page
    assert sections["selection"]["status"] == "skipped" and "one response" in sections["selection"]["reason"]
    # The multi-teacher pool: every prompt with two or more teachers counts, and the note is absent.
    frame = pd.DataFrame({"prompt_id": pool["prompt_id"], "teacher": pool["teacher"]})
    shared = int((frame.groupby("prompt_id")["teacher"].nunique() > 1).sum())
    _, report, full_page = full_report
    assert shared > 0 and report["sections"]["ranking"]["num_shared_prompts"] == shared
    assert "No prompt was answered by more than one teacher" not in full_page


def test_missing_step_columns_skip_cleanly(pool, tmp_path):
    plain = pool.remove_columns(["step_spans", "step_logprobs", "correct"])
    path = build_report(plain, tmp_path / "r", n_boot=N_BOOT, progress=False)
    report = json.loads((tmp_path / "r" / REPORT_JSON).read_text())
    page = path.read_text()
    status = {k: s["status"] for k, s in report["sections"].items()}
    assert status == {
        "ranking": "ok",
        "accuracy": "skipped",  # no correct column
        "length_bias": "ok",
        "step_profile": "skipped",
        "step_labels": "skipped",
        "selection": "ok",
    }
    assert "step_logprobs" in report["sections"]["step_profile"]["reason"]
    assert "label" in report["sections"]["step_labels"]["reason"]
    assert page.count("Skipped: ") == 3 and "--return_steps" in page
    assert "no correct column" in report["sections"]["accuracy"]["reason"]
    assert report["sections"]["ranking"]["accuracy"] is None
    assert all(t["b"] != "accuracy" for t in report["sections"]["ranking"]["kendall_tau"])
    assert_images_ok(tmp_path / "r", page, report)


def test_page_escapes_user_text(tmp_path):
    # The template autoescapes: teacher names and the source are text, never markup.
    evil = "<script>alert('x')</script>"
    rows = [
        {"prompt_id": f"p{i % 3}", "teacher": [evil, 'b"q'][i % 2], "local_naturalness": -1.0 - 0.1 * i}
        for i in range(12)
    ]
    path = build_report(datasets.Dataset.from_list(rows), tmp_path / "r", n_boot=N_BOOT, progress=False, source=evil)
    page = path.read_text()
    assert "<script>" not in page and page.count("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") >= 4
    assert "b&#34;q" in page and 'b"q' not in page
    report = json.loads((tmp_path / "r" / REPORT_JSON).read_text())
    assert report["sections"]["ranking"]["order"][0] in (evil, 'b"q')  # report.json keeps the raw text


def test_page_template_ships_with_the_cards():
    from importlib.resources import files

    from hf_localnat.report import REPORT_TEMPLATE

    assert files("model_cards").joinpath(REPORT_TEMPLATE).is_file()


def test_output_folder_rules(pool, tmp_path):
    small = pool.select_columns(["prompt_id", "teacher", "local_naturalness"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(LocalnatError, match="exists. Pass --overwrite"):
        build_report(small, busy, n_boot=N_BOOT, progress=False)
    with pytest.raises(LocalnatError, match="holds notes.txt, which hf-localnat does not write in a report folder"):
        build_report(small, busy, n_boot=N_BOOT, progress=False, overwrite=True)
    assert (busy / "notes.txt").read_text() == "keep me"

    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    build_report(small, out, n_boot=N_BOOT, progress=False)
    with pytest.raises(LocalnatError, match="exists. Pass --overwrite"):
        build_report(small, out, n_boot=N_BOOT, progress=False)
    build_report(small, out, n_boot=N_BOOT, progress=False, overwrite=True)  # replaces an earlier report
    assert (out / REPORT_HTML).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "out"]  # no temporary folders left

    with pytest.raises(LocalnatError, match="looks like a file.*html_out'"):
        build_report(small, tmp_path / "html_out.html", n_boot=N_BOOT, progress=False)
    assert not (tmp_path / "html_out.html").exists()

    with pytest.raises(LocalnatError, match="row index"):
        build_report(small, tmp_path / "x", rows=[99], progress=False)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------------------
# CLI entry
# ----------------------------------------------------------------------------------------------------------


def test_parse_rows():
    assert parse_rows("0, 5,12") == [0, 5, 12] and parse_rows(None) is None and parse_rows(" ") is None
    with pytest.raises(LocalnatError, match="comma-separated"):
        parse_rows("1,a")


def test_run_report(pool, tmp_path, capsys):
    scored = tmp_path / "scored.jsonl"
    pool.to_json(str(scored))
    args = ReportArguments(output=str(tmp_path / "rep"), rows="1,4", n_boot=N_BOOT)
    path = run_report(args, str(scored))
    assert path == tmp_path / "rep" / REPORT_HTML
    report = json.loads((tmp_path / "rep" / REPORT_JSON).read_text())
    assert [r["row"] for r in report["sections"]["step_profile"]["rows"]] == [1, 4]
    assert report["input"] == str(scored)
    out = capsys.readouterr().out
    assert "Wrote the report (5 of 6 sections; skipped: step_labels" in out and str(path) in out

    bare = tmp_path / "bare.jsonl"
    pool.select_columns(["prompt_id", "teacher", "response"]).to_json(str(bare))
    with pytest.raises(LocalnatError, match=r"bare\.jsonl: no metric column.*--return_steps"):
        run_report(ReportArguments(output=str(tmp_path / "r2")), str(bare))
    no_steps = tmp_path / "no_steps.jsonl"
    pool.remove_columns(["step_spans", "step_logprobs"]).to_json(str(no_steps))
    with pytest.raises(LocalnatError, match=r"no_steps\.jsonl: column 'step_logprobs' not found.*--return_steps"):
        run_report(ReportArguments(output=str(tmp_path / "r3"), html_steps=True), str(no_steps))
    with pytest.raises(LocalnatError, match="column 'pid' not found.*--group_by"):
        run_report(ReportArguments(output=str(tmp_path / "r4"), group_by="pid"), str(scored))
    with pytest.raises(LocalnatError, match="needs --output"):
        run_report(ReportArguments(), str(scored))
    assert not any((tmp_path / name).exists() for name in ("r2", "r3", "r4"))
