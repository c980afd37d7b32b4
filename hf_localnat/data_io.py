"""Reading user data and writing results: clear one-line errors in, atomic files out.

Inputs: ``.jsonl``, ``.json``, ``.parquet``, ``.csv`` files, a ``save_to_disk`` folder, or a Hub dataset id
(from the local cache when offline). Outputs follow the rule of :mod:`hf_localnat.outputs` and go to a
temporary sibling first, renamed into place, so an interrupted write never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
from datasets import Dataset

from .errors import LocalnatError
from .outputs import FILE_FORMATS, check_output, remove_stale_temporaries, temporary_name

__all__ = ["FILE_FORMATS", "atomic_file", "check_output", "load_rows", "require_columns", "require_text", "write_rows"]
_TEXT_SUFFIXES = (".jsonl", ".json", ".csv")
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


def _first_bad_json_line(path: Path) -> str | None:
    """Name the first malformed line of a JSON-lines file, or None when every line parses."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                return (
                    f"{path} line {number}: malformed JSON ({err.msg} at column {err.colno}). Fix or remove that line."
                )
            if not isinstance(value, dict):
                return f"{path} line {number}: expected a JSON object per line, got {type(value).__name__}."
    return None


def _mixed_type_message(path: Path) -> str | None:
    """Find the first row whose column type disagrees with the rows before it."""
    seen: dict[str, type] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            for key, value in json.loads(line).items():
                if value is None:
                    continue
                kind = float if isinstance(value, int | float) and not isinstance(value, bool) else type(value)
                if key in seen and seen[key] is not kind:
                    return (
                        f"{path} line {number} (row {number - 1}), column {key!r}: {kind.__name__} value "
                        f"{str(value)[:40]!r} where earlier rows hold {seen[key].__name__}. Make the column one type."
                    )
                seen.setdefault(key, kind)
    return None


def load_rows(source: str | os.PathLike, split: str = "train") -> Dataset:
    """Load a dataset from a data file, a ``save_to_disk`` folder, or a Hub id; user mistakes raise LocalnatError.

    Example:
        >>> ds = load_rows("pool.jsonl")  # doctest: +SKIP
        >>> ds.column_names  # doctest: +SKIP
        ['prompt_id', 'prompt', 'teacher', 'response']
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
        if fmt == "json" and path.suffix.lower() == ".jsonl":
            bad = _first_bad_json_line(path)
            if bad:
                raise LocalnatError(bad)
        try:
            loaded = datasets.load_dataset(fmt, data_files=str(path), split="train")
        except Exception as err:  # noqa: BLE001
            message = _mixed_type_message(path) if fmt == "json" and path.suffix.lower() == ".jsonl" else None
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise LocalnatError(message or f"{path}: could not read it as {fmt} ({first}).") from err
        if fmt == "parquet":
            loaded.info.description = _read_description(path) or loaded.info.description
        return loaded
    if path.is_file():
        raise LocalnatError(
            f"{path}: cannot read {path.suffix or 'files without a suffix'!s}; use a .jsonl, .json, .parquet or .csv "
            "file (or convert it with a script in dataset_scripts/)."
        )
    if path.suffix and not path.exists():
        raise LocalnatError(
            f"input {str(path)!r} not found. Use a .jsonl, .json, .parquet or .csv file, a save_to_disk folder, "
            "or a Hub dataset id."
        )
    try:
        return datasets.load_dataset(str(source), split=split)
    except Exception as err:  # noqa: BLE001
        raise LocalnatError(
            f"input {str(source)!r} is neither a local file or folder nor a Hub dataset available offline "
            f"({type(err).__name__}). Check the path, or download the dataset first."
        ) from err


def require_columns(ds: Dataset, columns: Iterable[str], source: str, flags: dict[str, str] | None = None) -> None:
    """Raise a one-line error naming the first missing column, the columns present, and the flag to fix it."""
    flags = flags or {}
    for column in columns:
        if column not in ds.column_names:
            fix = f" Pass {flags[column]} NAME." if column in flags else ""
            raise LocalnatError(f"{source}: column {column!r} not found (columns: {', '.join(ds.column_names)}).{fix}")


def require_text(
    ds: Dataset, column: str, source: str, allow_none: bool = True, flags: dict[str, str] | None = None
) -> None:
    """Check that a column holds strings; name the first offending row otherwise, and the option that picks
    another column (``flags``: column -> flag, as for :func:`require_columns`)."""
    flag = (flags or {}).get(column)
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
