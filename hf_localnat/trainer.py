"""``ReselectingSFTTrainer``: TRL's SFTTrainer on a selection that is re-made with the student as it trains.

Built on ``trainer_callbacks``: a :class:`ReselectCallback` owns the selection and the training view, a
:class:`SelectionHistoryCallback` writes ``output_dir/selection_history.jsonl``. The trainer adds the
config, checkpoint restore, and completion-only loss through labels that mask the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate.utils import send_to_device
from huggingface_hub import ModelCard
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from trainer_callbacks import ReselectCallback, SelectionHistoryCallback
from trainer_callbacks.history import HISTORY_FILE
from trainer_callbacks.reselect import EMPTY_SLOT

from .errors import LocalnatError
from .hub import TRAINING_ARGS_FILE, student_base_model, student_card, training_args_summary
from .metrics import ScoringConfig, with_fields_of
from .selection import SelectionConfig
from .student import context_length

logger = logging.getLogger(__name__)
SLOT_KEY, ROW_KEY = "reselect_slot", "reselect_row"


class _SlotCollator:
    """The trainer's collator, plus which slot each example serves and which pool row it was built from."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples or SLOT_KEY not in examples[0]:
            return self.collate(examples)
        batch = self.collate([{k: v for k, v in e.items() if k not in (SLOT_KEY, ROW_KEY)} for e in examples])
        batch[SLOT_KEY] = torch.tensor([e[SLOT_KEY] for e in examples])
        batch[ROW_KEY] = torch.tensor([e[ROW_KEY] for e in examples])
        return batch


@dataclass
@with_fields_of(ScoringConfig, SelectionConfig, skip=("metrics", "return_steps"))
class ReselectConfig(SFTConfig):
    """``SFTConfig`` plus how the training selection is made and re-made.

    It holds every :class:`ScoringConfig` field (the metric is the one ``by`` names) and every
    :class:`SelectionConfig` field (``where`` filters the candidates of every round), copied from those classes.
    The candidate pool is served through a dataset transform, so ``remove_unused_columns`` is forced off and
    ``dataset_kwargs["skip_prepare_dataset"]`` on: examples arrive tokenized, with the prompt masked in labels.

    Example:
        >>> config = ReselectConfig(output_dir="out", reselect_every_steps=50, by="local_naturalness", window=4)
        >>> config.scoring_config().metrics, config.selection_config().k
        ('local', 1)
    """

    # Checked by the CLI before anything loads.
    MIN_VALUES = {"reselect_every_steps": 1}

    reselect_every_steps: int | None = field(
        default=None,
        metadata={"help": "Re-score the pool and reselect every N optimizer steps (None: never)."},
    )
    reselect_every: str = field(
        default="steps", metadata={"help": "'steps' (use reselect_every_steps) or 'epoch' (reselect each epoch)."}
    )
    reselect_fraction: float = field(
        default=1.0, metadata={"help": "Share of prompts re-scored per round, at random (bounds the cost)."}
    )
    teacher_column: str = field(default="teacher", metadata={"help": "Pool column naming the teacher."})
    selection_repo: str | None = field(
        default=None,
        metadata={"help": "Hub id of the dataset the pool or selection came from; the model card's `datasets`."},
    )

    def __post_init__(self) -> None:
        if self.bf16 is None and not self.fp16 and not torch.cuda.is_available():
            self.bf16 = False  # TRL defaults to bf16, which a CPU-only machine rejects; train in float32 there
        if getattr(self, "activation_checkpointing", False) is None and self.gradient_checkpointing is not None:
            # TRL's default gradient_checkpointing=True, under the name transformers >= 5.x deprecates with a
            # FutureWarning on every run (and before every one-line CLI error): pass it on under the new name.
            self.activation_checkpointing, self.gradient_checkpointing = self.gradient_checkpointing, None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            # Launched as several processes on a machine without an accelerator: without use_cpu, Trainer
            # does not use the (gloo) process group and every process trains alone on the whole selection.
            self.use_cpu = True
        super().__post_init__()
        self.window = self.scoring_config().window  # checks every scoring option; "4" from the CLI becomes 4
        self.selection_config()  # checks k, where and higher_is_better
        if self.reselect_every not in ("steps", "epoch"):
            raise LocalnatError(f"reselect_every={self.reselect_every!r}: use 'steps' or 'epoch'.")
        if not 0 < self.reselect_fraction <= 1:
            raise LocalnatError(f"reselect_fraction={self.reselect_fraction}: use a number in (0, 1].")
        self.remove_unused_columns = False
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}

    def scoring_config(self) -> ScoringConfig:
        """The :class:`ScoringConfig` of the reselection rounds: these fields, and the metric ``by`` names."""
        names = [f.name for f in dataclasses.fields(ScoringConfig) if f.name not in ("metrics", "return_steps")]
        return ScoringConfig(metrics=self.by, **{name: getattr(self, name) for name in names})

    def selection_config(self) -> SelectionConfig:
        """The :class:`SelectionConfig` of every round."""
        return SelectionConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SelectionConfig)})


class ReselectingSFTTrainer(SFTTrainer):
    """SFT on one selected teacher response per prompt, reselected with the current student.

    Args:
        model: the student (a model or a path, as for ``SFTTrainer``).
        args: a :class:`ReselectConfig`.
        candidate_dataset: the pool: several teachers' responses per prompt, scored or not.
        processing_class: the student's tokenizer.
        callbacks, **kwargs: passed on to ``SFTTrainer``.

    Example:
        >>> trainer = ReselectingSFTTrainer(model=model, args=ReselectConfig(output_dir="out", reselect_every_steps=50),
        ...                                 candidate_dataset=pool, processing_class=tokenizer)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: ReselectConfig,
        candidate_dataset: datasets.Dataset,
        processing_class: PreTrainedTokenizerBase,
        callbacks: list[TrainerCallback] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, ReselectConfig):
            raise LocalnatError("ReselectingSFTTrainer needs args=ReselectConfig(...).")
        if "train_dataset" in kwargs:
            raise LocalnatError("pass the pool as candidate_dataset=...; the trainer builds its own train_dataset.")
        self.reselect_callback = ReselectCallback(
            candidate_dataset,
            processing_class,
            scoring=args.scoring_config(),
            selection=args.selection_config(),
            every_steps=args.reselect_every_steps,
            every=args.reselect_every,
            fraction=args.reselect_fraction,
            teacher_column=args.teacher_column,
            max_length=args.max_length,
            seed=args.seed,
        )
        self.history_callback = SelectionHistoryCallback(self.reselect_callback)
        super().__init__(
            model=model,
            args=args,
            train_dataset=self.reselect_callback.train_dataset.with_transform(self._fetch_tagged),
            processing_class=processing_class,
            callbacks=[self.reselect_callback, self.history_callback, *(callbacks or [])],
            **kwargs,
        )
        self.reselect_callback.attach(self)
        limit = context_length(self.model, processing_class)
        if limit is not None and (args.max_length is None or args.max_length > limit):
            # Training past the student's context would teach it positions it was not built for.
            logger.warning("max_length=%s is longer than the student's %d positions: examples are cut at %d.",
                           args.max_length, limit, limit)  # fmt: skip
            self.reselect_callback.cap_length(limit)

    # The dataloader builds batches ahead of the step that uses them (accelerate always holds the next batch;
    # dataloader workers hold copies of the selection made before they started). Each batch therefore carries
    # the slots it serves and the pool rows it was built from, and a batch whose slots were reselected in the
    # meantime is rebuilt from the current selection when the training loop takes it.

    def _fetch_tagged(self, batch: dict[str, list[int]]) -> dict[str, list]:
        out = self.reselect_callback._fetch(batch)
        out[SLOT_KEY] = list(batch["slot"])
        out[ROW_KEY] = [self.reselect_callback.state.selected[s] for s in batch["slot"]]
        return out

    def get_train_dataloader(self):
        collate = self.data_collator
        self.data_collator = _SlotCollator(collate)  # for the training set only; evaluation is left as it is
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collate

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        return super().get_batch_samples(map(self._current_batch, epoch_iterator), num_batches, device)

    def _current_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        if SLOT_KEY not in batch:
            return batch
        slots, rows = batch.pop(SLOT_KEY).tolist(), batch.pop(ROW_KEY).tolist()
        selected = self.reselect_callback.state.selected
        if all(selected[slot] == row for slot, row in zip(slots, rows, strict=True)):
            return batch
        fresh = self.data_collator([self.reselect_callback.slot_example(slot) for slot in slots])
        return send_to_device(fresh, batch["input_ids"].device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # A batch made only of empty slots (every label masked) has no token to learn from: its loss is 0, not 0/0.
        # TRL's default loss clamps too; its other paths (compute_loss_func, label smoothing) may not. No sync here.
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.clamp(min=1)
        elif num_items_in_batch is not None:
            num_items_in_batch = max(num_items_in_batch, 1)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """``SFTTrainer.train``; a resumed run continues the selection saved with the checkpoint."""
        if resume_from_checkpoint:
            checkpoint = (
                get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
            )
            if checkpoint is not None:
                self.reselect_callback.restore(checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if not self.args.should_save:  # transformers calls _save on every process; only one writes
            return
        # What push_student needs to write the card of a saved folder later, without unpickling training_args.bin.
        folder = Path(output_dir or self.args.output_dir)
        saved = {"base_model": student_base_model(self.model), "training_args": training_args_summary(self.args)}
        (folder / TRAINING_ARGS_FILE).write_text(json.dumps(saved, indent=2) + "\n")
        history = "".join(json.dumps(record) + "\n" for record in self.selection_history)
        (folder / HISTORY_FILE).write_text(history)

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """TRL's model card, extended with the selection repo, key arguments and the reselection history."""
        dataset_name = dataset_name or self.args.selection_repo
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        readme = Path(self.args.output_dir) / "README.md"
        trl_card = ModelCard.load(readme) if readme.is_file() else None
        card = student_card(
            base_model=student_base_model(self.model),
            selection_repo=self.args.selection_repo or dataset_name,
            training_args=training_args_summary(self.args),
            history=self.selection_history,
            trl_card=trl_card,
        )
        card.save(readme)

    @property
    def selection_history(self) -> list[dict[str, Any]]:
        """One record per selection round (also in ``output_dir/selection_history.jsonl``)."""
        return self.reselect_callback.state.history

    def selected_rows(self) -> datasets.Dataset:
        """The pool rows selected now, one per served slot, in slot order (empty slots serve no row)."""
        callback = self.reselect_callback
        return callback.pool.select([row for row in callback.state.selected if row != EMPTY_SLOT])
