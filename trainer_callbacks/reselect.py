"""``ReselectCallback``: re-score a teacher pool with the current student and swap the training selection.

The trainer trains on a fixed set of *slots* (k per prompt), so the dataloader length, the optimizer and
the LR schedule never change. Each slot serves whichever pool row is currently selected for it: swapping
the selection is swapping an index table that the training dataset's transform reads on every fetch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_localnat.distributed import destroy_process_group_at_exit
from hf_localnat.errors import LocalnatError
from hf_localnat.metrics import (
    METRIC_COLUMNS,
    POOL_METRICS,
    ScoringConfig,
    encode_prompt,
    prompt_ids,
    prompt_text,
    response_view,
)
from hf_localnat.scorer import NaturalnessScorer, scoring_provenance
from hf_localnat.selection import (
    SelectionConfig,
    compile_where,
    group_codes,
    is_missing,
    top_k_per_group,
    where_mask,
)

logger = logging.getLogger(__name__)

STATE_FILE = "hf_localnat_selection.json"


def log_from_callback(trainer: Any, logs: dict[str, Any]) -> None:
    """Report values through a trainer's loggers from inside a callback, without disturbing its own logging.

    ``Trainer.log`` clears ``control.should_log``: called from ``on_step_end`` it would drop the loss log due at
    this step. ``transformers.Trainer.log`` is called directly because subclasses such as TRL's
    ``SFTTrainer.log`` fold (and reset) their accumulated training metrics into whatever is logged.
    """
    from transformers import Trainer

    control = getattr(trainer, "control", None)
    should_log = control.should_log if control is not None else None
    if isinstance(trainer, Trainer):
        Trainer.log(trainer, logs)
    else:
        trainer.log(logs)
    if control is not None:
        trainer.control.should_log = should_log


@dataclass
class SelectionState:
    """What is selected now and how it got there; saved with every checkpoint.

    ``slots[i]`` is ``[group_key, rank]``; ``selected[i]`` the pool row that slot serves; ``scores[row]`` the
    latest score of every pool row (None until scored); ``history`` one record per selection round.
    """

    slots: list[list[Any]]
    selected: list[int]
    scores: list[float | None]
    history: list[dict[str, Any]] = field(default_factory=list)

    def save(self, folder: str | Path) -> None:
        path = Path(folder) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @classmethod
    def load(cls, folder: str | Path) -> SelectionState | None:
        path = Path(folder) / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None


EMPTY_SLOT = -1  # a slot whose prompt has fewer scored candidates than slots this round: it trains on nothing


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword options as (ScoringConfig fields, SelectionConfig fields); any other name is a user error."""
    scoring_names = {f.name for f in dataclasses.fields(ScoringConfig)}
    selection_names = {f.name for f in dataclasses.fields(SelectionConfig)}
    unknown = sorted(set(options) - scoring_names - selection_names)
    if unknown:
        raise LocalnatError(
            f"unknown option(s) {', '.join(unknown)}: use ScoringConfig or SelectionConfig fields "
            f"({', '.join(sorted(scoring_names | selection_names))})."
        )
    return (
        {k: v for k, v in options.items() if k in scoring_names},
        {k: v for k, v in options.items() if k in selection_names},
    )


class ReselectCallback(TrainerCallback):
    """Select the best responses per prompt with the starting student, then reselect with the current one.

    Args:
        pool: candidate rows (several teachers' responses per prompt), scored or not.
        tokenizer: the student's tokenizer (training examples use its chat template, as the scorer does).
        scoring: a :class:`ScoringConfig`; its metric is the one ``selection.by`` names.
        selection: a :class:`SelectionConfig` (by, group_by, k, where, higher_is_better): each round selects
            exactly as ``select_responses`` does, through the same ``top_k_per_group``.
        every_steps: reselect every N optimizer steps (None: never, unless ``every="epoch"``).
        every: ``"steps"`` or ``"epoch"``.
        fraction: share of prompts re-scored per round (the others keep their last score).
        teacher_column: the pool column naming the teacher (for the round records).
        max_length: truncate training examples to this many tokens.
        **options: any ScoringConfig or SelectionConfig field, on top of ``scoring`` and ``selection``.

    A prompt gets ``min(k, candidates)`` slots, its candidates being the rows with a ``group_by`` key and a
    non-empty response that pass ``where``. An unscored row is never selected: a slot left without a scored row in
    a round is empty and trains on nothing (its labels are all masked), and the round record counts it.

    Use with any ``transformers.Trainer``: pass ``callback.train_dataset`` as the training set, add the
    callback, and call ``callback.attach(trainer)`` so rounds are logged through the trainer's loggers.
    There, the batches the dataloader already built when a round ends (one; more with dataloader workers)
    still serve the previous selection; ``ReselectingSFTTrainer`` rebuilds such batches.

    Example:
        >>> cb = ReselectCallback(pool, tokenizer, every_steps=50, window=4)  # doctest: +SKIP
        >>> trainer = Trainer(model, args, train_dataset=cb.train_dataset, callbacks=[cb])  # doctest: +SKIP
        >>> cb.attach(trainer); trainer.train()  # doctest: +SKIP
    """

    def __init__(
        self,
        pool: datasets.Dataset,
        tokenizer: PreTrainedTokenizerBase,
        *,
        scoring: ScoringConfig | None = None,
        selection: SelectionConfig | None = None,
        every_steps: int | None = None,
        every: str = "steps",
        fraction: float = 1.0,
        teacher_column: str = "teacher",
        max_length: int | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        if every not in ("steps", "epoch"):
            raise LocalnatError(f"reselect_every={every!r}: use 'steps' or 'epoch'.")
        if not 0 < fraction <= 1:
            raise LocalnatError(f"reselect_fraction={fraction}: use a number in (0, 1].")
        scoring_options, selection_options = split_options(options)
        self.selection = dataclasses.replace(selection or SelectionConfig(), **selection_options)
        # The one metric this selection needs: the column `by` names (local_naturalness -> local).
        row_metrics = [c for m, c in METRIC_COLUMNS.items() if m not in POOL_METRICS]
        if self.selection.by not in row_metrics:
            why = " (casl is fitted over the whole pool, and a round re-scores part of it)" if self.selection.by in (
                METRIC_COLUMNS[m] for m in POOL_METRICS
            ) else ""  # fmt: skip
            raise LocalnatError(f"by={self.selection.by!r}{why}: use {', '.join(row_metrics)}.")
        scoring_options["metrics"] = self.selection.by
        self.scoring = dataclasses.replace(scoring or ScoringConfig(), **scoring_options)
        self.higher_is_better = self.selection.is_higher_better()
        group_by = self.selection.group_by
        prompt_column, response_column = self.scoring.prompt_column, self.scoring.response_column
        for column in (group_by, prompt_column, response_column):
            if column not in pool.column_names:
                raise LocalnatError(
                    f"candidate pool: column {column!r} not found (columns: {', '.join(pool.column_names)})."
                )
        self.pool = pool
        self.tokenizer = tokenizer
        self.by = self.selection.by
        self.every_steps, self.every, self.fraction = every_steps, every, fraction
        self.group_by, self.k, self.teacher_column = group_by, self.selection.k, teacher_column
        self.prompt_column, self.response_column = prompt_column, response_column
        self.max_length = max_length
        self._seed = seed
        self._trainer = None
        self._train_started = 0.0
        self._round_seconds = 0.0
        self._examples: dict[int, dict[str, list[int]]] = {}

        # Candidates: a prompt to compete for, something to score, and the where filter passed. A filter on the
        # score itself (`where="local_naturalness > -2"`) is applied in every round, to that round's scores.
        groups = pool[group_by]
        responses = pool[response_column]
        grouped = np.array([not is_missing(g) for g in groups], dtype=bool)
        eligible = grouped & np.array([bool(r and r.strip()) for r in responses], dtype=bool)
        if (~grouped).any():
            ungrouped = int((~grouped).sum())
            logger.warning("%d pool row(s) have no %r and are left out of the selection.", ungrouped, group_by)
        predicate = compile_where(self.selection.where)
        self._where_on_score = predicate is not None and self.by in getattr(predicate, "columns", [])
        if not self._where_on_score:
            passed = where_mask(pool, self.selection.where)
            if passed is not None:
                eligible &= passed
        self.codes, group_keys = group_codes(groups, group_by)
        self._code_of = {key: code for code, key in enumerate(group_keys)}
        self.eligible = eligible
        self.rows_by_group: dict[Any, list[int]] = {}
        for row in np.flatnonzero(eligible).tolist():
            self.rows_by_group.setdefault(groups[row], []).append(row)
        if not self.rows_by_group:
            raise LocalnatError(
                f"candidate pool: no row has a {group_by!r}, a non-empty response"
                + (f" and passes where={self.selection.where!r}." if self.selection.where else ".")
            )
        # k slots per prompt, or fewer when the prompt has fewer candidates: a response is never served twice.
        slots = [[group, rank] for group, rows in self.rows_by_group.items() for rank in range(min(self.k, len(rows)))]
        # Until the first round (at on_train_begin) a slot serves its group's first candidates, so the
        # trainer can peek at an example while it is built.
        provisional = [self.rows_by_group[g][r] for g, r in slots]
        self.state = SelectionState(slots=slots, selected=provisional, scores=[None] * len(pool))
        self._preset_scores = pool[self.by] if self.by in pool.column_names else None
        self.train_dataset = datasets.Dataset.from_dict({"slot": list(range(len(slots)))}).with_transform(self._fetch)

    # -- the training view -------------------------------------------------------------------------------

    def _fetch(self, batch: dict[str, list[int]]) -> dict[str, list[list[int]]]:
        examples = [self.slot_example(s) for s in batch["slot"]]
        return {"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples]}

    def slot_example(self, slot: int) -> dict[str, list[int]]:
        """The training example a slot serves now: its selected row, or a fully masked one if it is empty."""
        row = self.state.selected[slot]
        if row != EMPTY_SLOT:
            return self.example(row)
        first = self.rows_by_group[self.state.slots[slot][0]][0]
        kwargs = self.scoring.template_kwargs
        prompt = prompt_ids(self.tokenizer, self.pool[first][self.prompt_column], kwargs)[: self.max_length]
        return {"input_ids": prompt, "labels": [-100] * len(prompt)}

    def cap_length(self, limit: int) -> None:
        """Cut training examples at ``limit`` tokens from now on (the student's context), dropping any built longer."""
        self.max_length = limit
        self._examples.clear()

    def example(self, row: int) -> dict[str, list[int]]:
        """The training example of a pool row: chat-formatted prompt (masked with -100) + response + EOS.

        It is built as the scorer reads the row (the same template arguments, the same reasoning-tag rule), so the
        student trains on exactly what it scored.
        """
        if row not in self._examples:
            record = self.pool[row]
            kwargs = self.scoring.template_kwargs
            text = prompt_text(self.tokenizer, record[self.prompt_column], kwargs)
            prompt = encode_prompt(self.tokenizer, text)
            view = response_view(text, record[self.response_column], self.scoring)
            response = list(self.tokenizer(view.text, add_special_tokens=False)["input_ids"])
            if self.tokenizer.eos_token_id is not None:
                response.append(self.tokenizer.eos_token_id)
            input_ids = (prompt + response)[: self.max_length]
            labels = ([-100] * len(prompt) + response)[: self.max_length]
            self._examples[row] = {"input_ids": input_ids, "labels": labels}
        return self._examples[row]

    # -- selection rounds --------------------------------------------------------------------------------

    def attach(self, trainer) -> ReselectCallback:
        """Log rounds through ``trainer.log`` (and so every logger the trainer reports to)."""
        self._trainer = trainer
        return self

    def run_round(self, model, state: TrainerState | None = None, reason: str = "step") -> dict[str, Any]:
        """Score (a fraction of) the pool with ``model`` and swap in the new selection; returns the round record."""
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list, gather_object

        started = time.perf_counter()
        dist = PartialState()
        if dist.num_processes > 1:
            destroy_process_group_at_exit()
        groups = list(self.rows_by_group)
        first = not self.state.history
        if (
            first
            and self._preset_scores is not None
            and self._scores_match(model)  # then a None there is what scoring would give again (too long, ...)
        ):
            todo: list[Any] = []
            self.state.scores = list(self._preset_scores)
        elif first or self.fraction >= 1:
            todo = groups
        else:
            # Seeded by the round number, not one running generator: a run resumed from a checkpoint
            # re-scores the same prompts in its later rounds as the uninterrupted run would.
            rng = random.Random(self._seed * 1_000_003 + len(self.state.history))
            todo = rng.sample(groups, max(1, round(self.fraction * len(groups))))
        mine = todo[dist.process_index :: dist.num_processes]
        rows = [r for g in mine for r in self.rows_by_group[g]]
        scored: list[tuple[int, float | None]] = []
        if rows:
            unwrapped = getattr(model, "module", model)
            scorer = NaturalnessScorer(unwrapped, self.tokenizer, self.scoring)
            subset = self.pool.select(rows)
            values = scorer.score(subset[self.prompt_column], subset[self.response_column])[self.by]
            scored = list(zip(rows, values, strict=True))
        if dist.num_processes > 1:
            scored = gather_object(scored)
        for row, value in scored:
            self.state.scores[row] = value

        payload = [None]
        if dist.is_main_process:
            payload = [self._select()]
        if dist.num_processes > 1:
            broadcast_object_list(payload)  # one selection, made once, identical on every rank
        new_selected = payload[0]
        changed = sum(a != b for a, b in zip(self.state.selected, new_selected, strict=True))
        changed_prompts = len(
            {
                self.state.slots[i][0]
                for i, (a, b) in enumerate(zip(self.state.selected, new_selected, strict=True))
                if a != b
            }
        )
        self.state.selected = new_selected
        seconds = time.perf_counter() - started
        self._round_seconds += seconds
        elapsed = time.perf_counter() - self._train_started if self._train_started else seconds
        teachers = self.pool[self.teacher_column] if self.teacher_column in self.pool.column_names else None
        served = [r for r in new_selected if r != EMPTY_SLOT]
        shares = Counter(teachers[r] for r in served) if teachers is not None else Counter()
        selected_scores = [self.state.scores[r] for r in served if self.state.scores[r] is not None]
        empty = len(new_selected) - len(served)
        if empty:
            logger.warning(
                "%d slot(s) have no scored candidate this round and train on nothing (their prompts have fewer "
                "scored responses than slots).",
                empty,
            )
        record = {
            "round": len(self.state.history),
            "reason": "initial" if first else reason,
            "step": state.global_step if state is not None else 0,
            "epoch": state.epoch if state is not None else 0.0,
            "rescored_prompts": len(todo),
            "changed_prompts": 0 if first else changed_prompts,
            "changed_slots": 0 if first else changed,
            "teacher_shares": {t: n / max(len(served), 1) for t, n in sorted(shares.items())},
            "empty_slots": empty,
            "mean_selected_score": sum(selected_scores) / len(selected_scores) if selected_scores else None,
            "seconds": seconds,
            "share_of_training_time": self._round_seconds / max(elapsed, 1e-9),
        }
        self.state.history.append(record)
        if self._trainer is not None:
            logs = {f"reselect/{k}": v for k, v in record.items() if isinstance(v, int | float) and v is not None}
            logs.update({f"reselect/share/{t}": v for t, v in record["teacher_shares"].items()})
            log_from_callback(self._trainer, logs)
        logger.info(
            "Selection round %d: %d prompts changed, %.1f s", record["round"], record["changed_prompts"], seconds
        )
        return record

    def _scores_match(self, model) -> bool:
        """Whether the pool's score column was made by this student with this scoring config.

        ``score_dataset`` (the CLI's ``score``) records both in the dataset info; anything else is re-scored.
        Options that do not change a score (the batch size, the columns, other metrics) may differ.
        """
        provenance = scoring_provenance(self.pool)
        source = getattr(getattr(model, "module", model), "hf_localnat_source", None)
        if provenance is None or source is None:
            return False
        if provenance.get("student") != source.student:
            logger.info("The pool was scored by %s, not by this student: re-scoring it.", provenance.get("student"))
            return False
        recorded = provenance["scorer"]
        try:  # options an older hf_localnat did not record had their defaults then
            theirs = ScoringConfig.from_dict({**recorded, "metrics": self.scoring.metrics}).to_dict()
        except LocalnatError:  # e.g. a Python splitter, which cannot be compared
            return False
        mine = self.scoring.to_dict()
        ignored = ("metrics", "return_steps", "prompt_column", "response_column", "max_tokens_per_batch")
        differ = [key for key, value in mine.items() if key not in ignored and theirs.get(key) != value]
        if differ or self.scoring.metric_names[0] not in recorded.get("metrics", []):
            shown = ", ".join(f"{key} {theirs.get(key)!r} (here {mine[key]!r})" for key in differ) or "another metric"
            logger.info("The pool's %s was scored with other settings (%s): re-scoring it.", self.by, shown)
            return False
        logger.info(
            "Reusing the pool's %s scores: made by %s with these scoring settings, so the first round scores nothing.",
            self.by,
            source.student,
        )
        return True

    def _select(self) -> list[int]:
        """The selection of this round, made as ``select_responses`` makes it (:func:`top_k_per_group`)."""
        scores = np.array([np.nan if v is None else v for v in self.state.scores], dtype=np.float64)
        eligible = self.eligible
        if self._where_on_score:  # the filter reads this round's scores, as select_responses reads the column
            columns = [c for c in compile_where(self.selection.where).columns if c != self.by]
            values = {c: self.pool[c] for c in columns} | {self.by: list(self.state.scores)}
            view = datasets.Dataset.from_dict(values)
            eligible = eligible & where_mask(view, self.selection.where)
        rows, ranks = top_k_per_group(scores, self.codes, eligible, self.k, self.higher_is_better)
        chosen = {(int(self.codes[row]), int(rank) - 1): int(row) for row, rank in zip(rows, ranks, strict=True)}
        return [chosen.get((self._code_of[group], rank), EMPTY_SLOT) for group, rank in self.state.slots]

    # -- trainer events ----------------------------------------------------------------------------------

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._train_started = time.perf_counter()
        if not self.state.history:
            self.run_round(kwargs["model"], state, reason="initial")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.every == "steps" and self.every_steps and state.global_step % self.every_steps == 0:
            if state.global_step < state.max_steps:  # a round after the last step would train on nothing
                self.run_round(kwargs["model"], state, reason="step")

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.every == "epoch" and state.global_step < state.max_steps:
            self.run_round(kwargs["model"], state, reason="epoch")

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            self.state.save(folder)

    def restore(self, checkpoint: str | Path) -> bool:
        """Continue the selection saved in a checkpoint folder; returns False when it holds none."""
        saved = SelectionState.load(checkpoint)
        if saved is None:
            return False
        # The same prompts with other rows (a teacher added or dropped) would point slots at rows of other
        # prompts or past the pool's end: the row count must match, and each saved row belong to its slot's prompt.
        same_pool = (
            [list(s) for s in saved.slots] == [list(s) for s in self.state.slots]
            and len(saved.scores) == len(self.pool)
            and all(
                row == EMPTY_SLOT or row in self.rows_by_group[slot[0]]
                for slot, row in zip(saved.slots, saved.selected, strict=True)
            )
        )
        if not same_pool:
            raise LocalnatError(
                f"{checkpoint}: its selection has {len(saved.slots)} slots over {len(saved.scores)} rows, where this "
                f"pool and k give {len(self.state.slots)} over {len(self.pool)}: it was made on another candidate "
                "pool (or with another k, where, or an earlier hf_localnat). Resume with the same pool and options."
            )
        self.state = saved
        return True
