"""The naturalness metrics: how a response becomes engine requests, and how token log-probs become scores.

- ``global_naturalness`` (GRAPE): mean log p of every response token given the prompt and all earlier tokens.
- ``local_naturalness`` (LALP): per step, the mean log p of its tokens given the prompt and only the
  ``window`` previous steps; then the mean over steps (or over tokens with ``step_aggregate="token_mean"``, or
  the weakest step with ``"min"``, as process-reward work aggregates).
- ``rsr`` (Rank-Surprisal Ratio): sum of min(rank, 100) over response tokens divided by their summed
  surprisal (-log p), full context. Lower is better.
- ``aslec_drop`` (ASLEC-DROP, arXiv 2604.06834): full-context log-probs with the first ``drop_first_tokens``
  tokens of every step left out (1 by default), then the mean over all the tokens kept, pooled across steps, as
  ``output_drop_score`` in the official code computes it (github.com/wangbing1416/ASLEC, 5737d691,
  merge_cal_limo_ours.py). Higher is better. Its driver drops 2 (``--skip_token`` default 2, used for the released
  selections) although the function's own default and the abstract say 1; ``drop_first_tokens=2`` gives theirs.
- ``casl`` (ASLEC's causal, step-length-corrected score): per response, M (mean log p of all tokens), M_head (the
  first ``drop_first_tokens`` tokens of each step), M_tail (the others) and F (the share of head tokens); an
  ordinary least-squares fit M ~ M_tail + M_head + F with intercept over a pool, then ``casl = M - gamma * F``
  (``output_causal_score``, same file). It depends on the pool it is fitted on: see :func:`add_casl`.
- ``ifd`` (Instruction-Following Difficulty, Cherry LLM, arXiv 2308.12032): the mean response NLL given the
  prompt divided by the mean response NLL given the start token alone: a loss ratio, as the official
  ``data_by_IFD.py`` computes it (github.com/tianyi-lab/Cherry_LLM, 6c200ba7: ``mean_rate = mean_2 / mean_1``).
  Higher is better (Cherry keeps the highest, after dropping IFD > 1).
- ``entropy``: the mean over response tokens of the entropy (nats) of the student's whole predictive
  distribution, full context, reduced chunk by chunk. Lower is better (the student is surer of where it is).
- ``local_naturalness@<w>``: with several windows (``window="1,2,4,8"``), local naturalness at each, in one run;
  ``local_naturalness`` is then the first window's.

A step whose window already reaches back to the start of the response sees exactly the full context, so
its log-probs are read from the full-context pass instead of being recomputed.

Length guard: no request is longer than the student's context (``context``), so nothing is scored at positions
the student was never trained on. A row whose prompt plus response does not fit (or whose response is longer
than ``max_response_tokens``) gets ``None`` for the full-context metrics; its local windows still fit and are
scored, and a window that does not fit leaves its step ``None``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from .engine import ScoreRequest, TokenScores
from .errors import LocalnatError
from .segmentation import DEFAULT_MIN_STEP_CHARS, DEFAULT_SPLITTER

logger = logging.getLogger(__name__)

METRIC_COLUMNS = {
    "global": "global_naturalness",
    "local": "local_naturalness",
    "rsr": "rsr",
    "aslec_drop": "aslec_drop",
    "casl": "casl",
    "ifd": "ifd",
    "entropy": "entropy",
}
# Read from one pass over prompt + whole response (ifd also needs one over the response alone).
FULL_CONTEXT_METRICS = ("global", "rsr", "aslec_drop", "casl", "ifd", "entropy")
POOL_METRICS = ("casl",)  # fitted over a pool after every row is scored (add_casl), not by the row scorer
# Per-row columns a metric writes besides its own (the authors' teacher-level aggregates read them).
METRIC_EXTRA_COLUMNS = {
    "rsr": ("rsr_mean_rank", "rsr_mean_surprisal"),
    "casl": ("casl_mean_logprob", "casl_head_logprob", "casl_tail_logprob", "casl_head_fraction"),
}
CASL_EMPTY_MEAN = -16.0  # the official code's mean of an empty head or tail
ASLEC_DROP_DEFAULT = 1  # first tokens of each step that aslec_drop leaves out unless drop_first_tokens says
RSR_RANK_CAP = 100
STEP_AGGREGATES = ("step_mean", "token_mean", "min")
SCORE_PARTS = ("all", "reasoning", "answer")
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
            raise LocalnatError(f"unknown metric {name!r}. Use any of: {', '.join(METRIC_COLUMNS)} (comma-separated).")
        if short not in out:
            out.append(short)
    if not out:
        raise LocalnatError(f"no metric requested. Use any of: {', '.join(METRIC_COLUMNS)}.")
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


_LOCAL_AT = re.compile(r"^local_naturalness@(.+)$")  # local naturalness at one of several windows


def present_metric_columns(columns: Sequence[str]) -> list[str]:
    """The metric columns a dataset holds (compared by the report, ranked in cards): those of
    :data:`METRIC_COLUMNS` present, in its order, with every ``local_naturalness@<k>`` column (one window of
    several) in ``local_naturalness``'s place, by window.

    Example:
        >>> present_metric_columns(["rsr", "local_naturalness@4", "local_naturalness@1", "global_naturalness"])
        ['global_naturalness', 'local_naturalness@1', 'local_naturalness@4', 'rsr']
    """
    present = set(columns)

    def window(name: str) -> tuple[float, str]:
        suffix = _LOCAL_AT.match(name).group(1)  # type: ignore[union-attr]
        try:
            return float(suffix), suffix
        except ValueError:
            return math.inf, suffix

    windows = sorted((c for c in present if _LOCAL_AT.match(c)), key=window)
    known = list(METRIC_COLUMNS.values())
    out: list[str] = []
    for column in known:
        if column in present and column not in out:
            out.append(column)
        if column == METRIC_COLUMNS.get("local", "local_naturalness"):
            out += [c for c in windows if c not in out]
    return out + [c for c in windows if c not in out]



def canonical_window(value: str | int | float | Sequence[int | float]) -> int | float | tuple[int | float, ...]:
    """One window as a number; several (``"1,2,4,8"`` or a list) as a tuple, first one first, repeats dropped.

    Example:
        >>> canonical_window("4"), canonical_window("1, 2,4,2"), canonical_window([0.5])
        (4, (1, 2, 4), 0.5)
    """
    if isinstance(value, str) and "," in value:
        items: list[Any] = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    windows: list[int | float] = []
    for item in items:
        window = validate_window(parse_window(item.strip() if isinstance(item, str) else item))
        if window not in windows:
            windows.append(window)
    if not windows:
        raise LocalnatError(f"window={value!r} names no window. Use e.g. 4, 0.5 or 1,2,4,8.")
    return windows[0] if len(windows) == 1 else tuple(windows)


def window_column(window: int | float) -> str:
    """The column of local naturalness at one of several windows.

    Example:
        >>> window_column(4), window_column(0.5)
        ('local_naturalness@4', 'local_naturalness@0.5')
    """
    return f"{METRIC_COLUMNS['local']}@{window}"


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

    metrics: str = field(
        default="global,local",
        metadata={"help": "Comma-separated metrics: global, local, rsr, aslec_drop, casl, ifd, entropy."},
    )
    window: str = field(
        default="4",
        metadata={
            "help": "Previous steps in a local context: an int >= 1, or a fraction in (0, 1). Several, e.g. 1,2,4,8, "
            "add local_naturalness@1 ... @8 in one run (local_naturalness is then the first)."
        },
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
        default="step_mean",
        metadata={
            "help": "step_mean (mean of step means), token_mean (mean over tokens) or min (the weakest step's mean, "
            "as process-reward models aggregate)."
        },
    )
    drop_first_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Leave out the first N tokens of every step, in local and aslec_drop (ASLEC). Default: none for "
            "local (as LALP), 1 for aslec_drop; ASLEC's official driver uses 2."
        },
    )
    drop_first_token: bool = field(
        default=False, metadata={"help": "Deprecated spelling of --drop_first_tokens 1 (kept working)."}
    )
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
    chat_template_kwargs: str | None = field(
        default=None,
        metadata={
            "help": 'Extra chat-template arguments, as a JSON object, e.g. \'{"enable_thinking": false}\'. They reach '
            "every apply_chat_template call: scoring, training and evaluate."
        },
    )
    think_open: str = field(default="<think>", metadata={"help": "The opening reasoning tag."})
    think_close: str = field(default="</think>", metadata={"help": "The closing reasoning tag."})
    score_part: str = field(
        default="all",
        metadata={
            "help": "Which steps enter the scores: all, reasoning (up to the closing tag) or answer (after it). "
            "A response without the closing tag is all reasoning."
        },
    )

    casl_fit_by: str = field(
        default="teacher",
        metadata={
            "help": "casl: the column whose groups each get their own regression (ASLEC fits one per teacher); a "
            "pool without that column gets one fit over all rows."
        },
    )

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)  # frozen: the canonical form is set once, here

        put("metrics", ",".join(normalize_metrics(self.metrics)))
        put("window", canonical_window(self.window))
        from .segmentation import splitter_name

        splitter_name(self.splitter)  # checks the spec (a tokens:<n> splitter needs the tokenizer only later)
        if isinstance(self.min_step_chars, bool) or not isinstance(self.min_step_chars, int) or self.min_step_chars < 1:
            raise LocalnatError(f"min_step_chars={self.min_step_chars!r} must be an integer >= 1.")
        if self.step_aggregate not in STEP_AGGREGATES:
            choices = ", ".join(repr(a) for a in STEP_AGGREGATES)
            raise LocalnatError(f"step_aggregate={self.step_aggregate!r} is unknown. Use one of {choices}.")
        for name in ("max_tokens_per_batch", "max_response_tokens"):
            value = getattr(self, name)
            if value is None and name == "max_response_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalnatError(f"{name}={value!r} must be a positive number of tokens.")
        for name in ("include_prompt", "drop_first_token", "return_steps"):
            if not isinstance(getattr(self, name), bool):
                raise LocalnatError(f"{name}={getattr(self, name)!r}: use True or False.")
        drop = self.drop_first_tokens
        if drop is not None and (isinstance(drop, bool) or not isinstance(drop, int) or drop < 0):
            raise LocalnatError(f"drop_first_tokens={drop!r} must be an integer >= 0.")
        if self.drop_first_token:  # the old boolean: one canonical form, so old and new records compare equal
            if drop not in (None, 1):
                raise LocalnatError(f"drop_first_token=True means drop_first_tokens=1, not {drop}: give only one.")
            put("drop_first_tokens", 1)
            put("drop_first_token", False)
        put("chat_template_kwargs", _canonical_kwargs(self.chat_template_kwargs))
        for name in ("think_open", "think_close"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise LocalnatError(f"{name}={getattr(self, name)!r}: name the tag, e.g. <think> and </think>.")
        if self.score_part not in SCORE_PARTS:
            raise LocalnatError(f"score_part={self.score_part!r}: use one of {', '.join(SCORE_PARTS)}.")

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics as a tuple of short names, in canonical order."""
        return tuple(self.metrics.split(","))

    @property
    def windows(self) -> tuple[int | float, ...]:
        """Every local window, the first (the one ``local_naturalness`` uses) first."""
        return self.window if isinstance(self.window, tuple) else (self.window,)

    @property
    def row_columns(self) -> list[str]:
        """The score columns the row scorer writes, in order (pool-fitted ``casl`` is added later)."""
        columns: list[str] = []
        for metric in self.metric_names:
            if metric not in POOL_METRICS:
                columns.append(METRIC_COLUMNS[metric])
            if metric == "local" and len(self.windows) > 1:
                columns += [window_column(w) for w in self.windows]
            columns += METRIC_EXTRA_COLUMNS.get(metric, ())
        return columns

    @property
    def local_drop(self) -> int:
        """First tokens of each step that local naturalness leaves out (``drop_first_tokens``, else none)."""
        return self.drop_first_tokens or 0

    @property
    def aslec_drop_tokens(self) -> int:
        """First tokens of each step that aslec_drop leaves out (``drop_first_tokens``, else 1)."""
        return ASLEC_DROP_DEFAULT if self.drop_first_tokens is None else self.drop_first_tokens

    @property
    def template_kwargs(self) -> dict[str, Any]:
        """``chat_template_kwargs`` as the dict ``apply_chat_template`` takes."""
        return json.loads(self.chat_template_kwargs) if self.chat_template_kwargs else {}

    def to_dict(self) -> dict[str, Any]:
        """The form that goes into fingerprints, ``dataset.info`` provenance and cards (JSON-ready)."""
        from .segmentation import splitter_name

        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["metrics"] = list(self.metric_names)
        if isinstance(self.window, tuple):
            out["window"] = list(self.window)
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
                text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                args += [f"--{name}", text.lower() if isinstance(value, bool) else text]
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


def _canonical_kwargs(value: str | dict | None) -> str | None:
    """Chat-template arguments as canonical JSON text (sorted keys), from a JSON string or a dict."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            example = '{"enable_thinking": false}'
            raise LocalnatError(
                f"chat_template_kwargs={value!r} is not JSON ({err}). Write an object, e.g. '{example}'."
            ) from None
    if not isinstance(value, dict):
        raise LocalnatError(f"chat_template_kwargs={value!r}: use a JSON object (a mapping of names to values).")
    return json.dumps(value, sort_keys=True)


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: str, template_kwargs: dict[str, Any] | None = None) -> str:
    """The student's context for a prompt, as text: its chat template with one user turn and the generation prompt
    (``template_kwargs`` passed on, e.g. ``enable_thinking``). Without a chat template:
    ``"Question: {prompt}\\nAnswer: "``.

    Example:
        >>> from transformers import PreTrainedTokenizerFast
        >>> from tokenizers import Tokenizer, models
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")))
        >>> tok.chat_template = "{{ messages[0]['content'] }}|{% if think %}<think>{% endif %}"
        >>> prompt_text(tok, "2+2?"), prompt_text(tok, "2+2?", {"think": True})
        ('2+2?|', '2+2?|<think>')
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False, **(template_kwargs or {})
        )
    return FALLBACK_PROMPT_FORMAT.format(prompt=prompt)


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, template_kwargs: dict[str, Any] | None = None
) -> list[int]:
    """The student's context for a prompt, as token ids (:func:`prompt_text`, then :func:`encode_prompt`)."""
    return encode_prompt(tokenizer, prompt_text(tokenizer, prompt, template_kwargs))


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The token ids of a rendered :func:`prompt_text` (BOS first without a chat template), for callers that need
    the text too and should not render the template twice."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if getattr(tokenizer, "chat_template", None) or tokenizer.bos_token_id is None:
        return ids
    return [tokenizer.bos_token_id] + ids


@dataclass(frozen=True)
class ResponseView:
    """The part of a response that is scored, and where its reasoning ends.

    ``skip``: characters at the start that are not scored (the opening tag the prompt already holds);
    ``text``: the rest, ``response[skip:]``; ``reasoning_end``: the offset in ``text`` just after the closing tag,
    or None when there is none (then all of it is reasoning).
    """

    skip: int
    text: str
    reasoning_end: int | None


def response_view(prompt: str, response: str | None, config: ScoringConfig) -> ResponseView:
    """Apply the reasoning-tag rule: when the rendered prompt (trailing whitespace stripped) ends with the opening
    tag and the response (leading whitespace stripped) starts with it, the response's leading whitespace, that
    tag and the whitespace right after it are not scored: the prompt already said them. A missing response, or
    one with only whitespace left, has nothing to score (``text`` is ``""``), as for an empty one.

    Example:
        >>> config = ScoringConfig()
        >>> view = response_view("<|assistant|><think>\\n", " <think>\\nLet me add. 2+2=4.</think> 4", config)
        >>> view.skip, view.text, view.text[: view.reasoning_end]
        (9, 'Let me add. 2+2=4.</think> 4', 'Let me add. 2+2=4.</think>')
        >>> response_view("<|assistant|>", "<think>Hm.</think>4", config).skip
        0
    """
    skip = 0
    response = response or ""
    stripped = response.lstrip()
    if prompt.rstrip().endswith(config.think_open) and stripped.startswith(config.think_open):
        skip = len(response) - len(stripped) + len(config.think_open)
        skip += len(response[skip:]) - len(response[skip:].lstrip())
    text = response[skip:] if response[skip:].strip() else ""
    close = text.find(config.think_close)
    return ResponseView(skip, text, None if close < 0 else close + len(config.think_close))


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
    full: int | None = None  # request index: prompt + every response token (global, rsr, ...)
    alone: int | None = None  # request index: the start token + every response token (ifd's denominator)
    covered: int | None = None  # request index: the steps whose window reaches the start, in one pass
    num_covered_steps: int = 0
    windows: dict[int, tuple[int, int]] = field(default_factory=dict)  # step -> (request index, offset in its target)
    step_keep: list[bool] = field(default_factory=list)  # whether each step enters the scores (score_part)
    full_too_long: bool = False  # the full-context metrics were wanted but do not fit: they are None
    steps_too_long: set[int] = field(default_factory=set)  # steps whose window does not fit: they are None


SHARE_WINDOWS = True  # off only to measure what the sharing saves (bench/score_bench.py --no_window_sharing)


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
    keep: Sequence[bool] | None = None,
    shared: RowPlan | None = None,
) -> RowPlan:
    """Append this row's requests to ``requests`` and return its plan.

    ``context``: the longest request (prefix + context + target tokens) the student may read; None for no limit.
    ``max_response_tokens``: longer responses get no full-context request. ``keep``: per span, whether its step
    enters the scores (``score_part``); steps left out still serve as context. ``bos``: the start token, the
    context of local windows with ``include_prompt=False`` and of ifd's response-alone pass. ``shared``: the plan
    of the same row at another window, whose full-context (and response-alone) passes this one reuses.

    Consecutive steps whose windows start at the same step (fraction windows: ``window=0.5`` gives steps 6 and 7
    both the context from step 3) are scored in one request: each reads exactly its own context, the earlier
    steps of the group being part of it.
    """
    from .segmentation import assign_tokens_to_steps

    step_of_token = assign_tokens_to_steps(token_starts, spans)
    step_tokens: list[tuple[int, int]] = []
    step_spans: list[tuple[int, int]] = []
    step_keep: list[bool] = []
    previous = -1
    for t, s in enumerate(step_of_token):
        if s == previous:
            step_tokens[-1] = (step_tokens[-1][0], t + 1)
        else:  # a step that no token starts in never appears here: it is skipped
            step_tokens.append((t, t + 1))
            step_spans.append((int(spans[s][0]), int(spans[s][1])))
            step_keep.append(True if keep is None else bool(keep[s]))
            previous = s
    plan = RowPlan(len(response_ids), step_tokens, step_spans, step_keep=step_keep)
    if not response_ids:
        return plan
    ids = tuple(response_ids)
    prefix = tuple(prompt)

    def fits(num_tokens: int) -> bool:
        return context is None or num_tokens <= context

    if shared is not None:
        plan.full, plan.alone = shared.full, shared.alone
    elif any(m in metrics for m in FULL_CONTEXT_METRICS):
        too_many = max_response_tokens is not None and len(ids) > max_response_tokens
        # ifd's two passes are both needed or neither; the response alone is shorter than with its prompt.
        if fits(len(prefix) + len(ids)) and not too_many and (fits(len(bos) + len(ids)) or "ifd" not in metrics):
            plan.full = len(requests)
            requests.append(ScoreRequest(prefix, (), ids))
            if "ifd" in metrics:
                plan.alone = len(requests)
                requests.append(ScoreRequest(tuple(bos), (), ids))
        else:
            plan.full_too_long = True
    if "local" in metrics:
        sizes = [window_size(window, j) for j in range(len(step_tokens))]
        plan.num_covered_steps = next((j for j, w in enumerate(sizes) if w < j), len(sizes))
        local_prefix = prefix if include_prompt else tuple(bos)
        if include_prompt and plan.full is not None:
            plan.covered = plan.full
        elif not include_prompt and plan.alone is not None:  # the start token + every token: ifd's pass
            plan.covered = plan.alone
        elif any(step_keep[: plan.num_covered_steps]):
            # Step j of the covered steps reads prefix + steps 0..j; the pass stops at the last step that fits.
            fitting = [j for j in range(plan.num_covered_steps) if fits(len(local_prefix) + step_tokens[j][1])]
            plan.steps_too_long.update(j for j in range(len(fitting), plan.num_covered_steps) if step_keep[j])
            if fitting:
                plan.covered = len(requests)
                requests.append(ScoreRequest(local_prefix, (), ids[: step_tokens[fitting[-1]][1]]))
        group: list[int] = []  # consecutive steps sharing one request: same window start, all fitting
        group_context = 0  # token where the group's shared window starts

        def flush() -> None:
            if group:
                start, end = step_tokens[group[0]][0], step_tokens[group[-1]][1]
                for j in group:
                    plan.windows[j] = (len(requests), step_tokens[j][0] - start)
                requests.append(ScoreRequest(local_prefix, ids[group_context:start], ids[start:end]))
                group.clear()

        for j in range(plan.num_covered_steps, len(step_tokens)):
            context_start = step_tokens[j - sizes[j]][0]
            end = step_tokens[j][1]
            if not step_keep[j] or not fits(len(local_prefix) + end - context_start):
                flush()
                if step_keep[j]:
                    plan.steps_too_long.add(j)
                continue
            if not (SHARE_WINDOWS and group and context_start == group_context):
                flush()
                group_context = context_start
            group.append(j)
        flush()
    return plan


def _full_context_values(
    plan: RowPlan,
    results: Sequence[TokenScores],
    metrics: tuple[str, ...],
    mask: np.ndarray,
    keep: Sequence[bool],
    aslec_drop: int,
) -> dict[str, float | None]:
    """The full-context metrics of one row with at least one kept token (``mask``: the kept tokens)."""
    full = results[plan.full]
    logprobs = full.logprobs.astype(np.float64)[mask]
    values: dict[str, float | None] = {}
    mean_logprob = float(logprobs.mean())
    if "global" in metrics:
        values["global_naturalness"] = mean_logprob
    if "rsr" in metrics:
        capped = np.minimum(full.ranks[mask], RSR_RANK_CAP).astype(np.float64)
        surprisal = float(-logprobs.sum())
        values["rsr"] = float(capped.sum()) / surprisal if surprisal > 0 else None
        values["rsr_mean_rank"] = float(capped.mean())
        values["rsr_mean_surprisal"] = -mean_logprob
    kept_steps = [(start, end) for (start, end), kept_step in zip(plan.step_tokens, keep, strict=True) if kept_step]
    if "aslec_drop" in metrics:
        # Each kept step's tokens after its first `aslec_drop`, pooled: a token mean, not a mean of step means.
        pooled = [full.logprobs[start + aslec_drop : end] for start, end in kept_steps]
        tokens = np.concatenate(pooled).astype(np.float64) if pooled else np.zeros(0)
        values["aslec_drop"] = float(tokens.mean()) if len(tokens) else None
    if "casl" in metrics:
        head = np.zeros(plan.num_tokens, dtype=bool)
        for start, end in kept_steps:
            head[start : min(start + aslec_drop, end)] = True
        head_lp = full.logprobs.astype(np.float64)[head]
        tail_lp = full.logprobs.astype(np.float64)[mask & ~head]
        values["casl_mean_logprob"] = mean_logprob
        values["casl_head_logprob"] = float(head_lp.mean()) if len(head_lp) else CASL_EMPTY_MEAN
        values["casl_tail_logprob"] = float(tail_lp.mean()) if len(tail_lp) else CASL_EMPTY_MEAN
        values["casl_head_fraction"] = len(head_lp) / len(logprobs)
    if "ifd" in metrics and plan.alone is not None:
        alone = float(-results[plan.alone].logprobs.astype(np.float64)[mask].mean())
        values["ifd"] = -mean_logprob / alone if alone > 0 else None
    if "entropy" in metrics:
        values["entropy"] = float(full.entropies.astype(np.float64)[mask].mean())
    return values


def row_metrics(
    plan: RowPlan,
    results: Sequence[TokenScores],
    metrics: tuple[str, ...],
    step_aggregate: str,
    local_drop: int = 0,
    aslec_drop: int = ASLEC_DROP_DEFAULT,
) -> tuple[dict[str, float | None], list[float | None]]:
    """Turn the engine's results for one row into its score columns and per-step mean log-probs.

    ``local_drop``/``aslec_drop``: first tokens of each step that local naturalness / aslec_drop (and casl's head)
    leave out. The columns are those of ``ScoringConfig.row_columns`` for one window.
    """
    values: dict[str, float | None] = {}
    for metric in metrics:
        if metric not in POOL_METRICS:
            values[METRIC_COLUMNS[metric]] = None
        values.update(dict.fromkeys(METRIC_EXTRA_COLUMNS.get(metric, ())))
    step_means: list[float | None] = []
    if plan.num_tokens == 0:
        return values, step_means
    keep = plan.step_keep or [True] * len(plan.step_tokens)
    if plan.full is not None and any(m in metrics for m in FULL_CONTEXT_METRICS):
        # The full-context metrics read the tokens of the steps score_part keeps (all of them by default).
        mask = np.zeros(plan.num_tokens, dtype=bool)
        for (start, end), kept_step in zip(plan.step_tokens, keep, strict=True):
            mask[start:end] = kept_step
        if mask.any():
            values.update(_full_context_values(plan, results, metrics, mask, keep, aslec_drop))
    if "local" in metrics:
        per_step: list[np.ndarray | None] = []
        for j, (start, end) in enumerate(plan.step_tokens):
            if j in plan.steps_too_long or not keep[j]:
                per_step.append(None)
                continue
            if j < plan.num_covered_steps:
                lp = results[plan.covered].logprobs[start:end]
            else:
                request, offset = plan.windows[j]
                lp = results[request].logprobs[offset : offset + end - start]
            per_step.append(lp[local_drop:])
        step_means = [float(lp.astype(np.float64).mean()) if lp is not None and len(lp) else None for lp in per_step]
        kept = [m for m in step_means if m is not None]
        if step_aggregate == "token_mean":
            scored = [lp for lp in per_step if lp is not None]
            tokens = np.concatenate(scored).astype(np.float64) if scored else np.zeros(0)
            values["local_naturalness"] = float(tokens.mean()) if len(tokens) else None
        elif step_aggregate == "min":  # the weakest step: one unnatural step marks the whole response
            values["local_naturalness"] = float(min(kept)) if kept else None
        else:
            values["local_naturalness"] = float(np.mean(kept)) if kept else None
    return values, step_means


@dataclass(frozen=True)
class CaslFit:
    """One CASL regression: ``M ~ beta_tail * M_tail + beta_head * M_head + gamma * F + intercept``."""

    beta_tail: float
    beta_head: float
    gamma: float
    intercept: float
    num_rows: int


def fit_casl(
    mean: Sequence[float], head: Sequence[float], tail: Sequence[float], fraction: Sequence[float]
) -> tuple[np.ndarray, CaslFit]:
    """CASL over one pool: an ordinary least-squares fit with intercept of each response's mean log-prob on its
    tail mean, head mean and head-token share, then ``casl = mean - gamma * fraction``.

    As ``output_causal_score`` (github.com/wangbing1416/ASLEC, 5737d691, merge_cal_limo_ours.py) with scikit-learn's
    ``LinearRegression``: the columns are centred, the centred system solved by least squares (the minimum-norm
    solution when it is rank-deficient, as scikit-learn's), and the intercept recovered from the means. Every input
    must be finite.

    Example:
        >>> casl, fit = fit_casl([-1.0, -2.0, -1.5, -0.5], [-3.0, -2.5, -4.0, -1.0], [-0.8, -1.9, -1.2, -0.4],
        ...                      [0.1, 0.05, 0.2, 0.1])
        >>> fit.num_rows, bool(np.allclose(casl, np.array([-1.0, -2.0, -1.5, -0.5]) - fit.gamma * np.array(
        ...     [0.1, 0.05, 0.2, 0.1])))
        (4, True)
    """
    y = np.asarray(mean, dtype=np.float64)
    x = np.column_stack([tail, head, fraction]).astype(np.float64)
    if len(y) == 0:
        return np.zeros(0), CaslFit(0.0, 0.0, 0.0, 0.0, 0)
    x_mean, y_mean = x.mean(axis=0), y.mean()
    coef = np.linalg.lstsq(x - x_mean, y - y_mean, rcond=None)[0]
    fit = CaslFit(float(coef[0]), float(coef[1]), float(coef[2]), float(y_mean - x_mean @ coef), len(y))
    return y - fit.gamma * x[:, 2], fit


CASL_MIN_ROWS = 8  # fewer rows than this leave the four-parameter fit barely determined: warn


def add_casl(dataset: Any, by: str | None = "teacher") -> tuple[Any, dict[Any, CaslFit]]:
    """Add the pool-fitted ``casl`` column to a dataset scored with ``metrics`` including ``casl``.

    ASLEC fits one regression per teacher, over all of that teacher's responses: ``by`` names the column whose
    groups each get their own fit (None, or a column the dataset lacks: one fit over the whole pool). A CASL value
    therefore depends on the pool it was fitted on: the same response scores differently in another pool, and
    values from different fits are not on one scale. Rows without features (unscored, too long) get None. Returns
    the dataset (``casl`` replaced if present) and each group's fit.

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_dict({"teacher": ["a"] * 3, "casl_mean_logprob": [-1.0, -2.0, None],
        ...     "casl_head_logprob": [-3.0, -2.0, None], "casl_tail_logprob": [-0.5, -2.0, None],
        ...     "casl_head_fraction": [0.2, 0.1, None]})
        >>> scored, fits = add_casl(ds)
        >>> scored["casl"][2], sorted(fits), fits["a"].num_rows
        (None, ['a'], 2)
    """
    names = METRIC_EXTRA_COLUMNS["casl"]
    missing = [c for c in names if c not in dataset.column_names]
    if missing:
        raise LocalnatError(
            f"casl needs the columns {', '.join(names)} (missing: {', '.join(missing)}). Score with "
            "--metrics including casl first."
        )
    columns = [np.array([np.nan if v is None else v for v in dataset[c]], dtype=np.float64) for c in names]
    groups = list(dataset[by]) if by is not None and by in dataset.column_names else [None] * len(dataset)
    valid = np.all([np.isfinite(c) for c in columns], axis=0)
    casl = np.full(len(dataset), np.nan)
    fits: dict[Any, CaslFit] = {}
    members: dict[Any, list[int]] = {}
    for i, (group, ok) in enumerate(zip(groups, valid, strict=True)):
        if ok:
            members.setdefault(group, []).append(i)
    for group, rows in members.items():
        casl[rows], fits[group] = fit_casl(*(c[rows] for c in columns))
    small = [str(g) for g, f in fits.items() if f.num_rows < CASL_MIN_ROWS]
    if small:
        logger.warning(
            "casl: %d group(s) have fewer than %d scored rows, too few for a stable regression: %s",
            len(small), CASL_MIN_ROWS, ", ".join(small[:5]),
        )  # fmt: skip
    values = [None if np.isnan(v) else float(v) for v in casl]
    if "casl" in dataset.column_names:
        dataset = dataset.remove_columns("casl")
    return dataset.add_column("casl", values), fits
