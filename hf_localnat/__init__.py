"""hf_localnat: choose which teacher data a student LLM should be distilled on, by local naturalness.

Example:
    >>> from hf_localnat import NaturalnessScorer, load_student, rank_teachers, select_responses
    >>> model, tokenizer = load_student()  # doctest: +SKIP
    >>> scored = ds.map(NaturalnessScorer(model, tokenizer), batched=True)  # doctest: +SKIP
    >>> best = select_responses(scored, by="local_naturalness", group_by="prompt_id")  # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hf_localnat")  # stated once, in pyproject.toml
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

from .errors import LocalnatError  # noqa: E402
from .metrics import ScoringConfig, add_casl  # noqa: E402
from .scorer import NaturalnessScorer  # noqa: E402
from .selection import RankingConfig, SelectionConfig, rank_teachers, select_responses, selection_accuracy  # noqa: E402
from .student import load_student  # noqa: E402

__all__ = [
    "LocalnatError",
    "NaturalnessScorer",
    "RankingConfig",
    "ReselectConfig",
    "ReselectingSFTTrainer",
    "ScoringConfig",
    "SelectionConfig",
    "__version__",
    "add_casl",
    "load_student",
    "push_selection",
    "push_student",
    "rank_teachers",
    "select_responses",
    "selection_accuracy",
]


def __getattr__(name: str):
    # The trainer pulls in TRL (seconds to import): load it only when asked for.
    if name in ("ReselectConfig", "ReselectingSFTTrainer"):
        from . import trainer

        return getattr(trainer, name)
    if name in ("push_selection", "push_student"):
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'hf_localnat' has no attribute {name!r}")
