"""What GRACE costs per response, against forward-only scoring of the same rows, on CPU.

    .venv/bin/python bench/grace_cost.py                         # tiny random Llama, then SmolLM2-135M
    .venv/bin/python bench/grace_cost.py --no_smollm2 --rows 16  # the tiny model only
    .venv/bin/python bench/grace_cost.py --threads 1             # on a CPU shared with other jobs

Rows: the first ``--rows`` MATH-L5 rows with a response (``../shared/data/multiteacher``), each a (prompt, response)
pair rendered as GRACE renders it (chat template + response + EOS, truncated at the student's context).

Per model and row it times, one row at a time:

- ``forward``: forward-only scoring, no gradient: the decoder, then the log-prob of every response token through
  the output projection in chunks (what global naturalness reads), batch 1;
- ``scorer``: the product's ``NaturalnessScorer(metrics="global")`` on the same rows, batched as it batches;
- ``fwd+bwd``: GRACE's forward and backward pass (one backward pass per response);
- ``projection``: GRACE's Rademacher projection of that gradient to ``--dim`` dimensions (``P x dim`` random signs).

It prints seconds per response and the ratios (GRACE per response) / (forward-only per response). SmolLM2's
projection at d=512 is 135M x 512 signs, about 2 minutes a response on a busy 2-core CPU, so only the first
``--projection_rows`` rows (default 1) are projected there; forward and backward run on every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_localnat.grace import _GradientComputer
from hf_localnat.metrics import encode_prompt, prompt_text
from hf_localnat.student import context_length

REPO = Path(__file__).resolve().parents[1]
MATH_L5 = REPO.parent / "shared" / "data" / "multiteacher" / "zeroeval_math_l5.jsonl"
TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def read_rows(count: int) -> list[dict]:
    rows = []
    with open(MATH_L5) as f:
        for line in f:
            row = json.loads(line)
            if row["response"] and row["response"].strip():
                rows.append(row)
            if len(rows) == count:
                break
    return rows


def tiny_student(rows: list[dict]) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A 2-layer random Llama (hidden 64) with a 1,000-token byte-level BPE trained on the rows."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([r["prompt"] + "\n" + r["response"] for r in rows], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=1,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def sequences(tokenizer, rows: list[dict], limit: int | None) -> list[tuple[list[int], int]]:
    """(input ids, prompt length) as GRACE builds them."""
    out = []
    for row in rows:
        head = encode_prompt(tokenizer, prompt_text(tokenizer, row["prompt"]))
        ids = head + tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((ids[:limit] if limit else ids, len(head)))
    return out


@torch.no_grad()
def forward_only(computer: _GradientComputer, ids: list[int], num_prompt: int) -> float:
    """Mean log-prob of the response tokens: decoder, then the head in chunks of positions, no gradient."""
    tensor = torch.tensor([ids])
    hidden = computer.decoder(input_ids=tensor, use_cache=False).last_hidden_state[0, num_prompt - 1 : -1]
    targets = tensor[0, num_prompt:]
    total = 0.0
    for s in range(0, len(targets), computer.chunk):
        logits = computer.transform(computer.head(hidden[s : s + computer.chunk]).float())
        total += logits.log_softmax(-1).gather(1, targets[s : s + computer.chunk, None]).sum().item()
    return total / len(targets)


def measure(name: str, model, tokenizer, rows: list[dict], dim: int, projection_rows: int) -> dict:
    seqs = sequences(tokenizer, rows, context_length(model, tokenizer))
    computer = _GradientComputer(model, dim, seed=0, profile=True)
    forward_only(computer, *seqs[0])  # warm-up
    started = time.perf_counter()
    for ids, num_prompt in seqs:
        forward_only(computer, ids, num_prompt)
    forward = (time.perf_counter() - started) / len(seqs)

    scorer_seconds = None
    try:
        from hf_localnat.scorer import NaturalnessScorer

        scorer = NaturalnessScorer(model, tokenizer, metrics="global")
        batch = {"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows]}
        scorer(batch)  # warm-up
        started = time.perf_counter()
        scorer(batch)
        scorer_seconds = (time.perf_counter() - started) / len(rows)
    except Exception as err:  # the scorer is not what this bench measures: report and go on
        print(f"  (NaturalnessScorer not timed: {type(err).__name__}: {err})")

    fwd_bwd = []
    projection = []
    for i, (ids, num_prompt) in enumerate(seqs):
        if i < projection_rows:
            before = dict(computer.seconds)
            with computer:  # the projection hooks are on while entered
                computer(ids, num_prompt)
            spent = {k: computer.seconds[k] - before[k] for k in before}
            fwd_bwd.append(spent["total"] - spent["projection"])
            projection.append(spent["projection"])
        else:  # forward and backward only: the same loss, no projection
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            with torch.enable_grad():
                loss = computer._loss(torch.tensor([ids]), num_prompt)
            loss.backward()
            fwd_bwd.append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
    result = {
        "model": name,
        "parameters": computer.num_parameters,
        "rows": len(seqs),
        "mean_tokens": float(np.mean([len(ids) for ids, _ in seqs])),
        "mean_response_tokens": float(np.mean([len(ids) - p for ids, p in seqs])),
        "dim": dim,
        "forward_s": forward,
        "scorer_s": scorer_seconds,
        "fwd_bwd_s": float(np.mean(fwd_bwd)),
        "projection_s": float(np.mean(projection)) if projection else None,
        "projected_rows": len(projection),
    }
    result["grace_s"] = result["fwd_bwd_s"] + (result["projection_s"] or 0.0)
    result["sign_rate"] = computer.num_parameters * dim / result["projection_s"] if projection else None
    return result


def report(r: dict) -> None:
    print(
        f"\n{r['model']}: {r['parameters']:,} trainable parameters, {r['rows']} rows, mean {r['mean_tokens']:.0f} "
        f"tokens ({r['mean_response_tokens']:.0f} response), d={r['dim']}"
    )
    print("  backward passes per response: 1 (one forward + one backward)")
    print(f"  forward-only scoring      {r['forward_s']:.4f} s/response")
    if r["scorer_s"] is not None:
        print(f"  NaturalnessScorer global  {r['scorer_s']:.4f} s/response")
    print(
        f"  GRACE forward+backward    {r['fwd_bwd_s']:.4f} s/response   {r['fwd_bwd_s'] / r['forward_s']:.1f}x forward"
    )
    if r["projection_s"] is not None:
        print(
            f"  GRACE projection          {r['projection_s']:.4f} s/response   "
            f"({r['projected_rows']} rows; {r['sign_rate'] / 1e9:.2f} G signs/s)"
        )
        print(
            f"  GRACE total               {r['grace_s']:.4f} s/response   {r['grace_s'] / r['forward_s']:.1f}x forward"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4, help="MATH-L5 rows per model.")
    parser.add_argument("--dim", type=int, default=512, help="GRACE projection dimensions.")
    parser.add_argument("--projection_rows", type=int, default=1, help="SmolLM2 rows that also get the projection.")
    parser.add_argument("--no_smollm2", action="store_true", help="Measure the tiny model only.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads of {os.cpu_count()} CPUs "
        f"({platform.machine()}), load average {load}"
    )
    rows = read_rows(args.rows)
    results = []
    model, tokenizer = tiny_student(rows)
    results.append(measure("tiny-llama", model, tokenizer, rows, args.dim, len(rows)))
    report(results[-1])
    if not args.no_smollm2:
        from hf_localnat.student import load_student

        started = time.perf_counter()
        model, tokenizer = load_student(device="cpu")
        print(f"\n(SmolLM2 loaded in {time.perf_counter() - started:.0f} s)")
        results.append(measure("SmolLM2-135M", model, tokenizer, rows, args.dim, args.projection_rows))
        report(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
