"""Teacher ranking on a budget: score prompts in a seeded random order until the top teacher is sure.

Ranking teachers does not need the whole pool. :func:`rank_until_confident` scores the pool's prompts in a seeded
random order, a block of prompts at a time (every teacher's responses to a prompt together), re-ranks after each
block, and stops when the top teacher's P(top) (the bootstrap probability that it ranks first, over prompts)
reaches the threshold, or when the pool is done.

Every block is scored by :func:`~hf_localnat.scorer.score_dataset` into its own folder of the work folder, so an
interrupted run resumes block by block, and a rerun with a higher threshold (same seed and block size) reuses every
block already scored. The blocks' scored rows are the partial scores: they can be written out and selected on or
reported like any scored pool.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .errors import LocalnatError
from .metrics import POOL_METRICS, add_casl
from .outputs import RunLock
from .scorer import NaturalnessScorer, score_dataset
from .selection import RankingConfig, SelectionConfig, group_codes, is_missing, rank_teachers

logger = logging.getLogger(__name__)
BLOCK_CHUNK_ROWS = 16  # rows per saved chunk within a block


@dataclasses.dataclass
class BudgetedRanking:
    """What :func:`rank_until_confident` found.

    ``ranking``: the :func:`~hf_localnat.selection.rank_teachers` table on the prompts scored (with ``p_top``);
    ``scored``: those prompts' rows with their scores; ``num_prompts``/``num_prompts_total``: prompts scored and in
    the pool; ``token_share``: the scored rows' response tokens over the pool's; ``confident``: whether the threshold
    was reached (else the pool ran out); ``seconds``: wall time of this call (blocks reused cost nothing).
    """

    ranking: pd.DataFrame
    scored: datasets.Dataset
    num_prompts: int
    num_prompts_total: int
    token_share: float
    confident: bool
    seconds: float

    def summary(self) -> str:
        """Two lines: how far it went and why it stopped.

        Example:
            >>> table = pd.DataFrame({"teacher": ["a"], "p_top": [0.97]})
            >>> print(BudgetedRanking(table, None, 30, 200, 0.14, True, 12.0).summary())
            Scored 30 of 200 prompts (15.0%), 14.0% of the pool's response tokens, in 12 s.
            Stopped: a's P(top) is 97.0%.
        """
        top = self.ranking.iloc[0] if len(self.ranking) else None
        why = (
            f"Stopped: {top['teacher']}'s P(top) is {top['p_top']:.1%}."
            if self.confident and top is not None
            else "The pool ran out before the threshold was reached"
            + (f" (top: {top['teacher']}, P(top) {top['p_top']:.1%})." if top is not None else ".")
        )
        share = self.num_prompts / max(self.num_prompts_total, 1)
        return (
            f"Scored {self.num_prompts} of {self.num_prompts_total} prompts ({share:.1%}), "
            f"{self.token_share:.1%} of the pool's response tokens, in {self.seconds:.0f} s.\n{why}"
        )


def prompt_blocks(
    keys: Sequence[Any], block_prompts: int, seed: int, group_by: str = SelectionConfig.group_by
) -> list[tuple[np.ndarray, int]]:
    """The pool's rows in blocks of ``block_prompts`` prompts, prompts in a seeded random order (rows of one prompt
    stay together, in pool order), each with its number of prompts. Rows without a prompt key are left out.

    Example:
        >>> [(rows.tolist(), n) for rows, n in prompt_blocks(["p1", "p2", "p1", "p3"], 2, seed=0)]
        [([3, 0, 2], 2), ([1], 1)]
    """
    codes, _ = group_codes(keys, group_by)
    rows_of: dict[int, list[int]] = {}
    for row, (code, key) in enumerate(zip(codes, keys, strict=True)):
        if not is_missing(key):
            rows_of.setdefault(int(code), []).append(row)
    present = np.array(sorted(rows_of), dtype=np.int64)
    order = present[np.random.default_rng(seed).permutation(len(present))]
    blocks = []
    for start in range(0, len(order), block_prompts):
        picked = order[start : start + block_prompts]
        blocks.append((np.array([row for code in picked for row in rows_of[int(code)]], dtype=np.int64), len(picked)))
    return blocks


def rank_until_confident(
    dataset: datasets.Dataset,
    scorer: NaturalnessScorer,
    *,
    threshold: float = 0.95,
    by: str = SelectionConfig.by,
    group_by: str = SelectionConfig.group_by,
    higher_is_better: bool | None = None,
    block_prompts: int = 10,
    min_prompts: int = 20,
    work_dir: str | Path,
    progress: bool = True,
    ranking: RankingConfig | None = None,
    **ranking_options: Any,
) -> BudgetedRanking:
    """Score blocks of prompts in a seeded random order until the top teacher's P(top) reaches ``threshold``.

    After each block the prompts scored so far are ranked with :func:`~hf_localnat.selection.rank_teachers`
    (``ranking``, a :class:`~hf_localnat.selection.RankingConfig`, or its fields as keywords: ``n_bootstrap``
    paired resamples of the prompts, ``seed``, ``teacher_column``, ...); it stops once at least ``min_prompts``
    prompts are scored and the first teacher's ``p_top`` is at least ``threshold``. A bootstrap over a handful of
    prompts is overconfident, hence ``min_prompts``. The prompt order depends only on the ranking's ``seed`` and the
    pool, so a rerun (any threshold) reuses the blocks in ``work_dir``. ``casl`` is refitted over every row scored
    so far after each block.

    Example:
        >>> result = rank_until_confident(pool, scorer, threshold=0.95, work_dir="rank.partial")  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
    """
    options = dataclasses.replace(ranking or RankingConfig(), **ranking_options)
    teacher_column, seed = options.teacher_column, options.seed
    if not 0.0 < threshold <= 1.0:
        raise LocalnatError(f"until_confident={threshold!r}: use a probability in (0, 1], e.g. 0.95.")
    for name, value in (("block_prompts", block_prompts), ("min_prompts", min_prompts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LocalnatError(f"{name}={value!r}: use a whole number >= 1.")
    for column in (teacher_column, group_by, scorer.config.prompt_column, scorer.config.response_column):
        if column not in dataset.column_names:
            raise LocalnatError(f"column {column!r} not found (columns: {', '.join(dataset.column_names)}).")
    started = time.perf_counter()
    scorer._ensure_loaded()  # its tokenizer counts the tokens left unscored, even when every block is reused
    blocks = prompt_blocks(dataset[group_by], block_prompts, seed, group_by)
    num_prompts_total = sum(n for _, n in blocks)
    work = Path(work_dir)
    scored_blocks: list[datasets.Dataset] = []
    table = pd.DataFrame()
    confident = False
    num_prompts = 0
    with RunLock(work), tqdm(total=num_prompts_total, desc="Ranking", unit="prompt", disable=not progress) as bar:
        for index, (rows, block_size) in enumerate(blocks):
            block = dataset.select(rows)
            # Chunks of a block are kept as they finish, so an interrupted block resumes where it stopped too.
            scored = score_dataset(
                block, scorer, work_dir=work / f"block-{index:06d}", chunk_rows=BLOCK_CHUNK_ROWS, progress=False
            )
            scored_blocks.append(scored)
            num_prompts += block_size
            so_far = datasets.concatenate_datasets(scored_blocks)
            if any(m in POOL_METRICS for m in scorer.metrics):
                so_far, _ = add_casl(so_far, by=scorer.config.casl_fit_by)
            table = rank_teachers(
                so_far, by=by, group_by=group_by, higher_is_better=higher_is_better, **options.to_dict()
            )
            top = table.iloc[0]
            bar.set_postfix_str(f"top {top['teacher']} P(top) {top['p_top']:.0%}", refresh=False)
            bar.update(block_size)  # after the postfix, so each line shows the ranking of the prompts it counts
            if num_prompts >= min_prompts and top["p_top"] >= threshold:
                confident = True
                break
    scored_tokens = sum(so_far["num_response_tokens"]) if scored_blocks else 0
    return BudgetedRanking(
        ranking=table,
        scored=so_far if scored_blocks else dataset.select([]),
        num_prompts=num_prompts,
        num_prompts_total=num_prompts_total,
        token_share=_token_share(scorer, dataset, [rows for rows, _ in blocks[len(scored_blocks) :]], scored_tokens),
        confident=confident,
        seconds=time.perf_counter() - started,
    )


def _token_share(
    scorer: NaturalnessScorer,
    dataset: datasets.Dataset,
    rest: list[np.ndarray],
    scored_tokens: int,
) -> float:
    """The scored rows' response tokens over the pool's: the rest are tokenized (not scored) to count them."""
    rows = np.concatenate(rest) if rest else np.zeros(0, dtype=int)
    column = scorer.config.response_column
    remaining = 0
    for start in range(0, len(rows), 1000):
        texts = [t or "" for t in dataset.select(rows[start : start + 1000])[column]]
        remaining += sum(len(ids) for ids in scorer.tokenizer(texts, add_special_tokens=False)["input_ids"])
    total = scored_tokens + remaining
    return scored_tokens / total if total else math.nan
