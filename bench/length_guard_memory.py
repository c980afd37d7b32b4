"""Memory of one very long response, with the length guard and (``--compare``) without it, side by side.

A tiny but wide random Llama (hidden 256, MLP 2048, one layer, 4,096 positions) and the tests' tokenizer score one
synthetic response of ``--tokens`` tokens (global, local window 4, rsr). Each case runs in its own process and
prints how much its peak RSS grew during scoring (Linux ``ru_maxrss``), the response length, and whether global was
scored. Without the guard, one full-context pass reads the whole response and its MLP activations alone take
``2 x tokens x 2048 x 4`` bytes.

    .venv/bin/python bench/length_guard_memory.py --tokens 110000 --compare
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(tokens: int, guard: bool = True, max_tokens_per_batch: int = 4096) -> dict:
    """Score one ``tokens``-token response in this process; return the peak-RSS growth and what was scored."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_model, build_tokenizer

    import hf_localnat.scorer
    from hf_localnat import NaturalnessScorer

    if not guard:  # the scorer then sees no context length, as before the guard existed
        hf_localnat.scorer.context_length = lambda model, tokenizer=None: None
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), hidden_size=256, intermediate_size=2048, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)  # fmt: skip
    scorer = NaturalnessScorer(
        model, tokenizer, metrics="global,local,rsr", window=4, max_tokens_per_batch=max_tokens_per_batch
    )
    scorer.score(["warm up"], ["One step. Two steps."])
    sentence = "We add the next number to the total. "
    per_sentence = len(tokenizer(sentence * 100, add_special_tokens=False)["input_ids"]) / 100
    response = sentence * int(tokens / per_sentence + 1)  # the tokenizer is trained on the corpus present: count
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got = scorer.score(["Sum the numbers."], [response])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "guard": guard,
        "tokens": got["num_response_tokens"][0],
        "grew_mib": round((after - before) / 1024, 1),
        "global_naturalness": got["global_naturalness"][0],
        "local_naturalness": got["local_naturalness"][0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=110_000, help="Length of the response, in student tokens.")
    parser.add_argument("--compare", action="store_true", help="Also run without the guard (slow, gigabytes).")
    # one case, in a child process
    parser.add_argument("--no_guard", "--no-guard", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.tokens, guard=not args.no_guard)))
        return 0
    for guard in [True, False] if args.compare else [True]:
        flags = ["--child", "--tokens", str(args.tokens), *([] if guard else ["--no_guard"])]
        command = [sys.executable, __file__, *flags]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        print(done.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
