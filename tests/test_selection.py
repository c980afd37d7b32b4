"""select_responses / rank_teachers / compile_where on small hand-made datasets with known answers."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import pandas as pd
import pytest

from hf_localnat.errors import LocalnatError
from hf_localnat.selection import (
    SelectionReport,
    compile_where,
    format_ranking,
    is_higher_better,
    rank_teachers,
    select_responses,
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
        ("p1", "b", 1), ("p1", "c", 2),
        ("p2", "a", 1), ("p2", "b", 2),
        ("p3", "c", 1), ("p3", "a", 2),
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
    ["len(teacher) > 1", "rsr + 1 > 2", "__import__('os').system('true')", "teacher.upper() == 'A'",
     "teacher in [rsr]", "x if y else z", "lambda: 1", "teacher = 'a'", "teacher =="],
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
    warnings = [r for r in caplog.records
                if r.name == "hf_localnat.selection" and r.levelno >= logging.WARNING]
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
    ds = datasets.Dataset.from_dict({"prompt_id": ["p", "q"], "rsr": [None, None]},
                                    features=datasets.Features({"prompt_id": datasets.Value("string"),
                                                                "rsr": datasets.Value("float64")}))
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
        "rank", "teacher", "mean", "ci_low", "ci_high", "num_prompts", "win_rate", "num_common_prompts",
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
            {"prompt_id": [f"p{i}" for i in range(num_prompts)], "teacher": ["a"] * num_prompts,
             "local_naturalness": scores}
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
        {"prompt_id": [f"p{i}" for i in range(30) for _ in range(2)], "teacher": ["a", "b"] * 30,
         "local_naturalness": rng.normal(-1.0, 0.5, size=60).tolist()}
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
        {"prompt_id": ["p1", "p1", "p2", "p2"], "teacher": ["a", "z", "a", "z"],
         "local_naturalness": [-1.0, None, -2.0, None]}
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
