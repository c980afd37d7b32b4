"""``ReselectCallback``: re-score a teacher pool with the current student and swap the training selection.

The trainer trains on a fixed set of *slots* (k per prompt), so the dataloader length, the optimizer and
the LR schedule never change. Each slot serves whichever pool row is currently selected for it: swapping
the selection is swapping an index table that the training dataset's transform reads on every fetch.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_localnat.distributed import destroy_process_group_at_exit
from hf_localnat.errors import LocalnatError
from hf_localnat.metrics import prompt_ids
from hf_localnat.scorer import NaturalnessScorer, scoring_provenance
from hf_localnat.selection import is_higher_better

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


class ReselectCallback(TrainerCallback):
    """Select one response per prompt with the starting student, then reselect with the current one.

    Args:
        pool: candidate rows (several teachers' responses per prompt), scored or not.
        tokenizer: the student's tokenizer (training examples use its chat template, as the scorer does).
        by: ``"local_naturalness"``, ``"global_naturalness"`` or ``"rsr"``.
        every_steps: reselect every N optimizer steps (None: never, unless ``every="epoch"``).
        every: ``"steps"`` or ``"epoch"``.
        fraction: share of prompts re-scored per round (the others keep their last score).
        group_by, k, teacher_column, prompt_column, response_column: the pool's layout and how many per prompt.
        max_length: truncate training examples to this many tokens.
        scorer_kwargs: any other :class:`NaturalnessScorer` option (window, splitter, include_prompt, ...).

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
        by: str = "local_naturalness",
        every_steps: int | None = None,
        every: str = "steps",
        fraction: float = 1.0,
        group_by: str = "prompt_id",
        k: int = 1,
        teacher_column: str = "teacher",
        prompt_column: str = "prompt",
        response_column: str = "response",
        max_length: int | None = None,
        seed: int = 0,
        **scorer_kwargs: Any,
    ) -> None:
        if every not in ("steps", "epoch"):
            raise LocalnatError(f"reselect_every={every!r}: use 'steps' or 'epoch'.")
        if not 0 < fraction <= 1:
            raise LocalnatError(f"reselect_fraction={fraction}: use a number in (0, 1].")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise LocalnatError(f"k={k!r}: the number of responses selected per prompt must be an int >= 1.")
        for column in (group_by, prompt_column, response_column):
            if column not in pool.column_names:
                raise LocalnatError(
                    f"candidate pool: column {column!r} not found (columns: {', '.join(pool.column_names)})."
                )
        self.pool = pool
        self.tokenizer = tokenizer
        self.by = by
        self.metric = {"local_naturalness": "local", "global_naturalness": "global", "rsr": "rsr"}.get(by)
        if self.metric is None:
            raise LocalnatError(f"by={by!r}: use local_naturalness, global_naturalness or rsr.")
        self.higher_is_better = is_higher_better(by)
        self.every_steps, self.every, self.fraction = every_steps, every, fraction
        self.group_by, self.k, self.teacher_column = group_by, k, teacher_column
        self.prompt_column, self.response_column = prompt_column, response_column
        self.max_length = max_length
        self.scorer_kwargs = scorer_kwargs
        self._seed = seed
        self._trainer = None
        self._train_started = 0.0
        self._round_seconds = 0.0
        self._examples: dict[int, dict[str, list[int]]] = {}

        groups = pool[group_by]
        responses = pool[response_column]
        self.rows_by_group: dict[Any, list[int]] = {}
        ungrouped = 0
        for row, (group, response) in enumerate(zip(groups, responses, strict=True)):
            if group is None:  # no prompt to compete for: it cannot be selected against the others
                ungrouped += 1
            elif response and response.strip():  # an empty (or whitespace) response can never be selected
                self.rows_by_group.setdefault(group, []).append(row)
        if ungrouped:
            logger.warning("%d pool row(s) have no %r and are left out of the selection.", ungrouped, group_by)
        if not self.rows_by_group:
            raise LocalnatError(f"candidate pool: no row has both a {group_by!r} and a non-empty response.")
        slots = [[group, rank] for group in self.rows_by_group for rank in range(k)]
        # Until the first round (at on_train_begin) a slot serves its group's first candidates, so the
        # trainer can peek at an example while it is built.
        provisional = [self.rows_by_group[g][min(r, len(self.rows_by_group[g]) - 1)] for g, r in slots]
        self.state = SelectionState(slots=slots, selected=provisional, scores=[None] * len(pool))
        self._preset_scores = pool[by] if by in pool.column_names else None
        self.train_dataset = datasets.Dataset.from_dict({"slot": list(range(len(slots)))}).with_transform(self._fetch)

    # -- the training view -------------------------------------------------------------------------------

    def _fetch(self, batch: dict[str, list[int]]) -> dict[str, list[list[int]]]:
        examples = [self.example(self.state.selected[s]) for s in batch["slot"]]
        return {"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples]}

    def example(self, row: int) -> dict[str, list[int]]:
        """The training example of a pool row: chat-formatted prompt (masked with -100) + response + EOS."""
        if row not in self._examples:
            record = self.pool[row]
            prompt = prompt_ids(self.tokenizer, record[self.prompt_column])
            response = list(self.tokenizer(record[self.response_column], add_special_tokens=False)["input_ids"])
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
            and self._scores_match(model)
            and all(self._preset_scores[r] is not None for rows in self.rows_by_group.values() for r in rows)
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
            scorer = NaturalnessScorer(
                unwrapped,
                self.tokenizer,
                metrics=(self.metric,),
                prompt_column=self.prompt_column,
                response_column=self.response_column,
                **self.scorer_kwargs,
            )
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
        shares = Counter(teachers[r] for r in new_selected) if teachers is not None else Counter()
        selected_scores = [self.state.scores[r] for r in new_selected if self.state.scores[r] is not None]
        record = {
            "round": len(self.state.history),
            "reason": "initial" if first else reason,
            "step": state.global_step if state is not None else 0,
            "epoch": state.epoch if state is not None else 0.0,
            "rescored_prompts": len(todo),
            "changed_prompts": 0 if first else changed_prompts,
            "changed_slots": 0 if first else changed,
            "teacher_shares": {t: n / len(new_selected) for t, n in sorted(shares.items())},
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
        """
        provenance = scoring_provenance(self.pool)
        source = getattr(getattr(model, "module", model), "hf_localnat_source", None)
        if provenance is None or source is None:
            return False
        try:
            mine = NaturalnessScorer(student=source.student, metrics=(self.metric,), **self.scorer_kwargs).config
        except LocalnatError:  # e.g. a tokens:<n> splitter, which cannot be described without a tokenizer
            return False
        theirs = provenance["scorer"]
        ignored = ("metrics", "return_steps", "prompt_column", "response_column")
        same = all(theirs.get(key) == value for key, value in mine.items() if key not in ignored)
        return same and self.metric in theirs.get("metrics", []) and provenance.get("student") == source.student

    def _select(self) -> list[int]:
        """Top-k rows per prompt by score; unscored rows rank last; ties go to the earlier row."""
        best: dict[Any, list[int]] = {}
        sign = -1.0 if self.higher_is_better else 1.0
        for group, rows in self.rows_by_group.items():

            def key(r: int) -> tuple[int, float, int]:
                value = self.state.scores[r]
                return (1, 0.0, r) if value is None else (0, sign * value, r)

            best[group] = sorted(rows, key=key)[: self.k]
        out = []
        for group, rank in self.state.slots:
            rows = best[group]
            out.append(rows[rank] if rank < len(rows) else rows[-1])
        return out

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
            and all(row in self.rows_by_group[slot[0]] for slot, row in zip(saved.slots, saved.selected, strict=True))
        )
        if not same_pool:
            raise LocalnatError(
                f"{checkpoint}: its selection was made on another candidate pool. Resume with the same pool."
            )
        self.state = saved
        return True
