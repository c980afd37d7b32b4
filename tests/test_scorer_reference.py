"""The fast scorer against a slow, obviously-correct reference: one forward pass per window, batch 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import MATH_L5, build_model, build_tokenizer, read_jsonl

from hf_localnat import NaturalnessScorer
from hf_localnat.segmentation import split_steps

TOL = 1e-4


def reference_prompt_ids(tokenizer, prompt: str) -> list[int]:
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(f"Question: {prompt}\nAnswer: ", add_special_tokens=False)["input_ids"]


@torch.no_grad()
def full_logprobs(model, context: list[int], target: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs and ranks of ``target`` after ``context``: one plain forward, full float32 logits."""
    ids = torch.tensor([context + target])
    logits = model(ids).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    positions = torch.arange(len(context) - 1, len(context) + len(target) - 1)
    tgt = torch.tensor(target)
    lp = logp[positions, tgt]
    ranks = 1 + (logits[positions] > logits[positions, tgt][:, None]).sum(-1)
    return lp.numpy().astype(np.float64), ranks.numpy()


def reference_scores(
    model,
    tokenizer,
    prompt,
    response,
    window=4,
    include_prompt=True,
    drop_first_token=False,
    step_aggregate="step_mean",
    splitter="sentence",
):
    prompt_ids = reference_prompt_ids(tokenizer, prompt)
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    spans = split_steps(response, splitter, tokenizer=tokenizer)
    # Token -> step by a plain scan: the step holding the token's first character.
    steps: dict[int, list[int]] = {}
    for t, (start, _) in enumerate(enc["offset_mapping"]):
        owner = next((k for k, (s, e) in enumerate(spans) if s <= start < e), len(spans) - 1)
        steps.setdefault(owner, []).append(t)
    step_list = [steps[k] for k in sorted(steps)]

    lp_all, ranks = full_logprobs(model, prompt_ids, ids)
    out = {
        "global_naturalness": lp_all.mean(),
        "rsr": np.minimum(ranks, 100).sum() / (-lp_all).sum(),
    }
    base = prompt_ids if include_prompt else [tokenizer.bos_token_id]
    step_means, tokens = [], []
    for j, step in enumerate(step_list):
        w = min(j, window if isinstance(window, int) else math.ceil(window * j))
        context = base + [ids[t] for s in step_list[j - w : j] for t in s]
        lp, _ = full_logprobs(model, context, [ids[t] for t in step])
        if drop_first_token:
            lp = lp[1:]
        tokens.extend(lp)
        if len(lp):
            step_means.append(lp.mean())
    out["local_naturalness"] = np.mean(step_means) if step_aggregate == "step_mean" else np.mean(tokens)
    out["num_steps"] = len(step_list)
    out["step_means"] = step_means
    return out


CASES = [
    dict(window=1),
    dict(window=4),
    dict(window=0.5),
    dict(window=2, include_prompt=False),
    dict(window=4, drop_first_token=True),
    dict(window=0.5, include_prompt=False, drop_first_token=True),
    dict(window=3, step_aggregate="token_mean"),
]

PROMPTS = ["What is 3 + 4? Explain.", "A train goes 60 km in 1.5 hours. How fast is it?"]
RESPONSES = [
    "First, add the numbers. 3 + 4 = 7. So the sum is 7.\n\nCheck: 7 - 4 = 3! Good.\nThe answer is 7.",
    "Speed is distance over time. 60 / 1.5 = 40. Really? Yes. The train goes 40 km per hour. "
    "Step 1: divide.\nStep 2: report.\nStep 3: done. The answer is 40.",
]


def _check(scorer_kwargs, model, tokenizer, prompts, responses):
    scorer = NaturalnessScorer(model, tokenizer, metrics=("global", "local", "rsr"), return_steps=True, **scorer_kwargs)
    got = scorer({"prompt": list(prompts), "response": list(responses)})
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ref = reference_scores(model, tokenizer, prompt, response, **scorer_kwargs)
        assert got["num_steps"][i] == ref["num_steps"]
        for column in ("global_naturalness", "local_naturalness", "rsr"):
            assert got[column][i] == pytest.approx(ref[column], abs=TOL), (column, i, scorer_kwargs)
        step_means = [m for m in got["step_logprobs"][i] if m is not None]
        np.testing.assert_allclose(step_means, ref["step_means"], atol=TOL)


@pytest.mark.parametrize("kwargs", CASES, ids=[str(c) for c in CASES])
def test_fast_scorer_matches_slow_reference(kwargs, tiny_model, tiny_tokenizer):
    _check(kwargs, tiny_model, tiny_tokenizer, PROMPTS, RESPONSES)


def test_matches_reference_without_chat_template_and_with_tiny_batches():
    tokenizer = build_tokenizer(chat_template=None)
    model = build_model(len(tokenizer), seed=3)
    scorer_kwargs = dict(window=2, max_tokens_per_batch=16)  # forces many small batches
    scorer = NaturalnessScorer(model, tokenizer, metrics="global,local,rsr", **scorer_kwargs)
    got = scorer({"prompt": PROMPTS, "response": RESPONSES})
    for i in range(2):
        ref = reference_scores(model, tokenizer, PROMPTS[i], RESPONSES[i], window=2)
        assert got["local_naturalness"][i] == pytest.approx(ref["local_naturalness"], abs=TOL)
        assert got["global_naturalness"][i] == pytest.approx(ref["global_naturalness"], abs=TOL)


def test_local_only_and_single_row_call(tiny_model, tiny_tokenizer):
    scorer = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics=("local",), window=1)
    got = scorer({"prompt": PROMPTS[0], "response": RESPONSES[0]})
    ref = reference_scores(tiny_model, tiny_tokenizer, PROMPTS[0], RESPONSES[0], window=1)
    assert set(got) == {"local_naturalness", "num_response_tokens", "num_steps"}
    assert got["local_naturalness"] == pytest.approx(ref["local_naturalness"], abs=TOL)


@pytest.mark.skipif(not MATH_L5.exists(), reason="needs ../shared/data")
def test_matches_reference_on_real_rows_with_tiny_model(tiny_model, tiny_tokenizer):
    rows = [r for r in read_jsonl(MATH_L5, 400) if r["response"]][::37][:8]
    for kwargs in (dict(window=4), dict(window=0.5, include_prompt=False, drop_first_token=True)):
        _check(kwargs, tiny_model, tiny_tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows])


def test_empty_response_gives_none_and_a_warning(tiny_model, tiny_tokenizer, caplog):
    scorer = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="global,local,rsr")
    got = scorer({"prompt": ["q", "q"], "response": ["", None]})
    assert got["global_naturalness"] == [None, None]
    assert got["local_naturalness"] == [None, None]
    assert got["num_response_tokens"] == [0, 0]
    assert "no scorable response token" in caplog.text
