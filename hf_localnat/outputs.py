"""Where results go: one rule for every command that writes, and a lock for long runs.

- An existing output is never replaced unless ``overwrite`` is given (``--overwrite``).
- Even then, a folder is replaced only when everything in it is something hf_localnat writes there: a dataset
  folder, a report, a published selection or student, a training run. Otherwise the error names what is in it.
- An output may not be an input, lie inside an input folder, hold an input, or be the working folder or a
  folder above it.
- The output's folder must be writable. All of this is checked before any long work, and before a model loads.

:class:`RunLock` holds a work folder (``score``'s ``.OUT.partial``) for one run: a second run on the same
output fails at once naming the first, and the lock of a killed run is taken over.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LocalnatError

logger = logging.getLogger(__name__)

# Suffixes of the row formats hf_localnat reads and writes; any other output name is a save_to_disk folder.
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

_MODEL_FILES = (
    "README.md", ".gitattributes", "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
    "pytorch_model*.bin", "pytorch_model*.bin.index.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "training_args.bin", "hf_localnat_training_args.json",
    "selection_history.jsonl",
)  # fmt: skip
_CHECKPOINT_FILES = (
    *_MODEL_FILES, "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json",
    "hf_localnat_selection.json",
)  # fmt: skip


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder hf_localnat writes: what to call it, the files it may hold, and the ones that mark it.

    ``patterns`` are matched one path segment at a time (``checkpoint-*/optimizer.pt``), so ``*.png`` matches
    only at the top. A folder is of this kind when every file matches a pattern and one of ``signatures`` is there
    (holding ``signature_text``, when that is set).
    """

    name: str
    patterns: tuple[str, ...]
    signatures: tuple[str, ...]
    signature_text: str | None = None


FOLDER_KINDS: dict[str, FolderKind] = {
    "dataset": FolderKind(
        "a save_to_disk dataset folder",
        ("data-*-of-*.arrow", "dataset_info.json", "state.json", "cache-*.arrow"),
        ("state.json",),
    ),
    "report": FolderKind("a report folder", ("report.html", "report.json", "*.png"), ("report.json",)),
    "selection": FolderKind(
        "a published selection folder",
        ("README.md", ".gitattributes", "data/*.parquet", "*.png"),
        ("README.md",),
        "hf_localnat:",  # the card's metadata block
    ),
    "student": FolderKind("a published student folder", _MODEL_FILES, ("config.json",)),
    "training": FolderKind(
        "a training output folder",
        (*_CHECKPOINT_FILES, "*results.json", *(f"checkpoint-*/{f}" for f in _CHECKPOINT_FILES),
         "runs/*/events.out.tfevents.*"),  # fmt: skip
        ("trainer_state.json", "hf_localnat_training_args.json", "checkpoint-*/trainer_state.json", "config.json"),
    ),
}
_LISTED = 3  # foreign entries named in an error


def _matches(relative: str, pattern: str) -> bool:
    """``fnmatch`` per path segment: ``*`` never crosses ``/``."""
    parts, wanted = relative.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, wanted, strict=True))


def is_folder_output(path: str | os.PathLike) -> bool:
    """Whether a row output named ``path`` is written as a ``save_to_disk`` folder (no known file suffix).

    Example:
        >>> is_folder_output("scored.parquet"), is_folder_output("selected")
        (False, True)
    """
    return Path(path).suffix.lower() not in FILE_FORMATS


def foreign_entries(folder: str | os.PathLike, kind: str) -> list[str]:
    """Paths in ``folder`` (relative, sorted) that hf_localnat does not write in a folder of ``kind``.

    Example:
        >>> foreign_entries("new-folder-that-does-not-exist", "report")
        []
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    patterns = FOLDER_KINDS[kind].patterns
    return sorted(relative for relative in _files(root) if not any(_matches(relative, p) for p in patterns))


def _files(root: Path) -> list[str]:
    """Every file (and empty folder) under ``root``, as a relative posix path."""
    found = []
    for base, dirs, files in os.walk(root):
        dirs.sort()
        empty_dirs = [d for d in dirs if not any(Path(base, d).iterdir())]
        found += [Path(base, name).relative_to(root).as_posix() for name in sorted(files) + empty_dirs]
    return found


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path))).resolve()


def _same(a: Path, b: Path) -> bool:
    """The same file or folder: by device and inode when both exist (case-insensitive file systems, bind
    mounts), else by resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _resolved(a) == _resolved(b)


def _existing_parents(path: Path) -> list[Path]:
    return [parent for parent in _resolved(path).parents if parent.exists()]


def check_location(
    output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), flag: str = "--output"
) -> Path:
    """Refuse an output that is, lies inside, or holds an input, or is the working folder or above it; and one
    whose folder cannot be written. It says nothing about what an existing output holds (:func:`check_output`).

    Example:
        >>> check_location("scored.parquet", inputs=["pool.jsonl"])
        PosixPath('scored.parquet')
    """
    path = Path(output)
    shown = str(output)
    cwd = Path.cwd()
    if path.exists() and (_same(path, cwd) or any(_same(path, parent) for parent in _resolved(cwd).parents)):
        raise LocalnatError(
            f"{flag} {shown!r} is the working folder or a folder above it; writing there would replace it. "
            "Name a new file or folder."
        )
    for source in inputs:
        if source is None or not os.path.lexists(source):
            continue  # a Hub id, or nothing on disk
        source_path = Path(source)
        if _same(path, source_path):
            raise LocalnatError(
                f"{flag} {shown!r} is the input {str(source)!r}; writing it would destroy the input. "
                "Pick another output name."
            )
        if source_path.is_dir() and any(_same(parent, source_path) for parent in _existing_parents(path)):
            raise LocalnatError(
                f"{flag} {shown!r} lies inside the input folder {str(source)!r}. Pick an output outside it."
            )
        if path.exists() and any(_same(parent, path) for parent in _existing_parents(source_path)):
            raise LocalnatError(
                f"{flag} {shown!r} holds the input {str(source)!r}; replacing it would delete the input. "
                "Pick another output name."
            )
    _check_writable(_resolved(path), shown, flag)
    return path


def _check_writable(target: Path, shown: str, flag: str) -> None:
    """Refuse an output whose folder cannot be made or written, by trying to create a file there."""
    ancestor = target.parent
    while not ancestor.exists():
        if ancestor.is_symlink():  # a dangling link
            raise LocalnatError(f"{flag} {shown!r}: {str(ancestor)!r} is a broken link. Pick another location.")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LocalnatError(
            f"{flag} {shown!r}: {str(ancestor)!r} is a file, so no folder can be made there. Pick another location."
        )
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".hf-localnat-probe-")
    except OSError as err:
        raise LocalnatError(
            f"{flag} {shown!r}: cannot write in {str(ancestor)!r} ({err.strerror or type(err).__name__}). "
            "Pick a writable location."
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_output(
    output: str | os.PathLike,
    kind: str = "rows",
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    flag: str = "--output",
) -> Path:
    """Check an output before any work: the overwrite rule, no overlap with the inputs, and a writable folder.

    ``kind`` is ``"rows"`` (a data file by its suffix, else a ``save_to_disk`` folder), ``"file"`` (a file of
    any name), or a folder kind of :data:`FOLDER_KINDS` (``"report"``, ``"selection"``, ``"student"``,
    ``"training"``). An empty existing folder counts as absent.

    Example:
        >>> check_output("scored.parquet", inputs=["pool.jsonl"])
        PosixPath('scored.parquet')
        >>> check_output("pool.jsonl", inputs=["pool.jsonl"])  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        hf_localnat.errors.LocalnatError: --output 'pool.jsonl' is the input 'pool.jsonl'; writing it would ...
    """
    path = Path(output)
    shown = str(output)
    if not shown.strip():
        raise LocalnatError(f"{flag} is empty. Name the file or folder to write.")
    if kind == "rows" and path.suffix and path.suffix.lower() not in FILE_FORMATS and not path.is_dir():
        raise LocalnatError(
            f"{flag} {shown!r}: cannot write {path.suffix} files. Use .jsonl, .json, .parquet or .csv, or a "
            "name without a suffix for a save_to_disk folder."
        )
    check_location(path, inputs, flag)
    folder_kind = None if kind == "file" or (kind == "rows" and not is_folder_output(path)) else kind
    folder_kind = "dataset" if folder_kind == "rows" else folder_kind
    if os.path.lexists(path):
        if folder_kind is None and path.is_dir():
            raise LocalnatError(f"{flag} {shown!r} is a folder, and this writes a file. Pick a file name.")
        if folder_kind is not None and not path.is_dir():
            what = "a .parquet/.jsonl/.json/.csv name for a file" if kind == "rows" else "a new folder name"
            raise LocalnatError(f"{flag} {shown!r} is a file, and this writes a folder there. Pick {what}.")
        empty = folder_kind is not None and not any(path.iterdir())
        if not empty and not overwrite:
            raise LocalnatError(f"{flag} {shown!r} exists. Pass --overwrite to replace it, or pick a new name.")
        if not empty and folder_kind is not None:
            refuse_foreign(path, folder_kind, flag)
    return path


def is_marked(folder: str | os.PathLike, kind: str, files: Sequence[str] | None = None) -> bool:
    """Whether ``folder`` holds a file that marks a folder of ``kind`` (one of its ``signatures``, holding its
    ``signature_text`` when that is set); ``files`` are its files when already listed.

    Example:
        >>> is_marked("new-folder-that-does-not-exist", "report")
        False
    """
    root, spec = Path(folder), FOLDER_KINDS[kind]
    if files is None:
        files = _files(root) if root.is_dir() else []
    marked = [f for f in files if any(_matches(f, sig) for sig in spec.signatures) and (root / f).is_file()]
    if spec.signature_text is not None:
        marked = [f for f in marked if spec.signature_text in (root / f).read_text(errors="replace")]
    return bool(marked)


def refuse_foreign(folder: Path, kind: str, flag: str = "--output") -> None:
    """Raise naming what ``folder`` holds that hf_localnat does not write in a folder of ``kind``, if anything."""
    spec = FOLDER_KINDS[kind]
    foreign = foreign_entries(folder, kind)
    if foreign:
        more = len(foreign) - _LISTED
        listed = ", ".join(foreign[:_LISTED]) + (f" and {more} more" if more > 0 else "")
        raise LocalnatError(
            f"{flag} {str(folder)!r} holds {listed}, which hf-localnat does not write in {spec.name}; refusing "
            "to replace it even with --overwrite. Move those out, or pick a new folder."
        )
    files = _files(folder)
    if files and not is_marked(folder, kind, files):
        raise LocalnatError(
            f"{flag} {str(folder)!r} is not {spec.name} (it has no {' or '.join(spec.signatures)}"
            f"{' of hf_localnat' if spec.signature_text else ''}); refusing to replace it even with --overwrite. "
            "Pick a new folder."
        )


# ------------------------------------------------------------------------------------------------ temporaries


def temporary_name(path: Path, suffix: str = ".tmp") -> str:
    """A hidden sibling name for building ``path``: ``.NAME.PID-RANDOM@HOST.tmp``, so that a later run on this
    host can tell a leftover of a killed process from the work of a live one (on this or another host)."""
    return f".{path.name}.{os.getpid()}-{os.urandom(3).hex()}@{socket.gethostname()}{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path, suffix: str = ".tmp") -> None:
    """Delete hidden build siblings of ``path`` left by a killed process of this host (its pid no longer runs)."""
    import shutil

    path = Path(path)
    prefix = f".{path.name}."
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(suffix)):
                continue
            owner, _, where = name[len(prefix) : len(name) - len(suffix)].partition("@")
            pid = owner.split("-", 1)[0]
            if where == host and pid.isdigit() and not _pid_alive(int(pid)):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ run lock


class RunLock:
    """An exclusive lock on a work folder for one run, held with ``flock`` on ``FOLDER/lock``.

    The kernel drops the lock when its process dies, so the lock of a killed run never blocks: the next run
    takes it over (and logs that it did). A live holder makes :meth:`acquire` fail at once with one line naming
    it. Re-entrant within a process. Only the main process of a launch takes it.

    Example:
        >>> with RunLock("out/.scored.parquet.partial", "out/scored.parquet"):  # doctest: +SKIP
        ...     ...  # score into the folder
    """

    _held: dict[Path, RunLock] = {}

    def __init__(self, folder: str | os.PathLike, what: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder)
        self.what = str(what if what is not None else folder)
        self.path = self.folder / "lock"
        self.previous: dict[str, Any] | None = None
        self._fd: int | None = None
        self._depth = 0
        self._made_parents: list[Path] = []

    def acquire(self) -> RunLock:
        key = _resolved(self.folder)
        held = RunLock._held.get(key)
        if held is not None:
            held._depth += 1
            return held
        missing = []  # the folders above it that this run makes, removed again if it ends with nothing saved
        for parent in self.folder.parents:
            if parent.exists():
                break
            missing.append(parent)
        self._made_parents = missing
        for _attempt in range(100):
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a finishing run removed the folder in between
                continue
            try:
                _flock(fd, exclusive=True)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise LocalnatError(
                    f"another run is writing {self.what} ({_describe(holder)}). Wait for it to finish, or stop "
                    "it; then run this command again to resume."
                ) from None
            # A finishing run deletes its folder, lock file included: make sure we hold the file at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self.previous = _read_holder(fd) or None
            if self.previous:
                logger.warning(
                    "Taking over %s from an earlier run that is no longer running (%s).",
                    self.folder,
                    _describe(self.previous),
                )
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(["hf-localnat", *sys.argv[1:]])[:300],
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd, self._depth = fd, 1
            RunLock._held[key] = self
            return self
        raise LocalnatError(f"could not lock {self.folder}: it keeps disappearing. Is another run cleaning it up?")

    def release(self) -> None:
        key = _resolved(self.folder)
        held = RunLock._held.get(key, self)
        held._depth -= 1
        if held._depth > 0 or held._fd is None:
            return
        RunLock._held.pop(key, None)
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(held._fd), os.stat(held.path)):
                os.ftruncate(held._fd, 0)  # a clean end leaves no holder to take over
                if [entry.name for entry in held.folder.iterdir()] == [held.path.name]:
                    held.path.unlink()  # nothing was saved: leave no folder behind
                    held.folder.rmdir()
                    for parent in held._made_parents:
                        parent.rmdir()  # fails (and stops) at one that is not empty
        _flock(held._fd, exclusive=False)
        os.close(held._fd)
        held._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock(fd: int, exclusive: bool) -> None:
    """Take (without waiting) or drop the lock. Where there is no ``fcntl`` (Windows) nothing is locked: one
    warning says so, and two runs on one output are then the user's to avoid."""
    try:
        import fcntl
    except ImportError:
        if exclusive and not getattr(_flock, "warned", False):
            _flock.warned = True  # type: ignore[attr-defined]
            logger.warning("This platform has no fcntl: the output is not locked; run one job per output.")
        return
    fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if exclusive else fcntl.LOCK_UN)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a run that is starting"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: {holder.get('command')}"
