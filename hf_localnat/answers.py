"""Reading final answers out of math responses and checking them against a reference.

:func:`extract_answer` finds the answer a response marks (``\\boxed{...}``, "The final answer is ...",
``#### N``); :func:`is_correct` compares it with a reference using Hugging Face's ``math-verify``
(so ``\\frac{1}{2}`` equals ``0.5`` and ``1,234`` equals ``1234``); :func:`grade` returns both, and
:func:`grade_response` also says where the answer came from. A response with no marked answer is read the way
math-verify reads free text (its last readable value), which can match by chance: its ``source`` is "unmarked".

``math-verify`` guards its parsing with ``signal.alarm`` timeouts, which only work in the main thread;
elsewhere (a DataLoader worker thread, a web server) the timeouts are switched off instead of failing.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Literal, NamedTuple

__all__ = ["Graded", "extract_answer", "grade", "grade_response", "is_correct", "reference_answer"]

AnswerSource = Literal["marked", "bare", "unmarked"]

# Seconds math-verify may spend parsing or comparing one expression (main thread only; see the module doc).
TIMEOUT_SECONDS = 5

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])")
_FINAL_ANSWER = re.compile(r"final\s+answer\s*(?:is\b)?\s*(?:\*\*)?\s*[:：]?\s*(?:\*\*)?\s*(?:is\b)?", re.IGNORECASE)
_GSM8K_MARK = re.compile(r"####")
_ANSWER_IS = re.compile(r"\banswer\s*(?:is\b(?!')|:)\s*(?:\*\*)?\s*[:=]?", re.IGNORECASE)
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# Two plain words in a row ("I don't know", "not sure") mean prose, not a bare answer such as "x + 1" or "42 cm".
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}'?[A-Za-z]*\s+[A-Za-z]{2,}")


def _braced(text: str, start: int) -> str | None:
    """The text inside the balanced ``{...}`` that opens at ``text[start]``; None when it never closes."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def _last_boxed(text: str) -> str | None:
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        rest = match.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            inner = _braced(text, rest)
        else:  # "\boxed 5": TeX takes the next token as the argument
            token = re.match(r"[^\s$}]+", text[rest:])
            inner = token.group(0) if token else None
        if inner is not None and inner.strip():
            return inner
    return None


def _clip(rest: str) -> str:
    """The answer at the start of ``rest``: a leading math span, else the rest of its sentence."""
    rest = rest.strip().lstrip("*:").strip()
    span = _MATH_SPAN.match(rest)
    if span:
        return next(group for group in span.groups() if group is not None)
    line = rest.split("\n", 1)[0]
    return re.split(r"\.\s", line, maxsplit=1)[0]  # a period then a space ends the sentence; "3.5" stays whole


def _clean(answer: str) -> str:
    answer = answer.replace("\\$", "").replace("$", "").strip().strip("*").strip()
    answer = re.sub(r"(?<=\d)\{,\}(?=\d)", ",", answer)  # LaTeX thousands separator 1{,}234
    answer = answer.rstrip(".").strip()
    if _THOUSANDS.fullmatch(answer):
        answer = answer.replace(",", "")
    return answer


def extract_answer(text: str | None) -> str | None:
    """The final answer a response marks, or None when it marks none.

    Looks, in order, for the last ``\\boxed{...}`` (balanced braces; also ``\\fbox``/``\\framebox``), the last
    "final answer" phrase ("The final answer is X", "Final Answer: X"), a GSM8K ``#### X`` line, and the last
    "answer is X" / "Answer: X". Dollar signs, a trailing period and thousands separators are removed.

    Example:
        >>> extract_answer(r"so $x = \\boxed{\\frac{1}{2}}$.")
        '\\\\frac{1}{2}'
        >>> extract_answer("She pays 3 * 4 = 12 dollars.\\n#### 1,234")
        '1234'
        >>> extract_answer("I am not sure.") is None
        True
    """
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed) or None
    for pattern in (_FINAL_ANSWER, _GSM8K_MARK, _ANSWER_IS):
        for match in reversed(list(pattern.finditer(text))):
            answer = _clean(_clip(text[match.end() :]))
            if answer:
                return answer
    return None


def _format_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # AMC-style references are stored as 27.0
    return str(value)


def reference_answer(reference: Any) -> str | None:
    """The answer text of a reference: a number, a bare answer, a GSM8K solution or a boxed solution.

    Example:
        >>> reference_answer(27.0)
        '27'
        >>> reference_answer("Janet sells 9 eggs.\\n#### 18")
        '18'
        >>> reference_answer(r"\\left( 3, \\frac{\\pi}{2} \\right)")
        '\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)'
    """
    if reference is None or isinstance(reference, bool):
        return None
    if isinstance(reference, int | float):
        return _format_number(reference)
    text = str(reference).strip()
    if not text:
        return None
    return extract_answer(text) or _clean(text) or None


def _timeout() -> int | None:
    # signal.alarm raises ValueError outside the main thread; there math-verify runs without its timeouts.
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _parse_boxed(answer: str) -> list:
    from math_verify import parse

    return parse(f"\\boxed{{{answer}}}", parsing_timeout=_timeout())


def _read_prediction(text: str) -> tuple[list, str | None, AnswerSource]:
    """Parsed candidates for a response or a bare answer, the answer text they came from, and how it was found."""
    from math_verify import parse

    marked = extract_answer(text)
    if marked is not None:
        parsed = _parse_boxed(marked)
        if parsed:
            return parsed, marked, "marked"
    stripped = text.strip()
    if "\n" not in stripped and len(stripped) <= 80 and not _PROSE.search(stripped):
        # A bare answer ("0.5", "x + 1", "\frac{1}{2}"): math-verify reads expressions best inside \boxed{}.
        answer = _clean(stripped)
        parsed = _parse_boxed(answer) if answer else []
        if parsed:
            return parsed, answer, "bare"
    # Free text without a marked answer: math-verify's own extraction (the last expression it can read).
    parsed = parse(text, parsing_timeout=_timeout())
    return parsed, (str(parsed[-1]) if parsed else None), "unmarked"


class Graded(NamedTuple):
    """One graded response: the answer read, whether it matches the reference, and where the answer came from.

    ``source`` is "marked" (``\\boxed{}``, "final answer", ``#### N``), "bare" (the whole response is a short
    answer), "unmarked" (free text: math-verify's last readable value) or None (no response).
    """

    answer: str | None
    correct: bool | None
    source: AnswerSource | None


def grade_response(reference: Any, response: str | None) -> Graded:
    """Grade one response against a reference: ``Graded(answer, correct, source)``.

    ``correct`` is None when no answer can be read from the response or the reference.

    Example:
        >>> grade_response("0.5", r"Half of it: \\boxed{\\frac{1}{2}}")
        Graded(answer='\\\\frac{1}{2}', correct=True, source='marked')
        >>> grade_response("40", "She has 10 and 30 more, so 40 apples in all")
        Graded(answer='40', correct=True, source='unmarked')
    """
    from math_verify import verify

    if response is None or not str(response).strip():
        return Graded(None, None, None)
    predicted, answer, source = _read_prediction(str(response))
    gold_text = reference_answer(reference)
    if not predicted or gold_text is None:
        return Graded(answer, None, source)
    gold = _parse_boxed(gold_text)
    if not gold:
        return Graded(answer, None, source)
    # verify(gold, prediction) is not symmetric: the reference goes first.
    return Graded(answer, bool(verify(gold, predicted, timeout_seconds=_timeout())), source)


def grade(reference: Any, response: str | None) -> tuple[str | None, bool | None]:
    """``(model_answer, correct)`` for one response: the answer read from it, and whether it equals the reference.

    ``correct`` is None when no answer can be read from the response or the reference. See :func:`grade_response`
    for where the answer came from.

    Example:
        >>> grade("0.5", r"Half of it: \\boxed{\\frac{1}{2}}")
        ('\\\\frac{1}{2}', True)
    """
    graded = grade_response(reference, response)
    return graded.answer, graded.correct


def is_correct(reference: Any, response_or_answer: str | None) -> bool | None:
    """Whether a response (or a bare answer) matches the reference, by math-verify; None if no answer is readable.

    The reference may be a number (``27.0``), a bare answer (``"\\frac{1}{2}"``), a GSM8K solution ending in
    ``#### N`` or a solution with a ``\\boxed{}`` answer.

    Example:
        >>> is_correct(r"\\frac{1}{2}", "The final answer is 0.5.")
        True
        >>> is_correct("Natalia sold 72 clips.\\n#### 1,234", "So she has 1234 in all. #### 1234")
        True
        >>> is_correct("7", "I could not solve it.") is None
        True
    """
    return grade(reference, response_or_answer)[1]
