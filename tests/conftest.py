"""Shared fixtures: a tiny byte-level BPE tokenizer and tiny random Llama models, built in-process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

pytest_plugins = ["hub_server"]  # the `hub_server` fixture: a Hub-compatible HTTP server on 127.0.0.1

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MATH_L5 = SHARED / "multiteacher" / "zeroeval_math_l5.jsonl"
DEMO_POOL = REPO / "tests" / "data" / "synthetic_pool.jsonl"  # 4 template teachers; the trainer tests need its shape

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


DISTRIBUTED_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_accelerate(args: list[str], tmp_path: Path, num_processes: int = 2) -> subprocess.CompletedProcess:
    """Run ``accelerate launch ... ARGS`` as CPU processes (gloo) with a clean environment.

    ``--multi_gpu`` selects accelerate's multi-process launcher (``--cpu`` would mean one process). The free
    port is picked just before the launch; if another process took it meanwhile, the launch is retried once.
    """
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV and not k.startswith("ACCELERATE_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf-datasets-cache"))
    for _attempt in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = [
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
        done = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=300)
        if done.returncode == 0 or "address already in use" not in done.stderr.lower():
            break
    if done.returncode != 0:
        # A rank killed by a C++ abort leaves its reason in lines such as "terminate called ... what(): ...";
        # keep those (and Python errors) in front, and the whole log next to the test's files.
        (tmp_path / "accelerate-stderr.txt").write_text(done.stderr)
        keep = ("rror", "terminate", "what()", "bort", "Exception", "Timeout", "timed out")
        errors = [line for line in done.stderr.splitlines() if any(k in line for k in keep)]
        done.stderr = "\n".join(errors[-30:]) + "\n...\n" + done.stderr[-2000:]
    return done


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
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=1,
    )
    config = LlamaConfig(**{**settings, **overrides})
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
