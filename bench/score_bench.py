"""Scoring throughput: the engine against naive loops and against the forward-pass floor, in one run.

CPU (default): the embedded SmolLM2 on 50 real MATH-L5 rows from ../shared/data (the demo pool if absent):

    .venv/bin/python bench/score_bench.py --rows 50 --window 4

GPU: random-initialised real architectures built from their configs (no download), synthetic responses:

    python bench/score_bench.py --arch qwen2.5-1.5b --synthetic 8x10x64 --prompt_tokens 256 --window 4

It prints scored response tokens/s for global and local scoring, for the naive loop (one forward per row or
per window, batch 1, full logits) and for the engine (NaturalnessScorer), their ratios, the forward-pass floor
(FLOPs / measured matmul rate) and the fraction of it reached, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hf_localnat.metrics import parse_window

REPO = Path(__file__).resolve().parents[1]
MATH_L5 = REPO.parent / "shared" / "data" / "multiteacher" / "zeroeval_math_l5.jsonl"

ARCHS = {  # public configs of the real models, so from_config builds the true shapes
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}


@dataclass
class Rows:
    prompts: list[str]
    responses: list[str]


def load_student(args):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from hf_localnat import load_student as load

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.arch:
        torch.manual_seed(0)
        config = Qwen2Config(**ARCHS[args.arch], max_position_embeddings=65536, attn_implementation="sdpa")
        with torch.device(device):
            model = Qwen2ForCausalLM(config).to(dtype).eval()
        _, tokenizer = load(None, device="cpu")  # any tokenizer works for synthetic ids; SmolLM2's is at hand
        return model, tokenizer
    return load(args.student, dtype=dtype, device=device)


def real_rows(n: int) -> Rows:
    if MATH_L5.exists():
        rows = [json.loads(line) for line in open(MATH_L5)]
        # Whole prompts (every teacher) so that prompt sharing is what a user gets on a real pool.
        rows = [r for r in rows if r["response"]]
        rows.sort(key=lambda r: (int(r["prompt_id"].rsplit("-", 1)[1]), r["teacher"]))
    else:
        from hf_localnat.demo import demo_pool_path

        rows = [json.loads(line) for line in open(demo_pool_path())]
    rows = rows[:n]
    return Rows([r["prompt"] for r in rows], [r["response"] for r in rows])


def synthetic_rows(spec: str, prompt_tokens: int, tokenizer) -> Rows:
    """N responses of S sentence-steps of T tokens, built from words that encode to one token each."""
    n, steps, tokens = (int(x) for x in spec.split("x"))
    rng = np.random.default_rng(0)
    vocab = [w for w in ("alpha beta gamma delta theta kappa omega sigma lambda zeta".split())]

    def sentence(k: int) -> str:
        return " ".join(rng.choice(vocab, size=k - 1)) + "."

    prompt = " ".join(rng.choice(vocab, size=prompt_tokens))
    responses = [" ".join(sentence(tokens) for _ in range(steps)) for _ in range(n)]
    return Rows([prompt] * n, responses)


@torch.no_grad()
def naive_logprobs(model, context: list[int], target: list[int]) -> np.ndarray:
    """One forward pass, batch 1, full logits: what a per-row or per-window loop does."""
    ids = torch.tensor([context + target], device=model.device)
    logits = model(ids).logits[0, len(context) - 1 : -1].float()
    return (
        torch.log_softmax(logits, -1).gather(1, torch.tensor(target, device=model.device)[:, None])[:, 0].cpu().numpy()
    )


def naive_scores(model, tokenizer, rows: Rows, window: int, local: bool) -> list[float]:
    from hf_localnat.metrics import prompt_ids, window_size
    from hf_localnat.segmentation import assign_tokens_to_steps, split_steps

    scores = []
    for prompt, response in zip(rows.prompts, rows.responses, strict=True):
        p = prompt_ids(tokenizer, prompt)
        enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        if not local:
            scores.append(float(naive_logprobs(model, p, ids).mean()))
            continue
        owner = assign_tokens_to_steps([s for s, _ in enc["offset_mapping"]], split_steps(response))
        steps: list[list[int]] = []
        for t, s in enumerate(owner):
            if t and s == owner[t - 1]:
                steps[-1].append(ids[t])
            else:
                steps.append([ids[t]])
        means = []
        for j, step in enumerate(steps):
            w = window_size(window, j)
            context = p + [t for s in steps[j - w : j] for t in s]
            means.append(float(naive_logprobs(model, context, step).mean()))
        scores.append(float(np.mean(means)))
    return scores


def matmul_rate(device: torch.device, dtype: torch.dtype, hidden: int) -> float:
    """Measured FLOP/s of a model-shaped matmul ([N, H] x [H, 4H]): the best of several timed trials."""
    a = torch.randn(4096 if device.type == "cuda" else 2048, hidden, device=device, dtype=dtype)
    b = torch.randn(hidden, 4 * hidden, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 50 if device.type == "cuda" else 10
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * a.shape[0] * hidden * 4 * hidden * reps / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_flops(model, token_forwards: float, context_sum: float, scored: int) -> float:
    """FLOPs a forward pass cannot avoid: linear layers per token, attention per (token, context), lm_head per
    scored token."""
    cfg = model.config
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    attention = 4 * cfg.num_hidden_layers * cfg.hidden_size * context_sum
    return 2 * body * token_forwards + attention + 2 * cfg.hidden_size * cfg.vocab_size * scored


def work_counts(tokenizer, rows: Rows, window, local: bool, share: bool = True) -> tuple[int, float, float]:
    """(scored response tokens, token-forwards, summed attention context) with each prompt counted once per
    response and each local window re-read for its step; with ``share``, consecutive steps whose windows start at
    the same step read it once, as the engine does (the least work that gives every step its exact context)."""
    from hf_localnat.metrics import prompt_ids, window_size
    from hf_localnat.segmentation import assign_tokens_to_steps, split_steps

    scored, forwards, context = 0, 0.0, 0.0
    for prompt, response in zip(rows.prompts, rows.responses, strict=True):
        p = len(prompt_ids(tokenizer, prompt))
        enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        n = len(enc["input_ids"])
        scored += n
        forwards += p
        context += p * p / 2
        if not local:
            forwards += n
            context += n * (p + n / 2)
            continue
        owner = assign_tokens_to_steps([s for s, _ in enc["offset_mapping"]], split_steps(response))
        sizes = np.bincount(owner)
        sizes = sizes[sizes > 0].tolist()
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        read_start = None  # the window start already read for the previous step (shared)
        for j, size in enumerate(sizes):
            w = window_size(window, j)
            start = j - w
            ctx = offsets[j] - offsets[start]
            covered = w >= j  # reads the full-context pass: no extra window
            if covered:
                forwards += size
            elif share and start == read_start:
                forwards += size  # the same request goes on: only this step's tokens are new
            else:
                forwards += ctx + size
            read_start = None if covered else start
            context += size * (p + ctx + size / 2)
    return scored, forwards, context


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA max allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"


def timed(fn, device):
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start, peak_memory(device)


def dtype_check(model, tokenizer, rows: Rows, window: int, dtype: torch.dtype) -> dict:
    """Per-token log-prob error of the engine in ``dtype`` against float32, and whether rankings agree."""
    import copy

    from hf_localnat import NaturalnessScorer
    from hf_localnat.engine import LogProbEngine, ScoreRequest
    from hf_localnat.metrics import prompt_ids

    reference = model.float()
    low = copy.deepcopy(reference).to(dtype)
    requests = [
        ScoreRequest(tuple(prompt_ids(tokenizer, p)), (), tuple(tokenizer(r, add_special_tokens=False)["input_ids"]))
        for p, r in zip(rows.prompts, rows.responses, strict=True)
    ]
    exact = LogProbEngine(reference).score(requests)
    approx = LogProbEngine(low).score(requests)
    errors = np.concatenate([np.abs(a.logprobs - b.logprobs) for a, b in zip(exact, approx, strict=True)])
    scores = {}
    for name, m in (("float32", reference), (str(dtype).split(".")[-1], low)):
        scorer = NaturalnessScorer(m, tokenizer, metrics="global,local", window=window)
        scores[name] = scorer.score(rows.prompts, rows.responses)
    (a, b) = scores.values()
    same_order = {
        column: bool(np.array_equal(np.argsort(a[column], kind="stable"), np.argsort(b[column], kind="stable")))
        for column in ("global_naturalness", "local_naturalness")
    }
    out = dict(
        dtype=str(dtype),
        tokens=int(errors.size),
        mean_abs_token_error=float(errors.mean()),
        max_abs_token_error=float(errors.max()),
        identical_response_ranking=same_order,
    )
    print(
        f"\n{dtype} vs float32 over {errors.size} tokens: mean |delta log p| {errors.mean():.2e}, "
        f"max {errors.max():.2e}; identical ranking of the {len(rows.responses)} responses: {same_order}"
    )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default=None, help="Student folder or cached Hub id (default: embedded SmolLM2).")
    parser.add_argument("--arch", choices=sorted(ARCHS), help="Random-initialised architecture instead of a student.")
    parser.add_argument("--rows", type=int, default=50, help="Real rows to score (CPU mode).")
    parser.add_argument("--synthetic", help="NxSxT: N responses of S steps of T tokens (instead of real rows).")
    parser.add_argument(
        "--prompt_tokens", "--prompt-tokens", type=int, default=256, help="Prompt length for --synthetic."
    )
    parser.add_argument("--window", type=parse_window, default=4, help="An int >= 1, or a fraction in (0, 1).")
    parser.add_argument("--metrics", default="global,local", help="Which of global and local to time.")
    parser.add_argument(
        "--no_window_sharing", "--no-window-sharing", action="store_true",
        help="One request per local window, as before fraction windows were shared (to measure the saving).",
    )  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, ... (default: bf16 on CUDA, fp32 on CPU).")
    parser.add_argument("--max_tokens_per_batch", "--max-tokens-per-batch", type=int, default=16384)
    parser.add_argument(
        "--skip_naive", "--skip-naive", action="store_true", help="Engine and floor only (large models)."
    )
    parser.add_argument(
        "--check_dtype", "--check-dtype", help="Also compare the engine in this dtype (e.g. bfloat16) with float32."
    )
    parser.add_argument("--json", help="Also write the results to this JSON file.")
    args = parser.parse_args(argv)

    import hf_localnat.metrics
    from hf_localnat import NaturalnessScorer

    hf_localnat.metrics.SHARE_WINDOWS = not args.no_window_sharing
    device = torch.device(args.device)
    model, tokenizer = load_student(args)
    rows = synthetic_rows(args.synthetic, args.prompt_tokens, tokenizer) if args.synthetic else real_rows(args.rows)
    dtype = next(model.parameters()).dtype
    rate = matmul_rate(device, dtype, model.config.hidden_size)
    name = args.arch or getattr(getattr(model, "hf_localnat_source", None), "student", args.student)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    cpu = platform.processor() or platform.machine()
    print(f"# score_bench: {name}, {dtype}, {device} ({cpu}, {torch.get_num_threads()} threads{gpu})")
    print(
        f"# {len(rows.responses)} responses, window {args.window}, window sharing "
        f"{'off' if args.no_window_sharing else 'on'}, matmul rate {rate / 1e9:.1f} GFLOP/s, "
        f"torch {torch.__version__}, python {sys.version.split()[0]}"
    )

    results = {}
    for metric in [m.strip() for m in args.metrics.split(",")]:
        local = metric == "local"
        scored, forwards, context = work_counts(tokenizer, rows, args.window, local, not args.no_window_sharing)
        floor_s = floor_flops(model, forwards, context, scored) / rate
        scorer = NaturalnessScorer(
            model, tokenizer, metrics=(metric,), window=args.window, max_tokens_per_batch=args.max_tokens_per_batch
        )
        scorer(dict(prompt=rows.prompts[:1], response=rows.responses[:1]))  # warm-up
        engine_scores, engine_s, engine_mem = timed(
            lambda s=scorer, m=metric: s.score(rows.prompts, rows.responses)[f"{m}_naturalness"], device
        )
        entry = dict(
            scored_tokens=scored,
            engine_tok_s=scored / engine_s,
            engine_s=engine_s,
            engine_peak=engine_mem,
            floor_tok_s=scored / floor_s,
            floor_fraction=floor_s / engine_s,
        )
        if not args.skip_naive:
            naive, naive_s, naive_mem = timed(
                lambda loc=local: naive_scores(model, tokenizer, rows, args.window, loc), device
            )
            diff = max(abs(a - b) for a, b in zip(naive, engine_scores, strict=True) if a is not None and b is not None)
            entry.update(
                naive_tok_s=scored / naive_s,
                naive_s=naive_s,
                naive_peak=naive_mem,
                speedup=naive_s / engine_s,
                max_abs_diff=diff,
            )
        results[metric] = entry

    print()
    print(
        "| metric | scored tokens | naive tok/s | engine tok/s | engine / naive | floor tok/s | "
        "engine / floor | max abs diff | peak memory (engine) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for metric, e in results.items():
        naive = f"{e['naive_tok_s']:.0f}" if "naive_tok_s" in e else "skipped"
        ratio = f"{e['speedup']:.2f}x" if "speedup" in e else "-"
        diff = f"{e['max_abs_diff']:.1e}" if "max_abs_diff" in e else "-"
        print(
            f"| {metric} | {e['scored_tokens']} | {naive} | {e['engine_tok_s']:.0f} | {ratio} | "
            f"{e['floor_tok_s']:.0f} | {e['floor_fraction']:.0%} | {diff} | {e['engine_peak']} |"
        )
    print(
        "\nfloor: linear-layer FLOPs per token-forward (each prompt counted once per response, each local window "
        "re-read), attention FLOPs, lm_head at scored tokens only, at the measured matmul rate."
    )
    if args.check_dtype:
        results["dtype_check"] = dtype_check(model, tokenizer, rows, args.window, getattr(torch, args.check_dtype))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), results=results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
