"""GRACE (hf_localnat.grace) against slow, independent computations.

The references compute each gradient with a plain ``model(input_ids, labels=labels)`` forward (full logits, batch
1), flatten every trainable gradient, project with the dense matrix of :func:`projection_matrix`, and score with
the official ``GRACE_computation.py`` arithmetic retyped here (reshape by prompt, permutation, eigh pseudo-inverse)
or with an explicit ``numpy.linalg.solve`` formula.
"""

from __future__ import annotations

import logging
import math

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_model

from hf_localnat.errors import LocalnatError
from hf_localnat.grace import (
    PROJECTION_BLOCK,
    GraceConfig,
    grace_from_gradients,
    grace_scores,
    grace_split_scores,
    project_gradient,
    projection_matrix,
    prompt_splits,
    response_gradient,
    trainable_parameters,
)

TEXTS = [
    "First, solve the inequalities separately. The answer is 42.",
    "Step 1: Add 3 and 4 to get 7.\nStep 2: Multiply by 2.\n\nFinal answer: 14",
    "Let $x$ be the number of apples. Then $3x = 12$, so $x = 4$. \\boxed{4}",
    "Really? Yes! We check: 3.14 is close to pi.\n",
    "We count the cases one by one and add them up: 5 + 6 = 11.",
    "Since the triangle is right, the hypotenuse is 5 by Pythagoras.",
    "Divide both sides by 3 to find x = 4, then check it.",
]
PROMPTS = [f"Question {i}: what is {i} + {i + 1}?" for i in range(6)]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster than two contending with other processes on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pool() -> pd.DataFrame:
    """3 teachers x 6 prompts; teacher "a" answers every prompt twice (unequal m across teachers)."""
    rows = []
    for i, prompt in enumerate(PROMPTS):
        rows.append({"prompt_id": f"p{i}", "prompt": prompt, "teacher": "a", "response": TEXTS[i]})
        rows.append({"prompt_id": f"p{i}", "prompt": prompt, "teacher": "b", "response": TEXTS[(i + 3) % 7]})
        rows.append({"prompt_id": f"p{i}", "prompt": prompt, "teacher": "a", "response": TEXTS[(i + 1) % 7] + " Done."})
        rows.append({"prompt_id": f"p{i}", "prompt": prompt, "teacher": "c", "response": TEXTS[6 - i][::-1]})
    return pd.DataFrame(rows)


def _reference_gradient(model, tokenizer, prompt: str, response: str, matrix: torch.Tensor) -> np.ndarray:
    # matrix: float64 [P, d], from projection_matrix
    """Chat-template prompt + response + EOS, full-logit HF loss, the full flattened gradient, dense projection."""
    head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    head = list(head["input_ids"] if isinstance(head, dict) or hasattr(head, "keys") else head)
    body = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([head + body])
    labels = torch.tensor([[-100] * len(head) + body])
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=labels).loss.backward()
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad]).double()
    model.zero_grad(set_to_none=True)
    return (matrix.T @ flat).numpy()


def _official_grace(grads: np.ndarray, m: int, num_splits: int, test_fraction: float, nu: float) -> float:
    """GRACE_computation.grace as released (equal m per prompt, rows prompt-major), retyped."""
    n = len(grads) // m
    n_test = max(1, int(n * test_fraction))
    grouped = grads.reshape(n, m, -1)
    scores = []
    for seed in range(num_splits):
        shuffled = grouped[np.random.default_rng(seed).permutation(n)]
        train = shuffled[: n - n_test].reshape(-1, grads.shape[1])
        test = shuffled[n - n_test :].reshape(-1, grads.shape[1])
        train = train / np.clip(np.linalg.norm(train, axis=-1, keepdims=True), 1e-12, None)
        w, v = np.linalg.eigh(train.T @ train / len(train))
        w = np.clip(w, 1e-12, None)
        w = np.clip((1 - nu) * w + nu * np.sum(w) / len(w), 1e-12, None)
        scores.append(np.trace(((v * (1.0 / w)) @ v.T) @ (test.T @ test / len(test))))
    return float(np.mean(scores))


def _explicit_grace(train: np.ndarray, test: np.ndarray, nu: float) -> float:
    """trace(inv((1 - nu) S + nu tr(S)/d I) T) with S, T the second moments: no eigendecomposition."""
    units = train / np.linalg.norm(train, axis=1, keepdims=True)
    second = units.T @ units / len(units)
    d = second.shape[0]
    smoothed = (1 - nu) * second + nu * np.trace(second) / d * np.eye(d)
    return float(np.trace(np.linalg.solve(smoothed, test.T @ test / len(test))))


# -- projection ------------------------------------------------------------------------------------------------


def test_projection_matches_dense_matrix():
    gen = torch.Generator().manual_seed(1)
    large = [torch.randn(PROJECTION_BLOCK + 13, generator=gen), None, torch.randn(3, 7, generator=gen)]
    large.append(torch.randn(5, generator=gen).to(torch.bfloat16))  # cast to float32 per block
    small = [torch.randn(100, generator=gen), None, torch.randn(7, 3, generator=gen)]
    # dim < 64 multiplies unpacked signs, dim >= 64 reads the 8-parameter sum tables: both against the dense matrix.
    for grads, dim, seed in ((large, 16, 0), (large, 5, 3), (small, 96, 1), (small, 512, 2)):
        numels = [g.numel() if g is not None else 0 for g in grads]
        z = project_gradient(grads, dim=dim, seed=seed)
        dense = projection_matrix(numels, dim=dim, seed=seed).double()
        flat = torch.cat([g.reshape(-1).double() for g in grads if g is not None])
        expected = (dense.T @ flat).numpy()
        assert z.shape == (dim,)
        np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # The seed and the tensor's position both change the draw.
    one = small[2]
    assert not np.allclose(project_gradient([one], 16, 0), project_gradient([one], 16, 1))
    assert not np.allclose(project_gradient([one], 16, 0), project_gradient([None, one], 16, 0))


def test_projection_is_rademacher_and_keeps_norms():
    dense = projection_matrix([4000, 96], dim=512) * math.sqrt(512)
    assert set(dense.round().unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(dense, dense.round())
    assert abs(dense.mean().item()) < 0.01  # balanced signs
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for seed in range(5):
        g = torch.randn(4096, generator=gen)
        ratios.append(float(np.sum(project_gradient([g], 512, seed) ** 2) / g.square().sum()))
    assert 0.8 < np.mean(ratios) < 1.2  # E||R^T g / sqrt(d)||^2 = ||g||^2


# -- the score from gradients ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "dim", "nu"), [(40, 6, 1e-3), (9, 16, 1e-3), (30, 4, 0.0), (12, 3, 0.5)])
def test_grace_from_gradients_matches_explicit_formula(rows, dim, nu):
    rng = np.random.default_rng(rows)
    train = rng.normal(size=(rows, dim)) * rng.uniform(0.1, 3, size=(rows, 1))
    test = rng.normal(size=(5, dim)) * 2.0
    expected = _explicit_grace(train, test, nu)
    assert grace_from_gradients(train, test, nu) == pytest.approx(expected, rel=1e-6)


def test_split_scores_match_official_code():
    rng = np.random.default_rng(7)
    grads = rng.normal(size=(24 * 3, 10)) * rng.uniform(0.5, 2, size=(72, 1))  # 24 prompts x m = 3, prompt-major
    index = np.repeat(np.arange(24), 3)
    ours = grace_split_scores(grads, index, num_splits=10, test_fraction=0.1, smoothing=1e-3).mean()
    assert ours == pytest.approx(_official_grace(grads, 3, 10, 0.1, 1e-3), rel=1e-9)
    # Rows in another order, prompts named by position: the same splits, the same score.
    order = rng.permutation(72)
    shuffled = grace_split_scores(grads[order], index[order], num_splits=10).mean()
    assert shuffled == pytest.approx(ours, rel=1e-9)


def test_prompt_splits_keep_prompts_whole_and_follow_the_rule():
    splits = prompt_splits(25, num_splits=4, test_fraction=0.1, seed=2)
    assert [len(t) for t in splits] == [2] * 4  # max(1, int(2.5))
    for s, test in enumerate(splits):
        np.testing.assert_array_equal(test, np.random.default_rng(2 + s).permutation(25)[23:])
    assert len(prompt_splits(3, 1, 0.1)[0]) == 1  # at least one test prompt


# -- gradients of the student ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunk_bytes", "tied"),
    [(None, False), (4 * 400 * 3, False), (None, True)],  # one chunk; 3 positions a chunk (checkpointed); tied head
)
def test_response_gradient_matches_full_logits_reference(tiny_model, tiny_tokenizer, monkeypatch, chunk_bytes, tied):
    if chunk_bytes is not None:
        monkeypatch.setattr("hf_localnat.grace.LOGITS_CHUNK_BYTES", chunk_bytes)
    if tied:  # one tensor used twice (embedding and head): its hook must see the summed gradient
        tiny_model = build_model(len(tiny_tokenizer), seed=3, tie_word_embeddings=True)
        assert tiny_model.lm_head.weight is tiny_model.model.embed_tokens.weight
    matrix = projection_matrix([p.numel() for p in trainable_parameters(tiny_model)], dim=512, seed=4).double()
    expected = _reference_gradient(tiny_model, tiny_tokenizer, PROMPTS[0], TEXTS[1], matrix)
    head = tiny_tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True)
    head = list(head["input_ids"] if hasattr(head, "keys") else head)
    body = tiny_tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    tiny_model.train()
    z = response_gradient(tiny_model, head + body, len(head), dim=512, seed=4)
    assert tiny_model.training  # the mode is restored
    assert all(p.grad is None for p in tiny_model.parameters())
    tiny_model.eval()
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_grace_scores_match_slow_reference(tiny_model, tiny_tokenizer):
    pool, dim = _pool(), 64
    table = grace_scores(tiny_model, tiny_tokenizer, pool, projection_dim=dim, num_splits=4, progress=False)
    matrix = projection_matrix([p.numel() for p in trainable_parameters(tiny_model)], dim=dim, seed=0).double()
    assert table.attrs["num_parameters"] == matrix.shape[0]
    for teacher, rows in pool.groupby("teacher", sort=True):
        keys = list(dict.fromkeys(rows.prompt_id))  # prompt order: first appearance
        grads = np.stack(
            [_reference_gradient(tiny_model, tiny_tokenizer, r.prompt, r.response, matrix) for r in rows.itertuples()]
        )
        position = np.array([keys.index(k) for k in rows.prompt_id])
        scores = []
        for s in range(4):
            test_prompts = np.random.default_rng(s).permutation(len(keys))[len(keys) - 1 :]  # max(1, int(0.6)) = 1
            on_test = np.isin(position, test_prompts)
            scores.append(_explicit_grace(grads[~on_test], grads[on_test], 1e-3))
        got = table.set_index("teacher").loc[teacher]
        assert got.grace == pytest.approx(np.mean(scores), rel=1e-5)
        assert got.grace_std == pytest.approx(np.std(scores), rel=1e-4)
        assert (got.num_prompts, got.num_responses, got.backward_passes) == (6, len(rows), len(rows))
    assert table.grace.is_monotonic_increasing and table["rank"].tolist() == [1, 2, 3]
    assert table.attrs["higher_is_better"] is False and table.attrs["by"] == "grace"


def test_copied_responses_score_apart_from_diverse_ones(tiny_model, tiny_tokenizer):
    """One response copied to every prompt makes every gradient nearly the same direction, so the test gradients
    lie in the train span (small trace); distinct responses leave part of each test gradient outside it, where the
    smoothed inverse is large. The formula must separate the two teachers, by a wide margin."""
    rows = []
    for i, prompt in enumerate(PROMPTS):
        rows.append({"prompt_id": i, "prompt": prompt, "teacher": "copy", "response": TEXTS[1]})
        rows.append({"prompt_id": i, "prompt": prompt, "teacher": "diverse", "response": TEXTS[i]})
    table = grace_scores(tiny_model, tiny_tokenizer, pd.DataFrame(rows), projection_dim=32, progress=False)
    score = table.set_index("teacher").grace
    assert score["copy"] * 5 < score["diverse"]


# -- what is skipped, counted, warned --------------------------------------------------------------------------


def test_skips_truncation_and_too_few_prompts_are_counted(tiny_model, tiny_tokenizer, caplog):
    pool = _pool().query("teacher != 'a'")
    pool = pd.concat(
        [
            pool,
            pd.DataFrame(
                [
                    {"prompt_id": "p0", "prompt": PROMPTS[0], "teacher": "b", "response": "   "},
                    {"prompt_id": "p1", "prompt": PROMPTS[1], "teacher": "b", "response": None},
                    {"prompt_id": "p9", "prompt": "x " * 200, "teacher": "b", "response": "Too long a prompt."},
                    {"prompt_id": "p0", "prompt": PROMPTS[0], "teacher": "lonely", "response": TEXTS[0]},
                    {"prompt_id": "p1", "prompt": PROMPTS[1], "teacher": "lonely", "response": ""},
                ]
            ),
        ],
        ignore_index=True,
    )
    # The longest normal example is ~30 tokens; a limit of 24 truncates some; the 200-word prompt alone exceeds it.
    with caplog.at_level(logging.WARNING, logger="hf_localnat.grace"):
        table = grace_scores(tiny_model, tiny_tokenizer, pool, projection_dim=8, max_tokens=24, progress=False)
    row = table.set_index("teacher")
    assert (row.loc["b", "skipped_empty"], row.loc["b", "skipped_too_long"]) == (2, 1)
    assert row.loc["b", "num_responses"] == 6 and row.loc["b", "backward_passes"] == 6
    assert row.loc[["b", "c"], "truncated"].sum() > 0
    lonely = row.loc["lonely"]
    assert pd.isna(lonely.grace) and pd.isna(lonely["rank"]) and lonely.backward_passes == 0
    assert (lonely.num_prompts, lonely.skipped_empty) == (1, 1)
    assert table.teacher.iloc[-1] == "lonely"  # unscored teachers last
    assert "no score for: lonely (1)" in caplog.text


def test_sampling_keeps_the_same_prompts_for_every_teacher(tiny_model, tiny_tokenizer):
    pool = datasets.Dataset.from_pandas(_pool())
    table = grace_scores(
        tiny_model, tiny_tokenizer, pool, projection_dim=8, max_prompts=4, responses_per_prompt=1, progress=False
    )
    assert table.num_prompts.tolist() == [4, 4, 4] and table.num_responses.tolist() == [4, 4, 4]
    again = grace_scores(
        tiny_model, tiny_tokenizer, pool, projection_dim=8, max_prompts=4, responses_per_prompt=1, progress=False
    )
    pd.testing.assert_series_equal(table.grace, again.grace)  # seeded: the same sample, the same scores
    other = grace_scores(tiny_model, tiny_tokenizer, pool, GraceConfig(projection_dim=8, max_prompts=4, seed=1), False)
    assert not np.allclose(other.sort_values("teacher").grace, table.sort_values("teacher").grace)


def test_existing_gradients_are_cleared_and_none_left(tiny_model, tiny_tokenizer):
    for p in tiny_model.parameters():
        p.grad = torch.ones_like(p)
    pool = _pool().query("teacher != 'a'")
    table = grace_scores(tiny_model, tiny_tokenizer, pool, projection_dim=8, num_splits=2, progress=False)
    clean = grace_scores(tiny_model, tiny_tokenizer, pool, projection_dim=8, num_splits=2, progress=False)
    pd.testing.assert_series_equal(table.grace, clean.grace)
    assert all(p.grad is None for p in tiny_model.parameters()) and not tiny_model.training
    assert not any(getattr(p, "_post_accumulate_grad_hooks", None) for p in tiny_model.parameters())  # hooks removed


def test_gradients_are_projected_and_freed_during_backward(tiny_model, tiny_tokenizer, monkeypatch):
    """The full gradient never exists: when a tensor is projected, few other tensors hold a gradient."""
    from hf_localnat import grace

    alive = []
    project = grace._Projector.add

    def spy(self, out, index, grad):
        alive.append(sum(p.grad is not None for p in tiny_model.parameters()))
        project(self, out, index, grad)

    monkeypatch.setattr(grace._Projector, "add", spy)
    ids = tiny_tokenizer(TEXTS[2])["input_ids"]
    response_gradient(tiny_model, ids, 3, dim=8)
    num_tensors = len(list(tiny_model.parameters()))
    assert len(alive) == num_tensors and max(alive) <= 3 < num_tensors


# -- user mistakes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"projection_dim": 0}, "projection_dim=0 must be an integer >= 1"),
        ({"num_splits": 1.5}, "num_splits=1.5 must be an integer"),
        ({"test_fraction": 0}, "test_fraction=0 must be in (0, 1)"),
        ({"smoothing": 2.0}, "smoothing=2.0 must be in [0, 1]"),
        ({"seed": -1}, "seed=-1 must be an integer >= 0"),
        ({"max_prompts": 1}, "max_prompts=1 must be an integer >= 2"),
        ({"chat_template_kwargs": "{bad"}, "is not JSON"),
        ({"teacher_column": ""}, "teacher_column='' must be a column name"),
    ],
)
def test_bad_options_fail_in_one_line(options, message):
    with pytest.raises(LocalnatError) as err:
        GraceConfig(**options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_pools_fail_in_one_line(tiny_model, tiny_tokenizer):
    pool = _pool()
    cases = [
        (pool.drop(columns="teacher"), "the pool has no column 'teacher'"),
        (pool.assign(prompt_id=[None] + list(pool.prompt_id[1:])), "row 0, column 'prompt_id': missing value"),
        (pool.assign(response=[3] + list(pool.response[1:])), "row 0, column 'response': expected text"),
        (pool.to_dict("records"), "dataset must be a datasets.Dataset or a pandas.DataFrame"),
    ]
    for data, message in cases:
        with pytest.raises(LocalnatError, match=message.replace("(", r"\(")):
            grace_scores(tiny_model, tiny_tokenizer, data, projection_dim=8, progress=False)


def test_bad_inputs_to_the_pure_functions():
    with pytest.raises(LocalnatError, match="at least 2"):
        prompt_splits(1)
    with pytest.raises(LocalnatError, match="one dim"):
        grace_from_gradients(np.ones((3, 4)), np.ones((2, 5)))
    with pytest.raises(LocalnatError, match="number the prompts"):
        grace_split_scores(np.ones((3, 2)), [0, 2, 2])
    with pytest.raises(LocalnatError, match="no trainable parameters"):
        trainable_parameters(torch.nn.Linear(2, 2).requires_grad_(False))
    with pytest.raises(LocalnatError, match="num_prompt_tokens"):
        response_gradient(torch.nn.Linear(2, 2), [1, 2], 2)


def test_cli_grace_writes_the_table_of_grace_scores(tmp_path, tiny_student_dir, capsys):
    """``hf-localnat grace`` ranks as grace_scores does on the same student, and refuses a bad suffix in one line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_localnat.cli import main

    pool = _pool()
    source = tmp_path / "pool.jsonl"
    pool.to_json(source, orient="records", lines=True)
    out = tmp_path / "grace.csv"
    argv = ["grace", str(source), "--student", str(tiny_student_dir), "--projection_dim", "16", "--output", str(out)]
    assert main(argv) == 0
    assert "lower is better" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_student_dir)
    direct = grace_scores(model, tokenizer, pool, projection_dim=16, progress=False)
    written = pd.read_csv(out)
    assert written["teacher"].tolist() == direct["teacher"].tolist()
    np.testing.assert_allclose(written["grace"], direct["grace"], rtol=1e-5)
    assert main(["grace", str(source), "--output", str(tmp_path / "grace.txt")]) == 2
    assert "use a .csv or .json" in capsys.readouterr().err
