"""Answer extraction and math-verify checking on hand-written responses."""

from __future__ import annotations

import threading

import pytest

from hf_localnat.answers import extract_answer, grade, is_correct, reference_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"We get $\boxed{\frac{a}{\{b\}}}$.", r"\frac{a}{\{b\}}"),  # nested and escaped braces
        (r"First \boxed{3}, corrected: \boxed{x^{2}+1}", "x^{2}+1"),  # the last box wins
        (r"\fbox{7}", "7"),
        (r"so it is \boxed 9", "9"),
        (r"truncated \boxed{\frac{1}{", None),  # an unclosed box is no answer
        ("The final answer is $5$. I hope it is correct.", "5"),
        ("**Final Answer:** $\\frac{3}{4}$", "\\frac{3}{4}"),
        ("Final Answer: 12", "12"),
        ("Thus the answer is 42.", "42"),
        ("Answer: 3.5", "3.5"),
        ("She earns 3 * 6 = 18 dollars.\n#### 1,234", "1234"),
        ("The answer is \\$18.", "18"),
        ("I am not sure how to solve this.", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("reference", "response", "expected"),
    [
        (r"\frac{1}{2}", "0.5", True),  # a bare answer
        ("0.5", r"Half of it: \boxed{\frac{1}{2}}", True),
        ("0.5", r"\boxed{\dfrac{2}{4}}", True),
        ("5", r"\boxed{6}", False),
        ("8", "Count them: 2, 3, 5, 7, 11, 13, 17, 19.\n\nFinal answer: 8", True),
        ("8", "There are 7 of them. \\boxed{7}", False),
        ("Natalia sold 48 clips.\n#### 1,234", "So the total is 1234.\n#### 1234", True),  # GSM8K reference
        ("#### 1,234", r"\boxed{1,234}", True),
        ("#### 1,234", "The answer is $1,234.", True),
        (27.0, "The answer is 27.", True),  # AMC references are floats
        (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(3, \frac{\pi}{2})}", True),
        ("x + 1", "Cancel x - 1. The answer is $x+1$.", True),
        ("p - q", "p-q", True),
        ("7", "I could not solve it.", None),  # no answer -> None
        ("7", "", None),
        (None, r"\boxed{7}", None),  # no reference -> None
    ],
)
def test_is_correct(reference, response, expected):
    assert is_correct(reference, response) is expected


def test_grade_returns_the_answer_read():
    assert grade("84", "12 * 7 = 84. Final answer: 84") == ("84", True)
    assert grade("84", "I give up.") == (None, None)


def test_reference_answer_forms():
    assert reference_answer(27.0) == "27"
    assert reference_answer(3.5) == "3.5"
    assert reference_answer("Janet sells 9 eggs.\n#### 18") == "18"
    assert reference_answer(r"so $\boxed{204}$ minutes") == "204"
    assert reference_answer("  ") is None


def test_works_outside_the_main_thread():
    # math-verify's signal timeouts only work in the main thread; elsewhere they must be switched off, not fail.
    results = []
    thread = threading.Thread(target=lambda: results.append(is_correct(r"\frac{1}{2}", r"\boxed{0.5}")))
    thread.start()
    thread.join()
    assert results == [True]
