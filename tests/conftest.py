"""Shared fixtures: a tiny byte-level BPE tokenizer and tiny random Llama models, built in-process."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MATH_L5 = SHARED / "multiteacher" / "zeroeval_math_l5.jsonl"
DEMO_POOL = REPO / "hf_localnat" / "data" / "demo_pool.jsonl"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def accelerate_launch(num_processes: int = 2) -> list[str]:
    """The ``accelerate launch`` prefix that starts CPU processes here.

    ``--multi_gpu`` selects accelerate's multi-process launcher (``--cpu`` would mean one process); without CUDA
    the processes use gloo on CPU.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]


def _corpus() -> list[str]:
    texts = [
        "First, solve the inequalities separately. The answer is 42.",
        "Step 1: Add 3 and 4 to get 7.\nStep 2: Multiply by 2.\n\nFinal answer: 14",
        "Let $x$ be the number of apples. Then $3x = 12$, so $x = 4$. \\boxed{4}",
        "Really? Yes! We check: 3.14 is close to pi.\n",
    ]
    if DEMO_POOL.exists():
        texts += [r["prompt"] + "\n" + r["response"] for r in read_jsonl(DEMO_POOL, 80)]
    if MATH_L5.exists():
        texts += [r["prompt"] + "\n" + r["response"] for r in read_jsonl(MATH_L5, 60)]
    return texts


def build_tokenizer(chat_template: str | None = CHAT_TEMPLATE, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few texts: real offsets, any text encodes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = chat_template
    return fast


def build_model(vocab_size: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=1,
        **overrides,
    )
    model = LlamaForCausalLM(config).eval()
    # Random init gives near-uniform predictions; sharpen them so scores differ clearly between texts.
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer) -> LlamaForCausalLM:
    return build_model(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory, tiny_model, tiny_tokenizer) -> Path:
    """The tiny model saved as a student folder, for CLI and multi-process tests."""
    path = tmp_path_factory.mktemp("tiny-student")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
