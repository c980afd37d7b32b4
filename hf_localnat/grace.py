"""GRACE: a teacher-level score from the student's gradients on each teacher's responses (arXiv 2511.02833).

"In Good GRACEs: Principled Teacher Selection for Knowledge Distillation" (Panigrahi, Liu, Malladi, Kakade, Goel;
ICLR 2026) scores a *teacher*, not a response: the student's per-response loss gradients on that teacher's data,
randomly projected, are split by prompt into train and test sides, and the score is how badly the train side's
(smoothed, direction-only) second moment covers the test side's gradients. **Lower is better.** It follows the
official code, github.com/abhishekpanigrahi1996/GRACE at a6c5a859 (cited below as ``gradient_computation.py``,
``GRACE_computation.py`` and ``tokenize_data.py``, all under that commit).

What is computed, per teacher:

1. For each of its responses: the mean cross-entropy of the student over the response tokens and EOS given the
   prompt (prompt tokens masked), backpropagated to every trainable parameter (``gradient_computation.py``
   L205-L212: ``model(input_ids, labels=labels).loss.backward()``), in eval mode (``from_pretrained`` leaves the
   model there), batch 1.
2. The flattened gradient ``g`` (length ``P``) is projected to ``d`` dimensions by a Rademacher matrix ``R``
   (entries +-1, ``P x d``), ``z = R^T g / sqrt(d)`` (``gradient_computation.py`` L135-L148, L214-L216).
3. ``num_splits`` random splits of the teacher's prompts, ``test_fraction`` of them on the test side, all of a
   prompt's responses on the same side: split ``s`` is ``numpy.random.default_rng(seed + s).permutation`` of the
   prompts, the last ``max(1, int(n * test_fraction))`` on the test side (``GRACE_computation.py`` L127-L146).
4. Train gradients are unit-normalised, ``Sigma_train = mean u u^T``; its eigenvalues are smoothed,
   ``lambda -> (1 - nu) lambda + nu mean(lambda)`` (clipped at 1e-12 before and after); test gradients are raw,
   ``Sigma_test = mean z z^T``; the split's score is ``trace(Sigma_train^-1 Sigma_test)``
   (``GRACE_computation.py`` L53-L96, L148-L166). GRACE is the mean over splits (L168-L171).

The cost is one forward and one backward pass per response (``n`` prompts x ``m`` responses per teacher) plus the
projection, ``P x d`` random signs per response; see :func:`project_gradient` and ``bench/grace_cost.py``.

Where this differs from the official code, and why:

- **Prompt format.** ``tokenize_data.py`` L135-L143 renders ``"### Problem:\\n{problem}\\n\\n### Solution:\\n"`` +
  response + EOS text for base students and labels ``full_ids[len(prompt_ids):]`` of the jointly tokenized text.
  Here the prompt is the student's chat template (:func:`hf_localnat.metrics.prompt_ids`, the ``"Question: ...
  Answer: "`` fallback without one), the response is tokenized on its own and EOS appended, and the reasoning-tag
  rule of :func:`hf_localnat.metrics.response_view` applies: exactly the example the trainer builds
  (``trainer_callbacks/reselect.py``, ``ReselectCallback.example``), so GRACE differentiates what the student
  would be trained on. Their training script uses the same template as their GRACE, so the principle is the same.
- **Projection scale.** The official divides by ``sqrt(P)`` (``normalize_factor = sqrt(grad_dim)``,
  ``gradient_computation.py`` L146-L148), not ``sqrt(d)``; that multiplies every score of a student by the same
  ``d / P`` (train gradients are normalised, so only the test side's scale counts): rankings are unchanged. Here
  ``1/sqrt(d)``, which keeps ``E||z||^2 = ||g||^2``, so scores do not depend on the student's size.
- **Projection arithmetic.** The official uses TRAK's fused CUDA kernel (``CudaProjector``, ``block_size=4``) in
  bfloat16 with its own random stream; here plain PyTorch in float32 on any device, the signs drawn per block of
  2**18 parameters from a generator seeded by ``(seed, tensor, block)`` (:func:`projection_seed`). Same
  distribution, different draws: a GRACE value is reproducible for a given seed and device type (CPU and CUDA
  generators differ), and comparable across teachers only under the same seed.
- **Subsampling bug.** ``tokenize_data.py`` L172-L176 shuffles the questions and keeps
  ``data[:args.subsample_responses]``: the *responses-per-question* count (4 in ``scripts/grace.sh``) instead of
  ``subsample_questions`` (512). As released, ``grace.sh`` therefore scores 4 questions x 4 responses (16
  gradients in 512 dims; each split trains on 3 prompts). We fix it: ``max_prompts`` keeps that many prompts.
- **Unequal response counts.** The official reshapes to ``[n_prompts, m, d]`` (L122-L137) and needs the same
  ``m`` for every prompt; here each side's second moment is the mean over its responses, whatever their number per
  prompt (identical when ``m`` is equal). ``responses_per_prompt`` caps ``m`` (``grace.sh`` subsamples 4).
- **Memory.** Each tensor's gradient is projected and freed by a hook as soon as the backward pass has accumulated
  it, so the full gradient never exists (the official concatenates it, then projects); peak memory is the
  student, its activations for one sequence and a few tensors' gradients.
- **Loss without full logits.** The loss is computed from the decoder's hidden states with the output projection
  and cross-entropy in chunks of positions (recomputed in the backward pass), so no ``[T, vocab]`` float32 logits
  tensor exists for a long response; the gradient equals the plain ``model(..., labels=...)`` one (the tests check).
- **Length.** Sequences longer than ``max_tokens`` (default: the student's context) are truncated, as the trainer
  truncates; the official truncates only if its ``max_length`` option is given. A response whose prompt alone fills the
  limit is skipped. Both are counted.

The paper's text (arXiv 2511.02833) could not be read here beyond its abstract; the code above is the reference.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> grads = rng.normal(size=(40, 8))                  # 20 prompts x 2 responses, already projected
    >>> prompts = np.repeat(np.arange(20), 2)
    >>> split_scores = grace_split_scores(grads, prompts, num_splits=3)
    >>> split_scores.shape, bool(split_scores.mean() > 0)
    ((3,), True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .engine import _final_logit_transform
from .errors import LocalnatError
from .metrics import ScoringConfig, encode_prompt, prompt_text, response_view, with_fields_of
from .selection import RankingConfig, SelectionConfig
from .student import context_length

logger = logging.getLogger(__name__)

RESULT_COLUMNS = (
    "rank",
    "teacher",
    "grace",
    "grace_std",
    "num_prompts",
    "num_responses",
    "backward_passes",
    "seconds",
    "skipped_empty",
    "skipped_too_long",
    "truncated",
)

PROJECTION_BLOCK = 1 << 18  # parameters whose signs come from one seeded draw: part of the projection's definition
EIGEN_EPS = 1e-12  # GRACE_computation.py: norms and eigenvalues are clipped at this
LOGITS_CHUNK_BYTES = 256 * 2**20  # float32 logits alive at once in the chunked loss
_CPU_SLICE_ENTRIES = 1 << 19  # gathered sign entries per step on CPU (cache-sized); a GPU takes a whole block


# -- configuration ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
@with_fields_of(RankingConfig, only=("teacher_column",))
@with_fields_of(SelectionConfig, only=("group_by",))
@with_fields_of(ScoringConfig, only=("prompt_column", "response_column", "chat_template_kwargs", "think_open"))
class GraceConfig:
    """Every GRACE option, with its default and help (as ``ScoringConfig`` is for the naturalness metrics).

    Values are checked when the config is made, so a mistake fails before the student runs.

    Example:
        >>> GraceConfig(max_prompts=512, responses_per_prompt=4).projection_dim
        512
        >>> GraceConfig(test_fraction=1.5)
        Traceback (most recent call last):
        ...
        hf_localnat.errors.LocalnatError: test_fraction=1.5 must be in (0, 1): the share of prompts on the test side.
    """

    projection_dim: int = field(default=512, metadata={"help": "Dimensions of the random gradient projection."})
    num_splits: int = field(default=10, metadata={"help": "Random train/test splits of the prompts."})
    test_fraction: float = field(default=0.1, metadata={"help": "Share of a teacher's prompts on the test side."})
    smoothing: float = field(
        default=1e-3, metadata={"help": "Eigenvalue smoothing nu: lambda -> (1 - nu) lambda + nu mean(lambda)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the projection, the splits and any subsampling."})
    max_prompts: int | None = field(
        default=None,
        metadata={"help": "Prompts per teacher (a seeded sample, the same prompts for every teacher); default all."},
    )
    responses_per_prompt: int | None = field(
        default=None, metadata={"help": "Responses kept per teacher and prompt (a seeded sample); default all."}
    )
    max_tokens: int | None = field(
        default=None,
        metadata={"help": "Longest sequence (prompt + response + EOS) fed to the student; default its context."},
    )

    def __post_init__(self) -> None:
        for name in ("teacher_column", "group_by", "prompt_column", "response_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise LocalnatError(f"{name}={getattr(self, name)!r} must be a column name.")
        for name, least in (("projection_dim", 1), ("num_splits", 1), ("seed", 0)):
            _check_int(name, getattr(self, name), least)
        for name in ("max_prompts", "responses_per_prompt", "max_tokens"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 2 if name == "max_prompts" else 1)
        if not isinstance(self.test_fraction, int | float) or not 0 < self.test_fraction < 1:
            raise LocalnatError(
                f"test_fraction={self.test_fraction!r} must be in (0, 1): the share of prompts on the test side."
            )
        if (
            isinstance(self.smoothing, bool)
            or not isinstance(self.smoothing, int | float)
            or not 0 <= self.smoothing <= 1
        ):
            raise LocalnatError(f"smoothing={self.smoothing!r} must be in [0, 1] (the official default nu is 1e-3).")
        if isinstance(self.chat_template_kwargs, dict):
            object.__setattr__(self, "chat_template_kwargs", json.dumps(self.chat_template_kwargs, sort_keys=True))
        self.scoring_config()  # checks chat_template_kwargs and think_open as the scorer does

    def scoring_config(self) -> ScoringConfig:
        """The prompt rendering options as a :class:`ScoringConfig`, for the shared prompt and response rules."""
        return ScoringConfig(chat_template_kwargs=self.chat_template_kwargs, think_open=self.think_open)


def _check_int(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise LocalnatError(f"{name}={value!r} must be an integer >= {least}.")


# -- projection ------------------------------------------------------------------------------------------------


def projection_seed(seed: int, tensor_index: int, block_index: int) -> int:
    """The 64-bit generator seed of one block of the projection: ``numpy.random.SeedSequence`` over the three.

    Each block is seeded on its own, so any block can be drawn without the ones before it.

    Example:
        >>> projection_seed(0, 0, 0) == projection_seed(0, 0, 0) != projection_seed(0, 0, 1)
        True
    """
    low, high = np.random.SeedSequence([seed, tensor_index, block_index]).generate_state(2, np.uint32)
    return int(low) | int(high) << 32


def _block_bytes(numel: int, dim: int, seed: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """The random bytes of one block: ``[ceil(numel / 8), dim]`` uint8; bit ``b`` of byte ``[q, j]`` is the sign of
    parameter ``8 q + b`` in output ``j`` (set: +1, clear: -1). Drawn as full-range int64 words."""
    groups = -(-numel // 8)
    words = -(-groups * dim // 8)
    generator.manual_seed(seed)
    draw = torch.empty(words, dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)
    return draw.view(torch.uint8)[: groups * dim].view(groups, dim)


_SIGN_TABLES: dict[torch.device, torch.Tensor] = {}


def _sign_table(device: torch.device) -> torch.Tensor:
    """``[8, 256]``: entry ``[b, v]`` is +1 when bit ``b`` of ``v`` is set, else -1."""
    if device not in _SIGN_TABLES:
        bits = (torch.arange(256).unsqueeze(0) >> torch.arange(8).unsqueeze(1)) & 1
        _SIGN_TABLES[device] = (bits * 2 - 1).to(device=device, dtype=torch.float32)
    return _SIGN_TABLES[device]


def _project_block(values: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``S^T values`` (float64 ``[dim]``) for the block's sign matrix ``S``.

    For ``dim >= 64`` without building ``S``: every group of 8 parameters gets the 256 signed sums it can take (one
    small matmul) and each output reads one of them per group (a gather), so the work is ``numel * dim / 8`` lookups
    instead of ``numel * dim`` multiply-adds on drawn floats. For a smaller ``dim`` the table would cost more than
    the signs themselves, so they are unpacked and multiplied directly (in float64: the sums are long). Both read the
    same bits; the table's sums of 8 are float32, their gather sums float64.
    """
    groups, dim = signs.shape
    padded = F.pad(values.float(), (0, groups * 8 - values.numel())).view(groups, 8)
    step = groups if values.device.type != "cpu" else max(1, _CPU_SLICE_ENTRIES // dim)
    out = torch.zeros(dim, dtype=torch.float64, device=values.device)
    if dim < 64:
        bit = torch.arange(8, dtype=torch.uint8, device=values.device).view(1, 8, 1)
        for s in range(0, groups, step):
            unpacked = ((signs[s : s + step].unsqueeze(1) >> bit) & 1).to(torch.float64) * 2 - 1  # [g, 8, dim]
            out += (padded[s : s + step].reshape(1, -1).double() @ unpacked.reshape(-1, dim))[0]
        return out
    table = padded @ _sign_table(values.device)  # [groups, 256]
    for s in range(0, groups, step):
        out += torch.gather(table[s : s + step], 1, signs[s : s + step].long()).sum(0, dtype=torch.float64)
    return out


class _Projector:
    """Projects per-tensor gradients, one block at a time, with one generator per device."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim, self.seed = dim, seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]

    def add(self, out: torch.Tensor, index: int, grad: torch.Tensor) -> None:
        """Add tensor ``index``'s share of the projection (unscaled) to ``out`` (float64, ``[dim]``)."""
        flat = grad.detach().reshape(-1)
        generator = self._generator(flat.device)
        for block, start in enumerate(range(0, flat.numel(), PROJECTION_BLOCK)):
            values = flat[start : start + PROJECTION_BLOCK]
            signs = _block_bytes(
                values.numel(), self.dim, projection_seed(self.seed, index, block), generator, flat.device
            )
            out += _project_block(values, signs).to(out.device)


def project_gradient(grads: Sequence[torch.Tensor | None], dim: int = 512, seed: int = 0) -> np.ndarray:
    """Rademacher projection of a gradient given per parameter tensor: ``R^T g / sqrt(dim)``, float64 ``[dim]``.

    ``grads[i]`` is the gradient of the i-th trainable tensor (``None``: zero). ``R`` (+-1 entries) is never built:
    tensor ``i`` is cut into blocks of :data:`PROJECTION_BLOCK` values and block ``k``'s signs are drawn from a
    generator on the gradient's device seeded with :func:`projection_seed` ``(seed, i, k)``;
    :func:`projection_matrix` builds the same ``R / sqrt(dim)`` densely, for checking.

    Example:
        >>> import torch
        >>> g = [torch.tensor([1.0, -2.0, 0.5]), None, torch.ones(2, 2)]
        >>> z = project_gradient(g, dim=4)
        >>> dense = projection_matrix([3, 0, 4], dim=4)
        >>> bool(np.allclose(z, dense.T.double() @ torch.cat([g[0], g[2].flatten()]).double()))
        True
    """
    _check_int("dim", dim, 1)
    _check_int("seed", seed, 0)
    projector = _Projector(dim, seed)
    out = torch.zeros(dim, dtype=torch.float64)
    for index, grad in enumerate(grads):
        if grad is not None:
            projector.add(out, index, grad)
    return (out / math.sqrt(dim)).numpy()


def projection_matrix(numels: Iterable[int], dim: int = 512, seed: int = 0) -> torch.Tensor:
    """The dense ``[sum(numels), dim]`` matrix ``R / sqrt(dim)`` that :func:`project_gradient` applies, on CPU.

    For tests and small models only: it holds ``P x dim`` floats.

    Example:
        >>> m = projection_matrix([5, 3], dim=2)
        >>> m.shape, sorted(set((m * 2**0.5).round().flatten().tolist()))
        (torch.Size([8, 2]), [-1.0, 1.0])
    """
    parts = []
    generator = torch.Generator()
    bit = torch.arange(8, dtype=torch.uint8)
    for index, numel in enumerate(numels):
        for block, start in enumerate(range(0, numel, PROJECTION_BLOCK)):
            n = min(PROJECTION_BLOCK, numel - start)
            signs = _block_bytes(n, dim, projection_seed(seed, index, block), generator, torch.device("cpu"))
            bits = (signs.unsqueeze(1) >> bit.view(1, 8, 1)) & 1  # [groups, 8, dim]
            parts.append((bits.reshape(-1, dim)[:n].float() * 2 - 1) / math.sqrt(dim))
    return torch.cat(parts) if parts else torch.zeros(0, dim)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The tensors GRACE differentiates, in ``model.parameters()`` order (tied weights once): those with
    ``requires_grad``. Their index in this list seeds their block of the projection.

    Example:
        >>> layer = torch.nn.Linear(3, 2)
        >>> _ = layer.bias.requires_grad_(False)
        >>> [p.shape for p in trainable_parameters(layer)]
        [torch.Size([2, 3])]
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LocalnatError("The student has no trainable parameters (requires_grad is off everywhere): unfreeze some.")
    return params


# -- one response's gradient -----------------------------------------------------------------------------------


class _GradientComputer:
    """The student's loss gradient on one sequence at a time, each tensor's gradient projected and freed as soon
    as the backward pass has accumulated it (a post-accumulate-grad hook per tensor, registered while the computer
    is entered as a context manager): the full gradient never exists, at most a few tensors' at once.

    ``seconds``: ``total`` (per call, all of it) and ``projection`` (inside the hooks), summed over calls; on a GPU
    the projection time is only exact with ``profile=True``, which synchronises after each tensor.
    """

    def __init__(self, model: PreTrainedModel, dim: int, seed: int, profile: bool = False) -> None:
        self.model = model
        self.params = trainable_parameters(model)
        self.num_parameters = sum(p.numel() for p in self.params)
        self.projector = _Projector(dim, seed)
        self.dim = dim
        self.profile = profile
        self.device = next(model.parameters()).device
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "base_model", None)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.decoder = decoder if decoder is not None and decoder is not model and head is not None else None
        self.head = head
        self.transform = _final_logit_transform(model)
        vocab = head.weight.shape[0] if head is not None else model.config.get_text_config().vocab_size
        self.chunk = max(1, LOGITS_CHUNK_BYTES // (4 * vocab))
        self.seconds = {"total": 0.0, "projection": 0.0}
        self._handles: list[Any] = []
        self._out: torch.Tensor | None = None

    def __enter__(self) -> _GradientComputer:
        self.model.zero_grad(set_to_none=True)
        self._handles = [p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(self.params)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.model.zero_grad(set_to_none=True)

    def _hook(self, index: int):
        def project_and_free(param: torch.Tensor) -> None:
            started = time.perf_counter()
            if self._out is not None and param.grad is not None:
                self.projector.add(self._out, index, param.grad)
            param.grad = None
            if self.profile:
                self._synchronize()
            self.seconds["projection"] += time.perf_counter() - started

        return project_and_free

    def _loss(self, ids: torch.Tensor, num_prompt_tokens: int) -> torch.Tensor:
        targets = ids[0, num_prompt_tokens:]
        if self.decoder is None:  # no separate decoder/head: the model's own logits, in full
            logits = self.model(input_ids=ids).logits[0, num_prompt_tokens - 1 : -1].float()
            return F.cross_entropy(logits, targets)
        hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state[0, num_prompt_tokens - 1 : -1]

        def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self.transform(self.head(h).float()), t, reduction="sum")

        if len(targets) <= self.chunk:
            return chunk_loss(hidden, targets) / len(targets)
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, len(targets), self.chunk):  # each chunk's logits are recomputed in backward, not kept
            total = total + checkpoint(
                chunk_loss, hidden[s : s + self.chunk], targets[s : s + self.chunk], use_reentrant=False
            )
        return total / len(targets)

    def __call__(self, input_ids: Sequence[int], num_prompt_tokens: int) -> np.ndarray:
        if not self._handles:
            raise RuntimeError("_GradientComputer must be entered (`with computer:`) before it is called.")
        started = time.perf_counter()
        ids = torch.tensor([list(input_ids)], device=self.device)
        self._out = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        on_gpu = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        mixed = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
        try:
            with torch.enable_grad(), mixed:
                loss = self._loss(ids, num_prompt_tokens)
            loss.backward()
            del loss
            result = (self._out / math.sqrt(self.dim)).cpu().numpy()
        finally:
            self._out = None
            self.model.zero_grad(set_to_none=True)  # a tensor outside the loss's graph never had a hook run
        self.seconds["total"] += time.perf_counter() - started
        return result

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def response_gradient(
    model: PreTrainedModel, input_ids: Sequence[int], num_prompt_tokens: int, dim: int = 512, seed: int = 0
) -> np.ndarray:
    """The projected gradient of the student's mean cross-entropy over ``input_ids[num_prompt_tokens:]`` (one
    forward and one backward pass, batch 1, eval mode), as :func:`project_gradient` projects it. Any gradient
    already stored in the model is cleared, and none is left behind.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> tiny = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8,
        ...                                     num_hidden_layers=1, num_attention_heads=1)).eval()
        >>> z = response_gradient(tiny, [1, 5, 7, 2, 9], num_prompt_tokens=2, dim=8)
        >>> z.shape, all(p.grad is None for p in tiny.parameters())
        ((8,), True)
    """
    _check_int("dim", dim, 1)
    _check_int("seed", seed, 0)
    if not 0 < num_prompt_tokens < len(input_ids):
        raise LocalnatError(
            f"num_prompt_tokens={num_prompt_tokens} must be at least 1 and leave at least one of the "
            f"{len(input_ids)} tokens to score."
        )
    was_training = model.training
    model.eval()
    try:
        with _GradientComputer(model, dim, seed) as computer:
            return computer(input_ids, num_prompt_tokens)
    finally:
        model.train(was_training)


# -- the score from projected gradients ------------------------------------------------------------------------


def prompt_splits(
    num_prompts: int, num_splits: int = 10, test_fraction: float = 0.1, seed: int = 0
) -> list[np.ndarray]:
    """The test-side prompt indices of each split, as the official ``grace`` draws them (``GRACE_computation.py``
    L127-L146): split ``s`` permutes the prompts with ``numpy.random.default_rng(seed + s)`` and puts the last
    ``max(1, int(num_prompts * test_fraction))`` on the test side (``seed=0`` gives the official splits).

    Example:
        >>> [t.tolist() for t in prompt_splits(5, num_splits=2, test_fraction=0.4)]
        [[0, 1], [2, 3]]
    """
    _check_int("num_splits", num_splits, 1)
    _check_int("seed", seed, 0)
    if not 0 < test_fraction < 1:
        raise LocalnatError(f"test_fraction={test_fraction!r} must be in (0, 1).")
    if num_prompts < 2:
        raise LocalnatError(f"GRACE splits prompts into train and test: it needs at least 2, got {num_prompts}.")
    num_test = max(1, int(num_prompts * test_fraction))
    num_train = num_prompts - num_test
    if num_train < 1:
        raise LocalnatError(f"test_fraction={test_fraction} leaves no train prompt out of {num_prompts}.")
    return [np.random.default_rng(seed + s).permutation(num_prompts)[num_train:] for s in range(num_splits)]


def grace_from_gradients(train_grads: np.ndarray, test_grads: np.ndarray, smoothing: float = 1e-3) -> float:
    """One split's GRACE: ``trace(Sigma_train^-1 Sigma_test)``, lower is better.

    ``Sigma_train`` is the mean of ``u u^T`` over the unit-normalised train gradients, its eigenvalues smoothed
    ``(1 - smoothing) lambda + smoothing mean(lambda)`` (clipped at 1e-12 before and after, as the official
    ``_smooth_eigenvalues``); ``Sigma_test`` the mean of ``z z^T`` over the raw test gradients. Float64.

    Example:
        >>> train = np.array([[1.0, 0.0], [0.0, 2.0]])    # normalised: e1, e2 -> Sigma_train = I / 2
        >>> test = np.array([[3.0, 4.0]])                 # Sigma_test has trace 25
        >>> grace_from_gradients(train, test, smoothing=0.0)
        50.0
    """
    train = np.asarray(train_grads, dtype=np.float64)
    test = np.asarray(test_grads, dtype=np.float64)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1] or not len(train) or not len(test):
        raise LocalnatError(
            f"train_grads {train.shape} and test_grads {test.shape} must be non-empty [rows, dim] arrays of one dim."
        )
    if not 0 <= smoothing <= 1:
        raise LocalnatError(f"smoothing={smoothing!r} must be in [0, 1].")
    units = train / np.clip(np.linalg.norm(train, axis=1, keepdims=True), EIGEN_EPS, None)
    eigenvalues, vectors = np.linalg.eigh(units.T @ units / len(units))
    eigenvalues = np.clip(eigenvalues, EIGEN_EPS, None)
    eigenvalues = np.clip((1 - smoothing) * eigenvalues + smoothing * eigenvalues.mean(), EIGEN_EPS, None)
    coords = test @ vectors  # trace(V diag(1/w) V^T Z^T Z / n) = sum over rows and axes of (Z V)^2 / w, over n
    return float(((coords**2) / eigenvalues).sum() / len(test))


def grace_split_scores(
    gradients: np.ndarray,
    prompt_index: Sequence[int] | np.ndarray,
    num_splits: int = 10,
    test_fraction: float = 0.1,
    smoothing: float = 1e-3,
    seed: int = 0,
) -> np.ndarray:
    """GRACE of each split for one teacher's projected gradients ``[rows, dim]``; GRACE is their mean.

    ``prompt_index[r]`` names row ``r``'s prompt by its position in the teacher's prompt order, ``0 .. n-1``
    (every index used); a prompt's rows all go to the same side (:func:`prompt_splits`).

    Example:
        >>> grads = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> np.round(grace_split_scores(grads, [0, 1, 2], num_splits=2, test_fraction=0.3, smoothing=0.0), 6).tolist()
        [6.0, 4.0]
    """
    grads = np.asarray(gradients, dtype=np.float64)
    index = np.asarray(prompt_index, dtype=np.int64)
    if grads.ndim != 2 or index.shape != (len(grads),):
        raise LocalnatError(
            f"gradients {grads.shape} must be [rows, dim] with one prompt index per row ({index.shape})."
        )
    num_prompts = int(index.max()) + 1 if len(index) else 0
    if len(index) and (index.min() < 0 or len(np.unique(index)) != num_prompts):
        raise LocalnatError("prompt_index must number the prompts 0 .. n-1, each used at least once.")
    scores = []
    for test_prompts in prompt_splits(num_prompts, num_splits, test_fraction, seed):
        on_test = np.isin(index, test_prompts)
        scores.append(grace_from_gradients(grads[~on_test], grads[on_test], smoothing))
    return np.array(scores)


# -- the pool --------------------------------------------------------------------------------------------------


@dataclass
class _Row:
    position: int  # row in the dataset
    key: Any  # group_by value (the prompt's id)
    ids: list[int] = dataclasses.field(default_factory=list)
    num_prompt_tokens: int = 0


@dataclass
class _Teacher:
    name: Any
    rows: list[_Row] = dataclasses.field(default_factory=list)
    skipped_empty: int = 0
    skipped_too_long: int = 0
    truncated: int = 0


def _columns(dataset: Any, names: Sequence[str]) -> dict[str, list]:
    if isinstance(dataset, pd.DataFrame):
        available = [str(c) for c in dataset.columns]
    elif hasattr(dataset, "column_names"):  # datasets.Dataset
        available = list(dataset.column_names)
    else:
        raise LocalnatError(f"dataset must be a datasets.Dataset or a pandas.DataFrame, got {type(dataset).__name__}.")
    missing = [n for n in names if n not in available]
    if missing:
        raise LocalnatError(f"the pool has no column {missing[0]!r} (columns: {', '.join(available)}). Name it.")
    if isinstance(dataset, pd.DataFrame):
        return {name: dataset[name].tolist() for name in dict.fromkeys(names)}
    return {name: list(dataset[name]) for name in dict.fromkeys(names)}


def _missing(value: Any) -> bool:
    """None, or the NaN pandas puts in a column for a missing value."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plan(tokenizer: PreTrainedTokenizerBase, columns: dict[str, list], config: GraceConfig, limit: int | None):
    """Teachers with their rows to differentiate (prompt-major order), after the empty, sampling and length rules."""
    scoring = config.scoring_config()
    kwargs = scoring.template_kwargs
    teachers: dict[Any, _Teacher] = {}
    texts: dict[str, str] = {}
    kept: list[tuple[_Teacher, _Row, str, str]] = []
    cols = [columns[c] for c in (config.teacher_column, config.group_by, config.prompt_column, config.response_column)]
    for position, (teacher, key, prompt, response) in enumerate(zip(*cols, strict=True)):
        for value, name in ((teacher, config.teacher_column), (key, config.group_by)):
            if _missing(value):
                raise LocalnatError(f"row {position}, column {name!r}: missing value. Fill it or drop the row.")
        if not isinstance(prompt, str):
            raise LocalnatError(f"row {position}, column {config.prompt_column!r}: expected text, got {prompt!r}.")
        if _missing(response):
            response = None
        elif not isinstance(response, str):
            raise LocalnatError(f"row {position}, column {config.response_column!r}: expected text, got {response!r}.")
        entry = teachers.setdefault(teacher, _Teacher(teacher))
        if prompt not in texts:
            texts[prompt] = prompt_text(tokenizer, prompt, kwargs)
        view = response_view(texts[prompt], response, scoring)
        if not view.text:
            entry.skipped_empty += 1
            continue
        kept.append((entry, _Row(position, key), prompt, view.text))

    # max_prompts: the same seeded order of all prompt ids for every teacher; responses_per_prompt: seeded per group.
    first_seen: dict[Any, int] = {}
    for i, key in enumerate(columns[config.group_by]):
        first_seen.setdefault(key, i)
    ranks = np.random.default_rng(config.seed).permutation(len(first_seen))
    order = {key: int(rank) for key, rank in zip(first_seen, ranks, strict=True)}
    groups: dict[tuple[Any, Any], list[tuple[_Teacher, _Row, str, str]]] = {}
    for item in kept:
        groups.setdefault((item[0].name, item[1].key), []).append(item)
    chosen: set[tuple[Any, Any]] = set(groups)
    if config.max_prompts is not None:
        by_teacher: dict[Any, list[Any]] = {}
        for name, key in groups:
            by_teacher.setdefault(name, []).append(key)
        chosen = {(n, k) for n, keys in by_teacher.items() for k in sorted(keys, key=order.get)[: config.max_prompts]}
    ids_of: dict[str, list[int]] = {}
    for (name, key), items in sorted(groups.items(), key=lambda kv: first_seen[kv[0][1]]):
        if (name, key) not in chosen:
            continue
        if config.responses_per_prompt is not None and len(items) > config.responses_per_prompt:
            mix = [config.seed, zlib.crc32(repr(name).encode()), zlib.crc32(repr(key).encode())]
            picks = np.random.default_rng(mix).choice(len(items), config.responses_per_prompt, replace=False)
            items = [items[i] for i in sorted(picks)]
        for entry, row, prompt, response in items:
            if prompt not in ids_of:
                ids_of[prompt] = encode_prompt(tokenizer, texts[prompt])
            head = ids_of[prompt]
            if limit is not None and len(head) >= limit:
                entry.skipped_too_long += 1
                continue
            ids = head + list(tokenizer(response, add_special_tokens=False)["input_ids"])
            if tokenizer.eos_token_id is not None:
                ids.append(tokenizer.eos_token_id)
            if limit is not None and len(ids) > limit:
                ids = ids[:limit]
                entry.truncated += 1
            row.ids, row.num_prompt_tokens = ids, len(head)
            entry.rows.append(row)
    return [teachers[name] for name in sorted(teachers, key=str)]


def grace_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Any,
    config: GraceConfig | None = None,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """GRACE of every teacher in a pool (one row per prompt and teacher answer), best (lowest) first.

    ``dataset``: a ``datasets.Dataset`` or ``pandas.DataFrame`` with the teacher, prompt-id, prompt and response
    columns of ``config`` (a :class:`GraceConfig`, or its fields as keywords). Each teacher is scored on its own
    responses: one forward and backward pass of the student per response, each tensor's gradient projected and freed
    during the backward pass (the full gradient never exists), then :func:`grace_split_scores` over its prompts.
    Empty or missing responses are skipped, sequences longer than ``max_tokens`` (default: the student's context)
    truncated, and a response whose prompt alone is that long skipped; all counted. A teacher left with fewer than
    2 prompts gets ``grace`` None (and a warning), and costs no backward pass. Any gradient already stored in the
    model is cleared.

    Columns: ``rank`` (1 = best; none for a teacher without a score), ``teacher``, ``grace`` (mean over splits),
    ``grace_std`` (standard deviation over splits), ``num_prompts``, ``num_responses``, ``backward_passes``,
    ``seconds`` (its gradients and score), ``skipped_empty``, ``skipped_too_long``, ``truncated``. ``table.attrs``
    holds the config, ``by="grace"``, ``higher_is_better=False``, ``num_parameters`` (the gradient's length) and
    ``seconds_forward_backward`` / ``seconds_projection`` (where the time went, all teachers together; on a GPU the
    projection's kernels overlap the backward pass, so that split is approximate).

    Example:
        >>> import pandas as pd
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
        >>> words = "<s> </s> what is one two three four five six seven eight nine ten".split()
        >>> core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="</s>"))
        >>> core.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
        >>> _ = torch.manual_seed(0)
        >>> student = LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=8, intermediate_size=8,
        ...                                        num_hidden_layers=1, num_attention_heads=1)).eval()
        >>> pool = pd.DataFrame([{"prompt_id": i, "prompt": f"what is {words[3 + i]}", "teacher": t,
        ...                       "response": " ".join(words[3 + i : 6 + i] if t == "a" else words[8:11])}
        ...                      for i in range(4) for t in ("a", "b")])
        >>> table = grace_scores(student, tok, pool, projection_dim=4, num_splits=3, progress=False)
        >>> table[["num_prompts", "backward_passes"]].values.tolist()
        [[4, 4], [4, 4]]
        >>> sorted(table.teacher), table["rank"].tolist(), bool((table.grace > 0).all())
        (['a', 'b'], [1, 2], True)
    """
    if config is None:
        config = GraceConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    needed = [config.teacher_column, config.group_by, config.prompt_column, config.response_column]
    columns = _columns(dataset, needed)
    limit = config.max_tokens if config.max_tokens is not None else context_length(model, tokenizer)
    teachers = _plan(tokenizer, columns, config, limit)
    computer = _GradientComputer(model, config.projection_dim, config.seed)

    prompt_order: dict[Any, list[int]] = {}  # teacher -> each row's prompt position, for the scored teachers
    too_few, thin = [], []
    for teacher in teachers:
        keys = list(dict.fromkeys(row.key for row in teacher.rows))
        if len(keys) < 2:
            too_few.append(f"{teacher.name!s} ({len(keys)})")
            continue
        place = {key: i for i, key in enumerate(keys)}
        prompt_order[teacher.name] = [place[row.key] for row in teacher.rows]
        test = prompt_splits(len(keys), 1, config.test_fraction, config.seed)[0]
        num_train = sum(place[row.key] not in set(test.tolist()) for row in teacher.rows)
        if num_train < config.projection_dim:
            thin.append(f"{teacher.name!s} ({num_train})")
    if too_few:
        logger.warning(
            "GRACE needs 2 prompts with a usable response per teacher; no score for: %s.", ", ".join(too_few)
        )
    if thin:
        logger.warning(
            "GRACE: fewer train gradients per split than projection_dim=%d for %s: Sigma_train is rank-deficient and "
            "the score leans on the smoothing. Use more prompts or responses, or a smaller projection_dim.",
            config.projection_dim,
            ", ".join(thin),
        )

    results: dict[Any, tuple[float | None, float | None, float]] = {}
    was_training = model.training
    model.eval()
    total = sum(len(t.rows) for t in teachers if t.name in prompt_order)
    bar = tqdm(total=total, desc="GRACE gradients", unit="response", disable=not progress)
    try:
        with computer:
            for teacher in teachers:
                if teacher.name not in prompt_order:
                    continue
                bar.set_postfix_str(str(teacher.name))
                started = time.perf_counter()
                grads = np.empty((len(teacher.rows), config.projection_dim))
                for r, row in enumerate(teacher.rows):
                    grads[r] = computer(row.ids, row.num_prompt_tokens)
                    bar.update()
                if np.isfinite(grads).all():
                    splits = grace_split_scores(
                        grads,
                        prompt_order[teacher.name],
                        config.num_splits,
                        config.test_fraction,
                        config.smoothing,
                        config.seed,
                    )
                    score, spread = float(splits.mean()), float(splits.std())
                else:
                    logger.warning("teacher %s: a gradient is not finite (overflow?): no GRACE score.", teacher.name)
                    score = spread = None
                results[teacher.name] = (score, spread, time.perf_counter() - started)
    finally:
        bar.close()
        model.train(was_training)

    records = []
    for teacher in teachers:
        score, spread, seconds = results.get(teacher.name, (None, None, 0.0))
        records.append(
            {
                "teacher": teacher.name,
                "grace": score,
                "grace_std": spread,
                "num_prompts": len({row.key for row in teacher.rows}),
                "num_responses": len(teacher.rows),
                "backward_passes": len(teacher.rows) if teacher.name in results else 0,
                "seconds": seconds,
                "skipped_empty": teacher.skipped_empty,
                "skipped_too_long": teacher.skipped_too_long,
                "truncated": teacher.truncated,
            }
        )
    table = pd.DataFrame(records, columns=list(RESULT_COLUMNS[1:]))
    table["grace"] = table["grace"].astype("float64")
    table["grace_std"] = table["grace_std"].astype("float64")
    table = table.sort_values(["grace", "teacher"], na_position="last", key=_sort_key).reset_index(drop=True)
    table.insert(0, "rank", pd.Series(range(1, len(table) + 1), dtype="Int64").where(table["grace"].notna()))
    table.attrs.update(
        by="grace",
        higher_is_better=False,
        num_parameters=computer.num_parameters,
        seconds_forward_backward=computer.seconds["total"] - computer.seconds["projection"],
        seconds_projection=computer.seconds["projection"],
        config=dataclasses.asdict(config),
    )
    return table


def _sort_key(column: pd.Series) -> pd.Series:
    return column if column.name == "grace" else column.astype(str)
