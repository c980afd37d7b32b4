"""``NaturalnessScorer``: a ``datasets.map`` function that adds naturalness columns to rows.

It fingerprints on its configuration and the student's identity (name, revision, a tiny weight probe
that catches in-memory fine-tuning), never on the weights: ``ds.map(scorer)`` re-runs hit the cache,
and changing the window or the metrics misses it. The pickled scorer carries no weights; a worker
process (``num_proc``) reloads the student lazily from its source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate import PartialState
from datasets.fingerprint import Hasher
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import __version__
from .engine import LogProbEngine, ScoreRequest
from .errors import LocalnatError
from .metrics import (
    METRIC_COLUMNS,
    STEP_AGGREGATES,
    normalize_metrics,
    plan_row,
    prompt_ids,
    row_metrics,
    start_ids,
    validate_window,
)
from .segmentation import get_splitter, splitter_name
from .student import StudentSource, load_student

logger = logging.getLogger(__name__)


def _weight_probe(model: PreTrainedModel) -> str:
    """A few hundred sampled weight values, hashed: cheap, and any training step changes it."""
    params = [p for p in model.parameters() if p.numel() > 0]
    picked = [params[0], params[len(params) // 2], params[-1]] if params else []
    digest = hashlib.sha256()
    for p in picked:
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 128)
        digest.update(flat[::step][:128].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class NaturalnessScorer:
    """Score prompt/response rows with a student model; use it as ``dataset.map(scorer, batched=True)``.

    Args:
        model, tokenizer: the student. Leave both ``None`` and set ``student`` to load lazily.
        metrics: any of ``"global"``, ``"local"``, ``"rsr"`` (list or comma-separated string).
        window: previous steps in a local context: an int >= 1, or a float in (0, 1) for a fraction, rounded up.
        splitter: ``"sentence"``, ``"paragraph"``, ``"line"``, ``"regex:<pattern>"``, ``"tokens:<n>"`` or a callable.
        min_step_chars: pieces shorter than this join the step before them.
        include_prompt: local contexts start with the prompt (True) or with BOS only (False).
        step_aggregate: ``"step_mean"`` (mean of step means) or ``"token_mean"`` (mean over tokens).
        drop_first_token: leave each step's first token out of its mean (ASLEC's correction).
        return_steps: also add ``step_spans`` and ``step_logprobs``.
        prompt_column, response_column: where the text is.
        max_tokens_per_batch: padded tokens per forward pass.
        student: a name for :func:`load_student` (used to load lazily and to identify the model).

    Example:
        >>> model, tokenizer = load_student()  # doctest: +SKIP
        >>> scorer = NaturalnessScorer(model, tokenizer, metrics=("global", "local"), window=4)  # doctest: +SKIP
        >>> scored = ds.map(scorer, batched=True, batch_size=32)  # doctest: +SKIP
        >>> scored[0]["local_naturalness"]  # doctest: +SKIP
        -1.83
    """

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        metrics: str | Sequence[str] = ("global", "local"),
        window: int | float = 4,
        splitter: str | Callable[[str], Sequence[tuple[int, int]]] = "sentence",
        min_step_chars: int = 4,
        include_prompt: bool = True,
        step_aggregate: str = "step_mean",
        drop_first_token: bool = False,
        return_steps: bool = False,
        prompt_column: str = "prompt",
        response_column: str = "response",
        max_tokens_per_batch: int = 16384,
        student: str | None = None,
    ) -> None:
        if (model is None) != (tokenizer is None):
            raise LocalnatError("pass both model and tokenizer, or neither (and student=... to load lazily).")
        if step_aggregate not in STEP_AGGREGATES:
            raise LocalnatError(f"step_aggregate={step_aggregate!r} is unknown. Use 'step_mean' or 'token_mean'.")
        if max_tokens_per_batch < 1:
            raise LocalnatError(f"max_tokens_per_batch={max_tokens_per_batch} must be a positive number of tokens.")
        self.metrics = normalize_metrics(metrics)
        self.window = validate_window(window)
        self.splitter = splitter
        self.min_step_chars = min_step_chars
        self.include_prompt = include_prompt
        self.step_aggregate = step_aggregate
        self.drop_first_token = drop_first_token
        self.return_steps = return_steps
        self.prompt_column = prompt_column
        self.response_column = response_column
        self.max_tokens_per_batch = max_tokens_per_batch
        self.model = model
        self.tokenizer = tokenizer
        self._engine: LogProbEngine | None = None
        source = getattr(model, "hf_localnat_source", None) if model is not None else None
        if source is None and model is None:
            source = StudentSource(student or "embedded")
        self.source: StudentSource | None = source
        get_splitter(splitter, min_step_chars=min_step_chars, tokenizer=tokenizer)  # fail fast on a bad spec

    # -- identity and pickling: never the weights --------------------------------------------------------

    def _model_identity(self) -> dict[str, Any]:
        model, tokenizer = self.model, self.tokenizer
        source = self.source
        template = getattr(tokenizer, "chat_template", None) or ""
        return {
            "student": source.student if source else (getattr(model.config, "_name_or_path", "") or "in-memory"),
            "revision": source.revision if source else getattr(model.config, "_commit_hash", None),
            "architecture": type(model).__name__,
            "dtype": str(model.dtype),
            "weights_probe": _weight_probe(model),
            "tokenizer": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()[:16],
        }

    @property
    def config(self) -> dict[str, Any]:
        """The scoring configuration, as it goes into fingerprints and dataset cards."""
        return {
            "metrics": list(self.metrics),
            "window": self.window,
            "splitter": splitter_name(self.splitter),
            "min_step_chars": self.min_step_chars,
            "include_prompt": self.include_prompt,
            "step_aggregate": self.step_aggregate,
            "drop_first_token": self.drop_first_token,
            "return_steps": self.return_steps,
            "prompt_column": self.prompt_column,
            "response_column": self.response_column,
            "rsr_rank_cap": 100,
        }

    @property
    def output_columns(self) -> list[str]:
        """The columns this scorer adds, in order."""
        cols = [METRIC_COLUMNS[m] for m in self.metrics] + ["num_response_tokens", "num_steps"]
        return cols + (["step_spans", "step_logprobs"] if self.return_steps else [])

    def __getstate__(self) -> dict[str, Any]:
        # datasets hashes the pickled scorer for its cache fingerprint, and num_proc workers unpickle it:
        # both get the configuration and the student's identity, not the weights.
        state = {k: v for k, v in self.__dict__.items() if k not in ("model", "tokenizer", "_engine")}
        state["hf_localnat_version"] = __version__
        # Computed now, not at construction, so a model trained in between gets a new fingerprint.
        state["model_identity"] = self._model_identity() if self.model is not None else {"student": self.source}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.pop("hf_localnat_version", None)
        state.pop("model_identity", None)
        self.__dict__.update(state)
        self.model = self.tokenizer = self._engine = None

    def _ensure_loaded(self, rank: int | None = None) -> None:
        if self.model is not None:
            return
        if self.source is None or self.source.student == "in-memory":
            raise LocalnatError(
                "this scorer's model was built in memory and cannot be reloaded in another process. "
                "Save it with save_pretrained and pass student=PATH."
            )
        device = None
        if rank is not None and torch.cuda.is_available():
            device = f"cuda:{rank % torch.cuda.device_count()}"
        elif rank is not None:
            # A forked CPU worker must not re-enter the parent's OpenMP pool (it can hang); workers share the
            # cores anyway, so each runs single-threaded.
            torch.set_num_threads(1)
        self.model, self.tokenizer = load_student(self.source.student, revision=self.source.revision, device=device)

    @property
    def engine(self) -> LogProbEngine:
        if self._engine is None or self._engine.model is not self.model:
            self._engine = LogProbEngine(self.model, max_tokens_per_batch=self.max_tokens_per_batch)
        return self._engine

    # -- scoring -----------------------------------------------------------------------------------------

    def __call__(self, batch: dict[str, Any], rank: int | None = None) -> dict[str, Any]:
        """Score a batch of rows (``batched=True``) or one row; returns the new columns only."""
        self._ensure_loaded(rank)
        for column in (self.prompt_column, self.response_column):
            if column not in batch:
                raise LocalnatError(
                    f"column {column!r} not found (columns: {', '.join(batch)}). "
                    f"Pass {'prompt' if column == self.prompt_column else 'response'}_column=... naming the right one."
                )
        single = not isinstance(batch[self.prompt_column], list)
        prompts = [batch[self.prompt_column]] if single else batch[self.prompt_column]
        responses = [batch[self.response_column]] if single else batch[self.response_column]
        columns = self.score(prompts, responses)
        return {k: v[0] for k, v in columns.items()} if single else columns

    def score(
        self, prompts: Sequence[str], responses: Sequence[str | None], on_tokens: Callable[[int], None] | None = None
    ) -> dict[str, list[Any]]:
        """Score parallel lists of prompts and responses; returns the new columns as lists.

        Example:
            >>> scorer.score(["What is 2+2?"], ["2+2 is 4. The answer is 4."])["local_naturalness"]  # doctest: +SKIP
            [-1.2]
        """
        self._ensure_loaded()
        tokenizer = self.tokenizer
        splitter = get_splitter(self.splitter, min_step_chars=self.min_step_chars, tokenizer=tokenizer)
        bos = start_ids(tokenizer) if ("local" in self.metrics and not self.include_prompt) else []
        prompt_cache: dict[str, list[int]] = {}
        requests: list[ScoreRequest] = []
        plans = []
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            for column, value in ((self.prompt_column, prompt), (self.response_column, response)):
                if value is not None and not isinstance(value, str):
                    raise LocalnatError(
                        f"row {i} of the batch, column {column!r}: expected a string, got "
                        f"{type(value).__name__} ({str(value)[:40]!r}). Convert the column to text."
                    )
            if prompt is None:
                raise LocalnatError(f"row {i} of the batch, column {self.prompt_column!r}: the prompt is missing.")
            response = response or ""
            if prompt not in prompt_cache:
                prompt_cache[prompt] = prompt_ids(tokenizer, prompt)
            encoded = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
            starts = [start for start, _ in encoded["offset_mapping"]]
            spans = splitter(response) if response else []
            plans.append(
                plan_row(
                    prompt_cache[prompt],
                    list(encoded["input_ids"]),
                    starts,
                    spans,
                    self.metrics,
                    self.window,
                    self.include_prompt,
                    bos,
                    requests,
                )
            )
        with_ranks = [False] * len(requests)
        for plan in plans:
            if plan.full is not None and "rsr" in self.metrics:
                with_ranks[plan.full] = True
        results = self.engine.score(requests, with_ranks=with_ranks, on_tokens=on_tokens)

        columns: dict[str, list[Any]] = {c: [] for c in self.output_columns}
        for i, plan in enumerate(plans):
            values, step_means = row_metrics(plan, results, self.metrics, self.step_aggregate, self.drop_first_token)
            if all(v is None for v in values.values()):
                logger.warning("row %d of the batch has no scorable response token; its scores are None.", i)
            for column, value in values.items():
                columns[column].append(value)
            columns["num_response_tokens"].append(plan.num_tokens)
            columns["num_steps"].append(len(plan.step_tokens))
            if self.return_steps:
                columns["step_spans"].append([list(span) for span in plan.step_spans])
                columns["step_logprobs"].append(step_means if "local" in self.metrics else None)
        return columns


def output_features(scorer: NaturalnessScorer) -> datasets.Features:
    """Arrow types of the columns a scorer adds (fixed, so chunks with only None values still line up)."""
    features = {METRIC_COLUMNS[m]: datasets.Value("float64") for m in scorer.metrics}
    features["num_response_tokens"] = datasets.Value("int64")
    features["num_steps"] = datasets.Value("int64")
    if scorer.return_steps:
        features["step_spans"] = datasets.List(datasets.List(datasets.Value("int64")))
        features["step_logprobs"] = datasets.List(datasets.Value("float64"))
    return datasets.Features(features)


def score_dataset(
    ds: datasets.Dataset,
    scorer: NaturalnessScorer,
    *,
    work_dir: str | os.PathLike | None = None,
    chunk_rows: int = 64,
    progress: bool = True,
    state: PartialState | None = None,
) -> datasets.Dataset | None:
    """Score every row with a progress bar; with ``work_dir``, finished chunks are kept and a rerun resumes.

    The result holds every input column (earlier score columns replaced) plus the scorer's columns, in the
    input's row order. Under ``accelerate launch`` pass ``state=PartialState()``: process ``r`` of ``n``
    scores chunks ``r, r+n, ...`` into the shared ``work_dir``, and the main process returns the assembled
    dataset while the others return None.

    Example:
        >>> scored = score_dataset(ds, scorer, work_dir="out.partial")  # doctest: +SKIP
    """
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    if world > 1 and work_dir is None:
        raise ValueError("score_dataset needs a work_dir shared by all processes when num_processes > 1.")
    chunks = range(0, len(ds), chunk_rows)
    work = Path(work_dir) if work_dir is not None else None

    def chunk_path(start: int) -> Path:
        return work / f"chunk-{start:09d}.parquet"

    done: set[int] = set()
    if work is not None:
        manifest = {
            "input_fingerprint": ds._fingerprint,
            "num_rows": len(ds),
            "chunk_rows": chunk_rows,
            "scorer": Hasher.hash(scorer),
        }
        manifest_path = work / "manifest.json"
        if rank == 0:
            if work.exists() and (not manifest_path.exists() or json.loads(manifest_path.read_text()) != manifest):
                logger.warning("%s holds a partial run of other data or settings; starting over.", work)
                shutil.rmtree(work)
            work.mkdir(parents=True, exist_ok=True)
            manifest_path.write_text(json.dumps(manifest))
        if world > 1:
            state.wait_for_everyone()  # nobody reads the folder before the main process has vetted it
        done = {start for start in chunks if chunk_path(start).exists()}
        if done and rank == 0:
            logger.warning("Resuming: %d of %d chunks already scored in %s.", len(done), len(chunks), work)

    features = output_features(scorer)
    mine = [start for i, start in enumerate(chunks) if i % world == rank and start not in done]
    tables: dict[int, pa.Table] = {}
    rows_mine = sum(min(chunk_rows, len(ds) - start) for start in mine)
    # One process shows the whole job; under a launch, the main process shows its own share.
    bar = tqdm(
        total=len(ds) if world == 1 else rows_mine,
        initial=len(ds) - rows_mine if world == 1 else 0,
        desc="Scoring" if world == 1 else f"Scoring (process 0 of {world})",
        unit="row",
        disable=not progress or rank != 0,
    )
    tokens = 0
    started = time.perf_counter()
    with bar:
        for start in mine:
            rows = ds[start : start + chunk_rows]
            columns = scorer.score(rows[scorer.prompt_column], rows[scorer.response_column])
            table = datasets.Dataset.from_dict(columns, features=features).data.table
            if work is not None:
                tmp = work / f".chunk-{start:09d}.{rank}.tmp"
                pq.write_table(table, tmp)
                os.replace(tmp, chunk_path(start))  # a chunk is either whole or absent
            tables[start] = table
            tokens += sum(columns["num_response_tokens"])
            rate = tokens / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{rate:.0f} response tok/s", refresh=False)
            bar.update(table.num_rows)
    if rank != 0:
        return None
    # Chunks of other processes arrive as files; a crashed peer ends the whole launch, so polling is safe.
    while work is not None and not all(start in tables or chunk_path(start).exists() for start in chunks):
        time.sleep(0.5)
    ordered = [tables[start] if start in tables else pq.read_table(chunk_path(start)) for start in chunks]
    scores = pa.concat_tables(ordered) if ordered else features.arrow_schema.empty_table()
    base = ds.remove_columns([c for c in scorer.output_columns if c in ds.column_names])
    scored = datasets.concatenate_datasets([base, datasets.Dataset(scores)], axis=1)
    # Kept by save_to_disk: lets a trainer reuse these scores when its student and config are the same.
    source = scorer.source
    scored.info.description = json.dumps(
        {
            PROVENANCE_KEY: {
                "scorer": scorer.config,
                "student": source.student if source else None,
                "revision": source.revision if source else None,
            }
        }
    )
    return scored


PROVENANCE_KEY = "hf_localnat"


def scoring_provenance(ds: datasets.Dataset) -> dict[str, Any] | None:
    """The scorer config and student that ``score_dataset`` recorded in a dataset's info, if any.

    Example:
        >>> scoring_provenance(score_dataset(ds, scorer))["scorer"]["window"]  # doctest: +SKIP
        4
    """
    try:
        return json.loads(ds.info.description or "")[PROVENANCE_KEY]
    except (ValueError, KeyError, TypeError):
        return None
