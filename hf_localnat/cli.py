"""The ``hf-localnat`` command line (also ``python -m hf_localnat``).

Each sub-command is driven by one dataclass whose fields carry their own help, as in TRL's scripts. A class's
``MIN_VALUES`` bounds its numeric fields; every bound is checked before any data or model is loaded.
User mistakes print one ``hf-localnat: error: ...`` line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from transformers import HfArgumentParser

from .distributed import destroy_process_group_at_exit
from .errors import LocalnatError

logger = logging.getLogger("hf_localnat")


def parse_window(text: str | int | float) -> int | float:
    """``"4"`` -> 4, ``"0.5"`` -> 0.5; anything else is a user error."""
    if isinstance(text, int | float):
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise LocalnatError(f"--window {text!r} is not a number. Use an int >= 1 or a float in (0, 1).") from None


OVERWRITE_HELP = "Replace an existing output (a folder only if it holds what hf-localnat writes there)."


@dataclass
class ScoringArguments:
    """How responses are scored (shared by ``score`` and ``demo``)."""

    MIN_VALUES = {"min_step_chars": 0, "max_tokens_per_batch": 1, "max_response_tokens": 1}

    student: str | None = field(
        default=None,
        metadata={
            "help": "Student model: a local folder, a .gguf file, or a cached Hub id. Default: embedded SmolLM2."
        },
    )
    metrics: str = field(default="global,local", metadata={"help": "Comma-separated metrics: global, local, rsr."})
    window: str = field(
        default="4", metadata={"help": "Previous steps in a local context: an int >= 1, or a fraction in (0, 1)."}
    )
    splitter: str = field(
        default="sentence",
        metadata={"help": "Step splitter: sentence, paragraph, line, regex:<pattern> or tokens:<n>."},
    )
    min_step_chars: int = field(
        default=4, metadata={"help": "Pieces shorter than this join the step before them."}
    )
    include_prompt: bool = field(default=True, metadata={"help": "Start local contexts with the prompt (else BOS)."})
    step_aggregate: str = field(default="step_mean", metadata={"help": "step_mean or token_mean."})
    drop_first_token: bool = field(default=False, metadata={"help": "Drop each step's first token (ASLEC)."})
    return_steps: bool = field(default=False, metadata={"help": "Also write step_spans and step_logprobs."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt text."})
    response_column: str = field(default="response", metadata={"help": "Column holding the response text."})
    max_tokens_per_batch: int = field(default=16384, metadata={"help": "Padded tokens per forward pass."})
    max_response_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Responses longer than this (student tokens) get None for global and rsr. Default: whatever "
            "fits the student's context after the prompt; nothing longer than the context is ever read.",
        },
    )


@dataclass
class ScoreArguments(ScoringArguments):
    """``hf-localnat score INPUT --output OUT``: add naturalness columns to every row."""

    MIN_VALUES = {**ScoringArguments.MIN_VALUES, "limit": 1, "chunk_rows": 1}

    output: str = field(default="", metadata={"help": "Output: .jsonl, .json, .parquet, .csv, or a folder."})
    split: str = field(default="train", metadata={"help": "Split to read from a Hub dataset or data folder."})
    limit: int | None = field(default=None, metadata={"help": "Score only the first N rows."})
    chunk_rows: int = field(
        default=64, metadata={"help": "Rows per saved chunk; an interrupted run resumes per chunk."}
    )
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


@dataclass
class SelectArguments:
    """``hf-localnat select SCORED --by METRIC --group-by COLUMN --output OUT``: keep the best k per group."""

    MIN_VALUES = {"k": 1}

    by: str = field(default="local_naturalness", metadata={"help": "Score column to select by."})
    group_by: str = field(default="prompt_id", metadata={"help": "Column naming the group (the prompt)."})
    k: int = field(default=1, metadata={"help": "Responses kept per group."})
    where: str | None = field(default=None, metadata={"help": 'Row filter first, e.g. "correct == True".'})
    higher_is_better: bool | None = field(
        default=None, metadata={"help": "Override the metric's direction (naturalness: higher; rsr: lower)."}
    )
    output: str = field(default="", metadata={"help": "Output: .jsonl, .json, .parquet, .csv, or a folder."})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


@dataclass
class RankTeachersArguments:
    """``hf-localnat rank-teachers SCORED --by METRIC``: rank teachers by their mean score over prompts."""

    MIN_VALUES = {"n_bootstrap": 1}

    by: str = field(default="local_naturalness", metadata={"help": "Score column to rank by."})
    teacher_column: str = field(default="teacher", metadata={"help": "Column naming the teacher."})
    group_by: str = field(default="prompt_id", metadata={"help": "Column naming the prompt."})
    higher_is_better: bool | None = field(
        default=None, metadata={"help": "Override the metric's direction (naturalness: higher; rsr: lower)."}
    )
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the 95% CI."})
    output: str | None = field(default=None, metadata={"help": "Write the table to this .csv or .json file."})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


@dataclass
class DemoArguments(ScoringArguments):
    """``hf-localnat demo``: score the embedded demo pool, rank teachers, select, and write a dataset folder."""

    MIN_VALUES = {**ScoringArguments.MIN_VALUES, "limit_prompts": 1}

    metrics: str = field(default="global,local,rsr", metadata={"help": "Comma-separated metrics: global, local, rsr."})
    output_dir: str = field(default="localnat-demo", metadata={"help": "Where the selected dataset folder goes."})
    limit_prompts: int | None = field(default=None, metadata={"help": "Use only the first N demo prompts."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace --output_dir even if an earlier demo did not write it."}
    )


def build_scorer(args: ScoringArguments, device: torch.device | None = None):
    from .scorer import NaturalnessScorer
    from .student import load_student

    window = parse_window(args.window)
    model, tokenizer = load_student(args.student, device=device)
    return NaturalnessScorer(
        model,
        tokenizer,
        metrics=args.metrics,
        window=window,
        splitter=args.splitter,
        min_step_chars=args.min_step_chars,
        include_prompt=args.include_prompt,
        step_aggregate=args.step_aggregate,
        drop_first_token=args.drop_first_token,
        return_steps=args.return_steps,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        max_tokens_per_batch=args.max_tokens_per_batch,
        max_response_tokens=args.max_response_tokens,
    )


def check_numbers(args: object) -> None:
    """Refuse a numeric option below its bound in ``MIN_VALUES`` (``--chunk_rows 0``, ``--k 0``) before any work.

    Example:
        >>> check_numbers(SelectArguments(k=0))
        Traceback (most recent call last):
        ...
        hf_localnat.errors.LocalnatError: --k 0: use a whole number >= 1.
    """
    for name, low in getattr(type(args), "MIN_VALUES", {}).items():
        value = getattr(args, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            kind = "whole number" if isinstance(low, int) else "number"
            raise LocalnatError(f"--{name} {value}: use a {kind} >= {low}.")


def check_scoring_args(args: ScoringArguments) -> None:
    """Validate the cheap options before the student is loaded."""
    from .metrics import normalize_metrics, validate_window
    from .segmentation import get_splitter

    normalize_metrics(args.metrics)
    validate_window(parse_window(args.window))
    if not args.splitter.startswith("tokens:"):  # a token splitter needs the student's tokenizer: checked later
        get_splitter(args.splitter, min_step_chars=args.min_step_chars)


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


def _command_key(args: ScoreArguments, input_path: str) -> str:
    """What makes two ``score`` commands the same, without loading anything: the options and the input file."""
    settings = {k: v for k, v in dataclasses.asdict(args).items() if k != "overwrite"}
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


def run_score(args: ScoreArguments, input_path: str) -> None:
    from .data_io import load_rows, require_columns, require_text, write_rows
    from .distributed import main_decides
    from .outputs import RunLock, check_output, remove_stale_temporaries
    from .scorer import score_dataset

    if not args.output:
        raise LocalnatError("score needs --output OUT (.jsonl, .json, .parquet, .csv, or a folder).")
    check_scoring_args(args)
    output = Path(args.output)
    refused = None
    try:
        check_output(output, "rows", inputs=[input_path], overwrite=args.overwrite)
    except LocalnatError as err:
        if output.name in ("", ".", "..") or not output.exists():
            raise
        refused = err  # unless an earlier run of this command delivered OUT and only its cleanup was cut short
    work_dir = output.with_name(f".{output.name}.partial")
    key = _command_key(args, input_path)
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
        flags = {args.prompt_column: "--prompt-column", args.response_column: "--response-column"}
        require_columns(ds, [args.prompt_column, args.response_column], input_path, flags)
        require_text(ds, args.prompt_column, input_path, allow_none=False)
        require_text(ds, args.response_column, input_path)
        if args.limit is not None:
            ds = ds.select(range(min(args.limit, len(ds))))
        scorer = build_scorer(args, device=state.device if state is not None else None)
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


def run_select(args: SelectArguments, scored_path: str) -> None:
    from .data_io import load_rows, require_columns, write_rows
    from .outputs import check_output
    from .selection import select_responses

    if not args.output:
        raise LocalnatError("select needs --output OUT (.jsonl, .json, .parquet, .csv, or a folder).")
    check_output(args.output, "rows", inputs=[scored_path], overwrite=args.overwrite)
    ds = load_rows(scored_path)
    require_columns(ds, [args.by, args.group_by], scored_path, {args.by: "--by", args.group_by: "--group-by"})
    selected, report = select_responses(
        ds,
        by=args.by,
        group_by=args.group_by,
        k=args.k,
        where=args.where,
        higher_is_better=args.higher_is_better,
        return_report=True,
    )
    write_rows(selected, args.output, overwrite=args.overwrite, inputs=[scored_path])
    print(report.summary())
    print(f"Selected {len(selected)} rows -> {args.output}")


def run_rank_teachers(args: RankTeachersArguments, scored_path: str) -> None:
    from .data_io import load_rows, require_columns
    from .outputs import check_output
    from .selection import format_ranking, rank_teachers

    if args.output:
        if Path(args.output).suffix.lower() not in (".csv", ".json"):
            raise LocalnatError(f"--output {args.output!r}: use a .csv or .json file name.")
        check_output(args.output, "file", inputs=[scored_path], overwrite=args.overwrite)
    ds = load_rows(scored_path)
    require_columns(
        ds,
        [args.by, args.teacher_column, args.group_by],
        scored_path,
        {args.by: "--by", args.teacher_column: "--teacher-column", args.group_by: "--group-by"},
    )
    table = rank_teachers(
        ds,
        by=args.by,
        teacher_column=args.teacher_column,
        group_by=args.group_by,
        higher_is_better=args.higher_is_better,
        n_bootstrap=args.n_bootstrap,
    )
    if args.output:
        out = check_output(args.output, "file", inputs=[scored_path], overwrite=args.overwrite)
        from .data_io import atomic_file

        with atomic_file(out) as tmp:
            if out.suffix.lower() == ".csv":
                table.to_csv(tmp, index=False)
            else:
                table.to_json(tmp, orient="records", indent=2)
        print(f"Wrote the ranking of {len(table)} teachers -> {out}")
    else:
        print(format_ranking(table))


def run_demo(args: DemoArguments) -> None:
    from .demo import run_demo as demo

    check_scoring_args(args)
    demo(args)


@dataclass
class TrainArguments:
    """``hf-localnat train --pool POOL --student PATH --output-dir OUT``: the data side of training."""

    pool: str = field(default="", metadata={"help": "Candidate pool: a data file, save_to_disk folder or Hub id."})
    student: str | None = field(default=None, metadata={"help": "Student to train (default: embedded SmolLM2)."})
    split: str = field(default="train", metadata={"help": "Split to read from a Hub dataset or data folder."})
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


def run_train(args: TrainArguments, config) -> None:
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
    inputs = [args.pool, args.student]
    if resume:  # training continues inside the folder and deletes nothing: only where it is matters
        check_location(output_dir, inputs, flag="--output_dir")
    else:
        check_output(output_dir, "training", inputs=inputs, overwrite=True, flag="--output_dir")
    if not config.splitter.startswith("tokens:"):  # a token splitter needs the tokenizer: checked when it loads
        get_splitter(config.splitter)
    pool = load_rows(args.pool, split=args.split)
    columns = [config.prompt_column, config.response_column, config.group_by]
    flags = {
        config.prompt_column: "--prompt-column",
        config.response_column: "--response-column",
        config.group_by: "--group-by",
    }
    require_columns(pool, columns, args.pool, flags)
    require_text(pool, config.prompt_column, args.pool, allow_none=False)
    require_text(pool, config.response_column, args.pool)
    # The trainer places the model; load on CPU in float32 and let accelerate move it.
    model, tokenizer = load_student(args.student, device="cpu", dtype="float32")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    get_splitter(config.splitter, tokenizer=tokenizer)
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
class PushSelectionArguments:
    """``hf-localnat push-selection SELECTED --repo-id ID | --to-dir DIR``: publish a selection with its card."""

    MIN_VALUES = {"k": 1}

    repo_id: str | None = field(default=None, metadata={"help": "Upload to this Hub dataset repo (NAMESPACE/NAME)."})
    to_dir: str | None = field(default=None, metadata={"help": "Write the folder that would be uploaded here."})
    scored: str | None = field(
        default=None,
        metadata={"help": "The scored pool SELECTED came from: adds rankings, the histogram and row counts."},
    )
    by: str = field(default="local_naturalness", metadata={"help": "Score column the selection used."})
    group_by: str = field(default="prompt_id", metadata={"help": "Column naming the group (the prompt)."})
    k: int = field(default=1, metadata={"help": "Responses kept per group."})
    where: str | None = field(default=None, metadata={"help": "The row filter the selection used, if any."})
    higher_is_better: bool | None = field(
        default=None, metadata={"help": "The direction the selection used, if it overrode the metric's own."}
    )
    source_dataset: str | None = field(
        default=None, metadata={"help": "Name (Hub id or path) of the pool the scores came from, for the card."}
    )
    teacher_column: str = field(default="teacher", metadata={"help": "Column naming the teacher."})
    response_column: str = field(default="response", metadata={"help": "Column holding the response."})
    private: bool = field(default=True, metadata={"help": "Create the Hub repo as private."})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


@dataclass
class PushStudentArguments:
    """``hf-localnat push-student FOLDER --repo-id ID | --to-dir DIR``: publish a trained student with its card."""

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


def _run_evaluate(args) -> None:
    from .evaluation import run_evaluate

    run_evaluate(args)


def _report_arguments() -> type:
    from .report import ReportArguments

    return ReportArguments


def _run_report(args, scored_path: str) -> None:
    from .report import run_report

    run_report(args, scored_path)


def _one_destination(repo_id: str | None, to_dir: str | None) -> None:
    if (repo_id is None) == (to_dir is None):
        raise LocalnatError("give exactly one of --repo-id ID (upload to the Hub) or --to-dir DIR (a local folder).")


def run_push_selection(args: PushSelectionArguments, selected_path: str) -> None:
    from .data_io import load_rows, require_columns
    from .hub import SelectionConfig, push_selection, selected_ids_sha256
    from .selection import select_responses

    _one_destination(args.repo_id, args.to_dir)
    if args.to_dir is not None:
        from .outputs import check_output

        check_output(args.to_dir, "selection", inputs=[selected_path, args.scored], overwrite=args.overwrite,
                     flag="--to_dir")  # fmt: skip
    selected = load_rows(selected_path)
    require_columns(selected, [args.group_by], selected_path, {args.group_by: "--group-by"})
    config = SelectionConfig(
        by=args.by, group_by=args.group_by, k=args.k, where=args.where, higher_is_better=args.higher_is_better
    )
    scored = None
    if args.scored:
        scored = load_rows(args.scored)
        require_columns(scored, [args.by, args.group_by], args.scored, {args.by: "--by", args.group_by: "--group-by"})
        # The card claims SELECTED = select(SCORED, these flags): check it rather than publish a wrong claim.
        again = select_responses(scored, **dataclasses.asdict(config))
        # Compare on the teacher only when both files carry it.
        teacher = args.teacher_column if args.teacher_column in selected.column_names else "\0no-teacher"
        if selected_ids_sha256(again, args.group_by, teacher) != selected_ids_sha256(selected, args.group_by, teacher):
            raise LocalnatError(
                f"{selected_path} is not what `select {args.scored}` gives with --by {args.by} --group-by "
                f"{args.group_by} --k {args.k}" + (f" --where {args.where!r}" if args.where else "") +
                ". Pass the flags the selection was made with."
            )
    where = push_selection(
        selected,
        repo_id=args.repo_id,
        to_dir=args.to_dir,
        scored=scored,
        selection_config=config,
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


COMMANDS: dict[str, tuple[Callable[[], tuple[type, ...]], str | None, Callable, str]] = {
    "score": (
        lambda: (ScoreArguments,),
        "input",
        run_score,
        "Score rows: INPUT is a data file, a save_to_disk folder or a Hub id.",
    ),
    "select": (
        lambda: (SelectArguments,),
        "scored",
        run_select,
        "Select the best k responses per prompt from scored rows.",
    ),
    "rank-teachers": (
        lambda: (RankTeachersArguments,),
        "scored",
        run_rank_teachers,
        "Rank teachers by a score column.",
    ),
    "demo": (
        lambda: (DemoArguments,),
        None,
        run_demo,
        "Score the embedded demo pool with the embedded student, end to end.",
    ),
    "train": (
        lambda: (TrainArguments, _reselect_config()),
        None,
        run_train,
        "Train the student on a selection that is re-made as it trains (works under accelerate launch).",
    ),
    "report": (
        lambda: (_report_arguments(),),
        "scored",
        lambda args, scored: _run_report(args, scored),
        "Write report.html and PNG figures: rankings, length bias, step profiles, step labels, selection.",
    ),
    "evaluate": (
        lambda: (_evaluate_arguments(),),
        None,
        lambda args: _run_evaluate(args),
        "Greedy-decode a benchmark with the student, check answers with math-verify, report accuracy and its CI.",
    ),
    "push-selection": (
        lambda: (PushSelectionArguments,),
        "selected",
        run_push_selection,
        "Publish a selected dataset with its provenance card (to the Hub, or a folder with --to-dir).",
    ),
    "push-student": (
        lambda: (PushStudentArguments,),
        "folder",
        run_push_student,
        "Publish a trained student folder with its model card (to the Hub, or a folder with --to-dir).",
    ),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-localnat", description="Local-naturalness data selection for distillation."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Show debug logs and full tracebacks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    argv = sys.argv[1:] if argv is None else list(argv)
    for name, (dataclass_types, positional, _, help_text) in COMMANDS.items():
        if name == "train" and "train" not in argv:  # importing TRL costs seconds: only when training
            sub.add_parser(name, dataclass_types=[TrainArguments], help=help_text, description=help_text)
            continue
        command = sub.add_parser(name, dataclass_types=list(dataclass_types()), help=help_text, description=help_text)
        if positional:
            command.add_argument(positional, help=help_text)
        for action in command._actions:  # argparse %-formats help: a literal "95% CI" would crash --help
            if action.help and "%" in action.help:
                action.help = re.sub(r"%(?!\()", "%%", action.help)
    return parser


_USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    namespace = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if namespace.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("hf_localnat").setLevel(logging.DEBUG if namespace.verbose else logging.INFO)
    dataclass_types, positional, run, _ = COMMANDS[namespace.command]
    try:
        args = [dc(**{f.name: getattr(namespace, f.name) for f in fields(dc) if f.init}) for dc in dataclass_types()]
        for arguments in args:
            check_numbers(arguments)
        if positional:
            run(*args, getattr(namespace, positional))
        else:
            run(*args)
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
