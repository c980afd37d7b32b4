"""``SelectionHistoryCallback`` and ``NaturalnessLoggingCallback``: make reselection visible."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_localnat.scorer import NaturalnessScorer

from .reselect import ReselectCallback, log_from_callback

logger = logging.getLogger(__name__)

HISTORY_FILE = "selection_history.jsonl"


class SelectionHistoryCallback(TrainerCallback):
    """Write every selection round of a :class:`ReselectCallback` to ``output_dir/selection_history.jsonl``.

    The file is rewritten whole (atomically) from the callback's history, so after a resume it still holds
    every round, the ones before the checkpoint included.

    Example:
        >>> trainer.add_callback(SelectionHistoryCallback(reselect_callback))  # doctest: +SKIP
    """

    def __init__(self, reselect: ReselectCallback) -> None:
        self.reselect = reselect
        self._written = -1

    def _write(self, args: TrainingArguments, state: TrainerState) -> None:
        history = self.reselect.state.history
        if not state.is_world_process_zero or len(history) == self._written:
            return
        path = Path(args.output_dir) / HISTORY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
        tmp.replace(path)
        self._written = len(history)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._write(args, state)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._write(args, state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._write(args, state)


class NaturalnessLoggingCallback(TrainerCallback):
    """Log the student's naturalness of a fixed probe set of responses every ``every_steps`` steps.

    Args:
        prompts, responses: the probe set.
        names: one label per probe (e.g. the teacher); the mean per label is logged as
            ``naturalness/<metric>/<name>``.
        every_steps: how often; also logged at the start of training.
        scorer_kwargs: :class:`NaturalnessScorer` options (metrics, window, ...).

    Call ``attach(trainer)`` (done by ``ReselectingSFTTrainer``) so values go through ``trainer.log``.

    Example:
        >>> cb = NaturalnessLoggingCallback(["2+2?", "2+2?"], ["4.", "It is 4."], ["a", "b"], every_steps=20)
        >>> cb.every_steps
        20
        >>> trainer.add_callback(cb.attach(trainer))  # doctest: +SKIP
    """

    def __init__(
        self,
        prompts: list[str],
        responses: list[str],
        names: list[str] | None = None,
        *,
        tokenizer=None,
        every_steps: int = 50,
        **scorer_kwargs: Any,
    ) -> None:
        self.prompts, self.responses = list(prompts), list(responses)
        self.names = list(names) if names is not None else ["probe"] * len(self.prompts)
        self.tokenizer = tokenizer
        self.every_steps = every_steps
        self.scorer_kwargs = {"metrics": ("local",), **scorer_kwargs}
        self.records: list[dict[str, float]] = []
        self._trainer = None

    def attach(self, trainer) -> NaturalnessLoggingCallback:
        self._trainer = trainer
        return self

    def measure(self, model, tokenizer) -> dict[str, float]:
        """Mean score per probe name, for every metric, with ``model`` as it is now."""
        scorer = NaturalnessScorer(getattr(model, "module", model), tokenizer, **self.scorer_kwargs)
        columns = scorer.score(self.prompts, self.responses)
        logs: dict[str, float] = {}
        for metric in scorer.output_columns[: len(scorer.metrics)]:
            for name in dict.fromkeys(self.names):
                values = [v for v, n in zip(columns[metric], self.names, strict=True) if n == name and v is not None]
                if values:
                    logs[f"naturalness/{metric}/{name}"] = sum(values) / len(values)
        return logs

    def _log(self, state: TrainerState, kwargs: dict[str, Any]) -> None:
        tokenizer = self.tokenizer or kwargs.get("processing_class")
        logs = self.measure(kwargs["model"], tokenizer)
        self.records.append({"step": state.global_step, **logs})
        if self._trainer is not None:
            log_from_callback(self._trainer, logs)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._log(state, kwargs)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.every_steps and state.global_step % self.every_steps == 0:
            self._log(state, kwargs)
