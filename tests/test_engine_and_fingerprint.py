"""The log-prob engine's batching and memory bounds, and the scorer's fingerprint / pickling contract."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import DEMO_POOL
from datasets import load_dataset
from datasets.fingerprint import Hasher
from test_scorer_reference import full_logprobs
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_localnat import NaturalnessScorer
from hf_localnat.engine import LogProbEngine, ScoreRequest


def _requests(vocab: int, seed: int = 0) -> list[ScoreRequest]:
    rng = np.random.default_rng(seed)
    prompts = [tuple(rng.integers(4, vocab, size=n).tolist()) for n in (1, 7, 12)]
    out = []
    for prompt in prompts:
        for _ in range(4):
            context = tuple(rng.integers(4, vocab, size=int(rng.integers(0, 9))).tolist())
            target = tuple(rng.integers(4, vocab, size=int(rng.integers(1, 11))).tolist())
            out.append(ScoreRequest(prompt, context, target))
    out.append(ScoreRequest((3, 5), (), ()))  # an empty target is allowed and scores nothing
    return out


@pytest.mark.parametrize("budget", [8, 64, 100_000])
@pytest.mark.parametrize("cache_ratio", [0.0, float("inf")], ids=["prefix-cached", "prefix-folded"])
@pytest.mark.parametrize("fill", [0.0, 0.95])
def test_engine_matches_plain_forward_at_any_batch_budget(tiny_model, budget, cache_ratio, fill):
    requests = _requests(tiny_model.config.vocab_size)
    engine = LogProbEngine(
        tiny_model,
        max_tokens_per_batch=budget,
        logits_chunk_bytes=4 * 7 * tiny_model.config.vocab_size,
        prefix_cache_min_ratio=cache_ratio,
        min_batch_fill=fill,
    )
    assert bool(engine._worth_caching(requests[4].prefix, requests[4:8])) == (cache_ratio == 0.0)
    results = engine.score(requests, with_ranks=True)
    for request, result in zip(requests, results, strict=True):
        if not request.target:
            assert len(result.logprobs) == 0
            continue
        lp, ranks = full_logprobs(tiny_model, list(request.prefix + request.context), list(request.target))
        np.testing.assert_allclose(result.logprobs, lp, atol=1e-5)
        np.testing.assert_array_equal(result.ranks, ranks)


def test_output_projection_sees_only_scored_positions_in_bounded_chunks(tiny_model):
    requests = _requests(tiny_model.config.vocab_size, seed=1)
    vocab = tiny_model.config.vocab_size
    chunk_rows = 5
    engine = LogProbEngine(tiny_model, logits_chunk_bytes=4 * vocab * chunk_rows)
    seen: list[tuple[int, ...]] = []
    handle = engine._lm_head.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    try:
        engine.score(requests)
    finally:
        handle.remove()
    assert all(len(shape) == 2 and shape[0] <= chunk_rows for shape in seen)  # never [batch, tokens, vocab]
    assert sum(shape[0] for shape in seen) == sum(len(r.target) for r in requests)


def test_engine_restores_training_mode(tiny_model):
    tiny_model.train()
    try:
        LogProbEngine(tiny_model).score(_requests(tiny_model.config.vocab_size)[:2])
        assert tiny_model.training
    finally:
        tiny_model.eval()


@pytest.fixture()
def demo_ds(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    return load_dataset("json", data_files=str(DEMO_POOL), split="train", cache_dir=str(tmp_path / "cache")).select(
        range(24)
    )


def test_map_rerun_hits_the_cache_and_config_changes_miss_it(tiny_model, tiny_tokenizer, demo_ds, monkeypatch):
    scorer = NaturalnessScorer(tiny_model, tiny_tokenizer, window=4)
    first = demo_ds.map(scorer, batched=True, batch_size=8)
    assert first.cache_files, "a file-backed dataset should be cached by map"

    def fail(*_args, **_kwargs):
        raise AssertionError("scored again instead of reusing the cache")

    with monkeypatch.context() as patch:
        patch.setattr(NaturalnessScorer, "score", fail)
        again = demo_ds.map(NaturalnessScorer(tiny_model, tiny_tokenizer, window=4), batched=True, batch_size=8)
    assert again.cache_files[0]["filename"] == first.cache_files[0]["filename"]
    assert again["local_naturalness"] == first["local_naturalness"]

    names = {first.cache_files[0]["filename"]}
    for changed in (
        NaturalnessScorer(tiny_model, tiny_tokenizer, window=2),
        NaturalnessScorer(tiny_model, tiny_tokenizer, window=4, metrics=("local", "rsr")),
        NaturalnessScorer(tiny_model, tiny_tokenizer, window=4, drop_first_token=True),
    ):
        names.add(demo_ds.map(changed, batched=True, batch_size=8).cache_files[0]["filename"])
    assert len(names) == 4


def test_fingerprint_changes_when_weights_are_trained_but_never_hashes_them(tiny_model, tiny_tokenizer):
    scorer = NaturalnessScorer(tiny_model, tiny_tokenizer)
    before = Hasher.hash(scorer)
    assert len(pickle.dumps(scorer)) < 20_000  # configuration and identity only, no weight tensors
    param = next(tiny_model.parameters())
    with torch.no_grad():
        param.add_(0.01)
    try:
        assert Hasher.hash(scorer) != before
    finally:
        with torch.no_grad():
            param.sub_(0.01)


def test_pickled_scorer_reloads_its_student_lazily(tiny_student_dir, demo_ds):
    model = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_student_dir)
    rows = demo_ds[:4]
    expected = NaturalnessScorer(model, tokenizer, metrics="local")(rows)
    lazy = NaturalnessScorer(student=str(tiny_student_dir), metrics="local")
    clone = pickle.loads(pickle.dumps(lazy))
    assert clone.model is None
    got = clone(rows)
    np.testing.assert_allclose(got["local_naturalness"], expected["local_naturalness"], atol=1e-6)


def test_in_memory_model_cannot_be_reloaded_in_a_worker(tiny_model, tiny_tokenizer, demo_ds):
    clone = pickle.loads(pickle.dumps(NaturalnessScorer(tiny_model, tiny_tokenizer)))
    with pytest.raises(ValueError, match="save_pretrained"):
        clone(demo_ds[:1])
