"""Long reasoning traces as users bring them: reasoning tags and reasoning templates, score_part, shared fraction
windows, and the training examples built as they were scored. Every score is checked against the slow reference of
test_scorer_reference, which follows the rules on its own (regexes, one forward pass per quantity)."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from conftest import build_model, build_tokenizer
from test_scorer_reference import TOL, reference_prompt_ids, reference_scores

import hf_localnat.metrics
from hf_localnat import NaturalnessScorer, ScoringConfig
from hf_localnat.scorer import score_dataset
from trainer_callbacks import ReselectCallback

# A template that opens the reasoning in the generation prompt (as R1-distilled students do), and one with an
# enable_thinking switch that, switched off, writes an empty reasoning block (as Qwen3 does).
R1_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)
SWITCH_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

PROMPTS = ["What is 3 + 4?", "A train goes 60 km in 1.5 hours. How fast is it?", "What is 2 + 2?", "What is 1 + 1?"]
RESPONSES = [
    "<think>\nFirst, add the numbers. 3 + 4 = 7. Check: 7 - 4 = 3!\n</think>\n\nThe answer is 7.",
    "  <think>  Speed is distance over time. 60 / 1.5 = 40. Really? Yes.</think>The train goes 40 km per hour.",
    "Two and two make four. The answer is 4.",  # no tag at all
    "<think>\nOne and one. That is two. So 2.",  # no closing tag: all reasoning
]


@pytest.fixture(scope="module")
def r1():
    tokenizer = build_tokenizer(chat_template=R1_TEMPLATE)
    return build_model(len(tokenizer), seed=7), tokenizer


CASES = [
    dict(window=2),
    dict(window=0.5),
    dict(window=2, score_part="reasoning"),
    dict(window=0.5, score_part="answer"),
    dict(window=1, score_part="answer", step_aggregate="token_mean"),
]


@pytest.mark.parametrize("kwargs", CASES, ids=str)
def test_reasoning_template_matches_the_reference(r1, kwargs):
    model, tokenizer = r1
    scorer = NaturalnessScorer(model, tokenizer, metrics="global,local,rsr", return_steps=True, **kwargs)
    got = scorer.score(PROMPTS, RESPONSES)
    reference_options = dict(kwargs)
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        ref = reference_scores(model, tokenizer, prompt, response, **reference_options)
        assert got["num_steps"][i] == ref["num_steps"], (i, kwargs)
        for column in ("global_naturalness", "local_naturalness", "rsr"):
            if ref[column] is None:
                assert got[column][i] is None, (column, i, kwargs)
            else:
                assert got[column][i] == pytest.approx(ref[column], abs=TOL), (column, i, kwargs)
        # step_spans are in the original response's characters (the skipped tag included in the offsets).
        skip = len(response) - len(response.lstrip()) if response.lstrip().startswith("<think>") else 0
        if skip or response.lstrip().startswith("<think>"):
            assert got["step_spans"][i][0][0] > skip  # after the tag the prompt already held
        assert got["step_spans"][i] == [[s + _skip(response), e + _skip(response)] for s, e in ref["step_spans"]]


def _skip(response: str) -> int:
    """Characters before the scored text, by a plain scan: whitespace, <think>, whitespace."""
    i = 0
    while i < len(response) and response[i].isspace():
        i += 1
    if not response.startswith("<think>", i):
        return 0
    i += len("<think>")
    while i < len(response) and response[i].isspace():
        i += 1
    return i


def test_without_the_tag_in_the_prompt_nothing_is_skipped(r1):
    """The same responses under a template that does not open the reasoning: every character is scored."""
    _, r1_tokenizer = r1
    tokenizer = build_tokenizer()  # the conftest template: no <think> in the generation prompt
    model = build_model(len(tokenizer), seed=7)
    got = NaturalnessScorer(model, tokenizer, metrics="local", window=2, return_steps=True).score(PROMPTS, RESPONSES)
    assert all(spans[0][0] == 0 for spans in got["step_spans"])
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        ref = reference_scores(model, tokenizer, prompt, response, window=2)
        assert got["local_naturalness"][i] == pytest.approx(ref["local_naturalness"], abs=TOL)


def test_chat_template_kwargs_reach_the_template():
    tokenizer = build_tokenizer(chat_template=SWITCH_TEMPLATE)
    model = build_model(len(tokenizer), seed=3)
    kwargs = {"enable_thinking": False}
    config = ScoringConfig(metrics="global,local", window=2, chat_template_kwargs=json.dumps(kwargs))
    assert config.template_kwargs == kwargs
    assert ScoringConfig(metrics="global,local", window=2, chat_template_kwargs=kwargs) == config  # a dict works too
    got = NaturalnessScorer(model, tokenizer, config).score(PROMPTS, RESPONSES)
    plain = NaturalnessScorer(model, tokenizer, metrics="global,local", window=2).score(PROMPTS, RESPONSES)
    assert reference_prompt_ids(tokenizer, PROMPTS[0], kwargs) != reference_prompt_ids(tokenizer, PROMPTS[0])
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        # The prompt ends with </think>, not <think>: the rule does not apply, the empty block is context.
        ref = reference_scores(model, tokenizer, prompt, response, window=2, template_kwargs=kwargs)
        assert got["global_naturalness"][i] == pytest.approx(ref["global_naturalness"], abs=TOL)
        assert got["local_naturalness"][i] == pytest.approx(ref["local_naturalness"], abs=TOL)
        assert got["global_naturalness"][i] != pytest.approx(plain["global_naturalness"][i], abs=1e-6)


def test_no_closing_tag_is_all_reasoning(r1):
    model, tokenizer = r1
    answer = NaturalnessScorer(model, tokenizer, metrics="global,local", score_part="answer").score(
        PROMPTS[3:], RESPONSES[3:]
    )
    assert answer["local_naturalness"] == [None] and answer["global_naturalness"] == [None]
    assert answer["num_steps"] == [0]


def test_training_examples_are_built_as_they_were_scored(r1):
    model, tokenizer = r1
    tokenizer.pad_token = tokenizer.eos_token
    pairs = enumerate(zip(PROMPTS, RESPONSES, strict=True))
    pool = datasets.Dataset.from_list([{"prompt_id": f"p{i}", "prompt": p, "response": r} for i, (p, r) in pairs])
    callback = ReselectCallback(pool, tokenizer, window=2)
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        example = callback.example(row)
        prompt_part = reference_prompt_ids(tokenizer, prompt)
        scored = tokenizer(response[_skip(response) :], add_special_tokens=False)["input_ids"]
        assert example["input_ids"] == prompt_part + scored + [tokenizer.eos_token_id], row
        assert example["labels"] == [-100] * len(prompt_part) + scored + [tokenizer.eos_token_id], row


def test_provenance_counts_the_rows_the_rule_applied_to(r1):
    model, tokenizer = r1
    ds = datasets.Dataset.from_dict({"prompt": PROMPTS, "response": RESPONSES})
    scored = score_dataset(ds, NaturalnessScorer(model, tokenizer, metrics="local", window=2), progress=False)
    record = json.loads(scored.info.description)["hf_localnat"]
    assert record["think_tag_rows"] == 3  # all but the untagged response
    assert record["scorer"]["think_open"] == "<think>" and record["scorer"]["score_part"] == "all"


def test_shared_fraction_windows_equal_one_request_per_window(r1, monkeypatch):
    """Steps whose windows start at the same step share one request; the scores are those of one per step."""
    model, tokenizer = r1
    response = " ".join(f"Step {i}: add {i} to the total." for i in range(30))
    prompts, responses = ["Sum 0 to 29."], [response]
    shared = NaturalnessScorer(model, tokenizer, metrics="local", window=0.9, return_steps=True)
    requests = []
    real = shared.engine.score

    def count(batch, **kwargs):
        requests.append(len(batch))
        return real(batch, **kwargs)

    monkeypatch.setattr(shared.engine, "score", count)
    with_sharing = shared.score(prompts, responses)
    monkeypatch.setattr(hf_localnat.metrics, "SHARE_WINDOWS", False)
    alone = NaturalnessScorer(model, tokenizer, metrics="local", window=0.9, return_steps=True)
    monkeypatch.setattr(alone.engine, "score", lambda batch, **kw: requests.append(len(batch)) or real(batch, **kw))
    without = alone.score(prompts, responses)
    assert requests[0] < requests[1] / 3  # window 0.9: about ten steps share each window start
    np.testing.assert_allclose(
        [v for v in with_sharing["step_logprobs"][0] if v is not None],
        [v for v in without["step_logprobs"][0] if v is not None],
        atol=1e-5,
    )
    ref = reference_scores(model, tokenizer, prompts[0], response, window=0.9)
    assert with_sharing["local_naturalness"][0] == pytest.approx(ref["local_naturalness"], abs=TOL)


LONG_TRACE = (
    "<think>\n"
    + " ".join(f"Step {i}: add {i} to the total, which is now {i * (i + 1) // 2}." for i in range(24))
    + "\n</think>\n\n"
    + " ".join(f"Answer line {i}: the sum is 276." for i in range(6))
)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(include_prompt=False, drop_first_token=True),
        dict(score_part="answer"),
        dict(score_part="reasoning", step_aggregate="token_mean"),
        dict(max_context=230),  # some windows (and the full pass) do not fit: groups break at them
    ],
    ids=str,
)
def test_shared_windows_with_every_option_match_the_reference(r1, kwargs):
    """Window 0.9 on a 30-step trace: long shared groups, combined with the options that change what a group reads
    or keeps. Each step's score is checked against the reference, which makes one pass per step."""
    model, tokenizer = r1
    options = dict(kwargs)
    context = options.pop("max_context", None)
    if context is not None:
        model = build_model(len(tokenizer), seed=7, max_position_embeddings=context)
    scorer = NaturalnessScorer(model, tokenizer, metrics="global,local,rsr", window=0.9, return_steps=True, **options)
    got = scorer.score(PROMPTS[:1], [LONG_TRACE])
    ref = reference_scores(model, tokenizer, PROMPTS[0], LONG_TRACE, window=0.9, max_context=context, **options)
    assert got["num_steps"][0] == ref["num_steps"] >= 6
    if context is not None:
        assert got["global_naturalness"][0] is None and scorer.length_counts.steps_over_context > 0
    for column in ("global_naturalness", "local_naturalness", "rsr"):
        if ref[column] is None:
            assert got[column][0] is None, column
        else:
            assert got[column][0] == pytest.approx(ref[column], abs=TOL), column


def test_training_examples_carry_the_template_arguments():
    tokenizer = build_tokenizer(chat_template=SWITCH_TEMPLATE)
    tokenizer.pad_token = tokenizer.eos_token
    pool = datasets.Dataset.from_list([{"prompt_id": "p", "prompt": PROMPTS[0], "response": RESPONSES[0]}])
    kwargs = {"enable_thinking": False}
    callback = ReselectCallback(pool, tokenizer, window=2, chat_template_kwargs=json.dumps(kwargs))
    prompt_part = reference_prompt_ids(tokenizer, PROMPTS[0], kwargs)
    assert prompt_part != reference_prompt_ids(tokenizer, PROMPTS[0])
    assert callback.example(0)["input_ids"][: len(prompt_part)] == prompt_part
    # The prompt ends with </think>, so the rule does not apply: the whole response is trained on.
    response = tokenizer(RESPONSES[0], add_special_tokens=False)["input_ids"]
    assert callback.example(0)["input_ids"][len(prompt_part) :] == response + [tokenizer.eos_token_id]


def test_evaluate_passes_the_template_arguments(monkeypatch):
    from hf_localnat import evaluation

    tokenizer = build_tokenizer(chat_template=SWITCH_TEMPLATE)
    model = build_model(len(tokenizer), seed=3)
    seen = []

    def fake_generate(model, prompts, max_new_tokens, pad_id, eos_ids, max_positions=None):
        seen.extend(tokenizer.decode(ids) for ids in prompts)
        return [([], False) for _ in prompts]

    monkeypatch.setattr(evaluation, "_generate", fake_generate)
    switched_off = {"enable_thinking": False}
    evaluation.evaluate_student(model, tokenizer, ["2+2?"], ["4"], progress=False, template_kwargs=switched_off)
    evaluation.evaluate_student(model, tokenizer, ["2+2?"], ["4"], progress=False)
    assert "</think>" in seen[0] and "</think>" not in seen[1]


def test_long_requests_never_attend_to_a_cache(r1, monkeypatch):
    """Attention over a cached prefix needs a [suffix, prefix + suffix] mask; a long suffix re-reads its prefix
    with the causal fast path instead. Same log-probs either way."""
    from hf_localnat.engine import LogProbEngine, ScoreRequest

    model, tokenizer = r1
    prefix = tuple(range(5, 45))  # 40 shared prompt tokens
    def ids(n: int) -> tuple[int, ...]:
        return tuple(50 + i % 300 for i in range(n))

    requests = [ScoreRequest(prefix, ids(n), tuple(range(60, 68))) for n in (2, 4, 300, 6, 500)]
    cached_widths = []
    real = LogProbEngine._run_batch

    def spy(self, batch, inputs, first_scored, reqs, ids, with_ranks, results, cache, cache_len):
        if cache is not None:
            cached_widths.append(max(len(inputs[j]) for j in batch))
        return real(self, batch, inputs, first_scored, reqs, ids, with_ranks, results, cache, cache_len)

    monkeypatch.setattr(LogProbEngine, "_run_batch", spy)
    bounded = LogProbEngine(model, max_cached_suffix=64).score(requests)
    assert cached_widths and max(cached_widths) <= 64  # the 300- and 500-token windows went the other way
    cached_widths.clear()
    unbounded = LogProbEngine(model, max_cached_suffix=10**9, prefix_cache_min_ratio=0.0).score(requests)
    assert max(cached_widths) > 300  # this engine did attend to the cache with the long ones
    for a, b in zip(bounded, unbounded, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_no_position_past_the_context_in_generation_or_training(caplog):
    from hf_localnat.evaluation import _generate

    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), max_position_embeddings=32)
    prompt = list(range(10, 38))  # 28 positions of 32
    (generated, cut), = _generate(model, [prompt], 10, 0, [], max_positions=32)
    assert len(generated) == 4 and cut
    assert _generate(model, [list(range(10, 50))], 10, 0, [], max_positions=32) == [([], True)]

    from hf_localnat.trainer import ReselectConfig, ReselectingSFTTrainer

    tokenizer.pad_token = tokenizer.eos_token
    pool = datasets.Dataset.from_list([{"prompt_id": "p", "prompt": "What is 2 + 2?", "response": "It is 4. " * 20}])
    args = ReselectConfig(output_dir="/tmp/unused-run", max_length=1024, report_to=[], window=2, save_strategy="no")
    trainer = ReselectingSFTTrainer(model=model, args=args, candidate_dataset=pool, processing_class=tokenizer)
    assert len(trainer.reselect_callback.example(0)["input_ids"]) == 32
    assert "examples are cut at 32" in caplog.text
