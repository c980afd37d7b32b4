"""Reading user data and writing results: clear one-line errors in, atomic files out.

Inputs: ``.jsonl``, ``.json`` (an array of objects, or one object per line), ``.parquet``, ``.csv`` files, a
``save_to_disk`` folder, or a Hub dataset id (from the local cache when offline). A JSON column whose values have
several types is read as text unless the command needs it as it is (:func:`load_rows`). Outputs follow the rule
of :mod:`hf_localnat.outputs` and go to a temporary sibling first, renamed into place, so an interrupted write never
leaves a half-written file behind.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset

from .errors import LocalnatError
from .outputs import FILE_FORMATS, check_output, remove_stale_temporaries, temporary_name

__all__ = [
    "FILE_FORMATS", "ColumnTypes", "MixedColumn", "as_text", "atomic_file", "check_output", "conform_rows",
    "load_rows", "require_columns", "require_text", "write_rows",
]  # fmt: skip
logger = logging.getLogger(__name__)
_TEXT_SUFFIXES = (".jsonl", ".json", ".csv")


def split_field() -> Any:
    """The ``split`` option of every command that reads a pool: defined here once, used by each dataclass.

    Example:
        >>> @dataclass
        ... class Args:
        ...     split: str = split_field()
        >>> Args().split
        'train'
    """
    return dataclasses.field(default="train", metadata={"help": "Split to read from a Hub dataset or data folder."})
_UMASK = os.umask(0o022)  # read once (the only way to read it), restored on the next line
os.umask(_UMASK)


def _first_non_utf8(path: Path, block: int = 1 << 20) -> str | None:
    """Name the byte offset and line of the first byte sequence in ``path`` that is not UTF-8, or None."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                # err.start is relative to the decoder's buffered bytes plus this block.
                buffered = len(decoder.getstate()[0])
                bad = offset - buffered + err.start
                line = lines + data[: max(err.start - buffered, 0)].count(b"\n") + 1
                return (
                    f"{path}: not UTF-8 text at byte {bad} (line {line}). Re-save the file as UTF-8, e.g. "
                    f"iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}."
                )
            if not data:
                return None
            offset += len(data)
            lines += data.count(b"\n")


# ---------------------------------------------------------------------------------------------------------
# Columns whose values have several types (evaluation outputs: an `answer` of floats, ints, lists and strings)
# ---------------------------------------------------------------------------------------------------------


class _Mismatch(Exception):
    """Two values that one Arrow column cannot hold together."""


_SCALARS = ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"))  # bool first: True is also an int
_SCALAR_TYPES = {bool: "bool", int: "int", float: "float", str: "str"}


def _kind(value: Any) -> str | None:
    """A value's kind, named like its Python type (str, int, float, bool, list, dict); None for a null."""
    if value is None:
        return None
    for python_type, name in _SCALARS:
        if isinstance(value, python_type):
            return name
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return type(value).__name__


def _merge(a: Any, b: Any) -> Any:
    """The storage type of two storage types together (ints and floats make floats); _Mismatch if there is none."""
    if a is None:
        return b
    if b is None or a == b:
        return a
    if isinstance(a, str) and isinstance(b, str):
        if {a, b} == {"int", "float"}:
            return "float"
        raise _Mismatch
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0]:
        if a[0] == "list":
            return ("list", _merge(a[1], b[1]))
        fields = dict(a[1])
        for key, sub in b[1].items():
            fields[key] = _merge(fields.get(key), sub)
        return ("dict", fields)
    raise _Mismatch


def _signature(value: Any) -> Any:
    """The storage type of one value: None (null), a kind, ``("list", item type)`` or ``("dict", {key: type})``."""
    kind = _kind(value)
    if kind == "list":
        types = set(map(type, value))
        if len(types) == 1 and next(iter(types)) in _SCALAR_TYPES:  # the common long list of one scalar type
            return ("list", _SCALAR_TYPES[next(iter(types))])
        if types == {int, float}:
            return ("list", "float")
        item = None
        for element in value:
            item = _merge(item, _signature(element))
        return ("list", item)
    if kind == "dict":
        return ("dict", {key: _signature(element) for key, element in value.items()})
    return kind


def _conform(value: Any, signature: Any) -> Any:
    """``value`` as a column of ``signature`` stores it: an int among floats becomes a float, a dict gets every key."""
    if value is None or signature is None:
        return value
    if signature == "float" and type(value) is int:
        return float(value)
    if isinstance(signature, tuple):
        if signature[0] == "list":
            return value if signature[1] in (None, "str", "int", "bool") else [_conform(x, signature[1]) for x in value]
        return {key: _conform(value.get(key), sub) for key, sub in signature[1].items()}
    return value


def as_text(value: Any) -> str | None:
    """How a column of mixed types keeps a value: text as it is, anything else as JSON; None stays None.

    Example:
        >>> [as_text(value) for value in ("7", 7, 0.5, True, [1, "a"], None)]
        ['7', '7', '0.5', 'true', '[1, "a"]', None]
    """
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class MixedColumn:
    """A column whose values cannot be stored as one type: the kinds found, and the first row that broke it.

    ``kinds`` lists every kind found, in order of first appearance; ``row`` (0-based) and ``line`` (in the file, when
    read from one) locate the first value that does not fit the rows before it, of kind ``kind``.

    Example:
        >>> column = MixedColumn("response", ["str", "int"], row=2, line=3, value="42", kind="int", earlier=("str",))
        >>> column.describe()
        "'response' (str, int)"
        >>> column.error("pool.jsonl", "--response_column")[:80]
        "pool.jsonl line 3 (row 2), column 'response': int 42 where earlier rows hold str"
    """

    name: str
    kinds: list[str]
    row: int
    line: int | None
    value: str
    kind: str
    earlier: tuple[str, ...]

    def describe(self) -> str:
        """``'answer' (float, int, str)``: the column and the kinds it holds."""
        return f"{self.name!r} ({', '.join(self.kinds)})"

    def error(self, source: str, flag: str | None = None) -> str:
        """The one-line error for a command that needs this column as it is."""
        where = f"{source} line {self.line} (row {self.row})" if self.line is not None else f"{source} row {self.row}"
        if not self.earlier:
            what = f"{self.kind} {self.value} mixes types inside"
        elif self.kind in self.earlier:
            what = f"{self.kind} {self.value} whose contents differ in type from the earlier rows'"
        else:
            what = f"{self.kind} {self.value} where earlier rows hold {', '.join(self.earlier)}"
        pick = f", or pick another column with {flag} NAME" if flag else ""
        return (
            f"{where}, column {self.name!r}: {what} (types found: {', '.join(self.kinds)}). This column must hold "
            f"one type (text, for a prompt or response): fix the row{pick}."
        )


class ColumnTypes:
    """Follows rows one at a time: their columns, the type each column can be stored as, and the columns whose
    values have several types (:class:`MixedColumn`, with the first row that broke each).

    Example:
        >>> types = ColumnTypes()
        >>> for row in [{"q": "a", "answer": 1.5}, {"q": "b", "answer": 2}, {"q": "c", "answer": "x"}]:
        ...     types.add(row)
        >>> list(types.mixed), types.mixed["answer"].kinds, types.mixed["answer"].row
        (['answer'], ['float', 'int', 'str'], 2)
        >>> types.conform({"q": "d", "answer": 4})
        {'q': 'd', 'answer': '4'}
    """

    def __init__(self) -> None:
        self.signatures: dict[str, Any] = {}
        self.mixed: dict[str, MixedColumn] = {}
        self.rows = 0
        self._kinds: dict[str, list[str]] = {}

    def add(self, row: dict, line: int | None = None) -> None:
        """Take in one row (read from ``line`` of a file, if given)."""
        for key, value in row.items():
            kind = _kind(value)
            kinds = self._kinds.setdefault(key, [])
            earlier = tuple(kinds)
            if kind is not None and kind not in kinds:
                kinds.append(kind)
            if key in self.mixed:
                continue
            signature = self.signatures.setdefault(key, None)
            try:
                self.signatures[key] = _merge(signature, _signature(value))
            except _Mismatch:
                self.mixed[key] = MixedColumn(key, kinds, self.rows, line, _short(value), kind or "null", earlier)
        self.rows += 1

    def conform(self, row: dict) -> dict:
        """``row`` as one table stores it: every column (None where absent), mixed columns as text (:func:`as_text`)."""
        return {
            column: as_text(row.get(column)) if column in self.mixed else _conform(row.get(column), signature)
            for column, signature in self.signatures.items()
        }


def conform_rows(rows: Iterable[dict]) -> tuple[list[dict], list[MixedColumn]]:
    """Rows ready to be stored as one table (see :meth:`ColumnTypes.conform`), and the columns turned to text.

    Example:
        >>> rows, mixed = conform_rows([{"ref": "4"}, {"ref": 4, "note": "csv"}])
        >>> rows, [column.describe() for column in mixed]
        ([{'ref': '4', 'note': None}, {'ref': '4', 'note': 'csv'}], ["'ref' (str, int)"])
    """
    rows = list(rows)
    types = ColumnTypes()
    for row in rows:
        types.add(row)
    return [types.conform(row) for row in rows], list(types.mixed.values())


def _text_warning(source: str, mixed: Iterable[MixedColumn]) -> str:
    return (
        f"{source}: column(s) {', '.join(column.describe() for column in mixed)} hold values of several types; "
        "read as text (strings as they are, other values as JSON)."
    )


@dataclass
class _TextColumns:
    """What :func:`load_rows` read as text, kept on the dataset for :func:`require_columns` and :func:`require_text`."""

    source: str
    columns: dict[str, MixedColumn]
    settled: bool = False


_TEXT_COLUMNS = "_hf_localnat_text_columns"


def _settle(
    text: _TextColumns | None, needed: Iterable[str], source: str, flags: dict[str, str], always: bool = False
) -> None:
    """The first check of a loaded dataset's columns: a needed column read as text is an error (checked every time
    with ``always``); otherwise the one warning naming the columns read as text."""
    if text is None:
        return
    if always or not text.settled:
        for column in needed:
            if column in text.columns:
                raise LocalnatError(text.columns[column].error(source, flags.get(column)))
    if not text.settled:
        text.settled = True
        if text.columns:
            logger.warning(_text_warning(text.source, text.columns.values()))


def _whole_object_message(path: Path) -> str | None:
    """The error for a .json file that is one object (not rows), or None if it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, MemoryError):
        return None
    if not isinstance(value, dict):
        return None
    lists = [key for key, item in value.items() if isinstance(item, list) and item and isinstance(item[0], dict)]
    hint = f" The rows seem to be the list under {lists[0]!r}: save that list as the file." if lists else ""
    return (
        f"{path}: one JSON object, not rows. Give a JSON array of objects ([{{...}}, ...]) or one object per line."
        + hint
    )


def _line_records(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        seen = False
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                malformed = f"{path} line {number}: malformed JSON ({err.msg} at column {err.colno})."
                whole = None if seen else _whole_object_message(path)
                raise LocalnatError(whole or f"{malformed} Fix or remove that line.") from None
            seen = True
            if not isinstance(value, dict):
                raise LocalnatError(
                    f"{path} line {number}: expected a JSON object per line, got {type(value).__name__}. "
                    "Give one object per row."
                )
            yield number, value


_SPACE = re.compile(r"\s*")


def _array_records(path: Path) -> Iterator[tuple[int, dict]]:
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def line_at(position: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, position)
        counted = position
        return line

    position = _SPACE.match(text).end() + 1  # just past the opening [
    first = True
    while True:
        position = _SPACE.match(text, position).end()
        if first and text.startswith("]", position):
            position += 1
            break
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise LocalnatError(
                f"{path} line {err.lineno}: malformed JSON ({err.msg} at column {err.colno}). Fix that row."
            ) from None
        number = line_at(position)
        if not isinstance(value, dict):
            raise LocalnatError(
                f"{path} line {number}: expected a JSON object per array item, got {type(value).__name__}. "
                "Give one object per row."
            )
        yield number, value
        first = False
        position = _SPACE.match(text, end).end()
        if text.startswith(",", position):
            position += 1
            continue
        if text.startswith("]", position):
            position += 1
            break
        raise LocalnatError(
            f"{path} line {line_at(position)}: malformed JSON (expected ',' or ']' after a row). Fix the file."
        )
    if _SPACE.match(text, position).end() != len(text):
        raise LocalnatError(f"{path} line {line_at(position)}: malformed JSON (text after the array). Fix the file.")


def _json_records(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line, row)`` for each row of a JSON file: the objects of one array, or one object per line."""
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
        while not head:
            block = f.read(1 << 20)
            if not block:
                break
            head = block.lstrip()
    return _array_records(path) if head.startswith("[") else _line_records(path)


def _json_options() -> dict[str, Any]:
    """Make datasets' JSON reader fail on a column of mixed types: datasets 5 would store it as JSON and read the
    string "7" back as the number 7. :func:`load_rows` then reads such a column as text itself."""
    from datasets.packaged_modules.json.json import JsonConfig

    return {"on_mixed_types": None} if "on_mixed_types" in {f.name for f in dataclasses.fields(JsonConfig)} else {}


@contextmanager
def _quiet_json_reader() -> Iterator[None]:
    reader = logging.getLogger("datasets.packaged_modules.json.json")
    level = reader.level
    reader.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        reader.setLevel(level)


def _cause(err: BaseException) -> str:
    """The first line of the innermost reason for ``err`` (datasets wraps the Arrow error that says what is wrong)."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _scratch_dir() -> Path:
    """A fresh folder in the datasets cache for one load, removed when this process exits (or, after a crash, by
    the next load on this machine)."""
    root = Path(datasets.config.HF_DATASETS_CACHE) / "hf_localnat_text_columns"
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace("@", "_")
    for old in root.iterdir():
        pid, _, rest = old.name.partition("@")
        if rest.partition("@")[0] == host and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}@{host}@", dir=root))
    atexit.register(shutil.rmtree, path, True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _load_json(path: Path, needed: Sequence[str] | None) -> Dataset:
    """A JSON file through datasets' fast Arrow reader; when that fails, read in Python once to find the columns
    of mixed types, and again to rewrite the rows (those columns as text) for the fast reader."""
    try:
        with _quiet_json_reader():  # its "Failed to load JSON" log line is no news: the reading below says why
            ds = datasets.load_dataset("json", data_files=str(path), split="train", **_json_options())
    except Exception as err:  # noqa: BLE001 - explained below, or reported as one line
        fast_error = _cause(err)
    else:
        if not any(type(feature).__name__ == "Json" for feature in ds.features.values()):
            return ds
        fast_error = "columns of JSON values"
    types = ColumnTypes()
    for line, row in _json_records(path):
        types.add(row, line)
    if types.rows == 0:
        raise LocalnatError(f"{path}: no rows. Give a JSON array of objects or one JSON object per line.")
    text = _TextColumns(
        str(path), {column: types.mixed[column] for column in types.signatures if column in types.mixed}
    )
    if needed is not None:
        _settle(text, needed, str(path), {})
    scratch = _scratch_dir()
    rewritten = scratch / "rows.jsonl"
    try:
        with open(rewritten, "w", encoding="utf-8") as f:
            for _, row in _json_records(path):
                f.write(json.dumps(types.conform(row), ensure_ascii=False) + "\n")
        ds = datasets.load_dataset(
            "json", data_files=str(rewritten), split="train", cache_dir=str(scratch / "cache"), **_json_options()
        )
    except Exception as err:  # noqa: BLE001
        raise LocalnatError(f"{path}: could not read it as json ({fast_error}; then {_cause(err)}).") from err
    finally:
        rewritten.unlink(missing_ok=True)
    if text.columns:
        setattr(ds, _TEXT_COLUMNS, text)
    return ds


_FORMATS_HELP = (
    ".jsonl (one JSON object per line), .json (an array of objects, or one object per line), .parquet, .csv, "
    "or a folder (save_to_disk, or data files)"
)


def load_rows(source: str | os.PathLike, split: str = "train", *, needed: Sequence[str] | None = None) -> Dataset:
    """Load a dataset from a data file, a ``save_to_disk`` folder, or a Hub id; user mistakes raise LocalnatError.

    JSON files go through datasets' Arrow reader. When it fails, typically on a column whose values have several
    types (an ``answer`` of floats, ints, lists and strings), the file is read once more in Python: such a column
    is kept as text (:func:`as_text`: strings as they are, other values as JSON) with one warning naming them all,
    while a column in ``needed`` (one the command reads as it is, e.g. the prompt and response) is a one-line error
    naming the file, the column, the types found and the first row that broke it. With ``needed=None`` the first
    :func:`require_columns` or :func:`require_text` call on the dataset names the needed columns and gives that
    error or warning.

    Example:
        >>> import json, pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "run.jsonl"
        >>> _ = path.write_text("".join(json.dumps(row) + "\\n" for row in [
        ...     {"prompt": "1+1?", "response": "2", "answer": 2}, {"prompt": "2+2?", "response": "4", "answer": "4"}]))
        >>> ds = load_rows(path, needed=["prompt", "response"])  # warns: column(s) 'answer' (int, str) ... as text
        >>> list(ds["answer"])
        ['2', '4']
    """
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return datasets.load_from_disk(str(path))
        try:
            loaded = datasets.load_dataset(str(path))
        except Exception as err:  # noqa: BLE001 - any loader failure is reported as one line
            raise LocalnatError(f"{path}: not a save_to_disk folder and no data files could be read ({err}).") from err
        return loaded[split] if split in loaded else loaded[next(iter(loaded))]
    if path.suffix.lower() in FILE_FORMATS:
        if not path.exists():
            raise LocalnatError(f"input file {str(path)!r} not found. Check the path.")
        fmt = FILE_FORMATS[path.suffix.lower()]
        if path.suffix.lower() in _TEXT_SUFFIXES:
            bad = _first_non_utf8(path)
            if bad:
                raise LocalnatError(bad)
        if fmt == "json":
            return _load_json(path, needed)
        try:
            loaded = datasets.load_dataset(fmt, data_files=str(path), split="train")
        except Exception as err:  # noqa: BLE001
            raise LocalnatError(f"{path}: could not read it as {fmt} ({_cause(err)}).") from err
        if fmt == "parquet":
            loaded.info.description = _read_description(path) or loaded.info.description
        return loaded
    if path.is_file():
        what = f"{path.suffix} files" if path.suffix else "files without a suffix"
        raise LocalnatError(
            f"{path}: cannot read {what}. Readable: {_FORMATS_HELP}; convert other layouts with a script in "
            "dataset_scripts/."
        )
    if path.suffix and not path.exists():
        raise LocalnatError(f"input {str(path)!r} not found. Use {_FORMATS_HELP}, or a Hub dataset id.")
    try:
        return datasets.load_dataset(str(source), split=split)
    except Exception as err:  # noqa: BLE001
        raise LocalnatError(
            f"input {str(source)!r} is neither a local file or folder nor a Hub dataset available offline "
            f"({type(err).__name__}). Check the path, or download the dataset first."
        ) from err


def require_columns(ds: Dataset, columns: Iterable[str], source: str, flags: dict[str, str] | None = None) -> None:
    """Raise a one-line error naming the first missing column, the columns present, and the flag to fix it.

    On a dataset :func:`load_rows` read without ``needed``, the first check also stands for it: one of
    ``columns`` that held values of several types is an error, and the other such columns get the warning.

    Example:
        >>> require_columns(Dataset.from_dict({"prompt": ["q"]}), ["response"], "pool.jsonl")
        Traceback (most recent call last):
        ...
        hf_localnat.errors.LocalnatError: pool.jsonl: column 'response' not found (columns: prompt).
    """
    flags = flags or {}
    columns = list(columns)
    for column in columns:
        if column not in ds.column_names:
            fix = f" Pass {flags[column]} NAME." if column in flags else ""
            raise LocalnatError(f"{source}: column {column!r} not found (columns: {', '.join(ds.column_names)}).{fix}")
    _settle(getattr(ds, _TEXT_COLUMNS, None), columns, source, flags)


def require_text(
    ds: Dataset, column: str, source: str, allow_none: bool = True, flags: dict[str, str] | None = None
) -> None:
    """Check that a column holds strings; name the first offending row otherwise, and the option that picks
    another column (``flags``: column -> flag, as for :func:`require_columns`).

    A column :func:`load_rows` read as text because its values had several types is an error too (it named the
    types found and the first row that broke the column).

    Example:
        >>> require_text(Dataset.from_dict({"response": ["4", None]}), "response", "pool.jsonl")
        >>> require_text(Dataset.from_dict({"response": [4]}), "response", "in.jsonl")
        Traceback (most recent call last):
        ...
        hf_localnat.errors.LocalnatError: in.jsonl row 0, column 'response': expected text, got int ('4'). Fix the row.
    """
    flags = flags or {}
    flag = flags.get(column)
    _settle(getattr(ds, _TEXT_COLUMNS, None), [column], source, flags, always=True)
    feature = ds.features[column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        if allow_none:
            return
    for row, value in enumerate(ds[column]):
        if value is None and allow_none:
            continue
        if not isinstance(value, str):
            fix = f"Fix the row, or pick the text column with {flag} NAME." if flag else "Fix the row."
            raise LocalnatError(
                f"{source} row {row}, column {column!r}: expected text, got {type(value).__name__} "
                f"({str(value)[:40]!r}). {fix}"
            )


@contextmanager
def atomic_file(path: str | os.PathLike, tmp_dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary file to write; it replaces ``path`` only if the block succeeds.

    The temporary is a hidden sibling (or lies in ``tmp_dir``, a folder on the same file system that is
    removed later); one left by a killed process is swept away by the next write of ``path``.

    Example:
        >>> with atomic_file("table.csv") as tmp:  # doctest: +SKIP
        ...     frame.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tmp_dir if tmp_dir is not None else path.parent) / temporary_name(path)
    tmp.touch(mode=0o666 & ~_UMASK, exist_ok=False)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(
    path: str | os.PathLike, tmp_dir: str | os.PathLike | None = None, keep_existing: bool = False
) -> Iterator[Path]:
    """Yield an empty temporary folder to build ``path`` in; it replaces ``path`` only if the block succeeds.

    The folder is a hidden sibling (or lies in ``tmp_dir``, on the same file system); one left by a killed process
    is swept by the next build of ``path``. With ``keep_existing``, a ``path`` that appeared in the meantime (another
    process built it too) is kept and this build is dropped. Callers check first that ``path`` may be replaced
    (:func:`hf_localnat.outputs.check_output`).

    Example:
        >>> with atomic_dir("report") as tmp:  # doctest: +SKIP
        ...     (tmp / "report.html").write_text(page)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".tmp", ".old"):
        remove_stale_temporaries(path, suffix)
    tmp = Path(tmp_dir if tmp_dir is not None else path.parent) / temporary_name(path)
    tmp.mkdir(mode=0o777 & ~_UMASK)
    try:
        yield tmp
        if not (keep_existing and path.exists()):
            replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# datasets keeps only the features in a parquet file's metadata; the description carries the scoring
# provenance (see scorer.scoring_provenance), so it rides along under its own key.
_DESCRIPTION_KEY = b"hf_localnat_description"


def _keep_description(ds: Dataset, path: Path) -> None:
    if not ds.info.description:
        return
    import pyarrow.parquet as pq

    # Rewritten batch by batch into a sibling, so a large scored pool is never held in memory at once.
    source = pq.ParquetFile(path)
    metadata = {**(source.schema_arrow.metadata or {}), _DESCRIPTION_KEY: ds.info.description.encode()}
    schema = source.schema_arrow.with_metadata(metadata)
    rewritten = path.with_name(path.name + ".meta")
    try:
        with pq.ParquetWriter(rewritten, schema) as writer:
            for batch in source.iter_batches(batch_size=10_000):
                writer.write_batch(batch)
        os.replace(rewritten, path)
    finally:
        rewritten.unlink(missing_ok=True)


def _read_description(path: Path) -> str | None:
    import pyarrow.parquet as pq

    value = (pq.read_schema(path).metadata or {}).get(_DESCRIPTION_KEY)
    return value.decode() if value else None


def write_rows(
    ds: Dataset,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    tmp_dir: str | os.PathLike | None = None,
    on_written: Callable[[Path], None] | None = None,
) -> Path:
    """Write a dataset atomically; the format follows the suffix (.jsonl/.json/.parquet/.csv), else a folder.

    An existing output is replaced only with ``overwrite`` (see :func:`hf_localnat.outputs.check_output`).
    The data is written to a temporary (in ``tmp_dir`` if given); ``on_written(tmp)`` runs just before it is
    renamed into place.

    Example:
        >>> write_rows(scored, "scored.parquet")  # doctest: +SKIP
        PosixPath('scored.parquet')
    """
    path = check_output(output, "rows", inputs=inputs, overwrite=overwrite)
    suffix = path.suffix.lower()
    if suffix in FILE_FORMATS:
        with atomic_file(path, tmp_dir) as tmp:
            if suffix == ".jsonl":
                ds.to_json(str(tmp), lines=True, force_ascii=False)
            elif suffix == ".json":
                # One JSON array: datasets refuses lines=False when the rows span more than one batch.
                ds.to_json(str(tmp), lines=False, force_ascii=False, batch_size=max(len(ds), 1))
            elif suffix == ".parquet":
                ds.to_parquet(str(tmp))
                _keep_description(ds, tmp)
            else:
                # CSV has no list type: write nested columns (step_spans, ...) as JSON text, not numpy reprs.
                order = ds.column_names
                for column, feature in list(ds.features.items()):
                    if not isinstance(feature, datasets.Value):
                        values = [json.dumps(value) for value in ds[column]]
                        ds = ds.remove_columns(column).add_column(column, values)
                ds.select_columns(order).to_csv(str(tmp), index=False)
            if on_written is not None:
                on_written(tmp)
        return path
    with atomic_dir(path, tmp_dir) as tmp:
        ds.save_to_disk(str(tmp))
        if on_written is not None:
            on_written(tmp)
    return path


def replace_dir(new: Path, target: Path) -> None:
    """Move folder ``new`` to ``target``, replacing an existing folder with as short a gap as possible.

    Callers check first (:func:`hf_localnat.outputs.check_output`) that ``target`` may be replaced.
    """
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(temporary_name(target, ".old"))
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
