"""Choose responses and rank teachers from scored rows.

- :func:`select_responses`: the best ``k`` responses per group (prompt) by a score column, after an optional
  row filter (``where``). Unscorable rows (score ``None``/NaN) are never selected; groups left without any
  valid score are reported (a logged warning and :class:`SelectionReport`), not silently dropped.
- :func:`rank_teachers`: one row per teacher with its score over prompts (for ``rsr``, the RSR authors' mean
  rank / mean surprisal), a bootstrap confidence interval, its win rate on the prompts every teacher answered
  and its P(top), the bootstrap probability that it ranks first; :func:`format_ranking` prints it.
- :func:`selection_accuracy`: the accuracy of a metric's one-per-prompt pick, against a random pick and the
  oracle.
- :func:`compile_where`: a safe evaluator for filter strings such as ``"correct == True and num_steps >= 3"``.

Naturalness scores are mean log-probs (higher is better); ``rsr`` is lower-is-better
(:func:`is_higher_better`).
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import math
import operator
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import datasets
import numpy as np
import pandas as pd

from .errors import LocalnatError
from .statistics import RATIO_FLOOR, best_shares, bootstrap_mean_ci, bootstrap_ratio_ci, p_top

logger = logging.getLogger(__name__)

RANK_COLUMN = "selection_rank"
RANKING_COLUMNS = [
    "rank",
    "teacher",
    "mean",
    "ci_low",
    "ci_high",
    "num_prompts",
    "win_rate",
    "num_common_prompts",
    "p_top",
]

# Substrings of metric names whose direction is known. A name matching both lists is ambiguous.
# local_naturalness@4 (a window of 4) is a naturalness; casl (ASLEC's length-corrected score) is higher-is-better;
# so is ifd (instruction-following difficulty): Cherry LLM keeps the highest (data_by_IFD.py keeps the top of the
# ascending sort, after dropping IFD > 1). entropy is lower-is-better (our convention: the student is surer).
_HIGHER_IS_BETTER = (
    "naturalness", "logprob", "log_prob", "logp", "lalp", "grape", "likelihood", "aslec", "casl", "ifd",
)  # fmt: skip
_LOWER_IS_BETTER = ("rsr", "surprisal", "perplexity", "ppl", "nll", "loss", "neg_log", "negative_log", "entropy")
_NUMERIC_DTYPE_PREFIXES = ("int", "uint", "float", "double", "half", "decimal", "null")
_MAX_LISTED_KEYS = 5


# ----------------------------------------------------------------------------------------------------------
# Metric direction
# ----------------------------------------------------------------------------------------------------------


def is_higher_better(metric: str) -> bool:
    """Whether a higher value of ``metric`` is better, from its name.

    Naturalness (also ``local_naturalness@k``, one window of several), ``aslec_drop``, ``casl``, ``ifd``
    (instruction-following difficulty: Cherry LLM selects the highest) and other log-prob-like scores are
    higher-is-better; ``rsr``, ``entropy``, surprisal, perplexity, NLL and loss are lower-is-better. Any other
    name raises :class:`LocalnatError`: pass ``higher_is_better``.

    Example:
        >>> is_higher_better("local_naturalness"), is_higher_better("rsr")
        (True, False)
        >>> [is_higher_better(m) for m in ("local_naturalness@4", "casl", "ifd", "entropy")]
        [True, True, True, False]
    """
    name = str(metric).lower()
    higher = any(part in name for part in _HIGHER_IS_BETTER)
    lower = any(part in name for part in _LOWER_IS_BETTER)
    if higher != lower:
        return higher
    why = "is ambiguous" if higher else "is not a known metric"
    raise LocalnatError(
        f"metric {metric!r} {why}, so the better direction is unknown. "
        "Pass higher_is_better=True or False (CLI: --higher_is_better true|false)."
    )


# ----------------------------------------------------------------------------------------------------------
# Safe --where expressions
# ----------------------------------------------------------------------------------------------------------

_UNKNOWN = None  # three-valued logic: a condition on a missing value is unknown, and unknown never matches

_ORDERING = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_COMPARE_SYMBOLS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}
_LITERAL_TYPES = (str, int, float, bool, type(None))
_LONE_EQUALS = re.compile(r"(?<![=!<>])=(?!=)")
_WHERE_HELP = 'Use comparisons of columns with literals joined by and/or/not, e.g. "correct == True".'
_MAX_WHERE_DEPTH = 50  # of the expression tree: deeper ones exhaust the parser's or the evaluator's stack
_MAX_WHERE_CHARS = 10_000


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_missing(value: Any) -> bool:
    """None or NaN: a value that is not there (a group key, a score).

    Example:
        >>> is_missing(None), is_missing(float("nan")), is_missing(0)
        (True, True, False)
    """
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same(a: Any, b: Any) -> bool:
    """``is`` for the singletons None/True/False; equality otherwise (identity of numbers is meaningless)."""
    if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


class _WhereExpression:
    """A compiled ``--where`` string: call it with a row dict; ``columns`` lists the columns it reads."""

    def __init__(self, text: str):
        self.text = text
        self.columns: list[str] = []
        too_deep = LocalnatError(
            f"--where {_shorten(text)!r}: nested more than {_MAX_WHERE_DEPTH} levels deep. Write a flatter "
            "condition, e.g. a and b and c."
        )
        if len(text) > _MAX_WHERE_CHARS:
            raise LocalnatError(f"--where {_shorten(text)!r}: longer than {_MAX_WHERE_CHARS} characters. {_WHERE_HELP}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)  # e.g. "x is 3"
                tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as err:
            if "too many nested" in str(err.msg):
                raise too_deep from None
            hint = "; compare with ==" if _LONE_EQUALS.search(text) else ""
            message = f"--where {_shorten(text)!r}: cannot parse it ({err.msg}{hint}). {_WHERE_HELP}"
            raise LocalnatError(message) from None
        except (MemoryError, RecursionError):  # the parser gives up on very deep nesting this way
            raise too_deep from None
        stack = [(tree.body, 1)]  # measured without recursion, so the check itself cannot overflow
        while stack:
            node, depth = stack.pop()
            if depth > _MAX_WHERE_DEPTH:
                raise too_deep
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
        self._condition = self._compile_condition(tree.body)

    def __call__(self, row: dict) -> bool:
        return self._condition(row) is True

    def __repr__(self) -> str:
        return f"where({self.text!r})"

    # -- compilation ---------------------------------------------------------------------------------------

    def _unsupported(self, node: ast.AST, hint: str = "") -> LocalnatError:
        return LocalnatError(
            f"--where {self.text!r}: unsupported expression {type(node).__name__} "
            f"`{ast.unparse(node)}`{hint}. {_WHERE_HELP}"
        )

    def _compile_condition(self, node: ast.AST) -> Callable[[dict], bool | None]:
        """A node used as a truth value -> row -> True / False / None (unknown)."""
        if isinstance(node, ast.BoolOp):
            parts = [self._compile_condition(value) for value in node.values]
            return _kleene_and(parts) if isinstance(node.op, ast.And) else _kleene_or(parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self._compile_condition(node.operand)

            def negate(row: dict) -> bool | None:
                value = inner(row)
                return _UNKNOWN if value is _UNKNOWN else not value

            return negate
        if isinstance(node, ast.Compare):
            return self._compile_compare(node)
        if isinstance(node, ast.Name | ast.Constant):
            value_of = self._compile_value(node)

            def truth(row: dict) -> bool | None:
                value = value_of(row)
                return _UNKNOWN if is_missing(value) else bool(value)

            return truth
        raise self._unsupported(node)

    def _compile_value(self, node: ast.AST) -> Callable[[dict], Any]:
        """A comparison operand: a column name or a literal -> row -> value."""
        if isinstance(node, ast.Name):
            name = node.id
            if name not in self.columns:
                self.columns.append(name)
            text = self.text

            def column(row: dict) -> Any:
                try:
                    return row[name]
                except KeyError:
                    raise LocalnatError(
                        f"--where {text!r}: unknown column {name!r} (columns: {', '.join(map(str, row))})."
                    ) from None

            return column
        literal = self._literal(node)
        return lambda row: literal

    def _literal(self, node: ast.AST, inside: bool = False) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, _LITERAL_TYPES):
            return node.value
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub | ast.UAdd)
            and isinstance(node.operand, ast.Constant)
            and type(node.operand.value) in (int, float)
        ):
            return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        if isinstance(node, ast.List | ast.Tuple | ast.Set) and not inside:
            return tuple(self._literal(element, inside=True) for element in node.elts)
        raise self._unsupported(node, " (lists may hold only literals)" if inside else "")

    def _compile_compare(self, node: ast.Compare) -> Callable[[dict], bool | None]:
        operands = [self._compile_value(node.left)] + [self._compile_value(c) for c in node.comparators]
        ops = list(node.ops)
        for op in ops:
            if type(op) not in _COMPARE_SYMBOLS:
                raise self._unsupported(node)
        text = self.text

        def compare(row: dict) -> bool | None:
            result: bool | None = True
            left = operands[0](row)
            for op, right_of in zip(ops, operands[1:], strict=True):
                right = right_of(row)
                outcome = _compare_pair(op, left, right, text)
                if outcome is False:
                    return False
                if outcome is _UNKNOWN:
                    result = _UNKNOWN
                left = right
            return result

        return compare


def _compare_pair(op: ast.cmpop, left: Any, right: Any, text: str) -> bool | None:
    kind = type(op)
    if kind is ast.Eq:
        return left == right
    if kind is ast.NotEq:
        return left != right
    if kind is ast.Is:
        return _same(left, right)
    if kind is ast.IsNot:
        return not _same(left, right)
    if kind in _ORDERING:
        if is_missing(left) or is_missing(right):
            return _UNKNOWN
        try:
            return bool(_ORDERING[kind](left, right))
        except TypeError:
            raise _type_error(text, left, _COMPARE_SYMBOLS[kind], right) from None
    # in / not in
    if right is None:
        return _UNKNOWN
    try:
        found = left in right
    except TypeError:
        raise _type_error(text, left, _COMPARE_SYMBOLS[kind], right) from None
    return found if kind is ast.In else not found


def _type_error(text: str, left: Any, symbol: str, right: Any) -> LocalnatError:
    return LocalnatError(
        f"--where {text!r}: cannot evaluate {left!r} {symbol} {right!r} "
        f"({type(left).__name__} {symbol} {type(right).__name__}). "
        "Compare a column with a literal of its type."
    )


def _kleene_and(parts: list[Callable[[dict], bool | None]]) -> Callable[[dict], bool | None]:
    def both(row: dict) -> bool | None:
        result: bool | None = True
        for part in parts:
            value = part(row)
            if value is False:
                return False
            if value is _UNKNOWN:
                result = _UNKNOWN
        return result

    return both


def _kleene_or(parts: list[Callable[[dict], bool | None]]) -> Callable[[dict], bool | None]:
    def either(row: dict) -> bool | None:
        result: bool | None = False
        for part in parts:
            value = part(row)
            if value is True:
                return True
            if value is _UNKNOWN:
                result = _UNKNOWN
        return result

    return either


def compile_where(where: str | Callable[[dict], bool] | None) -> Callable[[dict], bool] | None:
    """Turn a ``--where`` filter into a row predicate, safely: strings are parsed with ``ast``, never eval'd.

    A string may use column names, literals (strings, numbers, True/False/None, lists/tuples of them),
    comparisons (``== != < <= > >= in not in is is not``) and ``and``/``or``/``not``. A bare column is
    tested for truth (``"not correct"``). Comparisons with a missing value (``None``/NaN) under ``< <= > >=``
    or ``in`` are unknown, and a row whose condition is unknown does not match (also under ``not``), as in
    SQL; ``== None`` / ``is None`` test for missing values explicitly. A callable is returned as is; ``None``
    or an empty string means no filter.

    Example:
        >>> keep = compile_where("teacher in ['a', 'b'] and num_steps >= 3")
        >>> keep({"teacher": "a", "num_steps": 4}), keep({"teacher": "c", "num_steps": 4})
        (True, False)
        >>> compile_where("not correct")({"correct": False})
        True
    """
    if where is None:
        return None
    if isinstance(where, str):
        return _WhereExpression(where) if where.strip() else None
    if callable(where):
        return where
    raise LocalnatError(
        f'where={where!r}: expected a string such as "correct == True", a callable(row) -> bool, or None.'
    )


# ----------------------------------------------------------------------------------------------------------
# Column access
# ----------------------------------------------------------------------------------------------------------


def _require_columns(dataset: datasets.Dataset, columns: dict[str, str]) -> None:
    """``columns``: name -> argument that names it. Raise naming the first missing one and those present."""
    for column, argument in columns.items():
        if column not in dataset.column_names:
            raise LocalnatError(
                f"{argument}={column!r}: no such column (columns: {', '.join(dataset.column_names)}). "
                f"Pass {argument} with one of them."
            )


def _column(dataset: datasets.Dataset, name: str) -> list:
    return list(dataset.with_format(None)[name][:])


def _scores(dataset: datasets.Dataset, by: str) -> np.ndarray:
    """The score column as float64, with None -> NaN. Non-numeric columns are a user error."""
    feature = dataset.features[by]
    dtype = getattr(feature, "dtype", None)
    if not isinstance(feature, datasets.Value) or not str(dtype).startswith(_NUMERIC_DTYPE_PREFIXES):
        raise LocalnatError(
            f"by={by!r}: the column holds {dtype or type(feature).__name__}, not numbers. "
            "Pass by= a score column such as local_naturalness, global_naturalness or rsr."
        )
    values = _column(dataset, by)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def group_codes(keys: Sequence, column: str) -> tuple[np.ndarray, list]:
    """Integer codes in order of first appearance, and the key of each code.

    Example:
        >>> codes, keys = group_codes(["b", "a", "b"], "prompt_id")
        >>> codes.tolist(), keys
        ([0, 1, 0], ['b', 'a'])
    """
    mapping: dict = {}
    try:
        codes = np.fromiter((mapping.setdefault(key, len(mapping)) for key in keys), dtype=np.int64, count=len(keys))
    except TypeError:
        kind = next(type(key).__name__ for key in keys if not _hashable(key))
        raise LocalnatError(
            f"column {column!r} holds {kind} values, which cannot name a group. Group by a column of ids "
            "(strings or ints)."
        ) from None
    return codes, list(mapping)


def _without_group(keys: Sequence, column: str, what: str) -> np.ndarray:
    """Rows whose group key is missing (None/NaN): they share no prompt with anything, so they are left out."""
    missing = np.fromiter((is_missing(key) for key in keys), dtype=bool, count=len(keys))
    if missing.any():
        logger.warning(
            "%d row(s) have no %r (None) and are left out of the %s. Fill the column to include them.",
            int(missing.sum()),
            column,
            what,
        )
    return missing


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _rows(dataset: datasets.Dataset, columns: list[str] | None, batch_size: int = 1000) -> Iterator[dict]:
    """Row dicts, read a batch at a time (``columns=None``: every column)."""
    plain = dataset.with_format(None)
    if columns is not None:
        if not columns:
            yield from ({} for _ in range(len(plain)))
            return
        plain = plain.select_columns(columns)
    for batch in plain.iter(batch_size=batch_size):
        names = list(batch)
        for values in zip(*(batch[name] for name in names), strict=True):
            yield dict(zip(names, values, strict=True))


def where_mask(dataset: datasets.Dataset, where: str | Callable | None) -> np.ndarray | None:
    """Which rows pass ``where`` (None when there is no filter), reading only the columns it names."""
    predicate = compile_where(where)
    if predicate is None:
        return None
    columns = predicate.columns if isinstance(predicate, _WhereExpression) else None
    if columns is not None:
        for column in columns:
            if column not in dataset.column_names:
                raise LocalnatError(
                    f"--where {predicate.text!r}: unknown column {column!r} "
                    f"(columns: {', '.join(dataset.column_names)})."
                )
    rows = _rows(dataset, columns)
    return np.fromiter((bool(predicate(row)) for row in rows), dtype=bool, count=len(dataset))


def _check_direction(higher_is_better: bool | None, by: str) -> bool:
    if higher_is_better is None:
        return is_higher_better(by)
    if not isinstance(higher_is_better, bool | np.bool_):
        raise LocalnatError(f"higher_is_better={higher_is_better!r}: use True, False or None (by the name).")
    return bool(higher_is_better)


def _preview(keys: Sequence) -> str:
    shown = ", ".join(repr(key) for key in keys[:_MAX_LISTED_KEYS])
    return shown + (", ..." if len(keys) > _MAX_LISTED_KEYS else "")


# ----------------------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------------------


def _select_with_rank(dataset: datasets.Dataset, indices: list[int], ranks: list[int]) -> datasets.Dataset:
    """``dataset.select(indices)`` plus an int64 ``selection_rank`` column (replacing an existing one).

    ``add_column`` on a dataset with an indices mapping (a ``select`` result) first rewrites it row by row, so
    when the input has no mapping the rank column is added to the whole input (an Arrow append) before the
    lazy ``select``: about 10x faster on large inputs, same rows, columns and features.
    """
    if RANK_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(RANK_COLUMN)
    feature = datasets.Value("int64")
    if getattr(dataset, "_indices", None) is not None:
        return dataset.select(indices).add_column(RANK_COLUMN, ranks, feature=feature)
    full = np.zeros(len(dataset), dtype=np.int64)
    full[indices] = ranks
    return dataset.add_column(RANK_COLUMN, full, feature=feature).select(indices)


@dataclass(frozen=True)
class SelectionConfig:
    """How responses are selected from scored rows: the one definition of the selection options.

    ``select_responses``, the ``select`` and ``push-selection`` commands, ``ReselectConfig`` (every reselection
    round) and the selection card are all derived from these fields. Values are checked when the config is made.

    Example:
        >>> SelectionConfig(by="rsr", k=2).command_args()
        ['--by', 'rsr', '--k', '2']
        >>> SelectionConfig(by="rsr").is_higher_better()
        False
    """

    by: str = field(default="local_naturalness", metadata={"help": "Score column to select by."})
    group_by: str = field(default="prompt_id", metadata={"help": "Column naming the group (the prompt)."})
    k: int = field(default=1, metadata={"help": "Responses kept per group."})
    where: str | None = field(default=None, metadata={"help": 'Row filter applied first, e.g. "correct == True".'})
    higher_is_better: bool | None = field(
        default=None, metadata={"help": "Override the metric's direction (naturalness: higher; rsr: lower)."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer) or self.k < 1:
            raise LocalnatError(f"k={self.k!r}: the number of rows kept per group must be an int >= 1.")
        object.__setattr__(self, "k", int(self.k))
        if self.higher_is_better is not None and not isinstance(self.higher_is_better, bool | np.bool_):
            raise LocalnatError(f"higher_is_better={self.higher_is_better!r}: use True, False or None (by the name).")
        compile_where(self.where)  # a mistake in the filter fails now, before any data is read

    def is_higher_better(self) -> bool:
        """The direction the selection uses: ``higher_is_better``, else the metric's own (:func:`is_higher_better`)."""
        return _check_direction(self.higher_is_better, self.by)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (a callable ``where`` is named, not stored)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if callable(self.where):
            out["where"] = f"callable:{getattr(self.where, '__qualname__', type(self.where).__name__)}"
        return out

    def command_args(self, every: bool = False) -> list[str]:
        """The ``hf-localnat select`` flags that repeat this selection: those of the options that differ from
        their defaults, or with ``every`` all those with a value (a callable ``where`` has no flag)."""
        default = SelectionConfig()
        args: list[str] = []
        for name, value in self.to_dict().items():
            unneeded = value is None if every else value == getattr(default, name)
            if unneeded or (name == "where" and callable(self.where)):
                continue
            args += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
        return args


@dataclass
class SelectionReport:
    """What :func:`select_responses` did: rows and groups before/after the filter, and groups left unscored.

    ``num_groups`` counts the groups with at least one row passing ``where``; ``groups_without_score`` lists
    those of them whose rows all have a missing (None/NaN) score, in order of first appearance. They get no
    row in the output; ``num_groups_selected`` counts the others.

    Example:
        >>> report = SelectionReport(num_rows=6, num_rows_after_where=5, num_groups=3, num_groups_selected=2,
        ...                          groups_without_score=["p3"], num_rows_selected=2, by="rsr", k=1,
        ...                          higher_is_better=False)
        >>> print(report.summary())
        Selected 2 rows (top 1 per group by rsr, lower is better) from 2 of 3 groups; 5 of 6 rows passed where
        1 group(s) had no valid rsr score and got no row: 'p3'.
    """

    num_rows: int
    num_rows_after_where: int
    num_groups: int
    num_groups_selected: int
    groups_without_score: list = field(default_factory=list)
    num_rows_selected: int = 0
    by: str = ""
    k: int = SelectionConfig.k
    higher_is_better: bool = True

    def summary(self) -> str:
        """One line, plus a second naming the groups without a valid score when there are any."""
        direction = "higher" if self.higher_is_better else "lower"
        line = (
            f"Selected {self.num_rows_selected} rows (top {self.k} per group by {self.by}, "
            f"{direction} is better) from {self.num_groups_selected} of {self.num_groups} groups"
        )
        if self.num_rows_after_where != self.num_rows:
            line += f"; {self.num_rows_after_where} of {self.num_rows} rows passed where"
        else:
            line += f" ({self.num_rows} rows)"
        if self.groups_without_score:
            line += (
                f"\n{len(self.groups_without_score)} group(s) had no valid {self.by} score and got no row: "
                f"{_preview(self.groups_without_score)}."
            )
        return line


def top_k_per_group(
    scores: np.ndarray, codes: np.ndarray, eligible: np.ndarray, k: int, higher_is_better: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The selection core: the best ``k`` eligible, scored rows of each group.

    ``scores`` (NaN = unscored), ``codes`` (group codes in order of first appearance) and ``eligible`` are one
    entry per row. Returns the selected row indices and their 1-based ranks, grouped by code, best first. An
    unscored row is never selected, a group with fewer than ``k`` such rows gives fewer, and equal scores go to
    the earlier row. ``select_responses``, the report and every reselection round select through this.

    Example:
        >>> rows, ranks = top_k_per_group(np.array([1.0, 3.0, np.nan, 2.0]), np.array([0, 0, 0, 1]),
        ...                               np.ones(4, dtype=bool), k=2, higher_is_better=True)
        >>> rows.tolist(), ranks.tolist()
        ([1, 0, 3], [1, 2, 1])
    """
    rows = np.flatnonzero(eligible & ~np.isnan(scores))
    key = -scores[rows] if higher_is_better else scores[rows]
    order = np.lexsort((rows, key, codes[rows]))  # by group, then score, then original row index
    rows, row_codes = rows[order], codes[rows][order]
    positions = np.arange(len(rows))
    starts = np.ones(len(rows), dtype=bool)
    starts[1:] = row_codes[1:] != row_codes[:-1]
    ranks = positions - np.maximum.accumulate(np.where(starts, positions, 0)) + 1
    keep = ranks <= k
    return rows[keep], ranks[keep]


def select_responses(
    dataset: datasets.Dataset,
    config: SelectionConfig | str | None = None,
    *,
    return_report: bool = False,
    **options: Any,
) -> datasets.Dataset | tuple[datasets.Dataset, SelectionReport]:
    """Keep the best ``k`` rows of each group by the score column ``by``.

    Rows are first filtered by ``where`` (see :func:`compile_where`). Rows whose group key is None/NaN are
    left out with a warning (they answer no known prompt). Rows whose score is None/NaN are never selected;
    groups left with no valid score are logged as a warning and listed in the report. Equal scores go to the
    earlier row. The result keeps every column and its type, plus an int64 ``selection_rank``
    (1..k within the group; an existing ``selection_rank`` column is replaced). Groups come in order of
    first appearance in ``dataset``, then by rank.

    Args:
        dataset: scored rows.
        config: a :class:`SelectionConfig` (by, group_by, k, where, higher_is_better), or just the ``by`` column.
        return_report: also return a :class:`SelectionReport`.
        **options: any :class:`SelectionConfig` field, applied on top of ``config`` (``by="rsr", k=2``).

    Example:
        >>> ds = datasets.Dataset.from_dict({"prompt_id": ["p1", "p1", "p2"], "teacher": ["a", "b", "a"],
        ...                                  "local_naturalness": [-1.2, -0.8, None]})
        >>> best, report = select_responses(ds, k=1, return_report=True)
        >>> best["teacher"][:], best["selection_rank"][:], report.groups_without_score
        (['b'], [1], ['p2'])
    """
    config = _selection_config(config, options)
    by, group_by, k, where = config.by, config.group_by, config.k, config.where
    _require_columns(dataset, {by: "by", group_by: "group_by"})
    higher = config.is_higher_better()

    scores = _scores(dataset, by)
    group_keys = _column(dataset, group_by)
    codes, keys = group_codes(group_keys, group_by)
    passed = where_mask(dataset, where)
    if passed is None:
        passed = np.ones(len(dataset), dtype=bool)
    passed &= ~_without_group(group_keys, group_by, "selection")
    valid = passed & ~np.isnan(scores)

    groups_present = np.unique(codes[passed])  # sorted codes = order of first appearance
    groups_scored = np.unique(codes[valid])
    without = [keys[code] for code in np.setdiff1d(groups_present, groups_scored, assume_unique=True)]
    if without:
        logger.warning(
            "%d group(s) of %r have no valid %r score (all None/NaN%s) and get no selected row: %s",
            len(without),
            group_by,
            by,
            " after the where filter" if where is not None else "",
            _preview(without),
        )

    rows, ranks = top_k_per_group(scores, codes, passed, k, higher)
    indices, ranks = rows.tolist(), ranks.tolist()
    selected = _select_with_rank(dataset, indices, ranks)
    if not return_report:
        return selected
    report = SelectionReport(
        num_rows=len(dataset),
        num_rows_after_where=int(passed.sum()),
        num_groups=len(groups_present),
        num_groups_selected=len(groups_scored),
        groups_without_score=without,
        num_rows_selected=len(indices),
        by=by,
        k=k,
        higher_is_better=higher,
    )
    return selected, report


def _selection_config(config: SelectionConfig | str | None, options: dict[str, Any]) -> SelectionConfig:
    if isinstance(config, str):  # select_responses(ds, "rsr"): the score column, as before configs existed
        config = SelectionConfig(by=config, **options)
        options = {}
    if config is not None and not isinstance(config, SelectionConfig):
        raise LocalnatError(f"config={config!r}: pass a SelectionConfig (or its fields as keyword arguments).")
    names = [f.name for f in fields(SelectionConfig)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise LocalnatError(f"unknown selection option(s) {', '.join(unknown)}. The options are: {', '.join(names)}.")
    return dataclasses.replace(config or SelectionConfig(), **options)


# ----------------------------------------------------------------------------------------------------------
# Teacher ranking
# ----------------------------------------------------------------------------------------------------------

RSR_COLUMN = "rsr"
# Per-row parts of rsr the scorer writes beside it: the mean over response tokens of min(rank, 100), and of -log p.
RSR_RANK_COLUMN = "rsr_mean_rank"
RSR_SURPRISAL_COLUMN = "rsr_mean_surprisal"
RSR_AGGREGATES = ("ratio_of_means", "mean_of_ratios")
RSR_AGGREGATE_HELP = (
    "A teacher's rsr: ratio_of_means (the RSR authors': its mean rank over its mean surprisal, from the "
    "rsr_mean_rank and rsr_mean_surprisal columns) or mean_of_ratios (the mean of its per-row rsr)."
)


@dataclass(frozen=True)
class RankingConfig:
    """The options of :func:`rank_teachers` beyond the score column, the prompt column and the direction
    (those are :class:`SelectionConfig`'s ``by``, ``group_by`` and ``higher_is_better``).

    Values are checked when the config is made; ``rank_teachers(ds, by=..., **config.to_dict())`` applies it.

    Example:
        >>> RankingConfig(rsr_aggregate="mean_of_ratios").to_dict()["rsr_aggregate"]
        'mean_of_ratios'
        >>> RankingConfig(n_bootstrap=0)
        Traceback (most recent call last):
        ...
        hf_localnat.errors.LocalnatError: n_bootstrap=0: use an int >= 1 (e.g. 1000).
    """

    teacher_column: str = field(default="teacher", metadata={"help": "Column naming the teacher."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of prompts, for the CIs and P(top)."})
    confidence: float = field(default=0.95, metadata={"help": "Level of the bootstrap confidence intervals."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap (CIs and P(top))."})
    rsr_aggregate: str = field(default="ratio_of_means", metadata={"help": RSR_AGGREGATE_HELP})

    def __post_init__(self) -> None:
        n = self.n_bootstrap
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise LocalnatError(f"n_bootstrap={n!r}: use an int >= 1 (e.g. 1000).")
        object.__setattr__(self, "n_bootstrap", int(n))
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, int | float | np.floating):
            raise LocalnatError(f"confidence={self.confidence!r}: use a number in (0, 1), e.g. 0.95.")
        if not 0.0 < self.confidence < 1.0:
            raise LocalnatError(f"confidence={self.confidence!r}: use a number in (0, 1), e.g. 0.95.")
        object.__setattr__(self, "confidence", float(self.confidence))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise LocalnatError(f"seed={self.seed!r}: use an int >= 0.")
        object.__setattr__(self, "seed", int(self.seed))
        if self.rsr_aggregate not in RSR_AGGREGATES:
            raise LocalnatError(f"rsr_aggregate={self.rsr_aggregate!r}: use one of {', '.join(RSR_AGGREGATES)}.")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict: the keyword arguments of :func:`rank_teachers` they stand for."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class TeacherPromptTable:
    """Teacher-prompt means as prompts x teachers arrays (NaN where a teacher has no valid row for a prompt).

    ``numerator`` holds the means of the score column; with the RSR authors' aggregate (``aggregate`` is
    ``"ratio_of_means"``) it holds the means of ``rsr_mean_rank`` and ``denominator`` those of
    ``rsr_mean_surprisal``, and a teacher's score over prompts is ``sum(numerator) / sum(denominator)``.
    Rows follow ``prompts`` and columns ``teachers`` (keys in order of first appearance, every prompt and
    teacher of the dataset, answered or not).

    Example:
        >>> table = TeacherPromptTable(np.array([[4.0, 2.0], [6.0, np.nan]]), np.array([[2.0, 1.0], [1.0, np.nan]]),
        ...                            ["p1", "p2"], ["a", "b"], "ratio_of_means")
        >>> table.score(0), table.score(1), table.per_prompt().tolist()  # a: (4 + 6) / (2 + 1)
        (3.3333333333333335, 2.0, [[2.0, 2.0], [6.0, nan]])
    """

    numerator: np.ndarray
    denominator: np.ndarray | None
    prompts: list
    teachers: list
    aggregate: str  # "mean", "ratio_of_means" or "mean_of_ratios"

    def per_prompt(self) -> np.ndarray:
        """Each teacher's score on each prompt alone: the mean, or the ratio of the two means."""
        if self.denominator is None:
            return self.numerator
        return self.numerator / np.maximum(self.denominator, RATIO_FLOOR)

    def column(self, teacher: int) -> tuple[np.ndarray, np.ndarray | None]:
        """One teacher's teacher-prompt means over the prompts it answered (and the denominator's), in row order."""
        present = ~np.isnan(self.numerator[:, teacher])
        below = None if self.denominator is None else self.denominator[present, teacher]
        return self.numerator[present, teacher], below

    def score(self, teacher: int) -> float:
        """One teacher's score over its prompts: the mean, or sum(numerator) / sum(denominator) (the denominator
        floored at 1e-12, as rsr_cal.py floors it); NaN for a teacher without any prompt."""
        above, below = self.column(teacher)
        if above.size == 0:
            return math.nan
        if below is None:
            return float(above.mean())
        return float(above.sum() / max(float(below.sum()), RATIO_FLOOR))


def _rsr_aggregate(dataset: datasets.Dataset, by: str, rsr_aggregate: str) -> str:
    """The teacher aggregate ``by`` gets: ``mean`` unless it is rsr; for rsr the one asked for when it can be."""
    if by != RSR_COLUMN:
        return "mean"
    if rsr_aggregate == "ratio_of_means":
        missing = [c for c in (RSR_RANK_COLUMN, RSR_SURPRISAL_COLUMN) if c not in dataset.column_names]
        if missing:
            logger.warning(
                "rsr: no %s column, so each teacher's rsr is the mean of its per-row ratios, not the RSR "
                "authors' mean rank / mean surprisal; re-score with --metrics rsr for their aggregate.",
                " or ".join(missing),
            )
            return "mean_of_ratios"
    return rsr_aggregate


def teacher_prompt_means(
    dataset: datasets.Dataset,
    by: str = SelectionConfig.by,
    teacher_column: str = RankingConfig.teacher_column,
    group_by: str = SelectionConfig.group_by,
    rsr_aggregate: str = RankingConfig.rsr_aggregate,
) -> TeacherPromptTable:
    """The teacher-prompt means :func:`rank_teachers` ranks from, as a :class:`TeacherPromptTable`.

    Rows with a None/NaN score (and, for the ratio aggregate, a None/NaN ``rsr_mean_rank`` or
    ``rsr_mean_surprisal``) or without a prompt are left out; a teacher's repeated answers to a prompt are
    averaged (for rsr, the rank and the surprisal separately).

    Example:
        >>> ds = datasets.Dataset.from_dict({"prompt_id": ["p1", "p1", "p1", "p2"], "teacher": ["a", "a", "b", "a"],
        ...                                  "local_naturalness": [-1.0, -2.0, -0.5, None]})
        >>> table = teacher_prompt_means(ds)
        >>> table.prompts, table.teachers, table.numerator.tolist()
        (['p1', 'p2'], ['a', 'b'], [[-1.5, -0.5], [nan, nan]])
    """
    if rsr_aggregate not in RSR_AGGREGATES:
        raise LocalnatError(f"rsr_aggregate={rsr_aggregate!r}: use one of {', '.join(RSR_AGGREGATES)}.")
    _require_columns(dataset, {by: "by", teacher_column: "teacher_column", group_by: "group_by"})
    aggregate = _rsr_aggregate(dataset, by, rsr_aggregate)
    scores = _scores(dataset, by)
    teacher_codes, teachers = group_codes(_column(dataset, teacher_column), teacher_column)
    prompt_keys = _column(dataset, group_by)
    prompt_codes, prompts = group_codes(prompt_keys, group_by)
    valid = ~np.isnan(scores) & ~_without_group(prompt_keys, group_by, "ranking")
    if aggregate == "ratio_of_means":
        parts = {"numerator": _scores(dataset, RSR_RANK_COLUMN), "denominator": _scores(dataset, RSR_SURPRISAL_COLUMN)}
        for part in parts.values():
            valid &= ~np.isnan(part)
    else:
        parts = {"numerator": scores}
    frame = pd.DataFrame(
        {"teacher": teacher_codes[valid], "prompt": prompt_codes[valid], **{k: v[valid] for k, v in parts.items()}}
    )
    means = frame.groupby(["teacher", "prompt"], sort=True)[list(parts)].mean()
    tables = {
        name: means[name].unstack("teacher").reindex(index=range(len(prompts)), columns=range(len(teachers)))
        for name in parts
    }
    return TeacherPromptTable(
        numerator=tables["numerator"].to_numpy(dtype=np.float64),
        denominator=tables["denominator"].to_numpy(dtype=np.float64) if "denominator" in tables else None,
        prompts=prompts,
        teachers=teachers,
        aggregate=aggregate,
    )


def rank_teachers(
    dataset: datasets.Dataset,
    by: str = SelectionConfig.by,
    teacher_column: str = RankingConfig.teacher_column,
    group_by: str = SelectionConfig.group_by,
    higher_is_better: bool | None = None,
    n_bootstrap: int = RankingConfig.n_bootstrap,
    confidence: float = RankingConfig.confidence,
    seed: int = RankingConfig.seed,
    rsr_aggregate: str = RankingConfig.rsr_aggregate,
) -> pd.DataFrame:
    """Rank teachers by their score over prompts, best first, with bootstrap CIs and P(top).

    Rows with a None/NaN score are ignored; a teacher's repeated answers to one prompt are first averaged
    (teacher-prompt mean). Per teacher:

    - ``mean``: its score, the mean over its prompts of those means. For ``by="rsr"`` the default
      ``rsr_aggregate="ratio_of_means"`` is the RSR authors' teacher score (github.com/UmeanNever/RankSurprisalRatio,
      ``rsr_cal.py`` ``compute_sample_metrics``, since commit 7e4fe0c): the mean over its prompts of the
      per-prompt mean of ``rsr_mean_rank`` (each row's mean capped rank) divided by the mean over its prompts
      of the per-prompt mean of ``rsr_mean_surprisal`` (each row's mean -log p), the denominator floored at
      1e-12 as theirs is; a ratio of means, neither the mean of the per-row ratios nor token-pooled. With one
      answer per prompt it is exactly theirs; repeated answers are averaged per prompt first, as for every
      metric. ``rsr_aggregate="mean_of_ratios"`` is the mean of the per-row ``rsr`` instead, and it is what a
      pool without those two columns gets (with a one-line warning). The option is ignored for other metrics.
    - ``ci_low``/``ci_high``: a percentile bootstrap CI (``n_bootstrap`` resamples of its own prompts,
      ``numpy.random.default_rng(seed)`` fresh for each teacher, so a teacher's CI does not depend on the
      others; for the ratio both means are resampled together and the ratio recomputed).
    - ``num_prompts``.
    - ``win_rate``: the share of the ``num_common_prompts`` prompts answered by every ranked teacher on which it
      has the best teacher-prompt score (for the ratio, that prompt's mean rank / mean surprisal; ties split
      evenly; NaN when there is no common prompt).
    - ``p_top``: the share of ``n_bootstrap`` paired resamples of the prompts (one draw of prompt indices shared
      by all teachers, :func:`hf_localnat.statistics.p_top` with ``default_rng(seed)``) in which its score over
      the resampled prompts it answered is the best, ties split evenly. The shares sum to 1.

    Teachers without any valid score are left out, with a warning. ``rank`` 1 is best; equal scores are ordered
    by teacher name. ``table.attrs`` holds ``by``, ``higher_is_better``, ``confidence``, ``aggregate``
    (``mean``, ``ratio_of_means`` or ``mean_of_ratios``), ``n_bootstrap`` and ``seed`` (used by
    :func:`format_ranking`). The result is a pure function of the rows and options: the same seed gives the
    same table.

    Example:
        >>> ds = datasets.Dataset.from_dict({"prompt_id": ["p1", "p1", "p2", "p2"], "teacher": ["a", "b"] * 2,
        ...                                  "rsr": [2.0, 3.0, 2.5, 2.0], "rsr_mean_rank": [4.0, 6.0, 5.0, 3.0],
        ...                                  "rsr_mean_surprisal": [2.0, 2.0, 2.0, 1.5]})
        >>> table = rank_teachers(ds, by="rsr", n_bootstrap=100)
        >>> table[["rank", "teacher", "mean", "win_rate"]].values.tolist()  # a: 9 / 4; b: 9 / 3.5
        [[1, 'a', 2.25, 0.5], [2, 'b', 2.5714285714285716, 0.5]]
        >>> table.attrs["aggregate"], float(table["p_top"].sum())
        ('ratio_of_means', 1.0)
    """
    options = RankingConfig(teacher_column, n_bootstrap, confidence, seed, rsr_aggregate)
    _require_columns(dataset, {by: "by", teacher_column: "teacher_column", group_by: "group_by"})
    higher = _check_direction(higher_is_better, by)
    means = teacher_prompt_means(dataset, by, teacher_column, group_by, options.rsr_aggregate)
    answered = ~np.isnan(means.numerator)
    ranked = np.flatnonzero(answered.any(axis=0))
    unscored = [teacher for code, teacher in enumerate(means.teachers) if not answered[:, code].any()]
    if unscored:
        logger.warning(
            "%d teacher(s) have no valid %r score and are left out of the ranking: %s",
            len(unscored),
            by,
            _preview(unscored),
        )
    if not ranked.size:
        raise LocalnatError(f"by={by!r}: no row has a valid (non-None, non-NaN) score; nothing to rank.")

    prompts = np.flatnonzero(answered[:, ranked].any(axis=1))
    numerator = means.numerator[np.ix_(prompts, ranked)]
    denominator = None if means.denominator is None else means.denominator[np.ix_(prompts, ranked)]
    table = TeacherPromptTable(
        numerator,
        denominator,
        [means.prompts[p] for p in prompts],
        [means.teachers[c] for c in ranked],
        means.aggregate,
    )
    per_prompt = table.per_prompt()
    common = per_prompt[~np.isnan(per_prompt).any(axis=1)]
    wins = best_shares(common, higher).mean(axis=0) if len(common) else np.full(ranked.size, np.nan)
    tops = p_top(numerator, higher, options.n_bootstrap, options.seed, denominator=denominator)

    records = []
    for column, teacher in enumerate(table.teachers):
        values, below = table.column(column)
        if below is None:
            low, high = bootstrap_mean_ci(values, options.n_bootstrap, options.confidence, options.seed)
        else:
            low, high = bootstrap_ratio_ci(values, below, options.n_bootstrap, options.confidence, options.seed)
        records.append(
            {
                "teacher": teacher,
                "mean": table.score(column),
                "ci_low": low,
                "ci_high": high,
                "num_prompts": int(values.size),
                "win_rate": float(wins[column]),
                "num_common_prompts": len(common),
                "p_top": float(tops[column]),
            }
        )
    records.sort(key=lambda r: (-r["mean"] if higher else r["mean"], str(r["teacher"])))
    for rank, record in enumerate(records, start=1):
        record["rank"] = rank
    result = pd.DataFrame(records, columns=RANKING_COLUMNS)
    result.attrs.update(
        by=by,
        higher_is_better=higher,
        confidence=options.confidence,
        aggregate=means.aggregate,
        n_bootstrap=options.n_bootstrap,
        seed=options.seed,
    )
    return result


_AGGREGATE_NOTES = {
    "ratio_of_means": "score: mean rank / mean surprisal over prompts, the RSR authors' teacher score",
    "mean_of_ratios": "score: mean over prompts of the per-row rsr",
}


def format_ranking(table: pd.DataFrame) -> str:
    """A fixed-width text table of a :func:`rank_teachers` result, for the terminal.

    Example:
        >>> ds = datasets.Dataset.from_dict({"prompt_id": ["p1", "p1"], "teacher": ["a", "b"],
        ...                                  "local_naturalness": [-2.0, -3.0]})
        >>> print(format_ranking(rank_teachers(ds, n_bootstrap=10)))
        Teachers ranked by local_naturalness (higher is better); 95% bootstrap CI over prompts.
        rank  teacher    mean  95% CI            prompts  win rate  P(top)
        ----  -------  ------  ----------------  -------  --------  ------
           1  a        -2.000  [-2.000, -2.000]        1    100.0%  100.0%
           2  b        -3.000  [-3.000, -3.000]        1      0.0%    0.0%
        Win rate: share of the 1 prompt(s) answered by every teacher where it scores best.
        P(top): share of 10 paired bootstrap resamples of the prompts in which it ranks first.
    """
    by = table.attrs.get("by", "score")
    level = f"{table.attrs.get('confidence', 0.95) * 100:g}%"
    note = _AGGREGATE_NOTES.get(table.attrs.get("aggregate", "mean"))
    lines = []
    if "higher_is_better" in table.attrs:
        direction = "higher" if table.attrs["higher_is_better"] else "lower"
        explained = f"; {note}" if note else ""
        lines.append(f"Teachers ranked by {by} ({direction} is better{explained}); {level} bootstrap CI over prompts.")
    if table.empty:
        return "\n".join(lines + ["(no teacher to rank)"])

    def number(value: float) -> str:
        return "n/a" if pd.isna(value) else f"{value:+.3f}"

    def share(value: float) -> str:
        return "n/a" if pd.isna(value) else f"{value:.1%}"

    has_p_top = "p_top" in table.columns
    names = [str(t) for t in table["teacher"]]
    cells = [
        (
            str(row["rank"]),
            name,
            number(row["mean"]),
            f"[{number(row['ci_low'])}, {number(row['ci_high'])}]",
            str(row["num_prompts"]),
            share(row["win_rate"]),
            *([share(row["p_top"])] if has_p_top else []),
        )
        for name, (_, row) in zip(names, table.iterrows(), strict=True)
    ]
    header = ("rank", "teacher", "mean" if note is None else "score", f"{level} CI", "prompts", "win rate")
    header += ("P(top)",) if has_p_top else ()
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header))]
    left = {1, 3}  # text columns are left-aligned, numbers right-aligned

    def render(values: Sequence[str]) -> str:
        pairs = enumerate(zip(values, widths, strict=True))
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in pairs)

    lines.append(render(header).rstrip())
    lines.append(render(["-" * w for w in widths]).rstrip())
    lines.extend(render(c).rstrip() for c in cells)
    common = int(table["num_common_prompts"].iloc[0])
    lines.append(
        f"Win rate: share of the {common} prompt(s) answered by every teacher where it scores best."
        if common
        else "Win rate: n/a (no prompt was answered by every teacher)."
    )
    if has_p_top:
        resamples = table.attrs.get("n_bootstrap")
        counted = f"{resamples} " if resamples else ""
        lines.append(f"P(top): share of {counted}paired bootstrap resamples of the prompts in which it ranks first.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Selection accuracy
# ----------------------------------------------------------------------------------------------------------

_CORRECT_TEXT = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}


def correct_values(values: Sequence[Any]) -> np.ndarray:
    """A ``correct`` column as 1.0 / 0.0 / NaN (None or unreadable); accepts bools, 0/1 and "true"/"false" text.

    Example:
        >>> correct_values([True, 0, "False", None, "maybe", 2]).tolist()
        [1.0, 0.0, 0.0, nan, nan, nan]
    """
    out = np.full(len(values), np.nan, dtype=np.float64)
    for i, value in enumerate(values):
        if isinstance(value, str):
            out[i] = _CORRECT_TEXT.get(value.strip().lower(), np.nan)
        elif isinstance(value, bool | int | float | np.integer | np.floating | np.bool_) and value in (0, 1):
            out[i] = float(value)
    return out


def selection_accuracy(
    dataset: datasets.Dataset,
    by: str = SelectionConfig.by,
    correct_column: str = "correct",
    group_by: str = SelectionConfig.group_by,
    higher_is_better: bool | None = None,
    n_bootstrap: int = RankingConfig.n_bootstrap,
    confidence: float = RankingConfig.confidence,
    seed: int = RankingConfig.seed,
) -> dict[str, Any]:
    """The accuracy of picking one response per prompt by ``by``, against a random pick and against the oracle.

    The candidates are the rows with a prompt, a valid (non-None, non-NaN) score and a known correctness
    (:func:`correct_values`); ``num_prompts`` counts the prompts with at least one, and every number is over
    those same prompts:

    - ``accuracy``: the share of them whose pick is correct, the pick being :func:`top_k_per_group` with ``k=1``
      (the core of :func:`select_responses`: the best score, equal scores to the earlier row);
    - ``random``: the expected accuracy of a uniform random pick per prompt, exactly: the mean over prompts of
      the share of correct candidates;
    - ``oracle``: the share of prompts with at least one correct candidate;
    - ``ci_low``/``ci_high``: the percentile bootstrap CI of ``accuracy`` (``n_bootstrap`` resamples of the
      prompts, :func:`hf_localnat.statistics.bootstrap_mean_ci` with ``seed``);
    - ``gain_ci_low``/``gain_ci_high``: the CI of ``accuracy - random`` from the same resamples (paired per
      prompt), so an interval above 0 says the metric picks better than chance;
    - ``num_rows``: the candidates.

    Raises :class:`LocalnatError` when no row is a candidate.

    Example:
        >>> ds = datasets.Dataset.from_dict({"prompt_id": ["p1", "p1", "p2", "p2", "p2"],
        ...                                  "local_naturalness": [-1.0, -2.0, -0.5, -0.7, -0.9],
        ...                                  "correct": [True, False, False, True, True]})
        >>> result = selection_accuracy(ds, by="local_naturalness", n_bootstrap=200)
        >>> result["accuracy"], round(result["random"], 4), result["oracle"], result["num_prompts"]
        (0.5, 0.5833, 1.0, 2)
    """
    options = RankingConfig(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    _require_columns(dataset, {by: "by", correct_column: "correct_column", group_by: "group_by"})
    higher = _check_direction(higher_is_better, by)
    scores = _scores(dataset, by)
    correct = correct_values(_column(dataset, correct_column))
    keys = _column(dataset, group_by)
    codes, _ = group_codes(keys, group_by)
    eligible = ~np.isnan(scores) & ~np.isnan(correct) & ~_without_group(keys, group_by, "selection accuracy")
    if not eligible.any():
        raise LocalnatError(
            f"selection_accuracy(by={by!r}): no row has both a valid score and a known {correct_column!r}."
        )
    rows, _ = top_k_per_group(scores, codes, eligible, k=1, higher_is_better=higher)  # one per prompt, by code
    prompts = np.unique(codes[eligible])  # the same prompts, in the same order
    dense = np.searchsorted(prompts, codes[eligible])
    candidates = np.bincount(dense, minlength=prompts.size)
    right = np.bincount(dense, weights=correct[eligible], minlength=prompts.size)
    picked = correct[rows]
    share = right / candidates
    low, high = bootstrap_mean_ci(picked, options.n_bootstrap, options.confidence, options.seed)
    gain_low, gain_high = bootstrap_mean_ci(picked - share, options.n_bootstrap, options.confidence, options.seed)
    return {
        "accuracy": float(picked.mean()),
        "random": float(share.mean()),
        "oracle": float((right > 0).mean()),
        "num_prompts": int(prompts.size),
        "num_rows": int(eligible.sum()),
        "ci_low": low,
        "ci_high": high,
        "gain_ci_low": gain_low,
        "gain_ci_high": gain_high,
    }
