"""``NaturalnessScorer``: a ``datasets.map`` function that adds naturalness columns to rows.

It fingerprints on its configuration and the student's identity (name, revision, a tiny weight probe
that catches in-memory fine-tuning), never on the weights: ``ds.map(scorer)`` re-runs hit the cache,
and changing the window or the metrics misses it. The pickled scorer carries no weights; a worker
process (``num_proc``) reloads the student lazily from its source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
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
from .distributed import main_decides
from .engine import LogProbEngine, ScoreRequest
from .errors import LocalnatError
from .metrics import (
    ScoringConfig,
    add_casl,
    encode_prompt,
    plan_row,
    prompt_text,
    response_view,
    row_metrics,
    start_ids,
    window_column,
)
from .outputs import RunLock
from .segmentation import get_splitter
from .student import StudentSource, context_length, load_student

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LengthCounts:
    """What the length guard left out: rows without full-context metrics, and local steps left ``None``."""

    rows_without_full_context: int = 0
    steps_over_context: int = 0
    rows_with_steps_over_context: int = 0
    think_tag_rows: int = 0  # rows whose opening reasoning tag the prompt already held (not scored twice)

    def add(self, plan: Any, think_tag: bool = False, others: Sequence[Any] = ()) -> None:
        """Count one row (``others``: its plans at further windows)."""
        self.rows_without_full_context += int(plan.full_too_long)
        too_long = [len(p.steps_too_long) for p in (plan, *others)]
        self.steps_over_context += sum(too_long)
        self.rows_with_steps_over_context += int(any(too_long))
        self.think_tag_rows += int(think_tag)

    def left_out(self) -> tuple[int, int, int]:
        """The counts of what the guard left out (not ``think_tag_rows``, which is no loss): a change warns."""
        return self.rows_without_full_context, self.steps_over_context, self.rows_with_steps_over_context

    def __iadd__(self, other: LengthCounts) -> LengthCounts:
        for item in dataclasses.fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))
        return self

    def message(self) -> str:
        """One line for the run's warning (empty when nothing was left out)."""
        parts = []
        if self.rows_without_full_context:
            parts.append(
                f"{self.rows_without_full_context} row(s) do not fit the student's context (or max_response_tokens) "
                "with their prompt: their global_naturalness and rsr are None"
            )
        if self.steps_over_context:
            parts.append(
                f"{self.steps_over_context} local window(s) in {self.rows_with_steps_over_context} row(s) do not fit "
                "the student's context: those steps are None and left out of local_naturalness"
            )
        return "; ".join(parts) + "." if parts else ""


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


_SCORING_FIELDS = frozenset(f.name for f in dataclasses.fields(ScoringConfig)) - {"metrics"}


class NaturalnessScorer:
    """Score prompt/response rows with a student model; use it as ``dataset.map(scorer, batched=True)``.

    Args:
        model, tokenizer: the student. Leave both ``None`` and set ``student`` to load lazily.
        config: a :class:`ScoringConfig` (its fields are documented there: metrics, window, splitter, ...).
        student: a name for :func:`load_student` (used to load lazily and to identify the model).
        **options: any :class:`ScoringConfig` field, applied on top of ``config`` (``window=2``).

    The length guard: nothing longer than the student's context is ever read. A row whose prompt plus response
    does not fit (or whose response is longer than ``max_response_tokens``) gets ``None`` for the full-context
    metrics (global, rsr); a local window that does not fit leaves its step ``None``. ``length_counts`` counts
    both. A response that is empty or only whitespace has no step to score: its scores are ``None``.

    Example:
        >>> model, tokenizer = load_student()  # doctest: +SKIP
        >>> config = ScoringConfig(metrics="global,local", window=4)
        >>> scorer = NaturalnessScorer(model, tokenizer, config)  # doctest: +SKIP
        >>> scored = ds.map(scorer, batched=True, batch_size=32)  # doctest: +SKIP
        >>> scored[0]["local_naturalness"]  # doctest: +SKIP
        -1.83
    """

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        config: ScoringConfig | None = None,
        *,
        student: str | None = None,
        **options: Any,
    ) -> None:
        if (model is None) != (tokenizer is None):
            raise LocalnatError("pass both model and tokenizer, or neither (and student=... to load lazily).")
        if config is not None and not isinstance(config, ScoringConfig):
            raise LocalnatError(f"config={config!r}: pass a ScoringConfig (or its fields as keyword arguments).")
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(ScoringConfig)})
        if unknown:
            raise LocalnatError(
                f"NaturalnessScorer got unknown option(s) {', '.join(unknown)}. The options are ScoringConfig's: "
                f"{', '.join(f.name for f in dataclasses.fields(ScoringConfig))}."
            )
        self.config: ScoringConfig = dataclasses.replace(config or ScoringConfig(), **options)
        self.length_counts = LengthCounts()
        self._warned_length = self._warned_context = self._warned_empty = False
        self.model = model
        self.tokenizer = tokenizer
        self._engine: LogProbEngine | None = None
        source = getattr(model, "hf_localnat_source", None) if model is not None else None
        if source is None and model is None:
            source = StudentSource(student or "embedded")
        self.source: StudentSource | None = source
        if tokenizer is not None:  # a tokens:<n> splitter needs the tokenizer: check it now that there is one
            get_splitter(self.config.splitter, min_step_chars=self.config.min_step_chars, tokenizer=tokenizer)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics this scorer computes (short names)."""
        return self.config.metric_names

    def __getattr__(self, name: str) -> Any:
        # scorer.window, scorer.prompt_column, ...: the config's fields, read as the scorer's own (as before
        # ScoringConfig existed). Only those names: any other missing attribute is still an AttributeError.
        if name in _SCORING_FIELDS and "config" in self.__dict__:
            return getattr(self.config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
            "context_length": context_length(model, tokenizer),
        }

    @property
    def output_columns(self) -> list[str]:
        """The columns this scorer adds, in order."""
        cols = self.config.row_columns + ["num_response_tokens", "num_steps"]
        return cols + (["step_spans", "step_logprobs"] if self.config.return_steps else [])

    def __getstate__(self) -> dict[str, Any]:
        # datasets hashes the pickled scorer for its cache fingerprint, and num_proc workers unpickle it:
        # both get the configuration and the student's identity, not the weights.
        skip = ("model", "tokenizer", "_engine", "length_counts", "_warned_length", "_warned_context", "_warned_empty")
        state = {k: v for k, v in self.__dict__.items() if k not in skip}
        state["hf_localnat_version"] = __version__
        # Computed now, not at construction, so a model trained in between gets a new fingerprint.
        state["model_identity"] = self._model_identity() if self.model is not None else {"student": self.source}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.pop("hf_localnat_version", None)
        state.pop("model_identity", None)
        self.__dict__.update(state)
        self.model = self.tokenizer = self._engine = None
        self.length_counts, self._warned_length, self._warned_context = LengthCounts(), False, False
        self._warned_empty = False

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
            self._engine = LogProbEngine(self.model, max_tokens_per_batch=self.config.max_tokens_per_batch)
        return self._engine

    # -- scoring -----------------------------------------------------------------------------------------

    def __call__(self, batch: dict[str, Any], rank: int | None = None) -> dict[str, Any]:
        """Score a batch of rows (``batched=True``) or one row; returns the new columns only."""
        self._ensure_loaded(rank)
        for column in (self.config.prompt_column, self.config.response_column):
            if column not in batch:
                raise LocalnatError(
                    f"column {column!r} not found (columns: {', '.join(batch)}). "
                    f"Pass {'prompt' if column == self.config.prompt_column else 'response'}_column=... naming "
                    "the right one."
                )
        single = not isinstance(batch[self.config.prompt_column], list)
        prompts = [batch[self.config.prompt_column]] if single else batch[self.config.prompt_column]
        responses = [batch[self.config.response_column]] if single else batch[self.config.response_column]
        before = self.length_counts.left_out()
        columns = self.score(prompts, responses)
        if self.length_counts.left_out() != before and not self._warned_length:
            self._warned_length = True  # once per scorer: a map over a long pool would repeat it per batch
            logger.warning("%s (Not repeated; scorer.length_counts keeps counting.)", self.length_counts.message())
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
        splitter = get_splitter(self.config.splitter, min_step_chars=self.config.min_step_chars, tokenizer=tokenizer)
        local_from_start = "local" in self.metrics and not self.config.include_prompt
        bos = start_ids(tokenizer) if (local_from_start or "ifd" in self.metrics) else []
        windows = self.config.windows if "local" in self.metrics else ()
        prompt_cache: dict[str, tuple[str, list[int]]] = {}
        requests: list[ScoreRequest] = []
        plans = []
        extra_plans: list[list[Any]] = []  # per row, its plans at the second and later windows
        skips: list[int] = []
        kwargs = self.config.template_kwargs
        part = self.config.score_part
        context = context_length(self.model, tokenizer)
        if context is None and not self._warned_context:
            self._warned_context = True
            logger.warning(
                "%s names no context length (max_position_embeddings); nothing limits how long a pass is. "
                "Set max_response_tokens to bound the full-context metrics.",
                type(self.model).__name__,
            )
        common = dict(
            include_prompt=self.config.include_prompt, bos=bos, requests=requests, context=context,
            max_response_tokens=self.config.max_response_tokens,
        )  # fmt: skip
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            for column, value in ((self.config.prompt_column, prompt), (self.config.response_column, response)):
                if value is not None and not isinstance(value, str):
                    raise LocalnatError(
                        f"row {i} of the batch, column {column!r}: expected a string, got "
                        f"{type(value).__name__} ({str(value)[:40]!r}). Convert the column to text."
                    )
            if prompt is None:
                column = self.config.prompt_column
                raise LocalnatError(f"row {i} of the batch, column {column!r}: the prompt is missing.")
            if prompt not in prompt_cache:
                text = prompt_text(tokenizer, prompt, kwargs)
                prompt_cache[prompt] = (text, encode_prompt(tokenizer, text))
            view = response_view(prompt_cache[prompt][0], response, self.config)
            encoded = tokenizer(view.text, add_special_tokens=False, return_offsets_mapping=True)
            starts = [start for start, _ in encoded["offset_mapping"]]
            spans, keep = _step_spans(splitter, view.text, view.reasoning_end, part)
            row = (prompt_cache[prompt][1], list(encoded["input_ids"]), starts, spans)
            plans.append(plan_row(*row, self.metrics, windows[0] if windows else 1, keep=keep, **common))
            # Later windows reuse the row's full-context pass (and the prompt cache, through the engine's groups).
            extra_plans.append(
                [plan_row(*row, ("local",), w, keep=keep, shared=plans[-1], **common) for w in windows[1:]]
            )
            skips.append(view.skip)
            self.length_counts.add(plans[-1], think_tag=view.skip > 0, others=extra_plans[-1])
        with_ranks = [False] * len(requests)
        with_entropy = [False] * len(requests)
        for row_plan in plans:
            if row_plan.full is not None:
                with_ranks[row_plan.full] = "rsr" in self.metrics
                with_entropy[row_plan.full] = "entropy" in self.metrics
        results = self.engine.score(requests, with_ranks=with_ranks, on_tokens=on_tokens, with_entropy=with_entropy)

        columns: dict[str, list[Any]] = {c: [] for c in self.output_columns}
        for i, row_plan in enumerate(plans):
            values, step_means = row_metrics(
                row_plan, results, self.metrics, self.config.step_aggregate, self.config.local_drop,
                self.config.aslec_drop_tokens,
            )  # fmt: skip
            if len(windows) > 1:
                values[window_column(windows[0])] = values["local_naturalness"]
                for window, extra in zip(windows[1:], extra_plans[i], strict=True):
                    extra_values, _ = row_metrics(
                        extra, results, ("local",), self.config.step_aggregate, self.config.local_drop
                    )
                    values[window_column(window)] = extra_values["local_naturalness"]
            if all(v is None for v in values.values()) and not self._warned_empty:
                self._warned_empty = True  # once per scorer, as the length warning: a pool may hold many
                logger.warning(
                    "row %d of the batch has nothing to score (an empty response, or no step that score_part=%s "
                    "keeps); its scores are None. Not repeated for later rows.", i, self.config.score_part,
                )  # fmt: skip
            for column, value in values.items():
                columns[column].append(value)
            columns["num_response_tokens"].append(row_plan.num_tokens)
            columns["num_steps"].append(sum(row_plan.step_keep))
            if self.config.return_steps:  # spans in the original response's characters
                spans_out = [[start + skips[i], end + skips[i]] for start, end in row_plan.step_spans]
                columns["step_spans"].append(spans_out)
                columns["step_logprobs"].append(step_means if "local" in self.metrics else None)
        return columns


def _step_spans(
    splitter: Callable[[str], list[tuple[int, int]]], text: str, reasoning_end: int | None, part: str
) -> tuple[list[tuple[int, int]], list[bool]]:
    """The steps of a scored response, none crossing the closing reasoning tag, and which of them ``part`` keeps.

    A response without a closing tag (or with nothing after it) is all reasoning.
    """
    if not text:
        return [], []
    if reasoning_end is None or not text[reasoning_end:].strip():
        spans = splitter(text)
        return spans, [part in ("all", "reasoning")] * len(spans)
    reasoning = splitter(text[:reasoning_end])
    answer = [(start + reasoning_end, end + reasoning_end) for start, end in splitter(text[reasoning_end:])]
    keep = [part in ("all", "reasoning")] * len(reasoning) + [part in ("all", "answer")] * len(answer)
    return reasoning + answer, keep


def output_features(scorer: NaturalnessScorer) -> datasets.Features:
    """Arrow types of the columns a scorer adds (fixed, so chunks with only None values still line up)."""
    features = {column: datasets.Value("float64") for column in scorer.config.row_columns}
    features["num_response_tokens"] = datasets.Value("int64")
    features["num_steps"] = datasets.Value("int64")
    if scorer.config.return_steps:
        features["step_spans"] = datasets.List(datasets.List(datasets.Value("int64")))
        features["step_logprobs"] = datasets.List(datasets.Value("float64"))
    return datasets.Features(features)


_CHUNK_KEY = b"hf_localnat_chunk"  # parquet metadata of a chunk: the settings it was scored with, and its rows


def _chunk_record(path: Path) -> dict[str, Any] | None:
    """The settings record a chunk file was written with, or None for a file that is not a whole chunk."""
    try:
        value = (pq.read_schema(path).metadata or {}).get(_CHUNK_KEY)
        return json.loads(value) if value else None
    except (OSError, ValueError, pa.ArrowException):
        return None


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

    ``work_dir`` is locked for the call (:class:`~hf_localnat.outputs.RunLock`): a second run on it fails at
    once. Every chunk records the settings it was scored with (input fingerprint, rows, scorer hash); a resume
    uses only the chunks that match, so scores made with other settings are never mixed in. One warning at the
    end counts the rows and windows the length guard left out.

    Example:
        >>> scored = score_dataset(ds, scorer, work_dir="out.partial")  # doctest: +SKIP
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise LocalnatError(f"chunk_rows={chunk_rows!r}: use a positive number of rows per chunk.")
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    if world > 1 and work_dir is None:
        raise ValueError("score_dataset needs a work_dir shared by all processes when num_processes > 1.")
    work = Path(work_dir) if work_dir is not None else None
    lock = RunLock(work) if work is not None and rank == 0 else contextlib.nullcontext()
    with lock:
        return _score_chunks(ds, scorer, work, chunk_rows, progress, state, rank, world)


def _score_chunks(
    ds: datasets.Dataset,
    scorer: NaturalnessScorer,
    work: Path | None,
    chunk_rows: int,
    progress: bool,
    state: PartialState | None,
    rank: int,
    world: int,
) -> datasets.Dataset | None:
    chunks = range(0, len(ds), chunk_rows)

    def chunk_path(start: int) -> Path:
        return work / f"chunk-{start:09d}.parquet"

    manifest = {
        "input_fingerprint": ds._fingerprint,
        "num_rows": len(ds),
        "chunk_rows": chunk_rows,
        "scorer": Hasher.hash(scorer),
    }

    def vet() -> str:
        """On the main process: clear chunks of other settings, write the manifest, return its settings hash."""
        manifest_path = work / "manifest.json"
        work.mkdir(parents=True, exist_ok=True)
        try:
            old = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
        except ValueError:  # cut short, or from another version
            old = None
        settings = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
        stale = [p for p in work.iterdir() if p.name.startswith(("chunk-", ".chunk-"))]
        if stale and old != manifest:
            logger.warning("%s holds a partial run of other data or settings; starting over.", work)
        for path in stale:  # whatever the manifest says, a chunk counts only by its own record
            if old != manifest or (_chunk_record(path) or {}).get("settings") != settings:
                path.unlink(missing_ok=True)
        tmp = work / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest))
        os.replace(tmp, manifest_path)
        return settings

    # Every process uses the main process's settings, so all agree on which chunks are done.
    settings = main_decides(state, vet) if work is not None else "in-memory"

    def expected(start: int) -> dict[str, Any]:
        return {"settings": settings, "start": start, "num_rows": min(chunk_rows, len(ds) - start)}

    def record_of(start: int) -> dict[str, Any] | None:
        path = chunk_path(start)
        return _chunk_record(path) if path.exists() else None

    def is_done(start: int) -> bool:
        record = record_of(start)
        return record is not None and {k: record.get(k) for k in ("settings", "start", "num_rows")} == expected(start)

    done: set[int] = set()
    if work is not None:
        done = {start for start in chunks if is_done(start)}
        if done and rank == 0:
            logger.warning("Resuming: %d of %d chunks already scored in %s.", len(done), len(chunks), work)

    features = output_features(scorer)
    mine = [start for i, start in enumerate(chunks) if i % world == rank and start not in done]
    tables: dict[int, pa.Table] = {}
    counts: dict[int, LengthCounts] = {}
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
            before = dataclasses.replace(scorer.length_counts)
            columns = scorer.score(rows[scorer.config.prompt_column], rows[scorer.config.response_column])
            chunk_counts = LengthCounts(
                *(getattr(scorer.length_counts, f.name) - getattr(before, f.name) for f in dataclasses.fields(before))
            )
            table = datasets.Dataset.from_dict(columns, features=features).data.table
            record = {**expected(start), "length_counts": dataclasses.asdict(chunk_counts)}
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), _CHUNK_KEY: json.dumps(record)})
            if work is not None:
                tmp = work / f".chunk-{start:09d}.{rank}.tmp"
                pq.write_table(table, tmp)
                os.replace(tmp, chunk_path(start))  # a chunk is either whole or absent
            tables[start], counts[start] = table, chunk_counts
            tokens += sum(columns["num_response_tokens"])
            rate = tokens / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{rate:.0f} response tok/s", refresh=False)
            bar.update(table.num_rows)
    if rank != 0:
        return None
    # Chunks of other processes arrive as files; a crashed peer ends the whole launch, so polling is safe.
    arrived = set(tables) | done
    while work is not None:
        arrived |= {start for start in chunks if start not in arrived and is_done(start)}
        waiting = [start for start in chunks if start not in arrived]
        if not waiting:
            break
        foreign = [start for start in waiting if record_of(start) is not None]
        if foreign:
            raise LocalnatError(
                f"{chunk_path(foreign[0])} was scored with other settings while this run was writing {work}. "
                "Is another run writing there? Run this command again to resume."
            )
        time.sleep(0.5)
    ordered = [tables[start] if start in tables else pq.read_table(chunk_path(start)) for start in chunks]
    total = LengthCounts()
    for start in chunks:
        if start in counts:
            total += counts[start]
        else:
            total += LengthCounts(**(_chunk_record(chunk_path(start)) or {}).get("length_counts", {}))
    if total.message():
        logger.warning(total.message())
    scores = (
        pa.concat_tables([t.replace_schema_metadata(None) for t in ordered])
        if ordered
        else features.arrow_schema.empty_table()
    )
    base = ds.remove_columns([c for c in scorer.output_columns + ["casl"] if c in ds.column_names])
    scored = datasets.concatenate_datasets([base, datasets.Dataset(scores)], axis=1)
    if "casl" in scorer.metrics:  # fitted over the pool: only now is every row there
        scored, _ = add_casl(scored, by=scorer.config.casl_fit_by)
    # Kept by save_to_disk: lets a trainer reuse these scores when its student and config are the same.
    source = scorer.source
    scored.info.description = json.dumps(
        {
            PROVENANCE_KEY: {
                "scorer": scorer.config.to_dict(),
                "student": source.student if source else None,
                "revision": source.revision if source else None,
                # Rows whose opening reasoning tag was already in the generation prompt (so not scored twice).
                "think_tag_rows": total.think_tag_rows,
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
