"""Split a teacher response into reasoning steps: character spans ``[start, end)`` that partition the text.

A splitter turns a response into spans that are contiguous, start at 0, end at ``len(text)``, none empty, so
``"".join(text[s:e] for s, e in spans) == text``. Empty text gives ``[]``. Splitter specs:

- ``"sentence"`` (default): cut right after ``.``, ``!`` or ``?`` when whitespace follows (that whitespace
  begins the next piece), and right after every run of newline characters (``\\n``/``\\r``; the run ends
  the piece).
- ``"paragraph"``: cut right after every blank-line run: a line break, then one or more further line
  breaks with only spaces/tabs between them (``\\r\\n`` counts as one line break). The run ends the piece;
  the indentation of the next paragraph's first line stays with that paragraph.
- ``"line"``: cut right after every run of newline characters.
- ``"regex:<pattern>"``: cut right after the end of every match of ``<pattern>`` (zero-width matches and
  matches ending at the end of the text make no cut).
- ``"tokens:<n>"``: chunks of ``n`` tokens of the given (fast) tokenizer; no merging.
- any callable ``f(text) -> [(start, end), ...]``: used as is, its output checked to be a partition (it is
  not called on empty text).

For the text splitters (sentence, paragraph, line, regex) the cut pieces are then merged: a piece shorter
than ``min_step_chars`` characters, or made only of whitespace, joins the step before it; while no step
exists yet, leading pieces accumulate and join the next piece, until the accumulated first step is itself
long enough and not only whitespace. So every step satisfies the rule, unless the whole text is one step.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from operator import index
from typing import Any

from .errors import LocalnatError

Span = tuple[int, int]
SplitterSpec = str | Callable[[str], Sequence[tuple[int, int]]]

BUILTIN_SPLITTERS = ("sentence", "paragraph", "line")
DEFAULT_SPLITTER = "sentence"  # ScoringConfig's defaults, kept here where the splitters are
DEFAULT_MIN_STEP_CHARS = 4
_SPEC_HELP = "Use one of: sentence, paragraph, line, regex:<pattern>, tokens:<n>, or a callable."
_PARTITION_HELP = "A splitter must return [start, end) spans that partition the response."

_NL = r"(?>\r\n|\r|\n)"  # atomic: "\r\n" is one line break, never "\r" then "\n"
_CUT_PATTERNS = {
    "sentence": re.compile(r"[.!?](?=\s)|[\r\n]+"),
    "paragraph": re.compile(_NL + r"(?:[^\S\r\n]*" + _NL + r")+"),
    "line": re.compile(r"[\r\n]+"),
}


def _parse_spec(spec: SplitterSpec) -> tuple[str, Any]:
    """``(kind, arg)``: ("builtin", name), ("regex", compiled), ("tokens", n) or ("callable", fn)."""
    if isinstance(spec, str):
        if spec in BUILTIN_SPLITTERS:
            return "builtin", spec
        if spec.startswith("regex:"):
            pattern = spec[len("regex:") :]
            if not pattern:
                raise LocalnatError(f"splitter {spec!r} has an empty pattern. Write it as regex:<pattern>.")
            try:
                return "regex", re.compile(pattern)
            except re.error as e:
                raise LocalnatError(
                    f"splitter {spec!r} is not a valid regular expression: {e}. Fix the pattern."
                ) from None
        if spec.startswith("tokens:"):
            n_text = spec[len("tokens:") :].strip()
            if not re.fullmatch(r"[0-9]+", n_text) or int(n_text) < 1:
                raise LocalnatError(
                    f"splitter {spec!r}: the number of tokens per step must be a positive integer, e.g. tokens:16."
                )
            return "tokens", int(n_text)
        raise LocalnatError(f"unknown splitter {spec!r}. {_SPEC_HELP}")
    if callable(spec):
        return "callable", spec
    raise LocalnatError(f"splitter must be a string or a callable, got {type(spec).__name__} ({spec!r}). {_SPEC_HELP}")


def _callable_name(fn: Callable[..., Any]) -> str:
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{qualname}" if module else qualname


def splitter_name(spec: SplitterSpec) -> str:
    """A stable name for a splitter spec, for fingerprints and model cards (the spec is validated).

    Builtins keep their name, ``"regex:<pattern>"`` is returned as given, ``"tokens:<n>"`` with ``n`` in
    canonical form, and a callable becomes ``"callable:<module>.<qualname>"``.

    Example:
        >>> splitter_name("sentence"), splitter_name("tokens:016"), splitter_name(str.split)
        ('sentence', 'tokens:16', 'callable:builtins.str.split')
    """
    kind, arg = _parse_spec(spec)
    if kind == "builtin":
        return arg
    if kind == "regex":
        return f"regex:{arg.pattern}"
    if kind == "tokens":
        return f"tokens:{arg}"
    return f"callable:{_callable_name(arg)}"


def _cuts_to_spans(cuts: Sequence[int], length: int) -> list[Span]:
    bounds = [0, *(c for c in cuts if 0 < c < length), length]
    return [(s, e) for s, e in zip(bounds, bounds[1:], strict=False) if s < e]


def _merge(text: str, pieces: list[Span], min_step_chars: int) -> list[Span]:
    """Apply the merge rule: short or whitespace-only pieces join the step before (leading ones, the next)."""

    def weak(s: int, e: int) -> bool:
        return e - s < min_step_chars or text[s:e].isspace()

    steps: list[Span] = []
    pending: int | None = None  # start of the accumulating first step, while it is still weak
    for s, e in pieces:
        if steps:
            if weak(s, e):
                steps[-1] = (steps[-1][0], e)
            else:
                steps.append((s, e))
            continue
        start = s if pending is None else pending
        if weak(start, e):
            pending = start
        else:
            steps.append((start, e))
            pending = None
    if pending is not None:  # the whole text never made a strong step: it is one step
        steps.append((pending, len(text)))
    return steps


def _regex_splitter(pattern: re.Pattern[str], min_step_chars: int) -> Callable[[str], list[Span]]:
    def split(text: str) -> list[Span]:
        if not text:
            return []
        cuts = [m.end() for m in pattern.finditer(text) if m.end() > m.start()]
        return _merge(text, _cuts_to_spans(cuts, len(text)), min_step_chars)

    return split


def _token_splitter(n: int, tokenizer: Any, spec: str) -> Callable[[str], list[Span]]:
    if tokenizer is None:
        raise LocalnatError(
            f"splitter {spec!r} needs a tokenizer to count tokens. Pass tokenizer=..., "
            f"or use a text splitter such as 'sentence'."
        )

    def split(text: str) -> list[Span]:
        if not text:
            return []
        try:
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        except NotImplementedError:
            raise LocalnatError(
                f"splitter {spec!r} needs a fast tokenizer (one that returns offsets); "
                f"{type(tokenizer).__name__} does not. Load the tokenizer with use_fast=True."
            ) from None
        cuts: list[int] = []
        for i in range(n, len(offsets), n):
            start = int(offsets[i][0])
            if 0 < start < len(text) and (not cuts or start > cuts[-1]):
                cuts.append(start)
        return _cuts_to_spans(cuts, len(text))

    return split


def _check_partition(spans: Any, text: str, name: str) -> list[Span]:
    """``spans`` as a list of int pairs, or LocalnatError saying which partition property fails."""
    where = f"splitter {name} returned"
    try:
        items = list(spans)
    except TypeError:
        raise LocalnatError(f"{where} {type(spans).__name__}, not a sequence of spans. {_PARTITION_HELP}") from None
    out: list[Span] = []
    for k, item in enumerate(items):
        try:
            s, e = item
            s, e = index(s), index(e)
        except (TypeError, ValueError):
            raise LocalnatError(
                f"{where} span {k} = {item!r}, not a pair of ints (start, end). {_PARTITION_HELP}"
            ) from None
        out.append((s, e))
    if not out:
        raise LocalnatError(f"{where} no spans for a text of {len(text)} chars. {_PARTITION_HELP}")
    if out[0][0] != 0:
        raise LocalnatError(f"{where} spans that do not start at 0: the first span is {out[0]}. {_PARTITION_HELP}")
    previous_end = 0
    for k, (s, e) in enumerate(out):
        if s > previous_end:
            raise LocalnatError(
                f"{where} spans that do not cover the text: gap at char {previous_end}. {_PARTITION_HELP}"
            )
        if s < previous_end:
            raise LocalnatError(
                f"{where} overlapping spans: span {k} = {(s, e)} starts before char {previous_end}. {_PARTITION_HELP}"
            )
        if e <= s:
            raise LocalnatError(f"{where} an empty or reversed span: span {k} = {(s, e)}. {_PARTITION_HELP}")
        previous_end = e
    if previous_end < len(text):
        raise LocalnatError(f"{where} spans that do not cover the text: gap at char {previous_end}. {_PARTITION_HELP}")
    if previous_end > len(text):
        raise LocalnatError(
            f"{where} spans that end at char {previous_end}, past the end of the text ({len(text)} chars). "
            f"{_PARTITION_HELP}"
        )
    return out


def _callable_splitter(fn: Callable[[str], Sequence[tuple[int, int]]]) -> Callable[[str], list[Span]]:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)

    def split(text: str) -> list[Span]:
        if not text:
            return []
        return _check_partition(fn(text), text, name)

    return split


def get_splitter(
    spec: SplitterSpec = DEFAULT_SPLITTER, *, min_step_chars: int = DEFAULT_MIN_STEP_CHARS, tokenizer: Any = None
) -> Callable[[str], list[Span]]:
    """A function ``text -> spans`` for a splitter spec; the spec is checked now, so mistakes fail early.

    ``min_step_chars`` drives the merge rule of the text splitters (ignored by ``tokens:<n>`` and callables);
    ``tokenizer`` is needed by ``tokens:<n>`` only.

    Example:
        >>> get_splitter("line")("Step 1: add.\\nStep 2: done.")
        [(0, 13), (13, 26)]
    """
    if isinstance(min_step_chars, bool) or not isinstance(min_step_chars, int) or min_step_chars < 1:
        raise LocalnatError(f"min_step_chars={min_step_chars!r} must be an integer >= 1.")
    kind, arg = _parse_spec(spec)
    if kind == "builtin":
        return _regex_splitter(_CUT_PATTERNS[arg], min_step_chars)
    if kind == "regex":
        return _regex_splitter(arg, min_step_chars)
    if kind == "tokens":
        assert isinstance(spec, str)
        return _token_splitter(arg, tokenizer, spec)
    return _callable_splitter(arg)


def split_steps(
    text: str,
    splitter: SplitterSpec = DEFAULT_SPLITTER,
    *,
    min_step_chars: int = DEFAULT_MIN_STEP_CHARS,
    tokenizer: Any = None,
) -> list[Span]:
    """Split ``text`` into step spans ``[start, end)`` that partition it (see :func:`get_splitter`).

    Example:
        >>> text = "First, add 2 and 3. That gives 5.\\n\\nSo the answer is 5."
        >>> [text[s:e] for s, e in split_steps(text)]
        ['First, add 2 and 3.', ' That gives 5.\\n\\n', 'So the answer is 5.']
    """
    return get_splitter(splitter, min_step_chars=min_step_chars, tokenizer=tokenizer)(text)


def assign_tokens_to_steps(token_starts: Sequence[int], spans: Sequence[Span]) -> list[int]:
    """The step index of each token: the step its first character (its start offset) lies in.

    A start at or past the end of the text belongs to the last step (a negative one to the first). A step
    that no token starts in gets no tokens.

    Example:
        >>> assign_tokens_to_steps([0, 3, 5, 9, 12], [(0, 5), (5, 6), (6, 12)])
        [0, 0, 1, 2, 2]
    """
    if not spans:
        if len(token_starts):
            raise LocalnatError(
                f"cannot assign {len(token_starts)} tokens to steps: there are no steps (empty response?)."
            )
        return []
    starts = [int(s) for s, _ in spans]
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
        raise LocalnatError("step spans must be sorted by start with no empty span. Pass the output of a splitter.")
    last = len(starts) - 1
    return [min(max(bisect_right(starts, int(t)) - 1, 0), last) for t in token_starts]
