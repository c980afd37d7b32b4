"""Step segmentation: exact spans for each splitter, the merge rule, and the partition property."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_localnat.errors import LocalnatError
from hf_localnat.segmentation import assign_tokens_to_steps, get_splitter, split_steps, splitter_name

MATH_L5 = Path(__file__).resolve().parents[1].parent / "shared/data/multiteacher/zeroeval_math_l5.jsonl"
TEXT_SPLITTERS = ["sentence", "paragraph", "line", r"regex:[;:]\s*", "regex:x*"]


def pieces(text: str, spans) -> list[str]:
    return [text[s:e] for s, e in spans]


def assert_partition(text: str, spans) -> None:
    if not text:
        assert spans == []
        return
    assert spans, "a non-empty text needs at least one step"
    assert spans[0][0] == 0
    assert spans[-1][1] == len(text)
    for (_, e), (s2, _) in zip(spans, spans[1:], strict=False):
        assert e == s2, f"not contiguous at {e}/{s2}"
    assert all(s < e for s, e in spans), "empty span"
    assert "".join(pieces(text, spans)) == text


# ---------------------------------------------------------------- sentence


@pytest.mark.parametrize(
    ("text", "min_step_chars", "expected"),
    [
        # cuts: "A." | " B." | "\n\n" | "C"
        ("A. B.\n\nC", 1, ["A.", " B.\n\n", "C"]),
        ("A. B.\n\nC", 2, ["A.", " B.\n\nC"]),
        ("A. B.\n\nC", 3, ["A. B.\n\nC"]),  # "A." leads and joins " B."; the rest is short or blank
        ("A. B.\n\nC", 4, ["A. B.\n\nC"]),
        ("3.14 is pi.", 4, ["3.14 is pi."]),  # no whitespace after the dot in 3.14: no cut
        ("3.14 is pi. So is 22/7, roughly.", 4, ["3.14 is pi.", " So is 22/7, roughly."]),
        ("Really?! Yes.", 4, ["Really?!", " Yes."]),  # "?" is followed by "!", not whitespace
        ("Really?! Yes.", 6, ["Really?! Yes."]),  # " Yes." is 5 chars: joins the step before
        ("Wait... what? Fine!", 4, ["Wait...", " what?", " Fine!"]),
        ("One two three.   Four five six.", 4, ["One two three.", "   Four five six."]),
        ("Ok. This is a long sentence.", 4, ["Ok. This is a long sentence."]),  # leading short piece
        ("Ok. Long sentence one. Long sentence two.", 4, ["Ok. Long sentence one.", " Long sentence two."]),
        ("a. b. Long sentence.", 6, ["a. b. Long sentence."]),  # leading pieces accumulate until long enough
        ("First line\nsecond line", 4, ["First line\n", "second line"]),
        ("First line\r\n\r\nsecond line", 4, ["First line\r\n\r\n", "second line"]),
        ("Trailing space. ", 4, ["Trailing space. "]),  # " " is whitespace only: joins the step before
        ("End.\n", 4, ["End.\n"]),
        ("   \n\n  ", 4, ["   \n\n  "]),  # only whitespace: one step
        ("x", 4, ["x"]),
        ("Let $x = 3$. Then $2x = 6$. \\boxed{6}", 4, ["Let $x = 3$.", " Then $2x = 6$.", " \\boxed{6}"]),
    ],
)
def test_sentence_hand_cases(text, min_step_chars, expected):
    spans = split_steps(text, "sentence", min_step_chars=min_step_chars)
    assert pieces(text, spans) == expected
    assert_partition(text, spans)


def test_default_splitter_is_sentence_with_min_4():
    text = "A. B.\n\nC. Done here."
    assert split_steps(text) == split_steps(text, "sentence", min_step_chars=4)
    assert pieces(text, split_steps(text)) == ["A. B.\n\nC.", " Done here."]


def test_empty_text_gives_no_steps():
    for spec in ["sentence", "paragraph", "line", "regex:a", lambda t: [(0, len(t))]]:
        assert split_steps("", spec) == []


# ---------------------------------------------------------------- paragraph, line, regex


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Para one. Still one.\nStill one.\n\nPara two.",
         ["Para one. Still one.\nStill one.\n\n", "Para two."]),
        ("Hello world.\n\n\nNew para here.\n  \n  Indented para.",
         ["Hello world.\n\n\n", "New para here.\n  \n", "  Indented para."]),
        ("Windows one.\r\n\r\nWindows two.\r\nsame para",
         ["Windows one.\r\n\r\n", "Windows two.\r\nsame para"]),
        ("No blank line\nat all", ["No blank line\nat all"]),
        ("\n\nLeading blank lines.\n\nab", ["\n\nLeading blank lines.\n\nab"]),  # "\n\n" leads; "ab" is short
        ("Trailing.\n\n", ["Trailing.\n\n"]),
    ],
)
def test_paragraph_hand_cases(text, expected):
    spans = split_steps(text, "paragraph")
    assert pieces(text, spans) == expected
    assert_partition(text, spans)


@pytest.mark.parametrize(
    ("text", "min_step_chars", "expected"),
    [
        ("l1 long\nl2 long\n\nl3 long", 4, ["l1 long\n", "l2 long\n\n", "l3 long"]),
        ("Sentences. Stay together.\nNext", 4, ["Sentences. Stay together.\n", "Next"]),
        ("Step 1\nx\nStep 2\n", 4, ["Step 1\nx\n", "Step 2\n"]),  # "x\n" is 2 chars: joins the step before
        ("Step 1\nx\nStep 2\n", 2, ["Step 1\n", "x\n", "Step 2\n"]),
        ("a\nb\nlonger line", 4, ["a\nb\n", "longer line"]),  # "a\n" leads, joins "b\n"
        ("  indented\n  more\n", 4, ["  indented\n", "  more\n"]),
    ],
)
def test_line_hand_cases(text, min_step_chars, expected):
    spans = split_steps(text, "line", min_step_chars=min_step_chars)
    assert pieces(text, spans) == expected
    assert_partition(text, spans)


@pytest.mark.parametrize(
    ("spec", "text", "min_step_chars", "expected"),
    [
        (r"regex:Step \d+:", "Step 1: x. Step 2: y. Step 3: z", 1,
         ["Step 1:", " x. Step 2:", " y. Step 3:", " z"]),
        (r"regex:Step \d+:", "Step 1: x. Step 2: y. Step 3: z", 4,
         ["Step 1:", " x. Step 2:", " y. Step 3: z"]),
        ("regex:;", "alpha; beta; gamma;", 4, ["alpha;", " beta;", " gamma;"]),  # a match at the end: no cut
        ("regex:(?=B)", "AAAABBBB", 1, ["AAAABBBB"]),  # zero-width matches make no cut
        ("regex:X*", "aaXXbbXcc", 1, ["aaXX", "bbX", "cc"]),  # only the non-empty matches cut
        ("regex:\\n---\\n", "part one\n---\npart two", 4, ["part one\n---\n", "part two"]),
    ],
)
def test_regex_hand_cases(spec, text, min_step_chars, expected):
    spans = split_steps(text, spec, min_step_chars=min_step_chars)
    assert pieces(text, spans) == expected
    assert_partition(text, spans)


# ---------------------------------------------------------------- partition property (hypothesis)

TEXTS = st.text(alphabet=list(".!? \n\ta1\r"), max_size=60)


def reference_sentence_cuts(text: str) -> list[int]:
    """Cut positions of the sentence splitter, written out char by char."""
    cuts = []
    for i, ch in enumerate(text[:-1]):
        if ch in ".!?" and text[i + 1].isspace():
            cuts.append(i + 1)
        if ch in "\r\n" and text[i + 1] not in "\r\n":
            cuts.append(i + 1)
    return cuts


def reference_merge(text: str, cuts: list[int], min_step_chars: int) -> list[str]:
    """The merge rule on strings: weak pieces join the step before; leading weak pieces join the next."""
    bounds = [0, *cuts, len(text)]
    raw = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if a < b]
    steps: list[str] = []
    lead = ""
    for piece in raw:
        weak = len(piece) < min_step_chars or piece.isspace()
        if not steps:
            lead += piece
            if len(lead) >= min_step_chars and not lead.isspace():
                steps.append(lead)
                lead = ""
        elif weak:
            steps[-1] += piece
        else:
            steps.append(piece)
    if lead:
        steps.append(lead)
    return steps


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, spec=st.sampled_from(TEXT_SPLITTERS), min_step_chars=st.sampled_from([1, 2, 4, 7, 30]))
def test_text_splitters_partition(text, spec, min_step_chars):
    spans = split_steps(text, spec, min_step_chars=min_step_chars)
    assert_partition(text, spans)
    if len(spans) > 1:  # the merge rule holds for every step unless the whole text is one step
        for piece in pieces(text, spans):
            assert len(piece) >= min_step_chars and not piece.isspace(), (piece, spans)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, min_step_chars=st.sampled_from([1, 2, 3, 4, 8]))
def test_sentence_matches_reference(text, min_step_chars):
    spans = split_steps(text, "sentence", min_step_chars=min_step_chars)
    assert pieces(text, spans) == reference_merge(text, reference_sentence_cuts(text), min_step_chars)


@settings(max_examples=200, deadline=None)
@given(text=TEXTS)
def test_paragraph_cuts_only_after_blank_lines(text):
    spans = split_steps(text, "paragraph", min_step_chars=1)
    for _, end in spans[:-1]:
        before = text[:end]
        assert before[-1] in "\r\n"
        tail = re.search(r"\s*$", before).group()
        assert len(re.findall(r"\r\n|\r|\n", tail)) >= 2
        assert text[end] not in "\r\n"


@settings(max_examples=200, deadline=None)
@given(text=TEXTS)
def test_line_cuts_after_every_newline_run(text):
    spans = split_steps(text, "line", min_step_chars=1)
    ends = [e for _, e in spans[:-1]]
    expected = [m.end() for m in re.finditer(r"[\r\n]+", text) if m.end() < len(text)]
    # with min_step_chars=1 only whitespace-only lines merge away
    assert set(ends) <= set(expected)
    for end in set(expected) - set(ends):
        nxt = next(e for _, e in spans if e > end)
        assert text[end:nxt].isspace() or end < spans[0][1]


# ---------------------------------------------------------------- real responses


def test_partition_on_real_responses():
    if not MATH_L5.exists():
        pytest.skip(f"{MATH_L5} is absent")
    responses = []
    with open(MATH_L5) as f:
        for line in f:
            response = json.loads(line).get("response")
            if isinstance(response, str):
                responses.append(response)
            if len(responses) >= 300:
                break
    splitters = {spec: get_splitter(spec) for spec in ["sentence", "paragraph", "line", r"regex:\n\d+\.\s"]}
    multi, multi_split = 0, 0
    for response in responses:
        for spec, split in splitters.items():
            spans = split(response)
            assert_partition(response, spans)
            if len(spans) > 1:
                assert all(e - s >= 4 and not response[s:e].isspace() for s, e in spans), spec
        if len(reference_sentence_cuts(response.strip())) >= 2 and len(response) >= 80:
            multi += 1
            multi_split += len(splitters["sentence"](response)) > 1
    assert multi >= 50
    assert multi_split / multi >= 0.95, f"only {multi_split}/{multi} multi-sentence responses split"


# ---------------------------------------------------------------- tokens:n


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    words = ["the", "cat", "sat", "on", "mat", ".", "a", "dog", "ran", "[UNK]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_tokens_chunks_of_n_word_level(word_tokenizer):
    text = "the cat sat on the mat. a dog ran."
    offsets = word_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) == 11
    spans = split_steps(text, "tokens:3", tokenizer=word_tokenizer)
    assert pieces(text, spans) == ["the cat sat ", "on the mat", ". a dog ", "ran."]
    assert split_steps(text, "tokens:4", tokenizer=word_tokenizer) == [(0, 15), (15, 26), (26, len(text))]
    assert split_steps(text, "tokens:11", tokenizer=word_tokenizer) == [(0, len(text))]
    assert split_steps(text, "tokens:100", tokenizer=word_tokenizer) == [(0, len(text))]
    # tokens:n has no merge rule: the last chunk may be a single short token
    assert pieces(text, split_steps(text, "tokens:5", tokenizer=word_tokenizer, min_step_chars=50)) == [
        "the cat sat on the ", "mat. a dog ran", "."
    ]


def test_tokens_partition_with_leading_and_trailing_whitespace(word_tokenizer):
    text = "  the cat\n\nsat   "
    spans = split_steps(text, "tokens:1", tokenizer=word_tokenizer)
    assert pieces(text, spans) == ["  the ", "cat\n\n", "sat   "]
    assert split_steps("   ", "tokens:1", tokenizer=word_tokenizer) == [(0, 3)]  # no tokens: one step
    assert split_steps("", "tokens:1", tokenizer=word_tokenizer) == []


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_tokens_byte_level_bpe(tiny_tokenizer, n):
    texts = [
        "First, solve the inequalities separately. The answer is 42.",
        "Step 1: Add 3 and 4 to get 7.\nStep 2: Multiply by 2.\n\nFinal answer: 14",
        "  Let $x$ be the number of apples. Then $3x = 12$, so $x = 4$. \\boxed{4}  ",
    ]
    for text in texts:
        spans = split_steps(text, f"tokens:{n}", tokenizer=tiny_tokenizer)
        assert_partition(text, spans)
        encoded = tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        steps = assign_tokens_to_steps([s for s, _ in offsets], spans)
        counts = [steps.count(j) for j in range(len(spans))]
        assert all(c == n for c in counts[:-1]), counts
        assert 1 <= counts[-1] <= n
        assert len(spans) == -(-len(offsets) // n)


def test_tokens_spec_errors(word_tokenizer):
    with pytest.raises(LocalnatError, match="needs a tokenizer"):
        get_splitter("tokens:4")
    for bad in ["tokens:0", "tokens:-2", "tokens:abc", "tokens:1.5", "tokens:"]:
        with pytest.raises(LocalnatError, match="positive integer"):
            get_splitter(bad, tokenizer=word_tokenizer)


# ---------------------------------------------------------------- callables


def my_fn(text: str):
    return [(0, 12), (13, len(text))]


def test_callable_valid_and_min_step_chars_ignored():
    def halves(text: str):
        mid = len(text) // 2
        return [(0, mid), (mid, len(text))] if mid else [(0, len(text))]

    assert split_steps("abcdef", halves, min_step_chars=100) == [(0, 3), (3, 6)]
    assert split_steps("a", halves) == [(0, 1)]
    assert split_steps("abcd", lambda t: ([0, 1], (1, 4))) == [(0, 1), (1, 4)]  # lists are fine


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (my_fn, "splitter my_fn returned spans that do not cover the text: gap at char 12. A splitter must "
                "return [start, end) spans that partition the response."),
        (lambda t: [(0, 10)], "do not cover the text: gap at char 10"),
        (lambda t: [(1, len(t))], "do not start at 0"),
        (lambda t: [(0, 15), (10, len(t))], "overlapping spans"),
        (lambda t: [(0, 10), (10, 10), (10, len(t))], "empty or reversed span"),
        (lambda t: [(0, len(t) + 3)], "past the end of the text"),
        (lambda t: [], "no spans"),
        (lambda t: [(0, 5, 9)], "not a pair of ints"),
        (lambda t: [(0.0, 5.5)], "not a pair of ints"),
        (lambda t: 7, "not a sequence of spans"),
    ],
)
def test_callable_validation_errors(fn, message):
    text = "0123456789abcdefghij"  # 20 chars
    with pytest.raises(LocalnatError) as info:
        split_steps(text, fn)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- spec errors and names


def test_unknown_spec():
    with pytest.raises(LocalnatError) as info:
        get_splitter("foo")
    assert str(info.value) == (
        "unknown splitter 'foo'. Use one of: sentence, paragraph, line, regex:<pattern>, tokens:<n>, "
        "or a callable."
    )
    with pytest.raises(LocalnatError, match="string or a callable"):
        get_splitter(3)  # type: ignore[arg-type]


def test_invalid_regex():
    with pytest.raises(LocalnatError) as info:
        get_splitter("regex:(")
    message = str(info.value)
    assert message.startswith("splitter 'regex:(' is not a valid regular expression: ")
    assert message.endswith(". Fix the pattern.")
    assert "\n" not in message
    with pytest.raises(LocalnatError, match="empty pattern"):
        get_splitter("regex:")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_min_step_chars_must_be_positive_int(bad):
    with pytest.raises(LocalnatError, match="min_step_chars"):
        get_splitter("sentence", min_step_chars=bad)


def test_splitter_name():
    assert splitter_name("sentence") == "sentence"
    assert splitter_name("paragraph") == "paragraph"
    assert splitter_name("line") == "line"
    assert splitter_name(r"regex:\n\d+\.") == r"regex:\n\d+\."
    assert splitter_name("tokens:16") == "tokens:16"
    assert splitter_name("tokens:016") == "tokens:16"
    assert splitter_name(my_fn) == f"callable:{__name__}.my_fn"
    with pytest.raises(LocalnatError, match="unknown splitter"):
        splitter_name("foo")


# ---------------------------------------------------------------- assign_tokens_to_steps


def test_assign_tokens_hand_cases():
    spans = [(0, 5), (5, 6), (6, 12)]
    assert assign_tokens_to_steps([0, 3, 5, 9, 11], spans) == [0, 0, 1, 2, 2]
    # no token starts in step 1 (5, 6): it gets no tokens
    assert assign_tokens_to_steps([0, 2, 4, 7, 10], spans) == [0, 0, 0, 2, 2]
    # starts at or past the end of the text belong to the last step
    assert assign_tokens_to_steps([0, 12, 15], spans) == [0, 2, 2]
    assert assign_tokens_to_steps([], spans) == []
    assert assign_tokens_to_steps([], []) == []
    assert assign_tokens_to_steps([0, 1, 2], [(0, 3)]) == [0, 0, 0]


def test_assign_tokens_errors():
    with pytest.raises(LocalnatError, match="no steps"):
        assign_tokens_to_steps([0], [])
    with pytest.raises(LocalnatError, match="sorted"):
        assign_tokens_to_steps([0], [(5, 10), (0, 5)])


def test_assign_tokens_with_real_spans(word_tokenizer):
    text = "the cat sat. on the mat.\n\na dog ran."
    spans = split_steps(text, "sentence")
    assert pieces(text, spans) == ["the cat sat.", " on the mat.\n\n", "a dog ran."]
    offsets = word_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    steps = assign_tokens_to_steps([s for s, _ in offsets], spans)
    assert steps == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
