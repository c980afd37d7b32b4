"""The log-prob engine: one memory-bounded forward path under every metric.

A request asks for the student's log-probability of each ``target`` token given ``prefix + context`` and
the targets before it. Requests that share a ``prefix`` (the prompt: every window of a response, every
teacher's answer to one prompt) are grouped; when the prefix is long next to its suffixes it is encoded
once into a KV cache, otherwise each request re-reads it. Requests run in length-sorted, right-padded
batches under a token budget.

Only hidden states at scored positions go through the output projection, in chunks, with a float32
log-softmax per chunk, so a ``[batch, tokens, vocab]`` float32 tensor never exists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel


@dataclass(frozen=True)
class ScoreRequest:
    """Score ``target`` given ``prefix + context``.

    ``prefix`` is the part shared with other requests (the prompt); it must hold at least one token.
    ``context`` is this request's own extra context (a window of previous steps); it may be empty.

    Example:
        >>> ScoreRequest(prefix=(1, 5, 9), context=(7,), target=(3, 4)).num_suffix_tokens
        4
    """

    prefix: tuple[int, ...]
    context: tuple[int, ...]
    target: tuple[int, ...]

    @property
    def num_suffix_tokens(self) -> int:
        # The last prefix token is re-fed with the suffix so every target is predicted from a suffix position.
        return 1 + len(self.context) + len(self.target)


@dataclass
class TokenScores:
    """Per-token results of one request: float32 log-probs and, when asked, 1-based ranks (1 = argmax) and the
    entropy (nats) of the student's whole predictive distribution at each target position."""

    logprobs: np.ndarray
    ranks: np.ndarray | None = None
    entropies: np.ndarray | None = None


def _final_logit_transform(model: PreTrainedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the model's own forward does to lm_head outputs (scaling, soft-capping), applied per chunk."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = getattr(config, "logit_scale", None)
    softcap = getattr(config, "final_logit_softcapping", None)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return transform


class LogProbEngine:
    """Per-token log-probs (and ranks) for many requests, with shared prefixes encoded once.

    Args:
        model: a causal LM (``AutoModelForCausalLM``).
        max_tokens_per_batch: budget of padded suffix tokens per forward pass.
        logits_chunk_bytes: budget for one chunk of float32 logits (positions x vocab x 4 bytes).
        max_batch_size: most requests in one forward pass.
        min_batch_fill: least share of real (non-padding) tokens in a batch (default 0.95 on CPU, 0.75 on GPU).
        prefix_cache_min_ratio: encode a shared prefix once when it is at least this share of the mean suffix.
        max_cached_suffix: a request with a longer suffix re-reads its prefix instead of attending to the cache:
            attention over a cache needs an explicit ``[suffix, prefix + suffix]`` mask, which grows with the square
            of a long response, while a pass from the start runs with the causal fast path and no mask at all.

    Example:
        >>> engine = LogProbEngine(model)  # doctest: +SKIP
        >>> [s.logprobs for s in engine.score([ScoreRequest((1, 2), (), (3, 4))])]  # doctest: +SKIP
        [array([-3.1, -0.7], dtype=float32)]
    """

    def __init__(
        self,
        model: PreTrainedModel,
        max_tokens_per_batch: int = 4096,
        logits_chunk_bytes: int = 256 * 2**20,
        max_batch_size: int = 64,
        min_batch_fill: float | None = None,
        prefix_cache_min_ratio: float = 0.5,
        max_cached_suffix: int = 1024,
    ) -> None:
        self.model = model
        self.max_tokens_per_batch = max_tokens_per_batch
        self.logits_chunk_bytes = logits_chunk_bytes
        self.max_batch_size = max_batch_size
        # On CPU a bigger batch is not faster, so padding is pure waste; on GPUs batching pays for some.
        on_cpu = next(model.parameters()).device.type == "cpu"
        self.min_batch_fill = min_batch_fill if min_batch_fill is not None else (0.95 if on_cpu else 0.75)
        self.prefix_cache_min_ratio = prefix_cache_min_ratio
        self.max_cached_suffix = max_cached_suffix
        self._decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
        # transformers 5.24 renamed the decoder's `past_key_values` argument to `cache` (the old name goes in 5.40).
        decoder_args = inspect.signature(self._decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in decoder_args else "past_key_values"
        self._lm_head = model.get_output_embeddings()
        self._transform = _final_logit_transform(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(
        self,
        requests: Sequence[ScoreRequest],
        with_ranks: bool | Sequence[bool] = False,
        on_tokens: Callable[[int], None] | None = None,
        with_entropy: bool | Sequence[bool] = False,
    ) -> list[TokenScores]:
        """Score every request; results come back in request order.

        ``with_ranks`` and ``with_entropy`` are one flag for all requests or one per request. ``on_tokens`` is
        called with the number of target tokens finished after each forward pass (for progress bars).
        """
        if isinstance(with_ranks, bool):
            with_ranks = [with_ranks] * len(requests)
        if isinstance(with_entropy, bool):
            with_entropy = [with_entropy] * len(requests)
        wants = list(zip(with_ranks, with_entropy, strict=True))  # per request: (ranks, entropies)
        results: list[TokenScores | None] = [None] * len(requests)
        was_training = self.model.training
        self.model.eval()
        try:
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, request in enumerate(requests):
                if not request.prefix:
                    raise ValueError("ScoreRequest.prefix must hold at least one token (a BOS or the prompt).")
                if not request.target:
                    empty = np.zeros(0, np.float32)
                    results[i] = TokenScores(
                        empty, np.zeros(0, np.int64) if with_ranks[i] else None, empty if with_entropy[i] else None
                    )
                    continue
                groups.setdefault(request.prefix, []).append(i)
            short = {
                prefix: [i for i in ids if requests[i].num_suffix_tokens <= self.max_cached_suffix]
                for prefix, ids in groups.items()
            }
            cached = {p for p, ids in short.items() if self._worth_caching(p, [requests[i] for i in ids])}
            on_cache = {i for prefix in cached for i in short[prefix]}
            # Every other request (and every long one) carries its prefix in its own input and is batched freely.
            folded = [i for ids in groups.values() for i in ids if i not in on_cache]
            self._run_group((), [requests[i] for i in folded], folded, wants, results, on_tokens, fold_prefix=True)
            for prefix in cached:
                ids = short[prefix]
                self._run_group(prefix, [requests[i] for i in ids], ids, wants, results, on_tokens)
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _worth_caching(self, prefix: tuple[int, ...], requests: list[ScoreRequest]) -> bool:
        """Encode a shared prefix once only when it is long next to the suffixes that reuse it.

        Attending to a cache needs an explicit mask (no causal fast path) and a per-batch copy of the cache;
        measured on CPU (bench/RESULTS.md) that costs more than re-reading a 100-token prompt before 400-token
        responses, and wins for short local windows.
        """
        if len(requests) < 2 or len(prefix) < 2:
            return False
        mean_suffix = sum(r.num_suffix_tokens for r in requests) / len(requests)
        return len(prefix) >= self.prefix_cache_min_ratio * mean_suffix

    def _run_group(
        self,
        prefix: tuple[int, ...],
        requests: list[ScoreRequest],
        ids: list[int],
        wants: Sequence[tuple[bool, bool]],
        results: list[TokenScores | None],
        on_tokens: Callable[[int], None] | None,
        fold_prefix: bool = False,
    ) -> None:
        if not requests:
            return
        # Inputs: (cached prefix without its last token) + [last prefix token] + context + target[:-1].
        if fold_prefix:
            inputs = [list(r.prefix) + list(r.context) + list(r.target[:-1]) for r in requests]
            first_scored = [len(r.prefix) - 1 + len(r.context) for r in requests]
            cache_ids: tuple[int, ...] = ()
        else:
            inputs = [[r.prefix[-1], *r.context, *r.target[:-1]] for r in requests]
            first_scored = [len(r.context) for r in requests]
            cache_ids = prefix[:-1]
        cache = self._encode_prefix(cache_ids) if cache_ids else None
        order = sorted(range(len(requests)), key=lambda j: -len(inputs[j]))
        for batch in self._pack(order, [len(x) for x in inputs]):
            self._run_batch(batch, inputs, first_scored, requests, ids, wants, results, cache, len(cache_ids))
            if on_tokens is not None:
                on_tokens(sum(len(requests[j].target) for j in batch))

    def _pack(self, order: list[int], lengths: list[int]) -> Iterable[list[int]]:
        """Greedy packing of length-sorted (longest first) requests.

        A batch closes when its padded size (batch x longest) would pass the token budget, or when padding
        would exceed ``1 - min_batch_fill`` of it: attention cost grows with the padded length squared.
        """
        batch: list[int] = []
        longest = real = 0
        for j in order:
            padded = max(longest, lengths[j]) * (len(batch) + 1)
            if batch and (
                padded > self.max_tokens_per_batch
                or len(batch) >= self.max_batch_size
                or real + lengths[j] < self.min_batch_fill * padded
            ):
                yield batch
                batch, longest, real = [], 0, 0
            batch.append(j)
            longest = max(longest, lengths[j])
            real += lengths[j]
        if batch:
            yield batch

    def _encode_prefix(self, cache_ids: tuple[int, ...]) -> DynamicCache:
        input_ids = torch.tensor([cache_ids], device=self.device)
        out = self._decoder(input_ids=input_ids, use_cache=True)
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    def _expanded_cache(self, cache: DynamicCache, batch_size: int) -> DynamicCache:
        # expand() shares memory; the forward pass concatenates new keys onto a fresh tensor per layer,
        # so the prefix cache itself is never modified and can serve the next batch.
        layers = [
            (layer.keys.expand(batch_size, -1, -1, -1), layer.values.expand(batch_size, -1, -1, -1))
            for layer in cache.layers
        ]
        return DynamicCache(ddp_cache_data=layers, config=self.model.config)

    def _run_batch(
        self,
        batch: list[int],
        inputs: list[list[int]],
        first_scored: list[int],
        requests: list[ScoreRequest],
        ids: list[int],
        wants: Sequence[tuple[bool, bool]],
        results: list[TokenScores | None],
        cache: DynamicCache | None,
        cache_len: int,
    ) -> None:
        width = max(len(inputs[j]) for j in batch)
        # Right padding needs no attention mask: causal attention never lets a real token see a later pad.
        pad = inputs[batch[0]][0]
        input_ids = torch.tensor([inputs[j] + [pad] * (width - len(inputs[j])) for j in batch], device=self.device)
        kwargs = {}
        if cache is not None:
            kwargs[self._cache_arg] = self._expanded_cache(cache, len(batch))
            kwargs["position_ids"] = torch.arange(cache_len, cache_len + width, device=self.device).expand(
                len(batch), -1
            )
        hidden = self._decoder(input_ids=input_ids, use_cache=cache is not None, **kwargs).last_hidden_state

        rows, cols, targets = [], [], []
        for b, j in enumerate(batch):
            n = len(requests[j].target)
            rows.extend([b] * n)
            cols.extend(range(first_scored[j], first_scored[j] + n))
            targets.extend(requests[j].target)
        scored_hidden = hidden[torch.tensor(rows, device=hidden.device), torch.tensor(cols, device=hidden.device)]
        need_ranks = any(wants[ids[j]][0] for j in batch)
        need_entropy = any(wants[ids[j]][1] for j in batch)
        target_ids = torch.tensor(targets, device=hidden.device)
        logprobs, ranks, entropies = self.token_logprobs(scored_hidden, target_ids, need_ranks, need_entropy)

        start = 0
        for j in batch:
            n = len(requests[j].target)
            lp = logprobs[start : start + n]
            rk = ranks[start : start + n] if (ranks is not None and wants[ids[j]][0]) else None
            en = entropies[start : start + n] if (entropies is not None and wants[ids[j]][1]) else None
            results[ids[j]] = TokenScores(lp, rk, en)
            start += n

    def token_logprobs(
        self, hidden: torch.Tensor, targets: torch.Tensor, with_ranks: bool = False, with_entropy: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Log-prob (and rank, and entropy of the whole distribution) of ``targets[i]`` from final hidden state
        ``hidden[i]``, in chunks of positions.

        The output projection runs on at most ``logits_chunk_bytes`` of float32 logits at a time; the entropy
        ``-sum p log p`` is reduced inside the chunk, so no full distribution outlives it.
        """
        vocab = self._lm_head.weight.shape[0]
        chunk = max(1, self.logits_chunk_bytes // (4 * vocab))
        logprobs = np.empty(len(targets), dtype=np.float32)
        ranks = np.empty(len(targets), dtype=np.int64) if with_ranks else None
        entropies = np.empty(len(targets), dtype=np.float32) if with_entropy else None
        for s in range(0, len(targets), chunk):
            logits = self._transform(self._lm_head(hidden[s : s + chunk]).float())
            tgt = targets[s : s + chunk]
            target_logit = logits.gather(1, tgt[:, None])
            norm = torch.logsumexp(logits, dim=-1)
            logprobs[s : s + chunk] = (target_logit[:, 0] - norm).cpu().numpy()
            if ranks is not None:
                ranks[s : s + chunk] = (1 + (logits > target_logit).sum(dim=-1)).cpu().numpy()
            if entropies is not None:
                # H = log Z - sum p * logit, with p = softmax(logits): one extra pass over the chunk.
                probs = torch.softmax(logits, dim=-1)
                weighted = torch.where(probs > 0, probs * logits, 0.0)  # a -inf logit has p = 0: adds nothing
                entropies[s : s + chunk] = (norm - weighted.sum(dim=-1)).cpu().numpy()
                del weighted
                del probs
            del logits
        return logprobs, ranks, entropies
