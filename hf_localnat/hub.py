"""Publish selected datasets and trained students, each with a card that says how it was made.

``push_selection`` and ``push_student`` build exactly the folder that is uploaded (README.md card, ``data/*.parquet``
or the saved model, the histogram PNG) in a temporary folder, then either move it to ``to_dir`` or upload it to the
Hub in one commit. A commit is all-or-nothing, so a failed upload leaves no half-published repo; a repo created by
the failed call is deleted again.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import datasets
from huggingface_hub import DatasetCard, DatasetCardData, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError

from . import __version__
from .data_io import atomic_dir
from .errors import LocalnatError
from .metrics import METRIC_COLUMNS, ScoringConfig, present_metric_columns
from .outputs import check_output
from .scorer import scoring_provenance
from .selection import SelectionConfig, is_higher_better, rank_teachers

logger = logging.getLogger(__name__)

TAGS = ["hf-localnat", "distillation", "data-selection"]
HISTOGRAM = "score_histogram.png"
SHARD_BYTES = 500 * 2**20  # the Hub's viewer and datasets both like parquet shards of a few hundred MB
ID_DEFINITION = "<group>\\t<teacher>"
TRAINING_ARGS_FILE = "hf_localnat_training_args.json"
HISTORY_FILE = "selection_history.jsonl"  # as trainer_callbacks.history writes it
# Training arguments a reader needs to judge or repeat a distillation run (the rest are in training_args.bin).
KEY_TRAINING_ARGS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "max_length",
    "packing",
    "completion_only_loss",
    "assistant_only_loss",
    "bf16",
    "seed",
    "reselect_every_steps",
    "reselect_every",
    "reselect_fraction",
    "by",
    "group_by",
    "k",
    "window",
    "splitter",
    "include_prompt",
    "step_aggregate",
    "drop_first_tokens",
    "min_step_chars",
    "score_part",
    "chat_template_kwargs",
    "where",
)
_T = TypeVar("_T")


def _selection_config(config: SelectionConfig | dict[str, Any] | None, selected: datasets.Dataset) -> SelectionConfig:
    if isinstance(config, SelectionConfig):
        return config
    if config is None:
        by = next((c for c in METRIC_COLUMNS.values() if c in selected.column_names), SelectionConfig.by)
        return SelectionConfig(by=by)
    names = [f.name for f in dataclasses.fields(SelectionConfig)]
    unknown = set(config) - set(names)
    if unknown:
        raise LocalnatError(f"selection_config has unknown keys {sorted(unknown)}; use {', '.join(names)}.")
    return SelectionConfig(**config)


def selected_ids_sha256(selected: datasets.Dataset, group_by: str, teacher_column: str = "teacher") -> str:
    """sha256 of the selected rows' ids, ``<group>\\t<teacher>`` one per line in row order.

    Example:
        >>> ds = datasets.Dataset.from_dict({"prompt_id": ["p1"], "teacher": ["a"]})
        >>> selected_ids_sha256(ds, "prompt_id") == hashlib.sha256(b"p1\\ta\\n").hexdigest()
        True
    """
    teachers = selected[teacher_column] if teacher_column in selected.column_names else [""] * len(selected)
    lines = "".join(f"{group}\t{teacher}\n" for group, teacher in zip(selected[group_by], teachers, strict=True))
    return hashlib.sha256(lines.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------- folders


@contextmanager
def _staging(
    to_dir: str | os.PathLike | None,
    overwrite: bool,
    inputs: tuple[Path, ...] = (),
    kind: str = "selection",
    keep: tuple[Path, ...] = (),
) -> Iterator[Path]:
    """A temporary folder to build into; moved onto ``to_dir`` when the block succeeds, else removed.

    ``to_dir`` follows the output rule of :func:`hf_localnat.outputs.check_output`: an existing folder is replaced
    only with ``overwrite``, and only when it holds what hf_localnat writes in a folder of ``kind``; it may not be
    the working folder or above it, nor overlap an input folder. It may lie inside a ``keep`` folder (a trainer's
    output_dir) but not be it or hold it.
    """
    target = None
    if to_dir is not None:
        target = Path(to_dir).resolve()
        for folder in keep:
            if target == folder.resolve() or target in folder.resolve().parents:
                raise LocalnatError(
                    f"--to_dir {str(to_dir)!r} is or holds the training folder {str(folder)!r}; replacing it would "
                    "delete the run. Pick a folder outside it."
                )
        check_output(to_dir, kind, inputs=inputs, overwrite=overwrite, flag="--to_dir")
    if target is None:  # an upload: built in a scratch folder that is removed afterwards
        with tempfile.TemporaryDirectory(prefix="hf-localnat-") as tmp:
            yield Path(tmp)
    else:
        with atomic_dir(target) as tmp:
            yield tmp


def _write_parquet_shards(ds: datasets.Dataset, folder: Path, split: str = "train") -> list[str]:
    # The standard data/<split>-NNNNN-of-NNNNN.parquet names let datasets and the Hub infer the split. No
    # `configs:` block in the card: with one, datasets 5.2 caches a local folder by its name alone and
    # load_dataset(folder) can return another folder's rows.
    (folder / "data").mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(ds.data.nbytes / SHARD_BYTES))
    names = []
    for index in range(num_shards):
        name = f"data/{split}-{index:05d}-of-{num_shards:05d}.parquet"
        ds.shard(num_shards, index, contiguous=True).to_parquet(str(folder / name))
        names.append(name)
    return names


def _histogram(
    selected_scores: list[float], rejected_scores: list[float], by: str, path: Path
) -> Path:  # pragma: no cover - drawing only; the tests check the file exists and is a PNG
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    values = selected_scores + rejected_scores
    bins = 30 if len(set(values)) > 1 else 1
    ax.hist(rejected_scores, bins=bins, alpha=0.6, label=f"rejected ({len(rejected_scores)})", color="#999999")
    ax.hist(selected_scores, bins=bins, alpha=0.7, label=f"selected ({len(selected_scores)})", color="#d62728")
    ax.set_xlabel(by)
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")  # what acts inside a line or a table cell


def markdown_text(value: Any) -> str:
    """User text (a teacher's name) made safe for a card: markdown and HTML characters escaped, on one line.

    Example:
        >>> print(markdown_text("gpt|4 <b>*x*</b>"))
        gpt\\|4 \\<b\\>\\*x\\*\\</b\\>
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def _row_keys(ds: datasets.Dataset, columns: list[str]) -> list[tuple]:
    # Texts are keyed by their hash, so the pool's responses are not all held as Python strings at once.
    keyed = [[hashlib.sha1(v.encode()).hexdigest() if isinstance(v, str) else v for v in ds[c]] for c in columns]
    return list(zip(*keyed, strict=True))


def _valid(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _command_line(source: str, scorer: dict[str, Any] | None, student: str | None, config: SelectionConfig) -> str:
    """The ``score`` and ``select`` commands that reproduce a selection: only options that differ from defaults."""
    score = ["hf-localnat", "score", source]
    if student:
        score += ["--student", student]
    note = ""
    if scorer:
        splitter = str(scorer.get("splitter", ""))
        if splitter.startswith("callable:"):  # a Python splitter has no flag: name it beside the command
            scorer = {k: v for k, v in scorer.items() if k != "splitter"}
            note = f"  # with the splitter {splitter[len('callable:'):]} (Python API)"
        score += ScoringConfig.from_dict(scorer).command_args()
    score += ["--output", "scored.parquet"]
    select = ["hf-localnat", "select", "scored.parquet", *config.command_args(), "--output", "selected.parquet"]
    return f"{shlex.join(score)}{note}\n{shlex.join(select)}"


def selection_yaml(config: SelectionConfig) -> str:
    """The selection as a ``--config`` file for ``hf-localnat select`` (only options with a value).

    Example:
        >>> print(selection_yaml(SelectionConfig(by="rsr", where="correct == True")), end="")
        by: rsr
        group_by: prompt_id
        k: 1
        where: correct == True
    """
    import yaml

    # A callable where has no YAML form: the card's metadata names it, and this file leaves it out.
    skip = {"where"} if callable(config.where) else set()
    values = {key: value for key, value in config.to_dict().items() if value is not None and key not in skip}
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def build_selection_folder(
    selected: datasets.Dataset,
    folder: Path,
    *,
    scored: datasets.Dataset | None = None,
    selection_config: SelectionConfig | dict[str, Any] | None = None,
    source_dataset: str | None = None,
    teacher_column: str = "teacher",
    response_column: str = ScoringConfig.response_column,
    pretty_name: str | None = None,
    rule: str | None = None,
) -> DatasetCard:
    """Write the card, the parquet shards and the histogram of a selection into ``folder``; return the card.

    ``rule`` says how the rows were chosen when they were not ranked by the ``by`` column (a seeded random pick,
    say): the card then says it instead of the direction and of the ``select`` command, which would not
    reproduce them.

    Example:
        >>> card = build_selection_folder(selected, Path("out"), scored=scored)  # doctest: +SKIP
        >>> card.data.hf_localnat["selection"]["by"]  # doctest: +SKIP
        'local_naturalness'
    """
    config = _selection_config(selection_config, selected)
    for column in (config.group_by,):
        if column not in selected.column_names:
            raise LocalnatError(
                f"the selected dataset has no {column!r} column (selection group_by). Columns: {selected.column_names}."
            )
    provenance = scoring_provenance(scored) if scored is not None else None
    provenance = provenance or scoring_provenance(selected) or {}
    scorer_config = provenance.get("scorer")
    source = source_dataset or provenance.get("source")
    fingerprint = (scored if scored is not None else selected)._fingerprint
    data_files = _write_parquet_shards(selected, folder)

    # Teacher shares of the selection, and the ranking of the pool under every metric it carries.
    teachers = selected[teacher_column] if teacher_column in selected.column_names else ["(no teacher column)"] * len(
        selected
    )
    shares = [
        {"teacher": markdown_text(teacher), "rows": rows, "share": rows / max(len(selected), 1)}
        for teacher, rows in Counter(teachers).most_common()
    ]
    metrics = present_metric_columns(scored.column_names) if scored is not None else []
    rankings = []
    if scored is not None and teacher_column in scored.column_names and config.group_by in scored.column_names:
        for metric in metrics:
            table = rank_teachers(scored, by=metric, teacher_column=teacher_column, group_by=config.group_by)
            direction = "higher is better" if is_higher_better(metric) else "lower is better"
            records = [{**row, "teacher": markdown_text(row["teacher"])} for row in table.to_dict("records")]
            rankings.append({"metric": metric, "direction": direction, "rows": records})

    histogram = None
    if scored is not None and config.by in scored.column_names:
        key_columns = [
            c
            for c in (config.group_by, teacher_column, response_column)
            if c in selected.column_names and c in scored.column_names
        ]
        chosen = Counter(_row_keys(selected, key_columns))
        picked, rejected = [], []
        for key, score in zip(_row_keys(scored, key_columns), scored[config.by], strict=True):
            if not _valid(score):
                continue
            if chosen[key] > 0:
                chosen[key] -= 1
                picked.append(score)
            else:
                rejected.append(score)
        if sum(chosen.values()):
            raise LocalnatError(
                f"{sum(chosen.values())} selected row(s) are not in the scored pool (matched on "
                f"{', '.join(key_columns)}). Pass the pool the selection was made from."
            )
        histogram = _histogram(picked, rejected, config.by, folder / HISTOGRAM).name

    block = {
        "version": __version__,
        "student": provenance.get("student"),
        "student_revision": provenance.get("revision"),
        "scorer": scorer_config,
        "selection": {**config.to_dict(), "higher_is_better": None if rule else config.is_higher_better()}
        | ({"rule": rule} if rule else {}),
        "num_rows_before": len(scored) if scored is not None else None,
        "num_rows_after": len(selected),
        "selected_ids_sha256": selected_ids_sha256(selected, config.group_by, teacher_column),
        "selected_ids": ID_DEFINITION,
        "source_fingerprint": fingerprint,
    }
    source_name = source or "local-data"
    card_data = DatasetCardData(
        pretty_name=pretty_name or f"hf_localnat selection by {config.by}",
        source_datasets=[f"{source_name}@fingerprint:{fingerprint}"],
        tags=list(TAGS),
        hf_localnat=block,
    )
    direction = rule or ("higher is better" if config.is_higher_better() else "lower is better")
    recorded = scorer_config or {}
    metrics = recorded.get("metrics") or []
    # ASLEC is cited when its drop was used, by local steps (the old boolean too) or by the aslec_drop metric.
    cite_aslec = bool(recorded.get("drop_first_tokens") or recorded.get("drop_first_token")) or "aslec_drop" in metrics
    card = DatasetCard.from_template(
        card_data,
        template_path=str(_template("selection_card.md")),
        summary=f"{len(selected)} teacher responses selected for distillation from {source_name}.",
        version=__version__,
        k=config.k,
        group_by=config.group_by,
        by=config.by,
        direction=direction,
        student=block["student"] or "an unrecorded student",
        student_revision=block["student_revision"],
        num_rows_before=block["num_rows_before"] if block["num_rows_before"] is not None else "an unknown number of",
        num_rows_after=len(selected),
        teacher_shares=shares,
        rankings=rankings,
        histogram=histogram,
        command=_command_line(source_name, scorer_config, block["student"], config),
        selection_yaml=selection_yaml(config),
        rule=rule,
        id_definition=ID_DEFINITION,
        metrics=metrics,
        cite_aslec=cite_aslec,
    )
    card.save(folder / "README.md")
    logger.debug("wrote %s", data_files)
    return card


def _template(name: str) -> Path:
    from model_cards import SELECTION_CARD, STUDENT_CARD

    path = {"selection_card.md": SELECTION_CARD, "student_card.md": STUDENT_CARD}[name]
    if not path.is_file():
        raise LocalnatError(f"card template {path} is missing; reinstall hf_localnat.")
    return path


# ----------------------------------------------------------------------------------------------- upload


RETRY_WAIT_S = 1.0  # first back-off; doubled per attempt


def _retry(action: Callable[[], _T], what: str, attempts: int = 3) -> _T:
    """Run ``action``; retry a network failure or a 5xx answer (commits are atomic, so a retry is safe)."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except _network_errors() as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            transient = status is None or status >= 500 or status == 429
            if not transient or attempt == attempts:
                raise
            logger.warning("%s failed (%s); retrying (%d/%d)", what, err, attempt, attempts - 1)
            time.sleep(RETRY_WAIT_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Errors a flaky network or server raises through huggingface_hub (its HTTP library varies by version)."""
    errors: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def resolve_token(repo_id: str, token: str | None = None) -> str:
    """Check ``repo_id``'s form and find a token (argument, ``HF_TOKEN``, or the saved login) before any work."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        valid = repo_id.count("/") == 1
    except HFValidationError:
        valid = False
    if not valid:
        raise LocalnatError(f"--repo_id {repo_id!r}: use NAMESPACE/NAME, e.g. my-org/math-selection.")
    token = token or get_token()
    if not token:
        raise LocalnatError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (or write the folder with --to_dir DIR)."
        )
    return token


def upload_folder_to_hub(
    folder: Path,
    repo_id: str,
    repo_type: str,
    *,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload with hf_localnat",
    attempts: int = 3,
    delete_patterns: list[str] | None = None,
) -> str:
    """Upload ``folder`` to ``repo_id`` in one commit; create the repo if needed; return the repo URL.

    Honours ``HF_ENDPOINT`` and ``HF_TOKEN``. Fails with a one-line :class:`LocalnatError` when there is no token,
    when the namespace is not the user's or one of their orgs, or when the upload still fails after retries (a
    repo this call created is then deleted again).

    Example:
        >>> upload_folder_to_hub(Path("out"), "me/selection", "dataset")  # doctest: +SKIP
        'https://huggingface.co/datasets/me/selection'
    """
    token = resolve_token(repo_id, token)
    api = HfApi(token=token)
    network = _network_errors()
    try:
        who = _retry(api.whoami, "whoami", attempts)
    except network as err:
        raise LocalnatError(f"could not sign in to {api.endpoint} with this token ({_reason(err)}).") from err
    namespace = repo_id.split("/")[0]
    allowed = {who.get("name")} | {org.get("name") for org in who.get("orgs", [])}
    if namespace not in allowed:
        raise LocalnatError(
            f"{repo_id}: you are signed in as {who.get('name')!r}, who cannot write to namespace {namespace!r}. "
            f"Use one of: {', '.join(sorted(n for n in allowed if n))}."
        )
    try:
        existed = _retry(lambda: api.repo_exists(repo_id, repo_type=repo_type), "repo_exists", attempts)
    except network as err:
        raise LocalnatError(f"could not reach {api.endpoint} ({_reason(err)}).") from err
    try:
        url = _retry(
            lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True), "create", attempts
        )
        _retry(
            lambda: api.upload_folder(
                folder_path=str(folder),
                repo_id=repo_id,
                repo_type=repo_type,
                commit_message=commit_message,
                delete_patterns=delete_patterns,
            ),
            "upload",
            attempts,
        )
    except network as err:
        if not existed:
            try:
                api.delete_repo(repo_id, repo_type=repo_type, missing_ok=True)
            except network:  # pragma: no cover - best effort; the message below still says what happened
                logger.warning("could not delete the half-created repo %s", repo_id)
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise LocalnatError(
                f"{repo_id}: the Hub refused the upload ({status}): this token cannot write to it. Use a token "
                "with write access, or another --repo_id."
            ) from err
        raise LocalnatError(f"upload to {repo_id} failed after {attempts} attempts ({_reason(err)}).") from err
    return str(url)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def push_selection(
    selected: datasets.Dataset,
    repo_id: str | None = None,
    *,
    to_dir: str | os.PathLike | None = None,
    scored: datasets.Dataset | None = None,
    selection_config: SelectionConfig | dict[str, Any] | None = None,
    source_dataset: str | None = None,
    private: bool = True,
    overwrite: bool = False,
    token: str | None = None,
    teacher_column: str = "teacher",
    response_column: str = ScoringConfig.response_column,
    rule: str | None = None,
) -> str:
    """Publish a selected dataset with its provenance card: to the Hub (``repo_id``) or a folder (``to_dir``).

    The folder holds ``README.md`` (the card), ``data/train-*.parquet`` and, when ``scored`` is given,
    ``score_histogram.png``; ``datasets.load_dataset(to_dir)`` loads it back. ``rule``: how the rows were chosen
    when not by ranking ``selection_config.by`` (see :func:`build_selection_folder`).

    Example:
        >>> best = select_responses(scored, by="local_naturalness")  # doctest: +SKIP
        >>> push_selection(best, to_dir="math-selection", scored=scored,
        ...                selection_config={"by": "local_naturalness", "k": 1})  # doctest: +SKIP
        'math-selection'
    """
    if (repo_id is None) == (to_dir is None):
        raise LocalnatError("give exactly one of repo_id (upload to the Hub) or to_dir (write a local folder).")
    if len(selected) == 0:
        raise LocalnatError("the selected dataset is empty; nothing to publish.")
    if repo_id is not None:
        token = resolve_token(repo_id, token)
    with _staging(to_dir, overwrite) as folder:
        build_selection_folder(
            selected,
            folder,
            scored=scored,
            selection_config=selection_config,
            source_dataset=source_dataset,
            teacher_column=teacher_column,
            response_column=response_column,
            pretty_name=repo_id.split("/")[-1] if repo_id else None,
            rule=rule,
        )
        if repo_id is None:
            return str(to_dir)
        # An earlier push may have had more shards: they go, or load_dataset would read old rows too.
        return upload_folder_to_hub(
            folder, repo_id, "dataset", private=private, token=token, delete_patterns=["data/*", HISTOGRAM]
        )


# ----------------------------------------------------------------------------------------------- students


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):  # SchedulerType.LINEAR -> "linear"
        return value.value
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def training_args_summary(args: Any) -> dict[str, Any]:
    """The training arguments that matter for a card, from a ``TrainingArguments`` or a dict.

    Example:
        >>> training_args_summary({"learning_rate": 1e-5, "logging_dir": "x"})
        {'learning_rate': 1e-05}
    """
    if not isinstance(args, dict):
        args = {name: getattr(args, name) for name in KEY_TRAINING_ARGS if hasattr(args, name)}
    values = args
    return {name: _jsonable(values[name]) for name in KEY_TRAINING_ARGS if name in values}


def student_card(
    *,
    base_model: str | None,
    selection_repo: str | None,
    training_args: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    trl_card: ModelCard | None = None,
) -> ModelCard:
    """A student's model card: TRL's card (when given) extended with the distillation-data provenance.

    Example:
        >>> card = student_card(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", selection_repo="me/selection")
        >>> card.data.datasets, card.data.library_name
        (['me/selection'], 'transformers')
    """
    data = trl_card.data.to_dict() if trl_card is not None else {}
    tags = list(dict.fromkeys([*(data.get("tags") or []), *TAGS]))
    data.update(
        base_model=base_model or data.get("base_model"),
        datasets=[selection_repo] if selection_repo else data.get("datasets"),
        library_name="transformers",
        tags=tags,
        hf_localnat={
            "version": __version__,
            "selection_repo": selection_repo,
            "reselection_rounds": sum(1 for record in history or [] if record.get("reason") != "initial"),
        },
    )
    data = {key: value for key, value in data.items() if value is not None}
    from huggingface_hub import constants

    return ModelCard.from_template(
        ModelCardData(**data),
        template_path=str(_template("student_card.md")),
        trl_body=trl_card.text.strip() if trl_card is not None else f"# {data.get('model_name') or 'Student model'}",
        version=__version__,
        selection_repo=selection_repo,
        selection_url=f"{constants.ENDPOINT}/datasets/{selection_repo}" if selection_repo else None,
        training_args=training_args or {},
        history=[
            {**record, "teacher_shares": {markdown_text(t): v for t, v in record.get("teacher_shares", {}).items()}}
            for record in history or []
        ],
        reselections=sum(1 for record in history or [] if record.get("reason") != "initial"),
    )


def read_history(folder: Path) -> list[dict[str, Any]]:
    """The reselection history a trained folder holds (``selection_history.jsonl``); [] when it has none.

    Example:
        >>> read_history(Path("a-folder-that-does-not-exist"))
        []
    """
    path = folder / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def student_base_model(model: Any) -> str | None:
    """The Hub id (or embedded name) a student was loaded from, for ``base_model``; None for a local folder."""
    source = getattr(model, "hf_localnat_source", None)
    if source is not None:
        return source.student
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return name if name and not os.path.isdir(name) else None


def push_student(
    trainer_or_folder: Any,
    repo_id: str | None = None,
    *,
    to_dir: str | os.PathLike | None = None,
    selection_repo: str | None = None,
    base_model: str | None = None,
    private: bool = True,
    overwrite: bool = False,
    token: str | None = None,
) -> str:
    """Publish a trained student with a model card that points at the data it was distilled on.

    ``trainer_or_folder`` is a (``ReselectingSFT``/``SFT``) trainer, whose model and tokenizer are saved, or a
    folder written by ``trainer.save_model``. A TRL ``README.md`` already there is kept and extended.

    Example:
        >>> push_student(trainer, to_dir="student", selection_repo="me/math-selection")  # doctest: +SKIP
        'student'
    """
    if (repo_id is None) == (to_dir is None):
        raise LocalnatError("give exactly one of repo_id (upload to the Hub) or to_dir (write a local folder).")
    if repo_id is not None:
        token = resolve_token(repo_id, token)
    is_folder = isinstance(trainer_or_folder, str | os.PathLike)
    if not is_folder and not trainer_or_folder.is_world_process_zero():
        # Saving may be collective (FSDP, DeepSpeed): take part, but only the main process publishes.
        with tempfile.TemporaryDirectory() as scratch:
            trainer_or_folder.save_model(scratch)
        return str(to_dir) if to_dir is not None else str(repo_id)
    inputs = (Path(trainer_or_folder),) if is_folder else ()
    keep = () if is_folder else (Path(trainer_or_folder.args.output_dir),)
    with _staging(to_dir, overwrite, inputs, kind="student", keep=keep) as folder:
        if is_folder:
            source = Path(trainer_or_folder)
            if not (source / "config.json").is_file():
                raise LocalnatError(
                    f"{source}: not a saved model folder (no config.json). Pass the folder trainer.save_model wrote."
                )
            shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
            saved_path = source / TRAINING_ARGS_FILE
            saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
            base = base_model or saved.get("base_model")
            selection_repo = selection_repo or saved.get("selection_repo")  # recorded by `study` for each arm
            args = saved.get("training_args")
            history = read_history(source)
        else:
            trainer = trainer_or_folder
            trainer.save_model(str(folder))
            if getattr(trainer, "processing_class", None) is not None:
                trainer.processing_class.save_pretrained(str(folder))
            if hasattr(trainer, "create_model_card"):  # TRL's card, the base this card extends
                trainer.create_model_card(model_name=(repo_id or str(to_dir)).rstrip("/").split("/")[-1])
                written = Path(trainer.args.output_dir) / "README.md"
                if written.is_file():
                    shutil.copyfile(written, folder / "README.md")
            base = base_model or student_base_model(trainer.model)
            args = training_args_summary(trainer.args)
            history = list(getattr(trainer, "selection_history", []) or [])
        readme = folder / "README.md"
        trl_card = ModelCard.load(readme) if readme.is_file() else None
        if trl_card is not None and "hf_localnat" in trl_card.data.to_dict():
            trl_card = _strip_localnat_section(trl_card)
        card = student_card(
            base_model=base, selection_repo=selection_repo, training_args=args, history=history, trl_card=trl_card
        )
        card.save(readme)
        if repo_id is None:
            return str(to_dir)
        weights = ["*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin"]
        return upload_folder_to_hub(folder, repo_id, "model", private=private, token=token, delete_patterns=weights)


SECTION_MARK = "## Distillation data (hf_localnat)"


def _strip_localnat_section(card: ModelCard) -> ModelCard:
    """Drop a section an earlier hf_localnat render added, so re-rendering does not repeat it."""
    text = card.text.split(SECTION_MARK)[0]
    return ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}")
