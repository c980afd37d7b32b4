"""select_responses / rank_teachers / compile_where on small hand-made datasets with known answers."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import pandas as pd
import pytest

from hf_localnat.errors import LocalnatError
from hf_localnat.selection import (
    RankingConfig,
    SelectionReport,
    compile_where,
    correct_values,
    format_ranking,
    is_higher_better,
    rank_teachers,
    select_responses,
    selection_accuracy,
    teacher_prompt_means,
)


@pytest.fixture
def scored() -> datasets.Dataset:
    """Three prompts (p2 first appears after p1's first row but before p1's last), three teachers."""
    return datasets.Dataset.from_dict(
        {
            "prompt_id": ["p1", "p2", "p1", "p1", "p2", "p3", "p3"],
            "teacher": ["a", "a", "b", "c", "b", "a", "c"],
            "local_naturalness": [-1.0, -0.5, -0.2, -0.7, -0.9, -2.0, -1.5],
            "rsr": [3.0, 2.0, 5.0, 1.0, 4.0, 2.5, 2.6],
            "correct": [True, False, True, False, True, True, True],
            "num_steps": [4, 2, 5, 3, None, 1, 6],
        }
    )


def pairs(ds: datasets.Dataset) -> list[tuple[str, str, int]]:
    return list(zip(ds["prompt_id"], ds["teacher"], ds["selection_rank"], strict=True))


# ---------------------------------------------------------------------------------------------------------
# is_higher_better
# ---------------------------------------------------------------------------------------------------------


def test_is_higher_better_known_names():
    assert is_higher_better("local_naturalness") is True
    assert is_higher_better("global_naturalness") is True
    assert is_higher_better("mean_logprob") is True
    assert is_higher_better("rsr") is False
    assert is_higher_better("perplexity") is False
    assert is_higher_better("aslec_drop") is True
    for k in (1, 2, 4, 8):
        assert is_higher_better(f"local_naturalness@{k}") is True
    assert is_higher_better("casl") is True
    assert is_higher_better("ifd") is True  # Cherry LLM keeps the highest IFD (after dropping IFD > 1)
    assert is_higher_better("entropy") is False


@pytest.mark.parametrize("name", ["accuracy", "neg_logprob"])
def test_is_higher_better_unknown_or_ambiguous_asks_for_direction(name):
    with pytest.raises(LocalnatError, match="higher_is_better"):
        is_higher_better(name)


# ---------------------------------------------------------------------------------------------------------
# select_responses
# ---------------------------------------------------------------------------------------------------------


def test_top1_by_naturalness_is_highest(scored):
    out = select_responses(scored, by="local_naturalness")
    assert pairs(out) == [("p1", "b", 1), ("p2", "a", 1), ("p3", "c", 1)]


def test_top2_by_naturalness_order_groups_then_rank(scored):
    out = select_responses(scored, by="local_naturalness", k=2)
    assert pairs(out) == [
        ("p1", "b", 1),
        ("p1", "c", 2),
        ("p2", "a", 1),
        ("p2", "b", 2),
        ("p3", "c", 1),
        ("p3", "a", 2),
    ]


def test_rsr_is_lower_is_better(scored):
    assert pairs(select_responses(scored, by="rsr")) == [("p1", "c", 1), ("p2", "a", 1), ("p3", "a", 1)]
    top2 = select_responses(scored, by="rsr", k=2)
    assert pairs(top2)[:2] == [("p1", "c", 1), ("p1", "a", 2)]


def test_k_larger_than_group_keeps_whole_group(scored):
    out = select_responses(scored, by="rsr", k=10)
    assert len(out) == len(scored)
    assert out["selection_rank"][:] == [1, 2, 3, 1, 2, 1, 2]


def test_explicit_higher_is_better_overrides_the_name(scored):
    lowest = select_responses(scored, by="local_naturalness", higher_is_better=False)
    assert pairs(lowest) == [("p1", "a", 1), ("p2", "b", 1), ("p3", "a", 1)]
    highest_rsr = select_responses(scored, by="rsr", higher_is_better=True)
    assert pairs(highest_rsr) == [("p1", "b", 1), ("p2", "b", 1), ("p3", "c", 1)]


def test_unknown_metric_needs_explicit_direction():
    ds = datasets.Dataset.from_dict({"prompt_id": ["p", "p"], "score": [1.0, 2.0]})
    with pytest.raises(LocalnatError, match="higher_is_better"):
        select_responses(ds, by="score")
    assert select_responses(ds, by="score", higher_is_better=True)["score"][:] == [2.0]


def test_ties_go_to_the_earlier_row():
    ds = datasets.Dataset.from_dict(
        {"prompt_id": ["p", "p", "p", "q", "q"], "row": [0, 1, 2, 3, 4], "rsr": [2.0, 1.0, 1.0, 7.0, 7.0]}
    )
    assert select_responses(ds, by="rsr")["row"][:] == [1, 3]
    assert select_responses(ds, by="rsr", k=2)["row"][:] == [1, 2, 3, 4]
    assert select_responses(ds, by="rsr", k=2, higher_is_better=True)["row"][:] == [0, 1, 3, 4]


def test_output_keeps_columns_and_feature_types(scored):
    ds = scored.cast_column("num_steps", datasets.Value("int32"))
    ds = ds.add_column("label", [0, 1, 0, 1, 0, 1, 0], feature=datasets.ClassLabel(names=["no", "yes"]))
    out = select_responses(ds, by="local_naturalness", k=2)
    assert out.column_names == ds.column_names + ["selection_rank"]
    for name, feature in ds.features.items():
        assert out.features[name] == feature
    assert out.features["selection_rank"] == datasets.Value("int64")
    first = out[0]
    original = ds[2]  # p1's best row
    assert {key: first[key] for key in original} == original


def test_index_mapped_input_gives_the_same_result(scored):
    mapped = scored.select(range(len(scored)))  # a dataset with an indices mapping takes the other code path
    direct = select_responses(scored, by="rsr", k=2)
    via_mapping = select_responses(mapped, by="rsr", k=2)
    assert via_mapping.features == direct.features
    assert via_mapping.to_dict() == direct.to_dict()


def test_existing_selection_rank_is_replaced(scored):
    once = select_responses(scored, by="rsr", k=2)
    twice = select_responses(once, by="local_naturalness", k=1)
    assert twice.column_names.count("selection_rank") == 1
    assert twice["selection_rank"][:] == [1, 1, 1]


def test_groups_follow_first_appearance_in_input():
    ds = datasets.Dataset.from_dict(
        {"prompt_id": ["z", "a", "m", "a", "z"], "local_naturalness": [-1.0, -2.0, -3.0, -0.1, -0.5]}
    )
    assert select_responses(ds)["prompt_id"][:] == ["z", "a", "m"]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("correct == True", [("p1", "b", 1), ("p2", "b", 1), ("p3", "c", 1)]),
        ("correct", [("p1", "b", 1), ("p2", "b", 1), ("p3", "c", 1)]),
        ("not correct", [("p1", "c", 1), ("p2", "a", 1)]),
        ("teacher != 'b' and num_steps >= 3", [("p1", "c", 1), ("p3", "c", 1)]),
        ("teacher in ['a', 'c']", [("p1", "c", 1), ("p2", "a", 1), ("p3", "c", 1)]),
        ("teacher not in ('a', 'c')", [("p1", "b", 1), ("p2", "b", 1)]),
        ("teacher == 'a' or rsr < 1.5", [("p1", "c", 1), ("p2", "a", 1), ("p3", "a", 1)]),
        ("not (teacher == 'b' or teacher == 'c')", [("p1", "a", 1), ("p2", "a", 1), ("p3", "a", 1)]),
        ("1 < num_steps <= 4", [("p1", "c", 1), ("p2", "a", 1)]),
        ("num_steps is None", [("p2", "b", 1)]),
        ("num_steps > -1", [("p1", "b", 1), ("p2", "a", 1), ("p3", "c", 1)]),
    ],
)
def test_where_strings(scored, where, expected):
    assert pairs(select_responses(scored, by="local_naturalness", where=where)) == expected


def test_where_none_value_never_matches_ordering_even_under_not(scored):
    # p2/b has num_steps None: unknown under <, and still unknown (so not matching) under `not`.
    kept = select_responses(scored, where="num_steps < 100", k=5)
    assert ("p2", "b") not in [(p, t) for p, t, _ in pairs(kept)]
    out = select_responses(scored, where="not (num_steps < 3)", k=5)
    assert pairs(out) == [("p1", "b", 1), ("p1", "c", 2), ("p1", "a", 3), ("p3", "c", 1)]


def test_callable_where(scored):
    out = select_responses(scored, by="rsr", where=lambda row: row["teacher"] != "c" and row["correct"])
    assert pairs(out) == [("p1", "a", 1), ("p2", "b", 1), ("p3", "a", 1)]


def test_compile_where_directly():
    keep = compile_where("teacher in ['a', 'b'] and num_steps >= 3")
    assert keep({"teacher": "a", "num_steps": 3}) is True
    assert keep({"teacher": "c", "num_steps": 3}) is False
    assert keep({"teacher": "a", "num_steps": None}) is False
    assert compile_where(None) is None
    assert compile_where("  ") is None
    fn = lambda row: True  # noqa: E731
    assert compile_where(fn) is fn


@pytest.mark.parametrize(
    "where",
    [
        "len(teacher) > 1",
        "rsr + 1 > 2",
        "__import__('os').system('true')",
        "teacher.upper() == 'A'",
        "teacher in [rsr]",
        "x if y else z",
        "lambda: 1",
        "teacher = 'a'",
        "teacher ==",
    ],
)
def test_bad_where_is_a_user_error(scored, where):
    with pytest.raises(LocalnatError, match=r"--where .*(unsupported expr|cannot parse).*correct == True"):
        select_responses(scored, where=where)


def test_where_unknown_column_names_it(scored):
    with pytest.raises(LocalnatError, match=r"unknown column 'grade' \(columns: prompt_id, teacher"):
        select_responses(scored, where="grade > 3")
    with pytest.raises(LocalnatError, match="unknown column 'grade'"):
        compile_where("grade > 3")({"teacher": "a"})


def test_where_type_mismatch_is_a_user_error(scored):
    with pytest.raises(LocalnatError, match="cannot evaluate"):
        select_responses(scored, where="teacher > 3")


def test_group_without_valid_score_is_reported(caplog):
    ds = datasets.Dataset.from_dict(
        {
            "prompt_id": ["p1", "p2", "p1", "p2", "p3", "p4"],
            "teacher": ["a", "a", "b", "b", "a", "a"],
            "local_naturalness": [-1.0, None, float("nan"), None, -3.0, -2.0],
            "correct": [True, True, True, True, False, True],
        }
    )
    with caplog.at_level(logging.WARNING, logger="hf_localnat.selection"):
        out, report = select_responses(ds, where="correct == True", return_report=True)
    assert pairs(out) == [("p1", "a", 1), ("p4", "a", 1)]
    assert isinstance(report, SelectionReport)
    assert report.groups_without_score == ["p2"]
    assert report.num_rows == 6
    assert report.num_rows_after_where == 5
    assert report.num_groups == 3  # p3 has no row passing the filter: not a group here
    assert report.num_groups_selected == 2
    assert report.num_rows_selected == 2
    warnings = [r for r in caplog.records if r.name == "hf_localnat.selection" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "1 group(s)" in warnings[0].getMessage() and "'p2'" in warnings[0].getMessage()
    summary = report.summary()
    assert "from 2 of 3 groups" in summary and "'p2'" in summary and "5 of 6 rows passed where" in summary


def test_no_warning_when_every_group_is_scored(scored, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_localnat.selection"):
        _, report = select_responses(scored, return_report=True)
    assert report.groups_without_score == []
    assert not [r for r in caplog.records if r.name == "hf_localnat.selection"]
    assert report.summary().count("\n") == 0


def test_all_scores_missing_gives_empty_typed_output(caplog):
    ds = datasets.Dataset.from_dict(
        {"prompt_id": ["p", "q"], "rsr": [None, None]},
        features=datasets.Features({"prompt_id": datasets.Value("string"), "rsr": datasets.Value("float64")}),
    )
    with caplog.at_level(logging.WARNING, logger="hf_localnat.selection"):
        out, report = select_responses(ds, by="rsr", return_report=True)
    assert len(out) == 0
    assert out.features["selection_rank"] == datasets.Value("int64")
    assert report.groups_without_score == ["p", "q"]


@pytest.mark.parametrize("k", [0, -1, 1.5, "2", True])
def test_bad_k(scored, k):
    with pytest.raises(LocalnatError, match="k="):
        select_responses(scored, k=k)


def test_missing_columns_name_the_column_and_list_the_others(scored):
    with pytest.raises(LocalnatError, match=r"'global_naturalness'.*columns: prompt_id, teacher"):
        select_responses(scored, by="global_naturalness")
    with pytest.raises(LocalnatError, match=r"group_by='question'"):
        select_responses(scored, group_by="question")


def test_non_numeric_score_column(scored):
    with pytest.raises(LocalnatError, match="not numbers"):
        select_responses(scored, by="teacher", higher_is_better=True)


# ---------------------------------------------------------------------------------------------------------
# rank_teachers
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def teachers() -> datasets.Dataset:
    """a, b answer p1..p3; c misses p3; a answers p1 twice; one b score is missing."""
    return datasets.Dataset.from_dict(
        {
            "prompt_id": ["p1", "p1", "p1", "p1", "p2", "p2", "p2", "p3", "p3", "p3"],
            "teacher": ["a", "a", "b", "c", "a", "b", "c", "a", "b", "b"],
            "local_naturalness": [-1.0, -3.0, -1.0, -0.5, -1.0, -2.0, -3.0, -1.5, None, -1.5],
            "rsr": [2.0, 4.0, 1.0, 3.0, 2.0, 2.0, 5.0, 1.0, None, 2.0],
        }
    )


def test_rank_teachers_means_win_rates_and_columns(teachers):
    table = rank_teachers(teachers, by="local_naturalness", n_bootstrap=200)
    assert list(table.columns) == [
        "rank",
        "teacher",
        "mean",
        "ci_low",
        "ci_high",
        "num_prompts",
        "win_rate",
        "num_common_prompts",
        "p_top",
    ]
    rows = table.set_index("teacher")
    # a: p1 mean(-1, -3) = -2, p2 -1, p3 -1.5 -> -1.5; b: -1, -2, -1.5 -> -1.5; c: -0.5, -3 -> -1.75
    assert rows.loc["a", "mean"] == pytest.approx(-1.5)
    assert rows.loc["b", "mean"] == pytest.approx(-1.5)
    assert rows.loc["c", "mean"] == pytest.approx(-1.75)
    assert rows["num_prompts"].to_dict() == {"a": 3, "b": 3, "c": 2}
    # Common prompts: p1, p2 (c misses p3). p1: c best (-0.5). p2: a best (-1).
    assert (table["num_common_prompts"] == 2).all()
    assert rows["win_rate"].to_dict() == pytest.approx({"a": 0.5, "b": 0.0, "c": 0.5})
    assert table["win_rate"].sum() == pytest.approx(1.0)
    # Equal means -> teacher name decides.
    assert table["teacher"].tolist() == ["a", "b", "c"]
    assert table["rank"].tolist() == [1, 2, 3]


def test_rank_teachers_rsr_is_ascending_and_ties_split(teachers):
    table = rank_teachers(teachers, by="rsr", n_bootstrap=200)
    # a: (3, 2, 1) -> 2.0; b: (1, 2, 2) -> 5/3; c: (3, 5) -> 4
    assert table["teacher"].tolist() == ["b", "a", "c"]
    assert table["mean"].tolist() == pytest.approx([5 / 3, 2.0, 4.0])
    # p1: b wins (1); p2: a and b tie at 2 -> half each.
    assert table.set_index("teacher")["win_rate"].to_dict() == pytest.approx({"a": 0.25, "b": 0.75, "c": 0.0})
    flipped = rank_teachers(teachers, by="rsr", higher_is_better=True, n_bootstrap=50)
    assert flipped["teacher"].tolist() == ["c", "a", "b"]


def test_rank_teachers_without_common_prompt_has_nan_win_rate():
    ds = datasets.Dataset.from_dict(
        {"prompt_id": ["p1", "p2"], "teacher": ["a", "b"], "local_naturalness": [-1.0, -2.0]}
    )
    table = rank_teachers(ds, n_bootstrap=20)
    assert table["win_rate"].isna().all()
    assert (table["num_common_prompts"] == 0).all()
    assert "n/a" in format_ranking(table)


def test_rank_teachers_ci_brackets_mean_and_shrinks_with_more_prompts():
    rng = np.random.default_rng(123)

    def dataset(num_prompts: int) -> datasets.Dataset:
        scores = rng.normal(-1.0, 0.5, size=num_prompts).tolist()
        return datasets.Dataset.from_dict(
            {
                "prompt_id": [f"p{i}" for i in range(num_prompts)],
                "teacher": ["a"] * num_prompts,
                "local_naturalness": scores,
            }
        )

    few, many = dataset(10), dataset(400)
    small = rank_teachers(few).iloc[0]
    large = rank_teachers(many).iloc[0]
    for row in (small, large):
        assert row["ci_low"] < row["mean"] < row["ci_high"]
    assert (large["ci_high"] - large["ci_low"]) < (small["ci_high"] - small["ci_low"]) / 3
    narrow = rank_teachers(few, confidence=0.5).iloc[0]
    assert narrow["ci_low"] > small["ci_low"] and narrow["ci_high"] < small["ci_high"]


def test_rank_teachers_is_deterministic_given_the_seed():
    rng = np.random.default_rng(0)
    ds = datasets.Dataset.from_dict(
        {
            "prompt_id": [f"p{i}" for i in range(30) for _ in range(2)],
            "teacher": ["a", "b"] * 30,
            "local_naturalness": rng.normal(-1.0, 0.5, size=60).tolist(),
        }
    )
    first = rank_teachers(ds, n_bootstrap=300, seed=7)
    again = rank_teachers(ds, n_bootstrap=300, seed=7)
    other = rank_teachers(ds, n_bootstrap=300, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first[["ci_low", "ci_high"]], other[["ci_low", "ci_high"]])


def test_rank_teachers_single_prompt_ci_is_the_point():
    ds = datasets.Dataset.from_dict({"prompt_id": ["p"], "teacher": ["a"], "rsr": [2.0]})
    row = rank_teachers(ds, by="rsr", n_bootstrap=10).iloc[0]
    assert row["ci_low"] == row["mean"] == row["ci_high"] == 2.0
    assert row["win_rate"] == 1.0


def test_rank_teachers_teacher_without_scores_is_warned_and_left_out(caplog):
    ds = datasets.Dataset.from_dict(
        {
            "prompt_id": ["p1", "p1", "p2", "p2"],
            "teacher": ["a", "z", "a", "z"],
            "local_naturalness": [-1.0, None, -2.0, None],
        }
    )
    with caplog.at_level(logging.WARNING, logger="hf_localnat.selection"):
        table = rank_teachers(ds, n_bootstrap=10)
    assert table["teacher"].tolist() == ["a"]
    assert table["win_rate"].tolist() == [1.0]
    assert any("'z'" in r.getMessage() for r in caplog.records)


def test_rank_teachers_user_errors(teachers):
    with pytest.raises(LocalnatError, match=r"teacher_column='model'.*columns: prompt_id, teacher"):
        rank_teachers(teachers, teacher_column="model")
    with pytest.raises(LocalnatError, match="'global_naturalness'"):
        rank_teachers(teachers, by="global_naturalness")
    with pytest.raises(LocalnatError, match="n_bootstrap"):
        rank_teachers(teachers, n_bootstrap=0)
    with pytest.raises(LocalnatError, match="confidence"):
        rank_teachers(teachers, confidence=95)
    empty = datasets.Dataset.from_dict({"prompt_id": ["p"], "teacher": ["a"], "rsr": [float("nan")]})
    with pytest.raises(LocalnatError, match="nothing to rank"):
        rank_teachers(empty, by="rsr")


def test_format_ranking_lists_every_teacher(teachers):
    table = rank_teachers(teachers, by="rsr", n_bootstrap=50)
    text = format_ranking(table)
    lines = text.splitlines()
    for teacher in ("a", "b", "c"):
        assert any(line.split()[1:2] == [teacher] for line in lines)
    assert "rsr" in lines[0] and "lower is better" in lines[0]
    assert "2 prompt(s)" in text
    assert len({len(line) for line in lines[1:6]}) == 1  # header, rule and the three rows line up


# ---------------------------------------------------------------------------------------------------------
# RSR at teacher level (the RSR authors' ratio of means) and P(top)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def rsr_pool() -> datasets.Dataset:
    """a answers p1 twice; b answers p2 twice and has a p3 row whose rank and surprisal are missing."""
    rows = [  # prompt, teacher, mean capped rank, mean surprisal
        ("p1", "a", 4.0, 2.0),
        ("p1", "a", 6.0, 4.0),
        ("p2", "a", 3.0, 1.5),
        ("p3", "a", 8.0, 2.0),
        ("p1", "b", 2.0, 1.0),
        ("p2", "b", 9.0, 3.0),
        ("p2", "b", 3.0, 1.0),
        ("p3", "b", None, None),
    ]
    return datasets.Dataset.from_dict(
        {
            "prompt_id": [r[0] for r in rows],
            "teacher": [r[1] for r in rows],
            "rsr": [1.0 if r[2] is None else r[2] / r[3] for r in rows],  # the p3 row of b: rsr 1.0, no parts
            "rsr_mean_rank": [r[2] for r in rows],
            "rsr_mean_surprisal": [r[3] for r in rows],
        }
    )


def test_rsr_ratio_of_means_by_hand(rsr_pool):
    table = rank_teachers(rsr_pool, by="rsr", n_bootstrap=200)
    assert table.attrs["aggregate"] == "ratio_of_means"
    rows = table.set_index("teacher")
    # a: per-prompt means p1 (5, 3), p2 (3, 1.5), p3 (8, 2) -> mean rank 16/3 over mean surprisal 6.5/3.
    # b: p1 (2, 1), p2 (6, 2); its p3 row has no rank or surprisal -> 8/2 over 3/2.
    assert rows.loc["a", "mean"] == pytest.approx(16 / 6.5)
    assert rows.loc["b", "mean"] == pytest.approx(8 / 3)
    assert table["teacher"].tolist() == ["a", "b"]  # lower is better
    assert rows["num_prompts"].to_dict() == {"a": 3, "b": 2}
    # Common prompts p1, p2: a 5/3 vs b 2 and a 2 vs b 3: a wins both.
    assert rows["win_rate"].to_dict() == {"a": 1.0, "b": 0.0}
    assert (table["num_common_prompts"] == 2).all()


def test_rsr_mean_of_ratios_option_and_fallback(rsr_pool, caplog):
    table = rank_teachers(rsr_pool, by="rsr", n_bootstrap=50, rsr_aggregate="mean_of_ratios")
    rows = table.set_index("teacher")
    # a: p1 mean(2, 1.5), p2 2, p3 4 -> 7.75 / 3; b: p1 2, p2 mean(3, 3), p3 1.0 -> 2.0
    assert rows.loc["a", "mean"] == pytest.approx(7.75 / 3)
    assert rows.loc["b", "mean"] == pytest.approx(2.0)
    assert table["teacher"].tolist() == ["b", "a"]  # the other aggregate reverses the order
    assert table.attrs["aggregate"] == "mean_of_ratios"
    without = rsr_pool.remove_columns(["rsr_mean_rank", "rsr_mean_surprisal"])
    with caplog.at_level(logging.WARNING, logger="hf_localnat.selection"):
        fallback = rank_teachers(without, by="rsr", n_bootstrap=50)
    pd.testing.assert_frame_equal(fallback, table, check_like=False)
    warned = [r.getMessage() for r in caplog.records if "per-row ratios" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    # Other metrics ignore the option.
    assert rank_teachers(rsr_pool, by="rsr_mean_rank", n_bootstrap=20).attrs["aggregate"] == "mean"
    with pytest.raises(LocalnatError, match="rsr_aggregate"):
        rank_teachers(rsr_pool, by="rsr", rsr_aggregate="pooled")


def test_rsr_ratio_ci_and_p_top_against_loops(rsr_pool):
    n_bootstrap, seed = 400, 3
    table = rank_teachers(rsr_pool, by="rsr", n_bootstrap=n_bootstrap, seed=seed).set_index("teacher")
    # Teacher-prompt means (rank, surprisal), prompts in order of first appearance; None: no valid row.
    means = {"a": [(5.0, 3.0), (3.0, 1.5), (8.0, 2.0)], "b": [(2.0, 1.0), (6.0, 2.0), None]}

    def ratio(pairs: list) -> float:
        return sum(r for r, _ in pairs) / sum(s for _, s in pairs)

    for teacher, pairs in means.items():  # CI: the teacher's own prompts, default_rng(seed) fresh
        own = [p for p in pairs if p is not None]
        draws = np.random.default_rng(seed).integers(0, len(own), size=(n_bootstrap, len(own)))
        ratios = [ratio([own[i] for i in drawn]) for drawn in draws]
        low, high = np.percentile(ratios, [2.5, 97.5])
        assert (table.loc[teacher, "ci_low"], table.loc[teacher, "ci_high"]) == pytest.approx((low, high))

    wins = {"a": 0.0, "b": 0.0}  # P(top): one draw of prompt indices shared by both teachers
    for drawn in np.random.default_rng(seed).integers(0, 3, size=(n_bootstrap, 3)):
        stats = {}
        for teacher, pairs in means.items():
            chosen = [pairs[i] for i in drawn if pairs[i] is not None]
            if chosen:
                stats[teacher] = ratio(chosen)
        best = min(stats.values())
        winners = [t for t, v in stats.items() if abs(v - best) <= 1e-12 * max(1.0, abs(best))]
        for t in winners:
            wins[t] += 1 / len(winners)
    assert table["p_top"].to_dict() == pytest.approx({t: w / n_bootstrap for t, w in wins.items()})


def test_p_top_column_against_a_loop(teachers):
    n_bootstrap, seed = 300, 5
    table = rank_teachers(teachers, by="local_naturalness", n_bootstrap=n_bootstrap, seed=seed)
    # Teacher-prompt means (p1, p2, p3); c did not answer p3; a's two p1 answers averaged.
    means = {"a": [-2.0, -1.0, -1.5], "b": [-1.0, -2.0, -1.5], "c": [-0.5, -3.0, None]}
    wins = dict.fromkeys(means, 0.0)
    for drawn in np.random.default_rng(seed).integers(0, 3, size=(n_bootstrap, 3)):
        stats = {}
        for teacher, values in means.items():
            chosen = [values[i] for i in drawn if values[i] is not None]
            if chosen:
                stats[teacher] = sum(chosen) / len(chosen)
        best = max(stats.values())
        winners = [t for t, v in stats.items() if abs(v - best) <= 1e-9]
        for t in winners:
            wins[t] += 1 / len(winners)
    got = table.set_index("teacher")["p_top"].to_dict()
    assert got == pytest.approx({t: w / n_bootstrap for t, w in wins.items()})
    assert sum(got.values()) == pytest.approx(1.0)


def test_teacher_prompt_means_covers_every_prompt_and_teacher(rsr_pool):
    table = teacher_prompt_means(rsr_pool, by="rsr")
    assert (table.prompts, table.teachers, table.aggregate) == (["p1", "p2", "p3"], ["a", "b"], "ratio_of_means")
    assert table.numerator.tolist() == [[5.0, 2.0], [3.0, 6.0], [8.0, pytest.approx(np.nan, nan_ok=True)]]
    assert table.denominator.tolist()[:2] == [[3.0, 1.0], [1.5, 2.0]]
    assert [table.score(0), table.score(1)] == pytest.approx([16 / 6.5, 8 / 3])


def test_ranking_config_checks_its_values():
    assert RankingConfig().to_dict() == {
        "teacher_column": "teacher", "n_bootstrap": 1000, "confidence": 0.95, "seed": 0,
        "rsr_aggregate": "ratio_of_means",
    }  # fmt: skip
    for bad in ({"n_bootstrap": 0}, {"confidence": 1.5}, {"seed": -1}, {"rsr_aggregate": "x"}, {"n_bootstrap": True}):
        with pytest.raises(LocalnatError, match=next(iter(bad))):
            RankingConfig(**bad)


def test_format_ranking_shows_p_top_and_the_rsr_aggregate(rsr_pool):
    text = format_ranking(rank_teachers(rsr_pool, by="rsr", n_bootstrap=40))
    lines = text.splitlines()
    assert "mean rank / mean surprisal" in lines[0] and "lower is better" in lines[0]
    assert lines[1].split()[-1] == "P(top)" and "score" in lines[1]
    assert "P(top): share of 40 paired bootstrap resamples" in text
    assert len({len(line) for line in lines[1:5]}) == 1


# ---------------------------------------------------------------------------------------------------------
# selection_accuracy
# ---------------------------------------------------------------------------------------------------------


def test_correct_values():
    assert correct_values([True, False, 1, 0, "true", " FALSE ", None, "x", 0.5]) == pytest.approx(
        [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, np.nan, np.nan, np.nan], nan_ok=True
    )


@pytest.mark.parametrize("seed", range(6))
def test_selection_accuracy_against_loops(seed):
    rng = np.random.default_rng(seed)
    n = 60
    prompts = [None if rng.random() < 0.05 else f"p{int(i)}" for i in rng.integers(0, 15, size=n)]
    scores = [None if rng.random() < 0.1 else float(v) for v in np.round(rng.normal(size=n), 1)]  # ties
    correct = [None if rng.random() < 0.1 else bool(v) for v in rng.random(n) < 0.5]
    ds = datasets.Dataset.from_dict({"prompt_id": prompts, "local_naturalness": scores, "correct": correct})
    higher = bool(seed % 2)
    got = selection_accuracy(ds, by="local_naturalness", higher_is_better=higher, n_bootstrap=300, seed=seed)

    picks, shares, anys = [], [], []
    for prompt in dict.fromkeys(p for p in prompts if p is not None):  # order of first appearance
        rows = [i for i in range(n) if prompts[i] == prompt and scores[i] is not None and correct[i] is not None]
        if not rows:
            continue
        best = rows[0]
        for i in rows[1:]:  # strictly better only: equal scores go to the earlier row
            if (scores[i] > scores[best]) if higher else (scores[i] < scores[best]):
                best = i
        picks.append(float(correct[best]))
        shares.append(sum(correct[i] for i in rows) / len(rows))
        anys.append(float(any(correct[i] for i in rows)))
    count = len(picks)
    assert got["num_prompts"] == count
    assert got["num_rows"] == sum(
        1 for i in range(n) if prompts[i] and scores[i] is not None and correct[i] is not None
    )
    assert got["accuracy"] == pytest.approx(sum(picks) / count)
    assert got["random"] == pytest.approx(sum(shares) / count)
    assert got["oracle"] == pytest.approx(sum(anys) / count)
    assert got["random"] <= got["oracle"] and got["accuracy"] <= got["oracle"]
    draws = np.random.default_rng(seed).integers(0, count, size=(300, count))
    accuracy = [sum(picks[i] for i in drawn) / count for drawn in draws]
    gain = [sum(picks[i] - shares[i] for i in drawn) / count for drawn in draws]
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(np.percentile(accuracy, [2.5, 97.5])))
    assert (got["gain_ci_low"], got["gain_ci_high"]) == pytest.approx(tuple(np.percentile(gain, [2.5, 97.5])))


def test_selection_accuracy_uses_the_select_responses_pick(scored):
    got = selection_accuracy(scored, by="rsr", n_bootstrap=20)
    picked = select_responses(scored, by="rsr")  # every row has a known correct, so the candidates agree
    assert got["accuracy"] == pytest.approx(np.mean(picked["correct"]))
    # p1: a T, b T, c F; p2: a F, b T; p3: a T, c T
    assert got["random"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert got["oracle"] == 1.0


def test_selection_accuracy_user_errors(scored):
    with pytest.raises(LocalnatError, match="correct_column='label'"):
        selection_accuracy(scored, by="rsr", correct_column="label")
    unknown = scored.remove_columns("correct").add_column("correct", [None] * len(scored))
    with pytest.raises(LocalnatError, match="known 'correct'"):
        selection_accuracy(unknown, by="rsr")


def test_rsr_part_columns_are_the_scorers():
    from hf_localnat.metrics import METRIC_EXTRA_COLUMNS
    from hf_localnat.selection import RSR_RANK_COLUMN, RSR_SURPRISAL_COLUMN

    assert METRIC_EXTRA_COLUMNS["rsr"] == (RSR_RANK_COLUMN, RSR_SURPRISAL_COLUMN)
