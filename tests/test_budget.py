"""rank-teachers --until_confident: blocks of prompts in a seeded order, stopping when P(top) is high enough."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from hf_localnat import NaturalnessScorer
from hf_localnat.budget import prompt_blocks, rank_until_confident
from hf_localnat.cli import main
from hf_localnat.engine import LogProbEngine
from hf_localnat.scorer import score_dataset
from hf_localnat.selection import rank_teachers

SENTENCES = ["We add the numbers.", "So 3 + 4 = 7.", "Check it again!", "The answer is 7.", "Divide 60 by 2."]


def make_pool(num_prompts: int = 24, seed: int = 0) -> datasets.Dataset:
    """Three teachers: 'plain' repeats one sentence (natural to any model), the others are mixed text."""
    rng = np.random.default_rng(seed)
    rows = {"prompt_id": [], "prompt": [], "teacher": [], "response": []}
    for p in range(num_prompts):
        for teacher in ("plain", "mixed", "noisy"):
            if teacher == "plain":
                text = "So 3 + 4 = 7. " * 4
            else:
                picked = rng.choice(len(SENTENCES), size=4)
                text = " ".join(SENTENCES[k] for k in picked) + ("" if teacher == "mixed" else " zq xv kj wp!")
            rows["prompt_id"].append(f"p{p}")
            rows["prompt"].append(f"What is {p} + 4?")
            rows["teacher"].append(teacher)
            rows["response"].append(text)
    return datasets.Dataset.from_dict(rows)


def test_blocks_keep_a_prompts_rows_together_in_a_seeded_order():
    keys = ["a", "b", "a", None, "c", "b", "d"]
    blocks = prompt_blocks(keys, 2, seed=3)
    rows = [r for block, _ in blocks for r in block.tolist()]
    assert sorted(rows) == [0, 1, 2, 4, 5, 6]  # the row without a key is left out
    for block, count in blocks:
        assert count == len({keys[r] for r in block})
        for r in block:  # every row of a prompt is in its block
            assert all(s in block for s, k in enumerate(keys) if k == keys[r])
    assert [b.tolist() for b, _ in prompt_blocks(keys, 2, seed=3)] == [b.tolist() for b, _ in blocks]
    assert [b.tolist() for b, _ in prompt_blocks(keys, 2, seed=4)] != [b.tolist() for b, _ in blocks]


def test_stops_at_the_first_block_where_p_top_reaches_the_threshold(tmp_path, tiny_model, tiny_tokenizer):
    pool = make_pool()
    scorer = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="local")
    result = rank_until_confident(
        pool, scorer, threshold=0.6, block_prompts=4, min_prompts=8, n_bootstrap=200, work_dir=tmp_path / "w",
        progress=False,
    )  # fmt: skip
    # An independent replay of the rule: rank each prefix of blocks, stop at the first that qualifies.
    blocks = prompt_blocks(pool["prompt_id"], 4, seed=0)
    full = score_dataset(pool, NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="local"), progress=False)
    stop, prompts = None, 0
    for index, (_, count) in enumerate(blocks):
        prompts += count
        rows = np.concatenate([b for b, _ in blocks[: index + 1]])
        table = rank_teachers(full.select(rows), by="local_naturalness", n_bootstrap=200, seed=0)
        if prompts >= 8 and table["p_top"].iloc[0] >= 0.6:
            stop = (prompts, table)
            break
    assert stop is not None and result.confident
    assert result.num_prompts == stop[0] < 24 and result.num_prompts_total == 24
    assert result.ranking["teacher"].tolist() == stop[1]["teacher"].tolist()
    np.testing.assert_allclose(result.ranking["mean"], stop[1]["mean"], atol=1e-6)
    np.testing.assert_allclose(result.ranking["p_top"], stop[1]["p_top"])
    # The token share counts every unscored row's tokens, by the same tokenizer.
    total = sum(full["num_response_tokens"])
    assert result.token_share == pytest.approx(sum(result.scored["num_response_tokens"]) / total)


def test_a_rerun_with_a_higher_threshold_reuses_the_blocks(tmp_path, monkeypatch, tiny_model, tiny_tokenizer):
    pool = make_pool()
    scorer = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="local")
    options = dict(block_prompts=4, min_prompts=4, n_bootstrap=100, work_dir=tmp_path / "w", progress=False)
    first = rank_until_confident(pool, scorer, threshold=0.5, **options)
    calls = []
    real_score = LogProbEngine.score
    monkeypatch.setattr(LogProbEngine, "score", lambda engine, requests, **kw: calls.append(len(requests))
                        or real_score(engine, requests, **kw))  # fmt: skip
    again = rank_until_confident(pool, scorer, threshold=0.5, **options)
    assert calls == [] and again.num_prompts == first.num_prompts  # nothing scored twice
    longer = rank_until_confident(pool, scorer, threshold=0.5, **{**options, "min_prompts": 1000})  # the whole pool
    assert not longer.confident and longer.num_prompts == 24 and longer.token_share == pytest.approx(1.0)
    assert len(calls) == len(prompt_blocks(pool["prompt_id"], 4, 0)) - first.num_prompts // 4


def test_cli_until_confident_writes_the_ranking_and_the_partial_scores(tmp_path, tiny_student_dir, capsys):
    pool = tmp_path / "pool.jsonl"
    make_pool(12).to_json(pool)
    out, scored = tmp_path / "ranking.json", tmp_path / "partial.parquet"
    argv = ["rank-teachers", str(pool), "--student", str(tiny_student_dir), "--until_confident", "0.9",
            "--block_prompts", "3", "--min_prompts", "3", "--n_bootstrap", "100", "--output", str(out),
            "--scored_output", str(scored)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "P(top)" in printed and "of 12 prompts" in printed and "response tokens" in printed
    table = json.loads(out.read_text())
    assert {row["teacher"] for row in table} == {"plain", "mixed", "noisy"}
    partial = datasets.Dataset.from_parquet(str(scored))
    assert "local_naturalness" in partial.column_names and len(partial) % 3 == 0
    assert main(["rank-teachers", str(pool), "--until_confident", "0.9"]) == 2
    assert "needs --output" in capsys.readouterr().err
    assert main(["rank-teachers", str(pool), "--until_confident", "0.9", "--by", "rsr", "--output",
                 str(tmp_path / "r.json")]) == 2  # fmt: skip
    assert "Add --metrics rsr" in capsys.readouterr().err
