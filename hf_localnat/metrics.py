"""The naturalness metrics: how a response becomes engine requests, and how token log-probs become scores.

- ``global_naturalness`` (GRAPE): mean log p of every response token given the prompt and all earlier tokens.
- ``local_naturalness`` (LALP): per step, the mean log p of its tokens given the prompt and only the
  ``window`` previous steps; then the mean over steps (or over tokens with ``step_aggregate="token_mean"``).
- ``rsr`` (Rank-Surprisal Ratio): sum of min(rank, 100) over response tokens divided by their summed
  surprisal (-log p), full context. Lower is better.

A step whose window already reaches back to the start of the response sees exactly the full context, so
its log-probs are read from the full-context pass instead of being recomputed.

Length guard: no request is longer than the student's context (``context``), so nothing is scored at positions
the student was never trained on. A row whose prompt plus response does not fit (or whose response is longer
than ``max_response_tokens``) gets ``None`` for the full-context metrics; its local windows still fit and are
scored, and a window that does not fit leaves its step ``None``.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from .engine import ScoreRequest, TokenScores
from .errors import LocalnatError
from .segmentation import DEFAULT_MIN_STEP_CHARS, DEFAULT_SPLITTER

METRIC_COLUMNS = {"global": "global_naturalness", "local": "local_naturalness", "rsr": "rsr"}
RSR_RANK_CAP = 100
STEP_AGGREGATES = ("step_mean", "token_mean")
FALLBACK_PROMPT_FORMAT = "Question: {prompt}\nAnswer: "


def normalize_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical short metric names from a list or a comma-separated string (short or column names).

    Example:
        >>> normalize_metrics("local_naturalness, rsr")
        ('local', 'rsr')
    """
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    by_column = {column: short for short, column in METRIC_COLUMNS.items()}
    out: list[str] = []
    for name in names:
        short = by_column.get(name, name)
        if short not in METRIC_COLUMNS:
            raise LocalnatError(f"unknown metric {name!r}. Use any of: global, local, rsr (comma-separated).")
        if short not in out:
            out.append(short)
    if not out:
        raise LocalnatError("no metric requested. Use any of: global, local, rsr.")
    return tuple(sorted(out, key=list(METRIC_COLUMNS).index))


def validate_window(window: int | float) -> int | float:
    """Check a window: an int >= 1 (previous steps), or a float in (0, 1) (that fraction of them, rounded up).

    Example:
        >>> validate_window(4), validate_window(0.5)
        (4, 0.5)
    """
    if isinstance(window, bool) or not isinstance(window, int | float):
        raise LocalnatError(f"window={window!r} is not a number. Use an int >= 1 or a float in (0, 1).")
    if isinstance(window, float) and window.is_integer():  # 4.0 (or 0.0) from a float field is the int 4 (or 0)
        window = int(window)
    if isinstance(window, int) and window < 1:
        raise LocalnatError(f"window={window} is invalid: a step needs at least one previous step. Use an int >= 1.")
    if isinstance(window, float) and not 0 < window < 1:
        raise LocalnatError(f"window={window} is invalid. Use an int >= 1 or a float in (0, 1) for a fraction.")
    return window


def window_size(window: int | float, num_preceding: int) -> int:
    """How many previous steps step ``num_preceding`` sees.

    Example:
        >>> [window_size(0.5, j) for j in range(5)], window_size(4, 10)
        ([0, 1, 1, 2, 2], 4)
    """
    if isinstance(window, float):
        # The epsilon keeps 0.3 * 10 (= 3.0000000000000004) from rounding up to 4.
        return min(num_preceding, math.ceil(window * num_preceding - 1e-9))
    return min(num_preceding, window)


def parse_window(text: str | int | float) -> int | float:
    """A window as given on the command line or in code: ``"4"`` -> 4, ``"0.5"`` -> 0.5, numbers as they are.

    Example:
        >>> parse_window("4"), parse_window("0.5"), parse_window(2)
        (4, 0.5, 2)
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return text
    try:
        return int(text)
    except (TypeError, ValueError):
        pass
    try:
        return float(text)
    except (TypeError, ValueError):
        raise LocalnatError(f"--window {text!r} is not a number. Use an int >= 1 or a float in (0, 1).") from None


@dataclass(frozen=True)
class ScoringConfig:
    """How responses are scored: the one definition of every scoring option, with its default and help.

    ``NaturalnessScorer(config=...)``, the ``score``, ``demo`` and ``train`` commands, ``ReselectConfig``, the
    scorer's fingerprint, the ``dataset.info`` provenance and the cards' "reproduce" commands all come from these
    fields. Values are checked (and put in canonical form) when the config is made.

    Example:
        >>> config = ScoringConfig(metrics="rsr,local", window="0.5")
        >>> config.metrics, config.window, config.metric_names
        ('local,rsr', 0.5, ('local', 'rsr'))
        >>> ScoringConfig(splitter="paragraph", min_step_chars=6).command_args()
        ['--splitter', 'paragraph', '--min_step_chars', '6']
    """

    metrics: str = field(default="global,local", metadata={"help": "Comma-separated metrics: global, local, rsr."})
    window: str = field(
        default="4", metadata={"help": "Previous steps in a local context: an int >= 1, or a fraction in (0, 1)."}
    )
    splitter: str = field(
        default=DEFAULT_SPLITTER,
        metadata={"help": "Step splitter: sentence, paragraph, line, regex:<pattern> or tokens:<n>."},
    )
    min_step_chars: int = field(
        default=DEFAULT_MIN_STEP_CHARS, metadata={"help": "Pieces shorter than this join the step before them."}
    )
    include_prompt: bool = field(default=True, metadata={"help": "Start local contexts with the prompt (else BOS)."})
    step_aggregate: str = field(
        default="step_mean", metadata={"help": "step_mean (mean of step means) or token_mean (mean over tokens)."}
    )
    drop_first_token: bool = field(default=False, metadata={"help": "Drop each step's first token (ASLEC)."})
    return_steps: bool = field(default=False, metadata={"help": "Also write step_spans and step_logprobs."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt text."})
    response_column: str = field(default="response", metadata={"help": "Column holding the response text."})
    max_tokens_per_batch: int = field(default=16384, metadata={"help": "Padded tokens per forward pass."})
    max_response_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Responses longer than this (student tokens) get None for global and rsr. Default: whatever "
            "fits the student's context after the prompt; nothing longer than the context is ever read."
        },
    )

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)  # frozen: the canonical form is set once, here

        put("metrics", ",".join(normalize_metrics(self.metrics)))
        put("window", validate_window(parse_window(self.window)))
        from .segmentation import splitter_name

        splitter_name(self.splitter)  # checks the spec (a tokens:<n> splitter needs the tokenizer only later)
        if isinstance(self.min_step_chars, bool) or not isinstance(self.min_step_chars, int) or self.min_step_chars < 1:
            raise LocalnatError(f"min_step_chars={self.min_step_chars!r} must be an integer >= 1.")
        if self.step_aggregate not in STEP_AGGREGATES:
            raise LocalnatError(f"step_aggregate={self.step_aggregate!r} is unknown. Use 'step_mean' or 'token_mean'.")
        for name in ("max_tokens_per_batch", "max_response_tokens"):
            value = getattr(self, name)
            if value is None and name == "max_response_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalnatError(f"{name}={value!r} must be a positive number of tokens.")
        for name in ("include_prompt", "drop_first_token", "return_steps"):
            if not isinstance(getattr(self, name), bool):
                raise LocalnatError(f"{name}={getattr(self, name)!r}: use True or False.")

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics as a tuple of short names, in canonical order."""
        return tuple(self.metrics.split(","))

    def to_dict(self) -> dict[str, Any]:
        """The form that goes into fingerprints, ``dataset.info`` provenance and cards (JSON-ready)."""
        from .segmentation import splitter_name

        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["metrics"] = list(self.metric_names)
        out["splitter"] = splitter_name(self.splitter)
        out["rsr_rank_cap"] = RSR_RANK_CAP
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScoringConfig:
        """The config a :meth:`to_dict` (a provenance record) describes; keys it does not know are ignored."""
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in values.items() if k in known}
        if isinstance(kept.get("metrics"), list | tuple):
            kept["metrics"] = ",".join(kept["metrics"])
        return cls(**kept)

    def changed(self) -> dict[str, Any]:
        """The options that differ from their defaults, in field order."""
        default = ScoringConfig()
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if value != getattr(default, name)}

    def command_args(self, skip: Sequence[str] = ()) -> list[str]:
        """The command-line flags that repeat this config: those of the options that differ from their defaults."""
        args: list[str] = []
        for name, value in self.changed().items():
            if name not in skip:
                args += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
        return args


def with_fields_of(
    *configs: type, skip: Sequence[str] = (), only: Sequence[str] | None = None
) -> Callable[[type], type]:
    """Copy other config dataclasses' fields (name, type, default, help) into a class before ``@dataclass``.

    TRL composes its configs by inheritance; ``ScoringConfig`` and ``SelectionConfig`` are frozen, and a dataclass
    cannot have frozen and non-frozen bases at once, so their fields are copied instead, never retyped.

    Example:
        >>> @dataclass
        ... @with_fields_of(ScoringConfig, only=["window"])
        ... class Options:
        ...     seed: int = 0
        >>> [f.name for f in fields(Options)], Options().window
        (['seed', 'window'], '4')
    """

    def decorate(cls: type) -> type:
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for config in configs:
            hints = typing.get_type_hints(config)
            for item in fields(config):
                if item.name in skip or (only is not None and item.name not in only) or item.name in annotations:
                    continue
                annotations[item.name] = hints[item.name]
                setattr(cls, item.name, field(default=item.default, metadata=item.metadata))
        cls.__annotations__ = annotations
        return cls

    return decorate


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The student's context for a prompt: its chat template with one user turn and the generation prompt.

    Without a chat template: ``"Question: {prompt}\\nAnswer: "`` after the BOS token, if there is one.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(FALLBACK_PROMPT_FORMAT.format(prompt=prompt), add_special_tokens=False)["input_ids"])
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def start_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The context used when ``include_prompt=False``: the BOS token (EOS for tokenizers without one)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise LocalnatError("include_prompt=False needs a BOS or EOS token, and this tokenizer has neither.")
    return [token]


@dataclass
class RowPlan:
    """The requests one response needs, and where each step's log-probs will come from."""

    num_tokens: int
    step_tokens: list[tuple[int, int]]  # [start, end) token indices of each scored step
    step_spans: list[tuple[int, int]]  # [start, end) character spans of the same steps
    full: int | None = None  # request index: prompt + every response token (global, rsr)
    covered: int | None = None  # request index: the steps whose window reaches the start, in one pass
    num_covered_steps: int = 0
    windows: dict[int, int] = field(default_factory=dict)  # step -> request index
    full_too_long: bool = False  # the full-context metrics were wanted but do not fit: they are None
    steps_too_long: set[int] = field(default_factory=set)  # steps whose window does not fit: they are None


def plan_row(
    prompt: list[int],
    response_ids: list[int],
    token_starts: Sequence[int],
    spans: Sequence[tuple[int, int]],
    metrics: tuple[str, ...],
    window: int | float,
    include_prompt: bool,
    bos: list[int],
    requests: list[ScoreRequest],
    context: int | None = None,
    max_response_tokens: int | None = None,
) -> RowPlan:
    """Append this row's requests to ``requests`` and return its plan.

    ``context``: the longest request (prefix + context + target tokens) the student may read; None for no limit.
    ``max_response_tokens``: longer responses get no full-context request.
    """
    from .segmentation import assign_tokens_to_steps

    step_of_token = assign_tokens_to_steps(token_starts, spans)
    step_tokens: list[tuple[int, int]] = []
    step_spans: list[tuple[int, int]] = []
    previous = -1
    for t, s in enumerate(step_of_token):
        if s == previous:
            step_tokens[-1] = (step_tokens[-1][0], t + 1)
        else:  # a step that no token starts in never appears here: it is skipped
            step_tokens.append((t, t + 1))
            step_spans.append((int(spans[s][0]), int(spans[s][1])))
            previous = s
    plan = RowPlan(len(response_ids), step_tokens, step_spans)
    if not response_ids:
        return plan
    ids = tuple(response_ids)
    prefix = tuple(prompt)

    def fits(num_tokens: int) -> bool:
        return context is None or num_tokens <= context

    if "global" in metrics or "rsr" in metrics:
        too_many = max_response_tokens is not None and len(ids) > max_response_tokens
        if fits(len(prefix) + len(ids)) and not too_many:
            plan.full = len(requests)
            requests.append(ScoreRequest(prefix, (), ids))
        else:
            plan.full_too_long = True
    if "local" in metrics:
        sizes = [window_size(window, j) for j in range(len(step_tokens))]
        plan.num_covered_steps = next((j for j, w in enumerate(sizes) if w < j), len(sizes))
        local_prefix = prefix if include_prompt else tuple(bos)
        if include_prompt and plan.full is not None:
            plan.covered = plan.full
        else:
            # Step j of the covered steps reads prefix + steps 0..j; the pass stops at the last step that fits.
            fitting = [j for j in range(plan.num_covered_steps) if fits(len(local_prefix) + step_tokens[j][1])]
            plan.steps_too_long.update(range(len(fitting), plan.num_covered_steps))
            if fitting:
                plan.covered = len(requests)
                requests.append(ScoreRequest(local_prefix, (), ids[: step_tokens[fitting[-1]][1]]))
        for j in range(plan.num_covered_steps, len(step_tokens)):
            context_start = step_tokens[j - sizes[j]][0]
            start, end = step_tokens[j]
            if not fits(len(local_prefix) + end - context_start):
                plan.steps_too_long.add(j)
                continue
            plan.windows[j] = len(requests)
            requests.append(ScoreRequest(local_prefix, ids[context_start:start], ids[start:end]))
    return plan


def row_metrics(
    plan: RowPlan,
    results: Sequence[TokenScores],
    metrics: tuple[str, ...],
    step_aggregate: str,
    drop_first_token: bool,
) -> tuple[dict[str, float | None], list[float | None]]:
    """Turn the engine's results for one row into metric values and per-step mean log-probs."""
    values: dict[str, float | None] = {METRIC_COLUMNS[m]: None for m in metrics}
    step_means: list[float | None] = []
    if plan.num_tokens == 0:
        return values, step_means
    if plan.full is not None:
        full = results[plan.full]
        logprobs = full.logprobs.astype(np.float64)
        if "global" in metrics:
            values["global_naturalness"] = float(logprobs.mean())
        if "rsr" in metrics:
            surprisal = float(-logprobs.sum())
            capped = float(np.minimum(full.ranks, RSR_RANK_CAP).sum())
            values["rsr"] = capped / surprisal if surprisal > 0 else None
    if "local" in metrics:
        per_step: list[np.ndarray | None] = []
        for j, (start, end) in enumerate(plan.step_tokens):
            if j in plan.steps_too_long:
                per_step.append(None)
                continue
            if j < plan.num_covered_steps:
                lp = results[plan.covered].logprobs[start:end]
            else:
                lp = results[plan.windows[j]].logprobs
            per_step.append(lp[1:] if drop_first_token else lp)
        step_means = [float(lp.astype(np.float64).mean()) if lp is not None and len(lp) else None for lp in per_step]
        kept = [m for m in step_means if m is not None]
        if step_aggregate == "token_mean":
            scored = [lp for lp in per_step if lp is not None]
            tokens = np.concatenate(scored).astype(np.float64) if scored else np.zeros(0)
            values["local_naturalness"] = float(tokens.mean()) if len(tokens) else None
        else:
            values["local_naturalness"] = float(np.mean(kept)) if kept else None
    return values, step_means
