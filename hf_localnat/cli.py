"""The ``hf-localnat`` command line (also ``python -m hf_localnat``).

Each sub-command parses a tuple of dataclasses whose fields carry their own help, as TRL's scripts do
(``ScoreArguments, StudentArguments, ScoringConfig``): every option is defined once, in the class it belongs to,
and composed. Flags use the field names (``--group_by``; HfArgumentParser also accepts them with dashes). Every
command takes ``--config FILE.yaml`` with the same names, as ``trl sft`` does; flags on the command line win.
A class's ``MIN_VALUES`` bounds its numeric fields; every bound is checked before any data or model is loaded.
User mistakes print one ``hf-localnat: error: ...`` line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import gc
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser

from .data_io import split_field
from .distributed import destroy_process_group_at_exit
from .errors import LocalnatError
from .metrics import ScoringConfig, with_fields_of
from .selection import RankingConfig, SelectionConfig
from .student import StudentArguments

logger = logging.getLogger("hf_localnat")

OVERWRITE_HELP = "Replace an existing output (a folder only if it holds what hf-localnat writes there)."


@dataclass
class ScoreArguments:
    """``hf-localnat score INPUT --output OUT``: add naturalness columns to every row."""

    MIN_VALUES = {"limit": 1, "chunk_rows": 1}

    output: str = field(default="", metadata={"help": "Output: .jsonl, .json, .parquet, .csv, or a folder."})
    split: str = split_field()
    limit: int | None = field(default=None, metadata={"help": "Score only the first N rows."})
    chunk_rows: int = field(
        default=64, metadata={"help": "Rows per saved chunk; an interrupted run resumes per chunk."}
    )
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


@dataclass
class SelectArguments:
    """``hf-localnat select SCORED --by METRIC --group_by COLUMN --output OUT``: keep the best k per group."""

    output: str = field(default="", metadata={"help": "Output: .jsonl, .json, .parquet, .csv, or a folder."})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


@dataclass
@with_fields_of(SelectionConfig, only=("by", "group_by", "higher_is_better"))
@with_fields_of(RankingConfig)
class RankTeachersArguments:
    """``hf-localnat rank-teachers SCORED --by METRIC``: rank teachers by their mean score over prompts.

    With ``--until_confident P`` the input is an unscored pool: prompts are scored (with ``--student`` and the
    scoring options) in a seeded random order until the top teacher's P(top) reaches P.
    """

    MIN_VALUES = {"n_bootstrap": 1, "block_prompts": 1, "min_prompts": 1}

    output: str | None = field(default=None, metadata={"help": "Write the table to this .csv or .json file."})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})
    until_confident: float | None = field(
        default=None,
        metadata={
            "help": "Score the pool (unscored rows) prompt block by prompt block, in a seeded random order, until "
            "the top teacher's P(top) reaches this probability (e.g. 0.95) or the pool is done. Needs --output; "
            "resumable; a rerun with a higher value reuses the blocks scored."
        },
    )
    block_prompts: int = field(default=10, metadata={"help": "With --until_confident: prompts scored per block."})
    min_prompts: int = field(
        default=20,
        metadata={"help": "With --until_confident: never stop before this many prompts (a tiny bootstrap is sure)."},
    )
    scored_output: str | None = field(
        default=None, metadata={"help": "With --until_confident: also write the rows scored (.parquet, .jsonl, ...)."}
    )


def check_table_output(output: str, inputs: Sequence[str], overwrite: bool) -> None:
    """Refuse a table output that is not a .csv or .json file, or that may not be written (before any work)."""
    from .outputs import check_output

    if Path(output).suffix.lower() not in (".csv", ".json"):
        raise LocalnatError(f"--output {output!r}: use a .csv or .json file name.")
    check_output(output, "file", inputs=inputs, overwrite=overwrite)


def write_table(table: Any, output: str, inputs: Sequence[str], overwrite: bool) -> Path:
    """Write a teacher table atomically as .csv or .json records (the suffix decides); returns the path."""
    from .data_io import atomic_file
    from .outputs import check_output

    out = check_output(output, "file", inputs=inputs, overwrite=overwrite)
    with atomic_file(out) as tmp:
        if out.suffix.lower() == ".csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_json(tmp, orient="records", indent=2)
    return out


@dataclass
class GraceArguments:
    """``hf-localnat grace POOL --output grace.csv``: GRACE, a teacher-level score from the student's gradients."""

    output: str | None = field(default=None, metadata={"help": "Write the table to this .csv or .json file."})
    split: str = split_field()
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


def run_grace(args: GraceArguments, student: StudentArguments, config: Any, pool_path: str) -> None:
    from .data_io import load_rows, require_columns
    from .grace import grace_scores
    from .student import load_student

    if args.output:
        check_table_output(args.output, [pool_path], args.overwrite)
    ds = load_rows(pool_path, split=args.split)
    names = ("teacher_column", "group_by", "prompt_column", "response_column")
    require_columns(ds, [getattr(config, n) for n in names], pool_path, flags_for(config, *names))
    model, tokenizer = load_student(student.student)
    table = grace_scores(model, tokenizer, ds, config)
    shown = table[["rank", "teacher", "grace", "grace_std", "num_prompts", "num_responses", "backward_passes"]]
    print("Teachers ranked by GRACE (lower is better; mean and standard deviation over the prompt splits):")
    print(shown.to_string(index=False))
    print(f"{int(table['backward_passes'].sum())} backward passes in {table['seconds'].sum():.0f} s.")
    if args.output:
        out = write_table(table, args.output, [pool_path], args.overwrite)
        print(f"Wrote the GRACE of {len(table)} teachers -> {out}")


def _grace_config() -> type:
    from .grace import GraceConfig

    return GraceConfig


@dataclass
class DemoArguments:
    """``hf-localnat demo``: score the embedded demo pool, rank teachers, select, and write a dataset folder."""

    MIN_VALUES = {"limit_prompts": 1}

    output_dir: str = field(
        default="localnat-demo", metadata={"help": "Where the demo writes report/, selection/ and scored.parquet."}
    )
    limit_prompts: int | None = field(default=None, metadata={"help": "Use only the first N demo prompts."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace --output_dir even if an earlier demo did not write it."}
    )


def build_scorer(student: StudentArguments, scoring: ScoringConfig, device: torch.device | None = None):
    """Load the student and make its :class:`~hf_localnat.scorer.NaturalnessScorer`."""
    from .scorer import NaturalnessScorer
    from .student import load_student

    model, tokenizer = load_student(student.student, device=device)
    return NaturalnessScorer(model, tokenizer, scoring)


def check_numbers(args: object) -> None:
    """Refuse a numeric option below its bound in ``MIN_VALUES`` (``--chunk_rows 0``, ``--k 0``) before any work.

    Example:
        >>> check_numbers(ScoreArguments(chunk_rows=0))
        Traceback (most recent call last):
        ...
        hf_localnat.errors.LocalnatError: --chunk_rows 0: use a whole number >= 1.
    """
    for name, low in getattr(type(args), "MIN_VALUES", {}).items():
        value = getattr(args, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            kind = "whole number" if isinstance(low, int) else "number"
            raise LocalnatError(f"--{name} {value}: use a {kind} >= {low}.")


def flags_for(config: object, *names: str) -> dict[str, str]:
    """Column -> the flag that names it, built from the field names (for "Pass --prompt_column NAME." hints).

    Example:
        >>> flags_for(ScoringConfig(prompt_column="question"), "prompt_column")
        {'question': '--prompt_column'}
    """
    return {getattr(config, name): f"--{name}" for name in names}


def launch_state():
    """The accelerate process state under ``accelerate launch`` / ``torchrun``; None for a plain run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True accelerate would not use gloo
    destroy_process_group_at_exit()
    if state.device.type == "cpu":  # CPU processes share the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    return state


DELIVERY_FILE = "delivered.json"  # in OUT's .partial folder: which file the run renamed into place as OUT


def _command_key(args: Sequence[Any], input_path: str) -> str:
    """What makes two ``score`` commands the same, without loading anything: the options and the input file."""
    settings = [{k: v for k, v in dataclasses.asdict(part).items() if k != "overwrite"} for part in args]
    source = Path(input_path)
    stat = source.stat() if source.is_file() else None
    where = [str(source.resolve()) if source.exists() else input_path, stat and stat.st_size, stat and stat.st_mtime_ns]
    return hashlib.sha256(json.dumps([settings, where], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_identity(path: Path) -> list[int]:
    """Device and inode (kept by a rename), and for a file its size and mtime (so a reused inode is no match)."""
    info = os.stat(path)
    return [info.st_dev, info.st_ino] + ([] if path.is_dir() else [info.st_size, info.st_mtime_ns])


def _finish_delivered(output: Path, work_dir: Path, key: str) -> bool | None:
    """A run killed after renaming OUT into place but before removing its .partial folder: finish its cleanup.

    Returns None when there is no such run, else whether it was this same command (so nothing is left to do).
    """
    from .outputs import RunLock

    try:
        record = json.loads((work_dir / DELIVERY_FILE).read_text())
        delivered = record.get("identity") == _file_identity(output)
    except (OSError, ValueError, AttributeError):
        return None
    if not delivered:
        return None
    with RunLock(work_dir, output):
        _remove_work_dir(work_dir, output)
    return record.get("command") == key


def _remove_work_dir(work_dir: Path, output: Path) -> None:
    """Remove OUT's .partial folder in one step (a rename), then its contents: a kill in between leaves a
    hidden leftover that the next run sweeps, never a half-deleted folder that looks resumable."""
    from .outputs import temporary_name

    trash = work_dir.with_name(temporary_name(output, ".trash"))
    with contextlib.suppress(FileNotFoundError):
        os.replace(work_dir, trash)
    shutil.rmtree(trash, ignore_errors=True)


def run_score(args: ScoreArguments, student: StudentArguments, scoring: ScoringConfig, input_path: str) -> None:
    from .data_io import load_rows, require_columns, require_text, write_rows
    from .distributed import main_decides
    from .outputs import RunLock, check_output, remove_stale_temporaries
    from .scorer import score_dataset

    if not args.output:
        raise LocalnatError("score needs --output OUT (.jsonl, .json, .parquet, .csv, or a folder).")
    output = Path(args.output)
    refused = None
    try:
        check_output(output, "rows", inputs=[input_path], overwrite=args.overwrite)
    except LocalnatError as err:
        if output.name in ("", ".", "..") or not output.exists():
            raise
        refused = err  # unless an earlier run of this command delivered OUT and only its cleanup was cut short
    work_dir = output.with_name(f".{output.name}.partial")
    key = _command_key([args, student, scoring], input_path)
    state = launch_state()

    def sweep_and_finish() -> bool | None:
        for suffix in (".trash", ".old", ".tmp"):  # what a killed run of ours can leave beside OUT
            remove_stale_temporaries(output, suffix)
        return _finish_delivered(output, work_dir, key)

    finished = main_decides(state, sweep_and_finish)
    if finished:
        print(f"{output} is complete: an earlier run of this command wrote it and was stopped while cleaning up.")
        return
    if refused is not None:
        raise refused
    main_process = state is None or state.is_main_process
    lock = RunLock(work_dir, output)

    def take_lock() -> None:
        # Held for the whole run, from before the model loads: a second run on this output fails at once.
        lock.acquire()
        try:
            check_output(output, "rows", inputs=[input_path], overwrite=args.overwrite)  # again, under the lock
        except LocalnatError:
            lock.release()
            raise

    main_decides(state, take_lock)
    try:
        with state.main_process_first() if state is not None else contextlib.nullcontext():
            ds = load_rows(input_path, split=args.split)  # the main process fills the datasets cache first
        flags = flags_for(scoring, "prompt_column", "response_column")
        require_columns(ds, [scoring.prompt_column, scoring.response_column], input_path, flags)
        require_text(ds, scoring.prompt_column, input_path, allow_none=False, flags=flags)
        require_text(ds, scoring.response_column, input_path, flags=flags)
        if args.limit is not None:
            ds = ds.select(range(min(args.limit, len(ds))))
        scorer = build_scorer(student, scoring, device=state.device if state is not None else None)
        scored = score_dataset(ds, scorer, work_dir=work_dir, chunk_rows=args.chunk_rows, state=state)
        if scored is None:  # not the main process: its chunks are on disk for the main process to assemble
            return

        def record_delivery(tmp: Path) -> None:
            # The rename keeps the inode: a rerun that finds OUT with this identity knows this run delivered it.
            record = {"identity": _file_identity(tmp), "command": key}
            (work_dir / DELIVERY_FILE).write_text(json.dumps(record))

        write_rows(
            scored, output, overwrite=args.overwrite, inputs=[input_path], tmp_dir=work_dir, on_written=record_delivery
        )
        _remove_work_dir(work_dir, output)
    finally:
        if main_process:
            lock.release()
    print(f"Scored {len(scored)} rows -> {output}")


def run_select(args: SelectArguments, selection: SelectionConfig, scored_path: str) -> None:
    from .data_io import load_rows, require_columns, write_rows
    from .outputs import check_output
    from .selection import select_responses

    if not args.output:
        raise LocalnatError("select needs --output OUT (.jsonl, .json, .parquet, .csv, or a folder).")
    check_output(args.output, "rows", inputs=[scored_path], overwrite=args.overwrite)
    ds = load_rows(scored_path)
    require_columns(ds, [selection.by, selection.group_by], scored_path, flags_for(selection, "by", "group_by"))
    selected, report = select_responses(ds, selection, return_report=True)
    write_rows(selected, args.output, overwrite=args.overwrite, inputs=[scored_path])
    print(report.summary())
    print(f"Selected {len(selected)} rows -> {args.output}")


def run_rank_teachers(
    args: RankTeachersArguments, student: StudentArguments, scoring: ScoringConfig, scored_path: str
) -> None:
    from .data_io import load_rows, require_columns, write_rows
    from .outputs import check_output
    from .selection import format_ranking, rank_teachers

    if args.output:
        check_table_output(args.output, [scored_path], args.overwrite)
    if args.until_confident is not None:
        if not args.output:
            raise LocalnatError("--until_confident needs --output ranking.json (its blocks resume beside it).")
        if args.scored_output:
            check_output(args.scored_output, "rows", inputs=[scored_path], overwrite=args.overwrite)
    ds = load_rows(scored_path)
    needed = [args.teacher_column, args.group_by]
    needed += [scoring.prompt_column, scoring.response_column] if args.until_confident is not None else [args.by]
    require_columns(ds, needed, scored_path, flags_for(args, "by", "teacher_column", "group_by"))
    ranking = RankingConfig(**{f.name: getattr(args, f.name) for f in fields(RankingConfig)})
    options = dict(by=args.by, group_by=args.group_by, higher_is_better=args.higher_is_better)
    budget = None
    if args.until_confident is not None:
        from .budget import rank_until_confident

        wanted = args.by.split("@")[0]  # local_naturalness@4 is computed by the local metric
        columns = set(scoring.row_columns) | ({"casl"} if "casl" in scoring.metric_names else set())
        if args.by not in columns:
            raise LocalnatError(
                f"--by {args.by}: the scoring options do not compute it (metrics: {scoring.metrics}). Add "
                f"--metrics {wanted.replace('_naturalness', '')}."
            )
        if not 0 < args.until_confident <= 1:
            raise LocalnatError(f"--until_confident {args.until_confident}: use a probability in (0, 1], e.g. 0.95.")
        scorer = build_scorer(student, scoring)
        out = Path(args.output)
        budget = rank_until_confident(
            ds, scorer, threshold=args.until_confident, block_prompts=args.block_prompts,
            min_prompts=args.min_prompts, work_dir=out.with_name(f".{out.name}.partial"), ranking=ranking, **options,
        )  # fmt: skip
        table = budget.ranking
        if args.scored_output:
            write_rows(budget.scored, args.scored_output, overwrite=args.overwrite, inputs=[scored_path])
    else:
        table = rank_teachers(ds, **options, **ranking.to_dict())
    print(format_ranking(table))
    if budget is not None:
        print(budget.summary())
    if args.output:
        out = write_table(table, args.output, [scored_path], args.overwrite)
        print(f"Wrote the ranking of {len(table)} teachers -> {out}")


def run_demo(args: DemoArguments, student: StudentArguments, scoring: ScoringConfig) -> None:
    from .demo import run_demo as demo

    demo(args, student, scoring)


@dataclass
class TrainArguments:
    """``hf-localnat train --pool POOL --student PATH --output_dir OUT``: the data side of training."""

    pool: str = field(default="", metadata={"help": "Candidate pool: a data file, save_to_disk folder or Hub id."})
    split: str = split_field()
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Train anew into an --output_dir that holds an earlier training run (its files are removed "
            "when training starts). To continue that run instead, pass --resume_from_checkpoint."
        },
    )


def _reselect_config() -> type:
    from .trainer import ReselectConfig

    return ReselectConfig


def run_train(args: TrainArguments, student: StudentArguments, config) -> None:
    from .data_io import load_rows, require_columns, require_text
    from .outputs import check_location, check_output, refuse_foreign
    from .segmentation import get_splitter
    from .student import load_student
    from .trainer import ReselectingSFTTrainer

    if not args.pool:
        raise LocalnatError("train needs --pool POOL (a .jsonl, .json, .parquet or .csv file, or a folder).")
    output_dir = Path(config.output_dir)
    checkpoint = config.resume_from_checkpoint
    if isinstance(checkpoint, str) and checkpoint.lower() in ("true", "last"):
        checkpoint = True  # the last checkpoint in --output_dir
    resume = bool(checkpoint)
    earlier = output_dir.is_dir() and any(output_dir.iterdir())
    if earlier and not (args.overwrite or resume):
        raise LocalnatError(
            f"--output_dir {str(output_dir)!r} exists. Pass --resume_from_checkpoint to continue the run in it, "
            "--overwrite to train anew there, or pick a new folder."
        )
    inputs = [args.pool, student.student]
    if resume:  # training continues inside the folder and deletes nothing: only where it is matters
        check_location(output_dir, inputs, flag="--output_dir")
    else:
        check_output(output_dir, "training", inputs=inputs, overwrite=True, flag="--output_dir")
    pool = load_rows(args.pool, split=args.split)
    columns = [config.prompt_column, config.response_column, config.group_by]
    flags = flags_for(config, "prompt_column", "response_column", "group_by")
    require_columns(pool, columns, args.pool, flags)
    require_text(pool, config.prompt_column, args.pool, allow_none=False, flags=flags)
    require_text(pool, config.response_column, args.pool, flags=flags)
    # The trainer places the model; load on CPU in float32 and let accelerate move it.
    model, tokenizer = load_student(student.student, device="cpu", dtype="float32")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    get_splitter(config.splitter, min_step_chars=config.min_step_chars, tokenizer=tokenizer)
    created = not output_dir.exists()
    try:
        trainer = ReselectingSFTTrainer(model=model, args=config, candidate_dataset=pool, processing_class=tokenizer)
        if earlier and args.overwrite and not resume and trainer.is_world_process_zero():
            refuse_foreign(output_dir, "training", "--output_dir")  # again: files may have come while loading
            for entry in list(output_dir.iterdir()):  # each is a training file of ours
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        trainer.accelerator.wait_for_everyone()
        trainer.train(resume_from_checkpoint=checkpoint)
    except BaseException:
        if created and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()  # the trainer made the folder, then failed before saving anything: leave nothing
        raise
    trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(config.output_dir)
        rounds = len(trainer.selection_history)
        print(f"Trained {trainer.state.global_step} steps with {rounds} selection rounds -> {config.output_dir}")
    if trainer.args.world_size > 1:
        # Destroy the process group, then free the DDP-wrapped model that holds it: left to interpreter exit,
        # gloo's threads can abort a finished CPU run ("terminate called without an active exception").
        trainer.accelerator.end_training()
        del trainer
        gc.collect()


@dataclass
@with_fields_of(ScoringConfig, only=("response_column",))
class PushSelectionArguments:
    """``hf-localnat push-selection SELECTED --repo_id ID | --to_dir DIR``: publish a selection with its card."""

    repo_id: str | None = field(default=None, metadata={"help": "Upload to this Hub dataset repo (NAMESPACE/NAME)."})
    to_dir: str | None = field(default=None, metadata={"help": "Write the folder that would be uploaded here."})
    scored: str | None = field(
        default=None,
        metadata={"help": "The scored pool SELECTED came from: adds rankings, the histogram and row counts."},
    )
    source_dataset: str | None = field(
        default=None, metadata={"help": "Name (Hub id or path) of the pool the scores came from, for the card."}
    )
    teacher_column: str = field(default="teacher", metadata={"help": "Column naming the teacher."})
    private: bool = field(default=True, metadata={"help": "Create the Hub repo as private."})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


@dataclass
class PushStudentArguments:
    """``hf-localnat push-student FOLDER --repo_id ID | --to_dir DIR``: publish a trained student with its card."""

    repo_id: str | None = field(default=None, metadata={"help": "Upload to this Hub model repo (NAMESPACE/NAME)."})
    to_dir: str | None = field(default=None, metadata={"help": "Write the folder that would be uploaded here."})
    selection_repo: str | None = field(
        default=None, metadata={"help": "Hub id of the selected dataset it was trained on (the card's datasets)."}
    )
    base_model: str | None = field(default=None, metadata={"help": "Hub id of the model training started from."})
    private: bool = field(default=True, metadata={"help": "Create the Hub repo as private."})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


def _evaluate_arguments() -> type:
    from .evaluation import EvaluateArguments

    return EvaluateArguments


def _run_evaluate(args, student: StudentArguments) -> None:
    from .evaluation import run_evaluate

    run_evaluate(args, student)


def _report_arguments() -> type:
    from .report import ReportArguments

    return ReportArguments


def _run_report(args, scored_path: str) -> None:
    from .report import run_report

    run_report(args, scored_path)


def _one_destination(repo_id: str | None, to_dir: str | None) -> None:
    if (repo_id is None) == (to_dir is None):
        raise LocalnatError("give exactly one of --repo_id ID (upload to the Hub) or --to_dir DIR (a local folder).")


def run_push_selection(args: PushSelectionArguments, selection: SelectionConfig, selected_path: str) -> None:
    from .data_io import load_rows, require_columns
    from .hub import push_selection, selected_ids_sha256
    from .outputs import check_output
    from .selection import select_responses

    _one_destination(args.repo_id, args.to_dir)
    if args.to_dir is not None:
        check_output(args.to_dir, "selection", inputs=[selected_path, args.scored], overwrite=args.overwrite,
                     flag="--to_dir")  # fmt: skip
    selected = load_rows(selected_path)
    require_columns(selected, [selection.group_by], selected_path, flags_for(selection, "group_by"))
    scored = None
    if args.scored:
        scored = load_rows(args.scored)
        require_columns(scored, [selection.by, selection.group_by], args.scored, flags_for(selection, "by", "group_by"))
        # The card claims SELECTED = select(SCORED, these flags): check it rather than publish a wrong claim.
        again = select_responses(scored, selection)
        # Compare on the teacher only when both files carry it.
        teacher = args.teacher_column if args.teacher_column in selected.column_names else "\0no-teacher"
        group_by = selection.group_by
        if selected_ids_sha256(again, group_by, teacher) != selected_ids_sha256(selected, group_by, teacher):
            raise LocalnatError(
                f"{selected_path} is not what `select {args.scored} {' '.join(selection.command_args(every=True))}` "
                "gives. "
                "Pass the flags (or the --config) the selection was made with."
            )
    where = push_selection(
        selected,
        repo_id=args.repo_id,
        to_dir=args.to_dir,
        scored=scored,
        selection_config=selection,
        source_dataset=args.source_dataset,
        private=args.private,
        overwrite=args.overwrite,
        teacher_column=args.teacher_column,
        response_column=args.response_column,
    )
    print(f"Published {len(selected)} selected rows with their card -> {where}")


def run_push_student(args: PushStudentArguments, folder: str) -> None:
    from .hub import push_student
    from .outputs import check_output

    _one_destination(args.repo_id, args.to_dir)
    if args.to_dir is not None:
        check_output(args.to_dir, "student", inputs=[folder], overwrite=args.overwrite, flag="--to_dir")
    where = push_student(
        folder,
        repo_id=args.repo_id,
        to_dir=args.to_dir,
        selection_repo=args.selection_repo,
        base_model=args.base_model,
        private=args.private,
        overwrite=args.overwrite,
    )
    print(f"Published the student {folder} with its card -> {where}")


@dataclass(frozen=True)
class Command:
    """One sub-command: the dataclasses it parses (in the order ``run`` takes them), its positional argument,
    and parser defaults that differ from the dataclasses' own (the demo scores every metric)."""

    arguments: Callable[[], tuple[type, ...]]
    run: Callable[..., None]
    help: str
    positional: str | None = None
    positional_help: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


COMMANDS: dict[str, Command] = {
    "score": Command(
        lambda: (ScoreArguments, StudentArguments, ScoringConfig),
        run_score,
        "Score rows: add the naturalness columns to every row.",
        "input",
        "Rows to score: a .jsonl, .json, .parquet or .csv file, a save_to_disk folder, or a Hub dataset id.",
    ),
    "select": Command(
        lambda: (SelectArguments, SelectionConfig),
        run_select,
        "Select the best k responses per prompt from scored rows.",
        "scored",
        "Scored rows (the output of score).",
    ),
    "rank-teachers": Command(
        lambda: (RankTeachersArguments, StudentArguments, ScoringConfig),
        run_rank_teachers,
        "Rank teachers by a score column, with CIs and P(top) (or score a pool until the top is sure: "
        "--until_confident).",
        "scored",
        "Scored rows (the output of score); with --until_confident, the pool to score.",
        defaults={"metrics": "local"},
    ),
    "grace": Command(
        lambda: (GraceArguments, StudentArguments, _grace_config()),
        run_grace,
        "GRACE: rank teachers by the student's gradients on their responses (a backward pass per response).",
        "pool",
        "The pool: prompt, response, teacher and prompt-id columns (a file, a folder or a Hub dataset id).",
    ),
    "demo": Command(
        lambda: (DemoArguments, StudentArguments, ScoringConfig),
        run_demo,
        "Score the embedded demo pool with the embedded student, end to end.",
        defaults={"metrics": "global,local,rsr"},
    ),
    "train": Command(
        lambda: (TrainArguments, StudentArguments, _reselect_config()),
        run_train,
        "Train the student on a selection that is re-made as it trains (works under accelerate launch).",
    ),
    "report": Command(
        lambda: (_report_arguments(),),
        lambda args, scored: _run_report(args, scored),
        "Write report.html and PNG figures: rankings, length bias, step profiles, step labels, selection.",
        "scored",
        "Scored rows (the output of score; --return_steps for the step sections).",
    ),
    "evaluate": Command(
        lambda: (_evaluate_arguments(), StudentArguments),
        lambda args, student: _run_evaluate(args, student),
        "Greedy-decode a benchmark with the student, check answers with math-verify, report accuracy and its CI.",
    ),
    "push-selection": Command(
        lambda: (PushSelectionArguments, SelectionConfig),
        run_push_selection,
        "Publish a selected dataset with its provenance card (to the Hub, or a folder with --to_dir).",
        "selected",
        "The selected rows (the output of select).",
    ),
    "push-student": Command(
        lambda: (PushStudentArguments,),
        run_push_student,
        "Publish a trained student folder with its model card (to the Hub, or a folder with --to_dir).",
        "folder",
        "A folder written by train (trainer.save_model).",
    ),
    "study": Command(
        lambda: importlib.import_module(".study", __package__).study_arguments(),
        lambda *parts: importlib.import_module(".study", __package__).run_study(*parts),
        "Train the student once per selection rule (arm) from one pool, evaluate each on a benchmark, compare.",
    ),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-localnat", description="Local-naturalness data selection for distillation."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Show debug logs and full tracebacks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    argv = sys.argv[1:] if argv is None else list(argv)
    for name, command in COMMANDS.items():
        if name in ("train", "study") and name not in argv:  # importing TRL costs seconds: only when training
            sub.add_parser(name, dataclass_types=[TrainArguments], help=command.help, description=command.help)
            continue
        types = list(command.arguments())
        parser_ = sub.add_parser(name, dataclass_types=types, help=command.help, description=command.help)
        if command.positional:
            # Optional here so that --config can give it; checked after the config is read.
            parser_.add_argument(command.positional, nargs="?", default=None, help=command.positional_help)
        parser_.add_argument(
            "--config",
            default=None,
            help="A YAML file of options (the flag names, with underscores); flags on the command line win.",
        )
        parser_.set_defaults(**command.defaults)
        for action in parser_._actions:  # argparse %-formats help: a literal "95% CI" would crash --help
            if action.help and "%" in action.help:
                action.help = re.sub(r"%(?!\()", "%%", action.help)
    return parser


def config_defaults(parser: argparse.ArgumentParser, command: str, path: str) -> tuple[argparse.ArgumentParser, dict]:
    """The sub-command's parser and the options a ``--config`` YAML file sets, checked against its option names."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except OSError as err:
        raise LocalnatError(f"--config {path!r}: cannot read it ({err.strerror}).") from None
    except yaml.YAMLError as err:
        raise LocalnatError(f"--config {path!r}: not valid YAML ({str(err).splitlines()[0]}).") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise LocalnatError(f"--config {path!r}: expected a mapping of option names to values.")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    known = {action.dest for action in sub._actions} - {"help", "config"}
    unknown = sorted(set(map(str, values)) - known)
    if unknown:
        raise LocalnatError(
            f"--config {path!r}: {command} has no option {', '.join(map(repr, unknown))}. Its options are: "
            f"{', '.join(sorted(known))}."
        )
    return sub, values


_USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    namespace = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if namespace.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("hf_localnat").setLevel(logging.DEBUG if namespace.verbose else logging.INFO)
    command = COMMANDS[namespace.command]
    try:
        if getattr(namespace, "config", None):
            sub, values = config_defaults(parser, namespace.command, namespace.config)
            sub.set_defaults(**values)
            namespace = parser.parse_args(argv)  # again, so that flags on the command line win
        if command.positional and getattr(namespace, command.positional) is None:
            raise LocalnatError(f"{namespace.command} needs {command.positional.upper()}: {command.positional_help}")
        args = [
            dc(**{f.name: getattr(namespace, f.name) for f in fields(dc) if f.init}) for dc in command.arguments()
        ]
        for arguments in args:
            check_numbers(arguments)
        if command.positional:
            command.run(*args, getattr(namespace, command.positional))
        else:
            command.run(*args)
    except LocalnatError as err:
        if namespace.verbose:
            raise
        print(f"hf-localnat: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # The machine said no (permissions, a full disk, a read-only mount): the user's to fix, not a bug.
        if namespace.verbose or err.errno not in _USER_OS_ERRORS:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"hf-localnat: error: {err.strerror}{where}. Fix that and run the command again.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hf-localnat: interrupted. Run the same command again to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
