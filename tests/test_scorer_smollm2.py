"""The fast scorer against the slow reference on the embedded SmolLM2 student and real teacher rows."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MATH_L5, read_jsonl
from test_scorer_reference import TOL, reference_scores

from hf_localnat import NaturalnessScorer, load_student


@pytest.fixture(scope="module")
def smollm2():
    return load_student()


@pytest.mark.skipif(not MATH_L5.exists(), reason="needs ../shared/data")
@pytest.mark.parametrize("kwargs", [dict(window=4), dict(window=0.5, include_prompt=False, drop_first_token=True)])
def test_smollm2_matches_reference_on_real_rows(smollm2, kwargs):
    model, tokenizer = smollm2
    rows = [r for r in read_jsonl(MATH_L5, 300) if r["response"] and 250 < len(r["response"]) < 700][:3]
    scorer = NaturalnessScorer(model, tokenizer, metrics="global,local,rsr", return_steps=True, **kwargs)
    got = scorer({"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows]})
    for i, row in enumerate(rows):
        ref = reference_scores(model, tokenizer, row["prompt"], row["response"], **kwargs)
        for column in ("global_naturalness", "local_naturalness", "rsr"):
            assert got[column][i] == pytest.approx(ref[column], abs=TOL), column
        np.testing.assert_allclose([m for m in got["step_logprobs"][i] if m is not None], ref["step_means"], atol=TOL)


def test_embedded_student_is_cached_and_named(smollm2):
    model, tokenizer = smollm2
    assert model.hf_localnat_source.student == "embedded:SmolLM2-135M-Instruct"
    assert tokenizer.chat_template
    assert model.config.model_type == "llama"
