"""The fast scorer against a slow, obviously-correct reference: one forward pass per window, batch 1."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from conftest import MATH_L5, build_model, build_tokenizer, read_jsonl

from hf_localnat import NaturalnessScorer
from hf_localnat.segmentation import split_steps

TOL = 1e-4


def reference_prompt_ids(tokenizer, prompt: str, template_kwargs=None) -> list[int]:
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False, **(template_kwargs or {})
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


@torch.no_grad()
def full_entropies(model, context: list[int], target: list[int]) -> np.ndarray:
    """-sum p log p of the whole distribution at each target position: one plain forward, full float32 logits."""
    logits = model(torch.tensor([context + target])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)[len(context) - 1 : len(context) + len(target) - 1]
    return (-(logp.exp() * logp).sum(-1)).numpy().astype(np.float64)


def reference_scores(
    model,
    tokenizer,
    prompt,
    response,
    window=4,
    include_prompt=True,
    drop_first_token=False,
    drop_first_tokens=None,
    step_aggregate="step_mean",
    splitter="sentence",
    max_context=None,
    max_response_tokens=None,
    template_kwargs=None,
    score_part="all",
):
    """The scores by their definition. ``max_context``: a forward pass longer than this is not made, and what it
    would have scored is None (the full-context metrics, or that step); ``max_response_tokens`` likewise.

    Reasoning traces: when the rendered prompt ends with ``<think>`` and the response starts with it (whitespace
    aside), the response's whitespace, that tag and the whitespace after it are not scored. Steps never cross
    ``</think>``; ``score_part`` keeps the steps of the reasoning (up to and with the tag) or of the answer."""
    prompt_ids = reference_prompt_ids(tokenizer, prompt, template_kwargs)
    rendered = ""
    if tokenizer.chat_template:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False, **(template_kwargs or {})
        )
    opening = re.match(r"\s*<think>\s*", response)
    if rendered.rstrip().endswith("<think>") and opening:
        response = response[opening.end() :]
    if not response.strip():
        response = ""
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    close = response.find("</think>")
    cut = close + len("</think>") if close >= 0 and response[close + len("</think>") :].strip() else len(response)
    spans = split_steps(response[:cut], splitter, tokenizer=tokenizer) if response else []
    parts = ["reasoning"] * len(spans)
    if cut < len(response):
        answer = [(s + cut, e + cut) for s, e in split_steps(response[cut:], splitter, tokenizer=tokenizer)]
        spans, parts = spans + answer, parts + ["answer"] * len(answer)
    # Token -> step by a plain scan: the step holding the token's first character.
    steps: dict[int, list[int]] = {}
    for t, (start, _) in enumerate(enc["offset_mapping"]):
        owner = next((k for k, (s, e) in enumerate(spans) if s <= start < e), len(spans) - 1)
        steps.setdefault(owner, []).append(t)
    step_list = [steps[k] for k in sorted(steps)]
    step_kept = [score_part in ("all", parts[k]) for k in sorted(steps)]

    def fits(length: int) -> bool:
        return max_context is None or length <= max_context

    # local drops nothing unless told (LALP); aslec_drop drops 1 unless told (ASLEC's function default).
    local_drop = 1 if drop_first_token else (drop_first_tokens or 0)
    aslec_n = 1 if drop_first_token else (1 if drop_first_tokens is None else drop_first_tokens)
    full_columns = ("global_naturalness", "rsr", "aslec_drop", "rsr_mean_rank", "rsr_mean_surprisal", "ifd", "entropy")
    casl_columns = ("casl_mean_logprob", "casl_head_logprob", "casl_tail_logprob", "casl_head_fraction")
    out = dict.fromkeys(full_columns + casl_columns)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    kept_tokens = [t for step, kept in zip(step_list, step_kept, strict=True) if kept for t in step]
    fit = fits(len(prompt_ids) + len(ids)) and (max_response_tokens is None or len(ids) <= max_response_tokens)
    fit = fit and fits(1 + len(ids))  # ifd's response-alone pass
    if ids and fit and kept_tokens:
        lp_all, ranks = full_logprobs(model, prompt_ids, ids)
        lp_kept, ranks_kept = lp_all[kept_tokens], ranks[kept_tokens]
        kept_steps = [step for step, kept in zip(step_list, step_kept, strict=True) if kept]
        after_drop = [lp_all[t] for step in kept_steps for t in step[aslec_n:]]
        heads = [t for step in kept_steps for t in step[:aslec_n]]
        tails = [t for step in kept_steps for t in step[aslec_n:]]
        alone, _ = full_logprobs(model, [start], ids)  # IFD: the response after the start token alone
        out = {
            "global_naturalness": lp_kept.mean(),
            "rsr": np.minimum(ranks_kept, 100).sum() / (-lp_kept).sum(),
            "aslec_drop": float(np.mean(after_drop)) if after_drop else None,
            "rsr_mean_rank": np.minimum(ranks_kept, 100).mean(),
            "rsr_mean_surprisal": -lp_kept.mean(),
            "ifd": (-lp_kept.mean()) / (-alone[kept_tokens].mean()),
            "entropy": full_entropies(model, prompt_ids, ids)[kept_tokens].mean(),
            "casl_mean_logprob": lp_kept.mean(),
            "casl_head_logprob": lp_all[heads].mean() if heads else -16.0,
            "casl_tail_logprob": lp_all[tails].mean() if tails else -16.0,
            "casl_head_fraction": len(heads) / len(kept_tokens),
        }
    base = prompt_ids if include_prompt else [tokenizer.bos_token_id]
    step_means, tokens = [], []
    out["steps_over_context"] = 0
    for j, step in enumerate(step_list):
        if not step_kept[j]:
            continue
        w = min(j, window if isinstance(window, int) else math.ceil(window * j))
        context = base + [ids[t] for s in step_list[j - w : j] for t in s]
        if not fits(len(context) + len(step)):
            out["steps_over_context"] += 1
            continue
        lp, _ = full_logprobs(model, context, [ids[t] for t in step])
        lp = lp[local_drop:]
        tokens.extend(lp)
        if len(lp):
            step_means.append(lp.mean())
    if not tokens:
        out["local_naturalness"] = None
    else:
        by_aggregate = {"step_mean": np.mean(step_means), "token_mean": np.mean(tokens), "min": np.min(step_means)}
        out["local_naturalness"] = by_aggregate[step_aggregate]
    out["num_steps"] = sum(step_kept)
    out["step_spans"] = [[spans[k][0], spans[k][1]] for k in sorted(steps)]
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
    dict(window=2, step_aggregate="min"),
    dict(window=0.5, drop_first_token=True, step_aggregate="min"),
    dict(window=2, drop_first_tokens=2),  # ASLEC's official driver setting, for local and aslec_drop
    dict(window=4, drop_first_tokens=0),  # aslec_drop with nothing dropped is the global token mean
]

PROMPTS = ["What is 3 + 4? Explain.", "A train goes 60 km in 1.5 hours. How fast is it?"]
RESPONSES = [
    "First, add the numbers. 3 + 4 = 7. So the sum is 7.\n\nCheck: 7 - 4 = 3! Good.\nThe answer is 7.",
    "Speed is distance over time. 60 / 1.5 = 40. Really? Yes. The train goes 40 km per hour. "
    "Step 1: divide.\nStep 2: report.\nStep 3: done. The answer is 40.",
]


ALL_METRICS = ("global", "local", "rsr", "aslec_drop", "casl", "ifd", "entropy")
ROW_COLUMNS = (
    "global_naturalness", "local_naturalness", "rsr", "aslec_drop", "rsr_mean_rank", "rsr_mean_surprisal", "ifd",
    "entropy", "casl_mean_logprob", "casl_head_logprob", "casl_tail_logprob", "casl_head_fraction",
)  # fmt: skip


def _check(scorer_kwargs, model, tokenizer, prompts, responses, max_context=None):
    scorer = NaturalnessScorer(model, tokenizer, metrics=ALL_METRICS, return_steps=True, **scorer_kwargs)
    got = scorer({"prompt": list(prompts), "response": list(responses)})
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ref = reference_scores(model, tokenizer, prompt, response, max_context=max_context, **scorer_kwargs)
        assert got["num_steps"][i] == ref["num_steps"]
        for column in ROW_COLUMNS:
            if ref[column] is None:
                assert got[column][i] is None, (column, i, scorer_kwargs)
            else:
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
    assert caplog.text.count("has nothing to score") == 1  # once per scorer, not once per row


# ---------------------------------------------------------------------------------------------------------
# The length guard: nothing longer than the student's context is read
# ---------------------------------------------------------------------------------------------------------

LONG_RESPONSE = (
    "We start. " + "Then we add one more to the running total and keep going " * 4 + "until it ends. "
    + "Next step. Another step. The answer is 7."
)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(window=2),
        dict(window=0.5),
        dict(window=1, include_prompt=False),
        dict(window=3, step_aggregate="token_mean"),
        dict(window=2, step_aggregate="min"),
    ],
    ids=str,
)
def test_rows_longer_than_the_context_match_the_reference(kwargs, caplog):
    """A 96-position student: the long row loses its full-context metrics and its too-long windows, and nothing else."""
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), seed=5, max_position_embeddings=96)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    responses = [RESPONSES[0][:40], RESPONSES[1], LONG_RESPONSE]
    pairs = zip(prompts, responses, strict=True)
    lengths = [len(reference_prompt_ids(tokenizer, p)) + len(tokenizer(r, add_special_tokens=False)["input_ids"])
               for p, r in pairs]  # fmt: skip
    assert lengths[0] <= 96 < min(lengths[1:])  # the case this test is about
    _check(kwargs, model, tokenizer, prompts, responses, max_context=96)
    ref = reference_scores(model, tokenizer, prompts[2], responses[2], max_context=96, **kwargs)
    assert ref["steps_over_context"] > 0 and ref["local_naturalness"] is not None  # both paths are exercised

    caplog.clear()
    scorer = NaturalnessScorer(model, tokenizer, metrics="global,local,rsr", **kwargs)
    for _ in range(2):  # like two batches of a map
        scorer({"prompt": prompts, "response": responses})
    assert scorer.length_counts.rows_without_full_context == 4
    assert scorer.length_counts.steps_over_context >= 2 * ref["steps_over_context"]
    warnings = [r for r in caplog.records if "do not fit the student's context" in r.getMessage()]
    assert len(warnings) == 1  # once per scorer, not once per batch


def test_max_response_tokens_drops_only_the_full_context_metrics(tiny_model, tiny_tokenizer):
    limited = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="global,local,rsr", max_response_tokens=20)
    plain = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="global,local,rsr")
    got, want = (s.score(PROMPTS, RESPONSES) for s in (limited, plain))
    assert all(n > 20 for n in got["num_response_tokens"])
    assert got["global_naturalness"] == [None, None] and got["rsr"] == [None, None]
    assert got["local_naturalness"] == pytest.approx(want["local_naturalness"], abs=TOL)
    ref = reference_scores(tiny_model, tiny_tokenizer, PROMPTS[1], RESPONSES[1], window=4, max_response_tokens=20)
    assert ref["global_naturalness"] is None and got["local_naturalness"][1] == pytest.approx(ref["local_naturalness"])


def test_engine_never_reads_past_the_context(monkeypatch):
    """Every request the engine gets fits: a 12k-token response, one 3k-token sentence, a 512-position student."""
    from hf_localnat.engine import LogProbEngine

    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), max_position_embeddings=512)
    longest = []
    real_score = LogProbEngine.score

    def spy(engine, requests, **kwargs):
        longest.append(max(len(r.prefix) + len(r.context) + len(r.target) for r in requests))
        return real_score(engine, requests, **kwargs)

    monkeypatch.setattr(LogProbEngine, "score", spy)
    response = "Add two. " * 1500 + "and " * 3000 + ". The answer is 4."
    scorer = NaturalnessScorer(model, tokenizer, metrics="global,local,rsr", window=0.25, return_steps=True)
    got = scorer.score(["What is 2 + 2?"], [response])
    assert got["num_response_tokens"][0] > 10_000
    assert max(longest) <= 512
    assert got["global_naturalness"] == [None] and got["local_naturalness"][0] is not None
    assert None in got["step_logprobs"][0]  # the 3k-token sentence, and the fraction windows past 512 tokens


def test_whitespace_only_response_counts_as_empty(tiny_model, tiny_tokenizer, caplog):
    scorer = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="global,local,rsr", return_steps=True)
    got = scorer({"prompt": ["q", "q", "q"], "response": ["", " \n\t ", "x"]})
    for column in ("global_naturalness", "local_naturalness", "rsr", "num_response_tokens", "num_steps"):
        assert got[column][1] == got[column][0], column
    assert got["num_response_tokens"][1] == 0 and got["local_naturalness"][1] is None
    assert got["step_spans"][1] == []


@pytest.mark.parametrize("include_prompt", [True, False])
def test_several_windows_in_one_run_match_one_reference_each(monkeypatch, tiny_model, tiny_tokenizer, include_prompt):
    from hf_localnat.engine import LogProbEngine

    full_passes = []
    real_score = LogProbEngine.score

    def spy(engine, requests, **kwargs):
        full_passes.append(sum(len(r.context) == 0 and len(r.target) > 40 for r in requests))
        return real_score(engine, requests, **kwargs)

    monkeypatch.setattr(LogProbEngine, "score", spy)
    scorer = NaturalnessScorer(
        tiny_model, tiny_tokenizer, metrics="global,local,ifd", window="1,2,4,8", include_prompt=include_prompt
    )
    got = scorer({"prompt": PROMPTS, "response": RESPONSES})
    assert scorer.output_columns[:6] == [
        "global_naturalness", "local_naturalness", "local_naturalness@1", "local_naturalness@2",
        "local_naturalness@4", "local_naturalness@8",
    ]  # fmt: skip
    for i in range(2):
        for window in (1, 2, 4, 8):
            ref = reference_scores(
                tiny_model, tiny_tokenizer, PROMPTS[i], RESPONSES[i], window=window, include_prompt=include_prompt
            )
            assert got[f"local_naturalness@{window}"][i] == pytest.approx(ref["local_naturalness"], abs=TOL)
        assert got["local_naturalness"][i] == got["local_naturalness@1"][i]
    # One pass over the prompt (or start token) + whole response per row and context, shared by all four windows.
    assert full_passes == [4]


def test_window_list_is_canonical_and_round_trips():
    from hf_localnat import ScoringConfig

    config = ScoringConfig(window="2, 1,2,0.5")
    assert config.window == (2, 1, 0.5) and config.windows == (2, 1, 0.5)
    assert config.command_args() == ["--window", "2,1,0.5"]
    assert ScoringConfig.from_dict(config.to_dict()) == config
    assert ScoringConfig(window=[4]).window == 4 == ScoringConfig().window


def test_casl_fit_matches_the_normal_equations_per_teacher(tiny_model, tiny_tokenizer):
    """casl from score_dataset: one regression per teacher, checked by solving the normal equations directly."""
    import datasets

    from hf_localnat.scorer import score_dataset

    rng = np.random.default_rng(0)
    words = ["Add the numbers.", "So 3 + 4 = 7.", "Check it!", "The answer is 7.", "We divide 60 by 1.5.", "Done."]
    rows = {"prompt": [], "response": [], "teacher": []}
    for teacher in ("a", "b"):
        for _ in range(12):
            picked = rng.choice(len(words), size=int(rng.integers(2, 6)))
            rows["prompt"].append(PROMPTS[int(rng.integers(0, 2))])
            rows["response"].append(" ".join(words[k] for k in picked))
            rows["teacher"].append(teacher)
    scorer = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="casl", drop_first_tokens=2)
    scored = score_dataset(datasets.Dataset.from_dict(rows), scorer, progress=False)
    for teacher in ("a", "b"):
        part = scored.filter(lambda r, t=teacher: r["teacher"] == t)
        refs = [
            reference_scores(tiny_model, tiny_tokenizer, p, r, drop_first_tokens=2)
            for p, r in zip(part["prompt"], part["response"], strict=True)
        ]
        y = np.array([ref["casl_mean_logprob"] for ref in refs])
        features = ("casl_tail_logprob", "casl_head_logprob", "casl_head_fraction")
        x = np.array([[1.0, *(ref[f] for f in features)] for ref in refs])
        beta = np.linalg.solve(x.T @ x, x.T @ y)  # intercept, beta_tail, beta_head, gamma
        np.testing.assert_allclose(part["casl"], y - beta[3] * x[:, 3], atol=1e-4)
    # The same responses fitted as one pool give other values: casl depends on the pool it was fitted on.
    pooled = score_dataset(datasets.Dataset.from_dict(rows), NaturalnessScorer(
        tiny_model, tiny_tokenizer, metrics="casl", drop_first_tokens=2, casl_fit_by="no_such_column"
    ), progress=False)  # fmt: skip
    assert not np.allclose(pooled["casl"], scored["casl"])


def test_add_casl_needs_its_feature_columns():
    import datasets

    from hf_localnat.errors import LocalnatError
    from hf_localnat.metrics import add_casl

    with pytest.raises(LocalnatError, match="Score with --metrics including casl"):
        add_casl(datasets.Dataset.from_dict({"casl_mean_logprob": [-1.0]}))
