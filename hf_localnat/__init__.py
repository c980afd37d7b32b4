"""hf_localnat: choose which teacher data a student LLM should be distilled on, by local naturalness.

Example:
    >>> from hf_localnat import NaturalnessScorer, load_student, rank_teachers, select_responses
    >>> model, tokenizer = load_student()  # doctest: +SKIP
    >>> scored = ds.map(NaturalnessScorer(model, tokenizer), batched=True)  # doctest: +SKIP
    >>> best = select_responses(scored, by="local_naturalness", group_by="prompt_id")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .errors import LocalnatError  # noqa: E402
from .scorer import NaturalnessScorer  # noqa: E402
from .selection import rank_teachers, select_responses  # noqa: E402
from .student import load_student  # noqa: E402

__all__ = ["LocalnatError", "NaturalnessScorer", "__version__", "load_student", "rank_teachers", "select_responses"]
